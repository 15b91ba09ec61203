//! The key registry against the data and the provider: each segment's
//! envelope against the registry's record of it, records without a
//! segment, records of topics that are gone, and every KEK version against
//! what the provider holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use strongbox_protocol::model::KeyState;
use strongbox_storage::keys::{KekId, KekScope, KekVersion, KeyProvider};
use strongbox_storage::log::DirCheck;
use strongbox_storage::meta::TopicEntry;

use super::Recorded;
use super::report::{Item, KeyVersionReport};

const NOT_IN_REGISTRY: &str = "the metadata store is older than the data (restored from another \
     backup?) or was edited: restore both from the same backup. The segment reads, but key \
     lifecycle operations (rewrap, the refusal to destroy a key still in use) do not know it";
const REGISTRY_AHEAD: &str = "the envelope is older than the registry (restored from an older \
     backup?): rewrap before destroying older KEK versions, or this segment is shredded with them";
const REGISTRY_BEHIND: &str = "nothing: a rewrap was interrupted after writing the envelope; the \
     broker corrects the registry when it next reads the segment";
const KEK_UNKNOWN: &str = "the registry does not know the KEK version that wraps this segment's \
     key (metadata store restored from an older backup?): restore the metadata store that goes \
     with this data";
const KEK_COMPROMISED: &str = "rewrap the segment's key under a new KEK version (rotate, then \
     rewrap), then destroy the compromised version";
const MISSING_SEGMENT: &str = "segment files were removed outside retention (retention removes \
     the registry entry as it deletes), or the data directory is older than the metadata store: \
     restore the missing files from a backup";
const MISSING_NEWEST: &str = "nothing if the broker crashed while creating a segment (the \
     registry keeps that entry); otherwise restore the missing segment from a backup";

/// The partition's envelopes against the key registry.
pub(super) fn registry_findings(
    dir: &Path,
    check: &DirCheck,
    recorded: &HashMap<[u8; 16], KekId>,
    versions: &HashMap<KekId, KekVersion>,
) -> Vec<Item> {
    let mut items = Vec::new();
    let mut unidentified = 0usize;
    let mut seen = HashSet::new();
    for seg in &check.segments {
        let Some(id) = seg.segment_id else {
            unidentified += 1;
            continue;
        };
        seen.insert(id);
        let Some(kek) = &seg.kek else { continue };
        let file = Some(seg.path.with_extension("key"));
        match recorded.get(&id) {
            None => items.push(Item::problem(
                "not_in_registry",
                file.clone(),
                format!(
                    "the key registry has no record of segment {} ({}), whose envelope names {kek}",
                    hex::encode(id),
                    seg.path.display()
                ),
                NOT_IN_REGISTRY,
            )),
            Some(r) if r == kek => {}
            Some(r) if r.scope == kek.scope && r.version < kek.version => {
                items.push(Item::notice(
                    "registry_behind",
                    file.clone(),
                    format!(
                        "the registry says {r} wraps the key of {}, its envelope names the newer {kek}",
                        seg.path.display()
                    ),
                    REGISTRY_BEHIND,
                ));
            }
            Some(r) => items.push(Item::problem(
                "registry_mismatch",
                file.clone(),
                format!(
                    "the registry says {r} wraps the key of {}, its envelope names {kek}",
                    seg.path.display()
                ),
                REGISTRY_AHEAD,
            )),
        }
        match versions.get(kek) {
            None => items.push(Item::problem(
                "kek_unknown",
                file,
                format!(
                    "the envelope of {} names {kek}, which the key registry does not know",
                    seg.path.display()
                ),
                KEK_UNKNOWN,
            )),
            Some(v) if v.state == KeyState::Compromised => items.push(Item::notice(
                "kek_compromised",
                file,
                format!(
                    "the key of {} is wrapped under {kek}, which is marked compromised",
                    seg.path.display()
                ),
                KEK_COMPROMISED,
            )),
            Some(_) => {}
        }
    }
    // A damaged header hides a segment's id: it is reported already, and
    // which entry it matches cannot be told.
    if unidentified == 0 {
        let missing: Vec<_> = recorded
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .collect();
        // One entry without a file, next to an empty newest segment file,
        // is what a crash during the creation of a segment leaves.
        let crash_left = missing.len() == 1 && check.empty_newest.is_some();
        let mut sorted: BTreeMap<String, &KekId> = BTreeMap::new();
        for (id, kek) in missing {
            sorted.insert(hex::encode(id), kek);
        }
        for (id, kek) in sorted {
            let message = format!(
                "the key registry records segment {id} (key under {kek}) in this partition, but \
                 no segment file has that id"
            );
            items.push(if crash_left {
                Item::notice(
                    "missing_segment",
                    check.empty_newest.clone(),
                    message,
                    MISSING_NEWEST,
                )
            } else {
                Item::problem(
                    "missing_segment",
                    Some(dir.to_path_buf()),
                    message,
                    MISSING_SEGMENT,
                )
            });
        }
    }
    items
}

/// Registry entries of topics or partitions that no longer exist.
pub(super) fn stale_registry(recorded: &Recorded, topics: &[TopicEntry]) -> Vec<Item> {
    let known: HashMap<[u8; 16], u32> = topics
        .iter()
        .map(|t| (t.topic_id, t.config.partitions))
        .collect();
    let mut stale: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for ((topic, partition), segments) in recorded {
        if known.get(topic).is_none_or(|n| partition >= n) {
            *stale.entry((hex::encode(topic), *partition)).or_default() += segments.len();
        }
    }
    stale
        .into_iter()
        .map(|((topic, partition), n)| {
            Item::notice(
                "stale_registry",
                None,
                format!(
                    "the key registry records {n} segment(s) of topic id {topic} partition \
                     {partition}, which no longer exists"
                ),
                "nothing: entries left by a deletion that could not open the partition; they \
                 give access to nothing",
            )
        })
        .collect()
}

const KEK_MISSING: &str = "check that the configuration names the right HSM token or key \
     directory; if the key is really gone, every segment under it is lost";
const KEK_NOT_DESTROYED: &str = "destroy it in the provider (run the destruction again; the \
     provider goes first, then the registry): until then data wrapped under it, backups \
     included, can still be decrypted";
const PROVIDER_CHECK: &str = "check the HSM (or the key directory) and run verify again";

/// Every registered KEK version, and whether the provider agrees about it.
pub(super) fn key_versions(
    versions: &[KekVersion],
    provider: &dyn KeyProvider,
    topics: &[TopicEntry],
) -> (Vec<KeyVersionReport>, Vec<Item>) {
    let names: HashMap<String, &str> = topics
        .iter()
        .map(|t| (hex::encode(t.topic_id), t.name.as_str()))
        .collect();
    let scope_name = |scope: &KekScope| match scope {
        KekScope::Broker => "broker".to_owned(),
        KekScope::Topic(id) => match names.get(id) {
            Some(name) => format!("topic:{name}"),
            None => format!("topic-{id} (deleted topic)"),
        },
    };
    let mut sorted: Vec<&KekVersion> = versions.iter().collect();
    sorted.sort_by(|a, b| {
        (a.id.scope.label(), a.id.version).cmp(&(b.id.scope.label(), b.id.version))
    });
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for v in sorted {
        let held = provider.has_kek(&v.id);
        let destroyed = v.state == KeyState::Destroyed;
        match &held {
            Ok(true) if destroyed => items.push(Item::problem(
                "kek_not_destroyed",
                None,
                format!(
                    "{} is destroyed in the key registry, but the key provider still holds it",
                    v.id
                ),
                KEK_NOT_DESTROYED,
            )),
            Ok(false) if !destroyed => items.push(Item::problem(
                "kek_missing",
                None,
                format!(
                    "{} is {} in the key registry (wrapping {} segment key(s)), but the key \
                     provider does not hold it",
                    v.id,
                    v.state.name(),
                    v.segments
                ),
                KEK_MISSING,
            )),
            Ok(_) => {}
            Err(e) => items.push(Item::problem(
                "key_provider",
                None,
                format!("cannot ask the key provider about {}: {e}", v.id),
                PROVIDER_CHECK,
            )),
        }
        rows.push(KeyVersionReport {
            scope: scope_name(&v.id.scope),
            kek: v.id.label(),
            version: v.id.version,
            state: v.state.name(),
            segments: v.segments,
            in_provider: held.ok(),
        });
    }
    (rows, items)
}
