//! Choosing a partition for a record.
//!
//! A record with a key goes to `murmur2(key) & 0x7fff_ffff` modulo the
//! partition count. The hash is MurmurHash2 (32-bit, seed `0x9747b28c`),
//! the same function and reduction Kafka's default partitioner uses, so a
//! key lands on the same partition index as it would there. It is stable:
//! it never depends on the process, the platform or the crate version.
//!
//! Records without a key are *sticky*: they go to one partition until the
//! batch for it is closed, then to the next, round robin. This fills
//! batches instead of spreading single records over every partition.

use std::collections::HashMap;

/// MurmurHash2, 32-bit, as Kafka computes it.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka mixes the length in as a Java int; keys over 4 GiB cannot
    // occur in a batch, and truncation keeps the function total.
    #[allow(clippy::cast_possible_truncation)]
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of a keyed record among `partitions` (at least 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Chooses partitions: key hash for keyed records, sticky round robin for
/// the others.
#[derive(Debug, Default)]
pub(crate) struct Partitioner {
    sticky: HashMap<String, u32>,
}

impl Partitioner {
    /// The partition for a record of `topic` with `key`, given the topic's
    /// partition count.
    pub(crate) fn partition(&mut self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32 {
        let partitions = partitions.max(1);
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => match self.sticky.get(topic) {
                Some(p) => *p % partitions,
                None => {
                    self.sticky.insert(topic.to_owned(), 0);
                    0
                }
            },
        }
    }

    /// A batch of `topic`/`partition` was closed: keyless records move on
    /// to the next partition if they were sticking to this one.
    pub(crate) fn batch_closed(&mut self, topic: &str, partition: u32, partitions: u32) {
        if let Some(p) = self.sticky.get_mut(topic)
            && *p == partition
        {
            *p = (partition + 1) % partitions.max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_reference_values() {
        // Kafka's published test vectors for its murmur2, as signed ints.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                u32::from_ne_bytes(expected.to_ne_bytes()),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn key_partitions_are_stable_golden_values() {
        // Pinned: a change here moves keys to other partitions.
        let golden: [(&[u8], u32, [u32; 3]); 5] = [
            (b"user-1", 1_404_122_828, [2, 8, 12]),
            (b"user-2", 3_969_985_504, [2, 8, 0]),
            (b"order-42", 501_153_024, [0, 0, 0]),
            (b"", 275_646_681, [0, 9, 9]),
            (b"spiffe://strongbox.dev/alice", 4_247_728_526, [0, 6, 14]),
        ];
        for (key, hash, partitions) in golden {
            assert_eq!(murmur2(key), hash);
            for (n, expected) in [3, 12, 16].into_iter().zip(partitions) {
                assert_eq!(partition_for_key(key, n), expected);
            }
        }
        assert_eq!(partition_for_key(b"anything", 1), 0);
        assert_eq!(partition_for_key(b"anything", 0), 0, "0 is treated as 1");
    }

    #[test]
    fn keys_spread_evenly() {
        let partitions = 8u32;
        let mut counts = [0u32; 8];
        for i in 0..80_000 {
            let key = format!("customer-{i}");
            counts[partition_for_key(key.as_bytes(), partitions) as usize] += 1;
        }
        for c in counts {
            // Expected 10,000 each; allow 5%.
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn keyless_records_stick_until_the_batch_closes() {
        let mut p = Partitioner::default();
        assert_eq!(p.partition("t", None, 3), 0);
        assert_eq!(p.partition("t", None, 3), 0);
        p.batch_closed("t", 1, 3);
        assert_eq!(p.partition("t", None, 3), 0, "another partition's batch");
        p.batch_closed("t", 0, 3);
        assert_eq!(p.partition("t", None, 3), 1);
        p.batch_closed("t", 1, 3);
        p.batch_closed("t", 2, 3);
        assert_eq!(p.partition("t", None, 3), 0, "wraps around");
        assert_eq!(p.partition("other", None, 3), 0, "per topic");
        assert_eq!(
            p.partition("t", Some(b"abc"), 3),
            partition_for_key(b"abc", 3),
            "keys ignore stickiness"
        );
    }
}
