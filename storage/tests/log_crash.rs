//! Crash test: a child process appends under `fsync` durability from
//! several threads and prints every acknowledged batch; the test kills it
//! with SIGKILL at random moments, sometimes also cuts the newest segment
//! back to a random point after its last acknowledged frame (what a power
//! loss can leave of unsynced writes), reopens the log and checks:
//!
//! - every acknowledged batch reads back, byte for byte;
//! - what is read is whole, CRC-valid batches with contiguous offsets;
//! - no (segment id, nonce) pair ever sealed two different ciphertexts,
//!   across every frame ever seen on disk, including frames that recovery
//!   later cut off.
//!
//! The child is this same test binary, started with an environment
//! variable that switches the test into its child role.

mod log_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strongbox_protocol::batch::RecordBatch;
use strongbox_storage::keys::SegmentKeys;
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::format::{frame_aad, frame_nonce};
use strongbox_storage::log::{Durability, PartitionLog};

use log_support::{Rng, TestKeys, config, raw_segment, segment_files, sha256};

const CHILD_ENV: &str = "STRONGBOX_LOG_CRASH_CHILD_DIR";
const KEK_ENV: &str = "STRONGBOX_LOG_CRASH_KEK";
const SEGMENT_BYTES: u64 = 48 * 1024;

#[test]
fn acknowledged_batches_survive_sigkill_and_nonces_never_repeat() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("orders-0");
    let keys = TestKeys::new();
    let seed = std::env::var("STRONGBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("crash test seed {seed} (set STRONGBOX_CRASH_SEED to replay the same kill schedule)");
    let mut rng = Rng::new(seed);

    // base offset -> (last offset, digest of the batch bytes)
    let mut acked: BTreeMap<u64, (u64, [u8; 32])> = BTreeMap::new();
    // (segment id, nonce = base offset) -> digest of header, ciphertext and tag
    let mut sealed = Frames::default();
    let started = Instant::now();
    let mut kills = 0;
    let mut cuts = 0;
    let mut unsealed_at_kill = 0;
    let mut torn_tails = 0;

    while kills < 30 && started.elapsed() < Duration::from_secs(60) {
        let mut child = Command::new(std::env::current_exe().expect("own binary"))
            .args([
                "--exact",
                "acknowledged_batches_survive_sigkill_and_nonces_never_repeat",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env(KEK_ENV, keys.kek_hex())
            .env("STRONGBOX_CRASH_SEED", rng.next_u64().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Kill at a random moment: sometimes while it opens and recovers,
        // mostly while appends are in flight.
        let delay = if rng.below(6) == 0 {
            rng.below(15)
        } else {
            40 + rng.below(260)
        };
        std::thread::sleep(Duration::from_millis(delay));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill child");
        let status = child.wait().expect("wait child");
        assert!(!status.success(), "the child only stops when killed");
        kills += 1;
        let lines = reader.join().expect("reader");
        for line in &lines {
            assert!(!line.starts_with("ERR"), "child failed: {line}");
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split(' ').collect();
            // A line cut by the kill has fewer fields; it was never whole.
            if parts.len() != 3 || parts[2].len() != 64 {
                continue;
            }
            let base: u64 = parts[0].parse().expect("base");
            let last: u64 = parts[1].parse().expect("last");
            let digest: [u8; 32] = hex::decode(parts[2]).expect("hex").try_into().expect("32");
            if let Some(old) = acked.insert(base, (last, digest)) {
                panic!(
                    "offset {base} acknowledged twice: {old:?} then {:?}",
                    (last, digest)
                );
            }
        }

        record_frames(&dir, &keys, &mut sealed);
        let newest = segment_files(&dir).last().and_then(|p| raw_segment(p));
        if newest.is_some_and(|s| !s.sealed && !s.frames.is_empty()) {
            unsealed_at_kill += 1;
        }
        if rng.below(2) == 0 && cut_unsynced_tail(&dir, &acked, &mut rng) {
            cuts += 1;
        }
        if segment_files(&dir)
            .last()
            .and_then(|p| raw_segment(p))
            .is_some_and(|s| !s.sealed && s.file_len > s.frames_end)
        {
            torn_tails += 1;
        }

        // Restart: open (recovery), then everything acknowledged must be there.
        let log = PartitionLog::open(
            &dir,
            config(0, SEGMENT_BYTES, Durability::None),
            keys.clone(),
        )
        .expect("reopen after kill");
        check_log(&log, &acked);
        drop(log);
        record_frames(&dir, &keys, &mut sealed);
    }
    eprintln!(
        "{kills} kills ({unsealed_at_kill} with an unsealed active segment), {cuts} simulated \
         power-loss cuts, {torn_tails} torn tails recovered, {} acknowledged batches, {} frames \
         seen and decrypted, {:?}",
        acked.len(),
        sealed.digests.len(),
        started.elapsed()
    );
    assert!(kills >= 10, "enough kills to mean something");
    assert!(unsealed_at_kill >= 3, "kills landed while appending");
    assert!(
        acked.len() >= 50,
        "the child acknowledged batches ({})",
        acked.len()
    );
    assert!(
        sealed.digests.len() >= acked.len(),
        "every acknowledged batch was seen as a frame"
    );
}

/// Every frame ever seen on disk.
#[derive(Default)]
struct Frames {
    /// (segment id, nonce = base offset) -> digest of header, ciphertext, tag.
    digests: HashMap<([u8; 16], u64), [u8; 32]>,
    /// Digests already decrypted.
    opened: HashSet<[u8; 32]>,
}

/// Reads every segment file raw and records each frame's ciphertext under
/// its (segment id, nonce); a pair seen with different bytes is a nonce
/// reuse. Each new frame is also decrypted with RustCrypto's AES-GCM under
/// the documented nonce and AAD, which proves that nonce is the one used.
fn record_frames(dir: &Path, keys: &TestKeys, frames: &mut Frames) {
    for path in segment_files(dir) {
        let Some(seg) = raw_segment(&path) else {
            continue;
        };
        let mut gcm = None;
        for f in &seg.frames {
            let digest = sha256(&f.bytes);
            if let Some(old) = frames
                .digests
                .insert((seg.segment_id, f.base_offset), digest)
            {
                assert_eq!(
                    old,
                    digest,
                    "nonce reuse: segment {} sealed two different frames at offset {}",
                    hex::encode(seg.segment_id),
                    f.base_offset
                );
            }
            if frames.opened.contains(&digest) {
                continue;
            }
            let gcm = gcm.get_or_insert_with(|| {
                let env = KeyEnvelope::decode(
                    &std::fs::read(path.with_extension("key")).expect("envelope"),
                )
                .expect("envelope decodes");
                assert_eq!(env.segment_id, seg.segment_id);
                let dek = keys.open(&env.context(), &env.wrapped).expect("unwrap");
                aes_gcm::Aes256Gcm::new_from_slice(dek.expose()).expect("key")
            });
            let nonce = aes_gcm::Nonce::try_from(&frame_nonce(f.base_offset)[..]).expect("nonce");
            let aad = frame_aad(
                &log_support::TOPIC,
                0,
                &seg.segment_id,
                f.base_offset,
                f.record_count,
            );
            gcm.decrypt(
                &nonce,
                Payload {
                    msg: &f.bytes[16..],
                    aad: &aad,
                },
            )
            .expect("every frame on disk opens under its documented nonce");
            frames.opened.insert(digest);
        }
    }
}

/// Cuts the newest segment, if unsealed, to a random length that keeps
/// every acknowledged (fsynced) frame: what a power loss may leave.
fn cut_unsynced_tail(dir: &Path, acked: &BTreeMap<u64, (u64, [u8; 32])>, rng: &mut Rng) -> bool {
    let Some(path) = segment_files(dir).pop() else {
        return false;
    };
    let Some(seg) = raw_segment(&path) else {
        return false;
    };
    if seg.sealed {
        return false;
    }
    let max_acked = acked.values().map(|(last, _)| *last).max();
    let keep = seg
        .frames
        .iter()
        .filter(|f| max_acked.is_some_and(|m| f.base_offset <= m))
        .map(|f| f.position + 16 + f.len)
        .max()
        .unwrap_or(0);
    if keep >= seg.file_len {
        return false;
    }
    let len = keep + rng.below((seg.file_len - keep) as u64) as usize;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len as u64).expect("cut");
    true
}

fn check_log(log: &PartitionLog, acked: &BTreeMap<u64, (u64, [u8; 32])>) {
    let start = log.log_start_offset();
    let hw = log.high_watermark();
    let batches = if hw > start {
        log.read(start, usize::MAX).expect("read everything")
    } else {
        Vec::new()
    };
    let mut expected = start;
    let mut found: HashMap<u64, [u8; 32]> = HashMap::new();
    for (base, bytes) in &batches {
        assert_eq!(*base, expected, "batches are contiguous");
        let b = RecordBatch::parse(bytes.clone()).expect("a whole, CRC-valid batch");
        expected = base + u64::from(b.record_count());
        found.insert(*base, sha256(bytes));
    }
    assert_eq!(expected, hw, "reads reach the high watermark");
    for (base, (last, digest)) in acked {
        let got = found
            .get(base)
            .unwrap_or_else(|| panic!("acknowledged batch at {base}..={last} is missing"));
        assert_eq!(
            got, digest,
            "acknowledged batch at {base} reads back intact"
        );
    }
    log.verify().expect("verify after recovery");
}

/// The child: appends from three threads under `fsync` durability and
/// prints `ACK base last sha256` once each batch is durable. Runs until
/// killed.
fn child(dir: &Path) -> ! {
    let kek: [u8; 32] = hex::decode(std::env::var(KEK_ENV).expect("kek"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let seed: u64 = std::env::var("STRONGBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let log = match PartitionLog::open(
        dir,
        config(0, SEGMENT_BYTES, Durability::Fsync),
        TestKeys::with_kek(kek),
    ) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            println!("ERR open: {e}");
            std::process::exit(2);
        }
    };
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                loop {
                    let count = 1 + rng.below(4) as usize;
                    let now = 1_700_000_000_000 + rng.below(1_000_000) as i64;
                    let values: Vec<Vec<u8>> = (0..count)
                        .map(|_| {
                            // Random bytes: a batch re-appended at the same
                            // offset would differ, so nonce reuse shows.
                            (0..(50 + rng.below(3000)))
                                .map(|_| rng.next_u64() as u8)
                                .collect()
                        })
                        .collect();
                    let records: Vec<(i64, &[u8])> = values.iter().map(|v| (now, &v[..])).collect();
                    let batch = log_support::batch(&records);
                    let appended = match log.append(&batch) {
                        Ok(a) => a,
                        Err(e) => {
                            println!("ERR append: {e}");
                            std::process::exit(3);
                        }
                    };
                    if let Err(e) = appended.durable.wait() {
                        println!("ERR durable: {e}");
                        std::process::exit(4);
                    }
                    let line = format!(
                        "ACK {} {} {}\n",
                        appended.base_offset,
                        appended.last_offset,
                        hex::encode(sha256(batch.as_bytes()))
                    );
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(5);
}
