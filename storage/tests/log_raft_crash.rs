//! Crash test of the replicated log: a child process appends Raft entries
//! (record batches and control entries) and now and then truncates its
//! tail and appends the same indexes again under a new term, as a follower
//! does; it prints every entry once its flush is reported. The test kills
//! it with SIGKILL at random moments, sometimes also cuts the newest
//! segment back to a random point after its last reported frame (what a
//! power loss can leave of unsynced writes), reopens the log and checks:
//!
//! - every reported entry that no later truncation removed reads back with
//!   its term and payload, and the log's indexes are contiguous;
//! - no (segment id, nonce) pair ever sealed two different ciphertexts,
//!   across every frame ever seen on disk, including frames that a
//!   truncation or recovery later removed, and every frame opens with
//!   RustCrypto's AES-GCM under the documented nonce and AAD.
//!
//! The child is this same test binary, started with an environment
//! variable that switches the test into its child role.

mod log_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strongbox_storage::keys::SegmentKeys;
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::raft::{RaftEntry, RaftLog};
use strongbox_storage::log::raft_format::{RaftFrameKind, RaftLogId};
use strongbox_storage::log::{Durability, LogEnv};

use log_support::{
    Rng, TestKeys, config, raft_aad, raft_nonce, raw_raft_segment, segment_files, sha256,
};

const CHILD_ENV: &str = "STRONGBOX_RAFT_CRASH_CHILD_DIR";
const KEK_ENV: &str = "STRONGBOX_RAFT_CRASH_KEK";
const SEGMENT_BYTES: u64 = 16 * 1024;

/// index -> (term, digest of the payload)
type Expected = BTreeMap<u64, (u64, [u8; 32])>;

#[test]
fn reported_entries_survive_sigkill_and_nonces_never_repeat_across_truncations() {
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

    let mut expected = Expected::new();
    let mut seen = Seen::default();
    let started = Instant::now();
    let (mut kills, mut cuts, mut truncations, mut reported) = (0, 0, 0, 0);

    while kills < 25 && started.elapsed() < Duration::from_secs(45) {
        let mut child = Command::new(std::env::current_exe().expect("own binary"))
            .args([
                "--exact",
                "reported_entries_survive_sigkill_and_nonces_never_repeat_across_truncations",
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
        for line in reader.join().expect("reader") {
            assert!(!line.contains("ERR "), "child failed: {line}");
            // The test harness of the child prints its own words before the
            // child's first line, on the same line: a line is read from its
            // marker on, so a first line that is a truncation is not missed.
            let Some(at) = line.find("ACK ").or_else(|| line.find("TRUNC ")) else {
                continue;
            };
            let parts: Vec<&str> = line.get(at..).unwrap_or_default().split(' ').collect();
            match parts.as_slice() {
                // Printed before the truncation starts: whatever it removes
                // is no longer expected, whether or not it finished.
                ["TRUNC", keep] => {
                    let keep: u64 = keep.parse().expect("keep");
                    expected.retain(|index, _| *index <= keep);
                    truncations += 1;
                }
                ["ACK", index, term, digest] if digest.len() == 64 => {
                    let digest: [u8; 32] =
                        hex::decode(digest).expect("hex").try_into().expect("32");
                    expected.insert(
                        index.parse().expect("index"),
                        (term.parse().expect("term"), digest),
                    );
                    reported += 1;
                }
                // A line cut by the kill was never whole.
                _ => {}
            }
        }

        seen.record(&dir, &keys);
        if rng.below(2) == 0 && cut_unsynced_tail(&dir, &expected, &mut rng) {
            cuts += 1;
        }
        let log = RaftLog::open(
            &dir,
            config(0, SEGMENT_BYTES, Durability::Fsync),
            keys.clone(),
            LogEnv::default(),
        )
        .expect("reopen after kill");
        check_log(&log, &expected);
        drop(log);
        seen.record(&dir, &keys);
    }
    eprintln!(
        "{kills} kills, {cuts} power-loss cuts, {truncations} truncations, {reported} entries \
         reported flushed, {} frames seen and decrypted, {:?}",
        seen.digests.len(),
        started.elapsed()
    );
    assert!(kills >= 10, "enough kills to mean something");
    assert!(reported >= 50, "the child reported entries ({reported})");
    assert!(truncations >= 3, "the child truncated ({truncations})");
}

/// Every frame ever seen on disk: (segment id, index) -> digest of header
/// and sealed bytes. The segment id names the segment's key (each segment
/// has its own), and the index is the nonce.
#[derive(Default)]
struct Seen {
    digests: HashMap<([u8; 16], u64), [u8; 32]>,
    opened: HashSet<[u8; 32]>,
}

impl Seen {
    fn record(&mut self, dir: &Path, keys: &TestKeys) {
        for path in segment_files(dir) {
            let Some(seg) = raw_raft_segment(&path) else {
                continue;
            };
            assert_eq!(seg.flags, 2, "a Raft segment");
            let mut gcm = None;
            for f in &seg.frames {
                let mut both = f.header.clone();
                both.extend_from_slice(&f.sealed);
                let digest = sha256(&both);
                if let Some(old) = self.digests.insert((seg.segment_id, f.index), digest) {
                    assert_eq!(
                        old,
                        digest,
                        "nonce reuse: segment {} sealed two different frames at index {}",
                        hex::encode(seg.segment_id),
                        f.index
                    );
                }
                if !self.opened.insert(digest) {
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
                let nonce = raft_nonce(f.index);
                gcm.decrypt(
                    &aes_gcm::Nonce::try_from(&nonce[..]).expect("nonce"),
                    Payload {
                        msg: &f.sealed,
                        aad: &raft_aad(&log_support::TOPIC, 0, &seg.segment_id, &f.header),
                    },
                )
                .expect("every frame on disk opens under its documented nonce and AAD");
            }
        }
    }
}

/// Cuts the newest segment, if unsealed, to a random length that keeps
/// every reported (fsynced) frame: what a power loss may leave.
fn cut_unsynced_tail(dir: &Path, expected: &Expected, rng: &mut Rng) -> bool {
    let Some(path) = segment_files(dir).pop() else {
        return false;
    };
    let Some(seg) = raw_raft_segment(&path) else {
        return false;
    };
    if seg.sealed {
        return false;
    }
    let max_reported = expected.keys().next_back().copied();
    let keep = seg
        .frames
        .iter()
        .filter(|f| max_reported.is_some_and(|m| f.index <= m))
        .map(|f| f.position + 44 + f.sealed.len())
        .max()
        .unwrap_or(64);
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

fn check_log(log: &RaftLog, expected: &Expected) {
    let entries = log.entries(0..u64::MAX).expect("read everything");
    let mut found = HashMap::new();
    for pair in entries.windows(2) {
        assert_eq!(
            pair[0].log_id.index + 1,
            pair[1].log_id.index,
            "indexes are contiguous"
        );
        let end = pair[0].base_offset + u64::from(pair[0].record_count);
        assert_eq!(end, pair[1].base_offset, "offsets are contiguous");
    }
    for e in &entries {
        found.insert(e.log_id.index, (e.log_id.term, sha256(&e.payload)));
    }
    for (index, want) in expected {
        let got = found.get(index).unwrap_or_else(|| {
            panic!(
                "reported entry {index} (term {}) is missing; the log holds {:?}..={:?} in \
                 segments {:?}",
                want.0,
                entries.first().map(|e| e.log_id),
                entries.last().map(|e| e.log_id),
                log.segment_paths()
            )
        });
        assert_eq!(got, want, "reported entry {index} reads back intact");
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .expect("stdout");
}

/// The child: appends entries in a new term, reports each once its flush
/// is reported (`ACK index term sha256`), and now and then truncates a
/// short tail first (`TRUNC keep`, printed before it starts). Runs until
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
    let mut rng = Rng::new(seed);
    // Ends the test harness's line, so the child's lines stand alone.
    say("");
    let log = match RaftLog::open(
        dir,
        config(0, SEGMENT_BYTES, Durability::Fsync),
        TestKeys::with_kek(kek),
        LogEnv::default(),
    ) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("ERR open: {e}"));
            std::process::exit(2);
        }
    };
    let mut term = log.state().last_log_id().map_or(1, |l| l.term + 1);
    loop {
        let last = log.state().last_entry.map(|l| l.index);
        if let Some(last) = last
            && rng.below(8) == 0
        {
            let keep = last.saturating_sub(rng.below(3));
            say(&format!("TRUNC {keep}"));
            if let Err(e) = log.truncate_after(Some(keep)) {
                say(&format!("ERR truncate: {e}"));
                std::process::exit(3);
            }
            term += 1;
        }
        let first = log.state().last_log_id().map_or(0, |l| l.index + 1);
        let mut batch = Vec::new();
        for index in first..first + 1 + rng.below(3) {
            let (kind, payload) = match rng.below(5) {
                0 => (RaftFrameKind::Blank, Bytes::new()),
                1 => (
                    RaftFrameKind::Membership,
                    Bytes::from(format!("{{\"members\":[{}]}}", rng.next_u64())),
                ),
                _ => {
                    let values: Vec<Vec<u8>> = (0..1 + rng.below(3))
                        .map(|_| {
                            // Random bytes: an index sealed again differs.
                            (0..(50 + rng.below(2000)))
                                .map(|_| rng.next_u64() as u8)
                                .collect()
                        })
                        .collect();
                    let records: Vec<(i64, &[u8])> =
                        values.iter().map(|v| (1_700_000_000_000, &v[..])).collect();
                    (
                        RaftFrameKind::Records,
                        log_support::batch(&records).as_bytes().clone(),
                    )
                }
            };
            batch.push(RaftEntry {
                log_id: RaftLogId {
                    term,
                    node_id: 1,
                    index,
                },
                kind,
                payload,
            });
        }
        let lines: Vec<String> = batch
            .iter()
            .map(|e| {
                format!(
                    "ACK {} {} {}",
                    e.log_id.index,
                    e.log_id.term,
                    hex::encode(sha256(&e.payload))
                )
            })
            .collect();
        let durable = match log.append(batch) {
            Ok(d) => d,
            Err(e) => {
                say(&format!("ERR append: {e}"));
                std::process::exit(4);
            }
        };
        if let Err(e) = durable.wait() {
            say(&format!("ERR durable: {e}"));
            std::process::exit(5);
        }
        for line in lines {
            say(&line);
        }
    }
}
