//! Crypto-shredding, end to end, against SoftHSM2 (`pkcs11`) and against
//! the `file` provider. The attacker here holds a copy of the whole data
//! directory taken before the deletion (segments, envelopes, indexes, the
//! metadata store) and may use the key provider as it is afterwards: the
//! same HSM token, the same key directory. What each test proves:
//!
//! **Deleting a topic with a dedicated KEK** (`topic create --dedicated-kek`,
//! `topic delete`):
//! - before the deletion the copy decrypts with that provider (so the test
//!   can tell the difference);
//! - after it, every segment of the copy fails with a key error, through the
//!   broker's own code path (a key manager over the copied registry, which
//!   still calls the KEK active, and the same token or key directory: the
//!   provider answers "not found") and through the live registry (which
//!   says "destroyed"); every copied envelope is refused by the provider
//!   directly; no copied file contains the records' marker; and the
//!   registry lists every version of the topic's scope as destroyed and the
//!   provider holds none of them;
//! - a topic under the broker KEK in the same copy still decrypts the same
//!   way: the failure is the destroyed KEK, not the procedure;
//! - `file` provider only, the limit: a copy of the *key directory* taken
//!   before the deletion still decrypts the copy. A KEK in a file can be
//!   copied; a KEK generated in an HSM as non-extractable cannot.
//!
//! **Retention** (tiny segments, short retention): the segments it deletes
//! lose their envelope, their data, their index and their registry entry;
//! their wrapped data key exists nowhere in the data directory any more
//! (nor in the key directory); no data key left on disk authenticates a
//! frame of theirs. The honest limit: a copy taken *before* the retention
//! pass still holds their envelopes, and while the broker KEK that wraps
//! them exists those envelopes unwrap, so the copy decrypts. Rotating the
//! KEK, rewrapping the live envelopes and destroying the old version closes
//! that: the test does it (offline, with the storage library), destroying
//! the old version succeeds without `force` (the registry no longer counts
//! the deleted segments), the old copy's envelopes are then refused by the
//! provider, and the live data still verifies and reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use strongbox_broker::services::partitions::topics::log_config;
use strongbox_client::{ProducerConfig, ProducerRecord};
use strongbox_protocol::model::KeyState;
use strongbox_storage::aead::Aes256Gcm;
use strongbox_storage::data_dir::topic_dir;
use strongbox_storage::keys::registry::SegmentRef;
use strongbox_storage::keys::{
    Dek, FileKeyProvider, KekId, KekScope, KeyError, KeyManager, KeyProvider, SegmentKeys,
};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::format::{
    FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN, SegmentHeader, frame_aad, frame_nonce,
};
use strongbox_storage::log::{LogError, PartitionLog};
use strongbox_storage::meta::{MetaStore, TopicEntry};
use strongbox_tests::client::{connect, topic};
use strongbox_tests::softhsm::{Token, in_own_process};
use strongbox_tests::{BrokerProcess, binary, cli, contains, copy_dir, files_under};

const MARKER: &str = "sbx-shred-V8QK2M5X";
const DEDICATED: &str = "shred.dedicated";
const CONTROL: &str = "shred.control";
const RETAINED: &str = "shred.retained";
/// Segment size of the retention test's topic: a few records each.
const SEGMENT_BYTES: u64 = 1024;
const RETENTION: Duration = Duration::from_secs(4);

/// Which key provider the broker uses.
#[derive(Debug, Clone)]
enum Keys {
    File,
    Pkcs11(Token),
}

/// A development directory set up for one provider.
#[derive(Debug)]
struct Dev {
    dir: PathBuf,
    keys: Keys,
}

impl Dev {
    /// Creates the development directory (without starting a broker) and
    /// switches it to `keys`.
    fn new(root: &Path, keys: Keys) -> Result<Self> {
        let dir = root.join("dev");
        strongbox_broker::dev::ensure_dev_dir(&dir, "127.0.0.1:0".parse()?)?;
        if let Keys::Pkcs11(token) = &keys {
            token.configure_dev_broker(&dir)?;
        }
        Ok(Self { dir, keys })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(&self) -> Result<BrokerProcess> {
        // A child process of a PKCS#11 test has SOFTHSM2_CONF set; the broker
        // gets it explicitly all the same.
        let conf = std::env::var("SOFTHSM2_CONF").unwrap_or_default();
        let env: Vec<(&str, &str)> = if conf.is_empty() {
            Vec::new()
        } else {
            vec![("SOFTHSM2_CONF", conf.as_str())]
        };
        BrokerProcess::start_dev_with(&self.dir, &env)
    }

    /// The broker really used this provider: KEK files in the key directory
    /// for `file`, none there and the broker KEK in the token for `pkcs11`.
    fn check_provider_in_use(&self) -> Result<()> {
        let files = files_under(&self.dir.join("keys"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "kek"))
            .count();
        match &self.keys {
            Keys::File => ensure!(files > 0, "no KEK file written"),
            Keys::Pkcs11(_) => {
                ensure!(files == 0, "the pkcs11 broker wrote {files} KEK file(s)");
                let v1 = KekId {
                    scope: KekScope::Broker,
                    version: 1,
                };
                ensure!(
                    self.provider()?.has_kek(&v1)?,
                    "broker KEK not in the token"
                );
            }
        }
        Ok(())
    }

    /// The provider as it is now: the same token, or the same key directory.
    fn provider(&self) -> Result<Arc<dyn KeyProvider>> {
        Ok(match &self.keys {
            Keys::File => Arc::new(FileKeyProvider::open(self.dir.join("keys"))?),
            Keys::Pkcs11(token) => Arc::new(token.provider()?),
        })
    }
}

fn block_on<F: Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

fn record(topic: &str, partition: u32, i: usize) -> ProducerRecord {
    ProducerRecord::new(
        topic,
        format!("{MARKER} record {i} {}", "payload ".repeat(30)),
    )
    .key(format!("{MARKER}-key-{i}"))
    .partition(partition)
}

/// Publishes `n` records to each partition of `topic`, each acknowledged
/// before the next (one batch each, so small segments roll).
async fn publish(broker: &BrokerProcess, topic: &str, partitions: u32, n: usize) -> Result<()> {
    let client = connect(&broker.profile("admin")).await?;
    let producer = client.producer(ProducerConfig::default()).await?;
    for i in 0..n {
        for p in 0..partitions {
            producer.send(record(topic, p, i)).await?.await?;
        }
    }
    producer.close().await?;
    Ok(())
}

fn stop(broker: &mut BrokerProcess) -> Result<()> {
    let code = broker.terminate()?;
    ensure!(
        code == Some(0),
        "graceful stop ({code:?}):\n{}",
        broker.log_text()
    );
    Ok(())
}

fn topic_entry(data: &Path, name: &str) -> Result<TopicEntry> {
    let meta = MetaStore::open(data.join("meta.redb"))?;
    meta.read(|v| v.topic(name))?
        .with_context(|| format!("topic {name} in {}", data.display()))
}

/// What reading a topic's partitions in a data directory gave.
#[derive(Debug, Default)]
struct Attempt {
    /// Segments found.
    segments: usize,
    /// Batches that decrypted.
    plaintext: Vec<Bytes>,
    /// Errors, one per segment that did not.
    errors: Vec<LogError>,
}

impl Attempt {
    fn shows_marker(&self) -> bool {
        self.plaintext
            .iter()
            .any(|b| contains(b, MARKER.as_bytes()))
    }
}

/// Opens every partition of `entry` under `data` with the broker's own
/// code (a key manager over `provider` and the key registry in
/// `registry`'s metadata store) and reads every segment on its own.
fn attempt(
    data: &Path,
    registry: &Path,
    entry: &TopicEntry,
    provider: Arc<dyn KeyProvider>,
) -> Result<Attempt> {
    let meta = MetaStore::open(registry.join("meta.redb"))?;
    let keys = Arc::new(KeyManager::new(provider, meta, 64));
    let mut out = Attempt::default();
    for p in 0..entry.config.partitions {
        let dir = topic_dir(data, &entry.topic_id).join(p.to_string());
        ensure!(dir.is_dir(), "{} is missing", dir.display());
        let log = match PartitionLog::open(&dir, log_config(entry, p), keys.clone()) {
            Ok(log) => log,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        for seg in log.segments() {
            out.segments += 1;
            // From the segment's first record to its end only.
            let mut next = seg.base_offset;
            while next < seg.next_offset {
                match log.read(next, 1) {
                    Ok(batches) => {
                        let Some((base, batch)) = batches.into_iter().next() else {
                            break;
                        };
                        let header = strongbox_protocol::batch::parse_header(&batch)?;
                        next = base + u64::from(header.record_count);
                        out.plaintext.push(batch);
                    }
                    Err(e) => {
                        out.errors.push(e);
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A key error meaning the KEK is gone: the provider does not hold it, or
/// the registry says it was destroyed.
fn is_key_gone(e: &LogError) -> bool {
    matches!(
        e,
        LogError::Key {
            source: KeyError::KekNotFound(_) | KeyError::Destroyed(_),
            ..
        }
    )
}

/// Every envelope under `dir`.
fn envelopes(dir: &Path) -> Result<Vec<(PathBuf, KeyEnvelope)>> {
    let mut out = Vec::new();
    for path in files_under(dir) {
        if path.extension().is_some_and(|x| x == "key") {
            let env = KeyEnvelope::decode(&std::fs::read(&path)?)?;
            out.push((path, env));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn no_marker_in(dir: &Path) -> Result<()> {
    for path in files_under(dir) {
        let bytes = std::fs::read(&path)?;
        ensure!(
            !contains(&bytes, MARKER.as_bytes()),
            "{} contains the marker",
            path.display()
        );
    }
    Ok(())
}

async fn topic_deletion(keys: Keys) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = Dev::new(tmp.path(), keys)?;
    let mut broker = dev.start()?;
    let admin = broker.profile("admin");
    let out = cli(
        &admin,
        &[
            "topic",
            "create",
            DEDICATED,
            "--partitions",
            "2",
            "--dedicated-kek",
        ],
    )?;
    ensure!(out.status.success(), "topic create: {out:?}");
    connect(&admin)
        .await?
        .admin()
        .create_topic(CONTROL, topic(1))
        .await?;
    publish(&broker, DEDICATED, 2, 4).await?;
    publish(&broker, CONTROL, 1, 4).await?;
    stop(&mut broker)?;
    // A restart seals the segments; the next records go to new ones, so
    // each partition has several segments, each with its own data key.
    let mut broker = dev.start()?;
    publish(&broker, DEDICATED, 2, 4).await?;
    stop(&mut broker)?;

    dev.check_provider_in_use()?;

    // The attacker's copies of everything on the broker's disk.
    let copy = tmp.path().join("copy");
    let control_copy = tmp.path().join("control-copy");
    copy_dir(&dev.dir, &copy)?;
    copy_dir(&dev.dir, &control_copy)?;
    let entry = topic_entry(&copy.join("data"), DEDICATED)?;
    let scope = KekScope::topic(&entry.topic_id);

    // Before the deletion, a copy decrypts with the provider: the test can
    // tell a shredded copy from a broken procedure.
    let before = attempt(
        &control_copy.join("data"),
        &control_copy.join("data"),
        &entry,
        dev.provider()?,
    )?;
    ensure!(before.errors.is_empty(), "before: {:?}", before.errors);
    ensure!(before.segments >= 4, "several segments: {before:?}");
    ensure!(before.shows_marker(), "before: the records are readable");

    // Delete the topic: its dedicated KEK is destroyed.
    let mut broker = dev.start()?;
    let out = cli(&admin, &["topic", "delete", DEDICATED])?;
    ensure!(out.status.success(), "topic delete: {out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("destroyed"),
        "{out:?}"
    );
    stop(&mut broker)?;

    // Live: every version of the scope is destroyed, the provider holds
    // none of them, the topic's files are gone.
    let provider = dev.provider()?;
    let versions = {
        let meta = MetaStore::open(dev.data().join("meta.redb"))?;
        meta.read(|v| v.kek_versions(Some(&scope)))?
    };
    ensure!(!versions.is_empty(), "the topic had KEK versions");
    for v in &versions {
        ensure!(v.state == KeyState::Destroyed, "{v:?}");
        ensure!(!provider.has_kek(&v.id)?, "{} still in the provider", v.id);
    }
    ensure!(!topic_dir(&dev.data(), &entry.topic_id).exists());

    // The copy, after: through the broker's code path with the copied
    // registry (which still calls the KEK active), every segment fails.
    let after = attempt(
        &copy.join("data"),
        &copy.join("data"),
        &entry,
        provider.clone(),
    )?;
    ensure!(after.segments == before.segments, "{after:?}");
    ensure!(after.plaintext.is_empty(), "decrypted after the deletion");
    ensure!(after.errors.len() == after.segments, "{after:?}");
    for e in &after.errors {
        ensure!(
            matches!(
                e,
                LogError::Key {
                    source: KeyError::KekNotFound(_),
                    ..
                }
            ),
            "expected the provider to say the KEK is gone: {e}"
        );
    }
    // With the live registry, which knows it was destroyed.
    let live = attempt(&copy.join("data"), &dev.data(), &entry, provider.clone())?;
    ensure!(live.plaintext.is_empty() && live.errors.len() == live.segments);
    ensure!(live.errors.iter().all(is_key_gone), "{:?}", live.errors);
    // Every copied envelope, straight to the provider.
    let copied = envelopes(&topic_dir(&copy.join("data"), &entry.topic_id))?;
    ensure!(
        copied.len() == before.segments,
        "{} envelopes",
        copied.len()
    );
    for (path, env) in &copied {
        match provider.unwrap(&env.wrapped.kek, &env.wrapped.wrapped) {
            Err(KeyError::KekNotFound(_)) => {}
            Err(e) => bail!("{}: unexpected error {e}", path.display()),
            Ok(_) => bail!("{}: the provider still unwraps it", path.display()),
        }
    }
    // Nothing in the copy shows the records.
    no_marker_in(&copy)?;

    // The same procedure still decrypts a broker-KEK topic of the copy.
    let control = topic_entry(&copy.join("data"), CONTROL)?;
    let control_read = attempt(&copy.join("data"), &copy.join("data"), &control, provider)?;
    ensure!(control_read.errors.is_empty(), "{:?}", control_read.errors);
    ensure!(control_read.shows_marker());

    // The file provider's limit: its KEK is a file, and a copy of the key
    // directory from before the deletion still decrypts the copy.
    if matches!(dev.keys, Keys::File) {
        let copied_keys: Arc<dyn KeyProvider> = Arc::new(FileKeyProvider::open(copy.join("keys"))?);
        let limit = attempt(&copy.join("data"), &copy.join("data"), &entry, copied_keys)?;
        ensure!(
            limit.errors.is_empty() && limit.shows_marker(),
            "a copied key file decrypts: {limit:?}"
        );
    }
    Ok(())
}

#[test]
fn deleting_a_dedicated_kek_topic_shreds_a_copy_pkcs11() {
    in_own_process(
        "deleting_a_dedicated_kek_topic_shreds_a_copy_pkcs11",
        || {
            let token = Token::new("shred").expect("token");
            block_on(topic_deletion(Keys::Pkcs11(token))).expect("shredding");
        },
    );
}

#[test]
fn deleting_a_dedicated_kek_topic_shreds_a_copy_file() -> Result<()> {
    block_on(topic_deletion(Keys::File))
}

/// A segment of the copy taken before retention ran.
#[derive(Debug)]
struct OldSegment {
    base: u64,
    segment_id: [u8; 16],
    envelope: KeyEnvelope,
    /// The whole segment file.
    bytes: Vec<u8>,
}

/// Whether `dek` authenticates the first frame of the segment `bytes`.
fn opens_first_frame(bytes: &[u8], dek: &Dek) -> Result<bool> {
    let header = SegmentHeader::decode(bytes.get(..SEGMENT_HEADER_LEN).context("header")?)?;
    let frame_start = SEGMENT_HEADER_LEN;
    let body = frame_start + FRAME_HEADER_LEN;
    let frame = FrameHeader::decode(bytes.get(frame_start..body).context("frame header")?)?;
    let mut sealed = bytes
        .get(body..body + frame.len as usize)
        .context("frame body")?
        .to_vec();
    let aad = frame_aad(
        &header.topic_id,
        header.partition,
        &header.segment_id,
        frame.base_offset,
        frame.record_count,
    );
    Ok(Aes256Gcm::new(dek.expose())
        .open_in_place(&frame_nonce(frame.base_offset), &aad, &mut sealed)
        .is_ok())
}

fn old_segments(dir: &Path) -> Result<Vec<OldSegment>> {
    let mut out = Vec::new();
    for (path, envelope) in envelopes(dir)? {
        let bytes = std::fs::read(path.with_extension("log"))?;
        let header = SegmentHeader::decode(bytes.get(..SEGMENT_HEADER_LEN).context("header")?)?;
        out.push(OldSegment {
            base: header.base_offset,
            segment_id: header.segment_id,
            envelope,
            bytes,
        });
    }
    out.sort_by_key(|s| s.base);
    Ok(out)
}

async fn retention(keys: Keys) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = Dev::new(tmp.path(), keys)?;
    let mut broker = dev.start()?;
    let mut config = topic(1);
    config.segment_bytes = Some(SEGMENT_BYTES);
    config.retention_ms = Some(RETENTION.as_millis() as u64);
    let info = connect(&broker.profile("admin"))
        .await?
        .admin()
        .create_topic(RETAINED, config)
        .await?;
    publish(&broker, RETAINED, 1, 12).await?;
    stop(&mut broker)?;

    dev.check_provider_in_use()?;

    // The copy an attacker (or a backup) took before retention ran.
    let before = tmp.path().join("before");
    copy_dir(&dev.dir, &before)?;
    let partition_dir = topic_dir(&dev.data(), &info.topic_id).join("0");
    let old = old_segments(&topic_dir(&before.join("data"), &info.topic_id))?;
    ensure!(old.len() >= 4, "several segments: {}", old.len());

    // Let the records age past the retention, then start the broker: its
    // maintenance runs at start (and every 30 s after).
    tokio::time::sleep(RETENTION + Duration::from_secs(1)).await;
    let mut broker = dev.start()?;
    broker.wait_for_log("retention deleted segments", 1).await?;
    stop(&mut broker)?;

    let live = old_segments(&partition_dir)?;
    let deleted: Vec<&OldSegment> = old
        .iter()
        .filter(|o| !live.iter().any(|l| l.base == o.base))
        .collect();
    ensure!(
        deleted.len() >= 2 && deleted.len() < old.len(),
        "retention deleted {} of {} segments",
        deleted.len(),
        old.len()
    );
    let provider = dev.provider()?;
    {
        let meta = MetaStore::open(dev.data().join("meta.redb"))?;
        for seg in &deleted {
            // Envelope, data and index are gone...
            for ext in ["key", "log", "index", "log.deleted"] {
                let f = partition_dir.join(format!("{:020}.{ext}", seg.base));
                ensure!(!f.exists(), "{} survived retention", f.display());
            }
            // ... and so is the registry entry.
            let entry = meta.read(|v| {
                v.segment_kek(&SegmentRef {
                    topic_id: info.topic_id,
                    partition: 0,
                    segment_id: seg.segment_id,
                })
            })?;
            ensure!(entry.is_none(), "registry still records {}", seg.base);
        }
        for seg in &live {
            let entry = meta.read(|v| {
                v.segment_kek(&SegmentRef {
                    topic_id: info.topic_id,
                    partition: 0,
                    segment_id: seg.segment_id,
                })
            })?;
            ensure!(entry.is_some(), "registry lost kept segment {}", seg.base);
        }
    }
    // The wrapped data keys of the deleted segments are nowhere on the
    // broker's disk any more (metadata store and key directory included).
    for path in files_under(&dev.data())
        .into_iter()
        .chain(files_under(&dev.dir.join("keys")))
    {
        let bytes = std::fs::read(&path)?;
        for seg in &deleted {
            ensure!(
                !contains(&bytes, &seg.envelope.wrapped.wrapped),
                "{} holds the wrapped key of deleted segment {}",
                path.display(),
                seg.base
            );
        }
    }
    // No data key left on disk opens a deleted segment's frames.
    for kept in &live {
        let dek = provider.unwrap(&kept.envelope.wrapped.kek, &kept.envelope.wrapped.wrapped)?;
        ensure!(opens_first_frame(&kept.bytes, &dek)?, "control: own key");
        for seg in &deleted {
            ensure!(
                !opens_first_frame(&seg.bytes, &dek)?,
                "the key of {} opens deleted segment {}",
                kept.base,
                seg.base
            );
        }
    }

    // The limit: the copy from before still holds the deleted segments'
    // envelopes, and the broker KEK that wraps them still exists.
    let broker_v1 = deleted
        .first()
        .map(|s| s.envelope.wrapped.kek.clone())
        .context("a deleted segment")?;
    ensure!(broker_v1.scope == KekScope::Broker, "{broker_v1}");
    for seg in &deleted {
        let dek = provider.unwrap(&seg.envelope.wrapped.kek, &seg.envelope.wrapped.wrapped)?;
        ensure!(
            opens_first_frame(&seg.bytes, &dek)?,
            "the old copy decrypts while the KEK lives"
        );
    }

    // Closing it: rotate the broker KEK, rewrap every live envelope, and
    // destroy the old version.
    rotate_rewrap_destroy(&dev.data(), provider.clone(), &broker_v1)?;
    for seg in &deleted {
        match provider.unwrap(&seg.envelope.wrapped.kek, &seg.envelope.wrapped.wrapped) {
            Err(KeyError::KekNotFound(_)) => {}
            Err(e) => bail!("segment {}: unexpected error {e}", seg.base),
            Ok(_) => bail!("segment {}: the old envelope still unwraps", seg.base),
        }
    }
    let entry = topic_entry(&before.join("data"), RETAINED)?;
    let old_copy = attempt(&before.join("data"), &before.join("data"), &entry, provider)?;
    ensure!(old_copy.plaintext.is_empty(), "the old copy still decrypts");
    ensure!(
        old_copy.errors.len() == old_copy.segments && old_copy.errors.iter().all(is_key_gone),
        "{:?}",
        old_copy.errors
    );

    // The live data, rewrapped, is intact and readable.
    let out = std::process::Command::new(binary("strongbox-broker"))
        .args(["verify", "--data-dir"])
        .arg(dev.data())
        .output()?;
    ensure!(
        out.status.success(),
        "verify after the rewrap: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = topic_entry(&dev.data(), RETAINED)?;
    let provider = dev.provider()?;
    let now = attempt(&dev.data(), &dev.data(), &entry, provider)?;
    ensure!(now.errors.is_empty() && now.shows_marker(), "{now:?}");
    Ok(())
}

/// What `strongbox keys rotate`, `keys rewrap` and `keys destroy` do, done
/// offline with the storage library on a stopped broker's data directory.
fn rotate_rewrap_destroy(data: &Path, provider: Arc<dyn KeyProvider>, old: &KekId) -> Result<()> {
    let meta = MetaStore::open(data.join("meta.redb"))?;
    let keys = Arc::new(KeyManager::new(provider, meta.clone(), 64));
    keys.rotate(&old.scope)?;
    let topics = meta.read(|v| v.topics())?;
    for entry in &topics {
        for p in 0..entry.config.partitions {
            let dir = topic_dir(data, &entry.topic_id).join(p.to_string());
            if !dir.exists() {
                continue;
            }
            let segment_keys: Arc<dyn SegmentKeys> = keys.clone();
            let log = PartitionLog::open(&dir, log_config(entry, p), segment_keys)?;
            log.rewrap_envelopes(
                old,
                |ctx, wrapped| keys.rewrap(ctx, wrapped),
                |ctx, wrapped| keys.commit_rewrap(ctx, wrapped),
            )?;
            log.close()?;
        }
    }
    // No `force`: the registry must no longer count any segment under it,
    // the deleted ones included.
    keys.destroy_version(old, false)?;
    Ok(())
}

#[test]
fn retention_shreds_deleted_segments_pkcs11() {
    in_own_process("retention_shreds_deleted_segments_pkcs11", || {
        let token = Token::new("retain").expect("token");
        block_on(retention(Keys::Pkcs11(token))).expect("retention shredding");
    });
}

#[test]
fn retention_shreds_deleted_segments_file() -> Result<()> {
    block_on(retention(Keys::File))
}
