//! The broker's duties around the key manager that no request triggers:
//!
//! - [`KeyMetrics`] turns storage's observer hooks
//!   ([`strongbox_storage::observe`]) into the key, AEAD and fsync metrics,
//!   and tracks whether the key provider answers
//!   (`strongbox_key_provider_up`);
//! - [`probe_provider`] asks the provider a cheap question on every
//!   maintenance pass, so the gauge is right even when nothing needs a key;
//! - [`rotate_due`] rotates every scope whose active version is older than
//!   `keys.rotate_every`;
//! - [`refresh_compromised`] keeps `strongbox_key_compromised` in step with
//!   the registry;
//! - [`destroy_version`] destroys a KEK version so that it takes effect at
//!   once in the running broker;
//! - [`segment_names`] says which topic partitions and offsets a list of
//!   registry segments are, for messages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntGauge};
use strongbox_protocol::model::KeyState;
use strongbox_storage::keys::{DestroyOutcome, KekId, KekScope, KekVersion, KeyError, SegmentRef};
use strongbox_storage::observe::{AeadOp, KeyOp, StorageObserver};

use crate::audit::{self, AuditAction, AuditEvent, BROKER_PRINCIPAL};
use crate::metrics::BrokerMetrics;
use crate::services::BrokerState;
use crate::services::partitions::topics::PartitionSlot;

/// The handles of one key operation's series.
#[derive(Debug, Clone)]
struct OpSeries {
    count: IntCounter,
    latency: Histogram,
    errors: IntCounter,
}

/// The metrics that storage feeds, resolved once so the hooks on the
/// append and read paths only touch atomics.
#[derive(Debug)]
pub struct KeyMetrics {
    fsync: Histogram,
    sealed: IntCounter,
    opened: IntCounter,
    provider_kind: &'static str,
    ops: [OpSeries; KeyOp::ALL.len()],
    provider_up: IntGauge,
}

fn op_index(op: KeyOp) -> usize {
    KeyOp::ALL.iter().position(|o| *o == op).unwrap_or(0)
}

/// True for errors that say the provider could not be reached or used, as
/// opposed to an answer (a key not found, a wrapped key rejected).
pub fn provider_down(e: &KeyError) -> bool {
    matches!(
        e,
        KeyError::Unavailable(_) | KeyError::Login(_) | KeyError::Io { .. } | KeyError::Config(_)
    )
}

impl KeyMetrics {
    /// The series of `metrics` for a provider of kind `provider_kind`.
    pub fn new(metrics: &BrokerMetrics, provider_kind: &'static str) -> Self {
        let ops = KeyOp::ALL.map(|op| OpSeries {
            count: metrics
                .key_operations
                .with_label_values(&[op.name(), provider_kind]),
            latency: metrics
                .key_operation_latency
                .with_label_values(&[op.name()]),
            errors: metrics.hsm_errors.with_label_values(&[op.name()]),
        });
        Self {
            fsync: metrics.fsync_latency.clone(),
            sealed: metrics.aead_bytes.with_label_values(&[AeadOp::Seal.name()]),
            opened: metrics.aead_bytes.with_label_values(&[AeadOp::Open.name()]),
            provider_kind,
            ops,
            provider_up: metrics.key_provider_up.clone(),
        }
    }

    /// Records one provider call.
    pub fn record(&self, op: KeyOp, elapsed: Duration, error: Option<&KeyError>) {
        let Some(series) = self.ops.get(op_index(op)) else {
            return;
        };
        series.count.inc();
        series.latency.observe(elapsed.as_secs_f64());
        match error {
            None => self.provider_up.set(1),
            Some(KeyError::KekNotFound(_) | KeyError::KekExists(_)) => self.provider_up.set(1),
            Some(e) => {
                series.errors.inc();
                if provider_down(e) {
                    self.provider_up.set(0);
                } else {
                    self.provider_up.set(1);
                }
            }
        }
    }

    /// True while the last provider call did not fail for want of the
    /// provider.
    pub fn provider_is_up(&self) -> bool {
        self.provider_up.get() != 0
    }
}

impl StorageObserver for KeyMetrics {
    fn fsync(&self, elapsed: Duration) {
        self.fsync.observe(elapsed.as_secs_f64());
    }

    fn aead(&self, op: AeadOp, bytes: u64) {
        match op {
            AeadOp::Seal => self.sealed.inc_by(bytes),
            AeadOp::Open => self.opened.inc_by(bytes),
        }
    }

    fn key_operation(
        &self,
        op: KeyOp,
        provider: &'static str,
        elapsed: Duration,
        error: Option<&KeyError>,
    ) {
        if provider == self.provider_kind {
            self.record(op, elapsed, error);
        }
    }
}

/// An observer that forwards to a shared [`KeyMetrics`].
#[derive(Debug)]
struct Forward(std::sync::Arc<KeyMetrics>);

impl StorageObserver for Forward {
    fn fsync(&self, elapsed: Duration) {
        self.0.fsync(elapsed);
    }

    fn aead(&self, op: AeadOp, bytes: u64) {
        self.0.aead(op, bytes);
    }

    fn key_operation(
        &self,
        op: KeyOp,
        provider: &'static str,
        elapsed: Duration,
        error: Option<&KeyError>,
    ) {
        self.0.key_operation(op, provider, elapsed, error);
    }
}

/// Makes `metrics` storage's observer. Storage has one observer per
/// process: when a broker is already observed (several brokers embedded in
/// one test process), the later ones only get what [`probe_provider`]
/// measures. Returns whether it was installed.
pub fn observe_storage(metrics: &std::sync::Arc<KeyMetrics>) -> bool {
    strongbox_storage::observe::install(Box::new(Forward(metrics.clone())))
}

/// Asks the key provider whether it holds the broker scope's newest key
/// (or any key at all): a cheap call that shows whether the provider
/// answers. Updates the metrics; returns true when it answered.
pub fn probe_provider(state: &BrokerState) -> bool {
    let newest = state
        .keys
        .manager()
        .versions(Some(&KekScope::Broker))
        .ok()
        .and_then(|v| v.into_iter().map(|v| v.id.version).max())
        .unwrap_or(1);
    let id = KekId {
        scope: KekScope::Broker,
        version: newest,
    };
    let started = Instant::now();
    let result = state.keys.manager().provider().has_kek(&id);
    state
        .keys
        .metrics()
        .record(KeyOp::Lookup, started.elapsed(), result.as_ref().err());
    match result {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the key provider does not answer: new segments cannot get a data key until it does");
            false
        }
    }
}

/// The scopes whose active version was created `every` or longer before
/// `now_ms`.
pub fn scopes_due(versions: &[KekVersion], every: Duration, now_ms: i64) -> Vec<KekScope> {
    let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    versions
        .iter()
        .filter(|v| v.state == KeyState::Active)
        .filter(|v| now_ms.saturating_sub(v.created_at) >= every_ms)
        .map(|v| v.id.scope.clone())
        .collect()
}

/// Rotates every scope whose active version is older than
/// `keys.rotate_every` (nothing when it is not set), recording each
/// rotation in the audit trail. Returns the new versions.
pub fn rotate_due(state: &BrokerState, now_ms: i64) -> Vec<KekVersion> {
    let Some(every) = state.config.keys.rotate_every else {
        return Vec::new();
    };
    let versions = match state.keys.manager().versions(None) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the key registry for scheduled rotation");
            return Vec::new();
        }
    };
    let mut rotated = Vec::new();
    for scope in scopes_due(&versions, every.0, now_ms) {
        match state.keys.manager().rotate(&scope) {
            Ok(v) => {
                record_rotation(state, &v, BROKER_PRINCIPAL, Some(every.0));
                rotated.push(v);
            }
            Err(e) => {
                tracing::error!(scope = %scope, error = %e, "scheduled key rotation failed; retrying at the next maintenance pass")
            }
        }
    }
    rotated
}

/// The one place a rotation is recorded: the audit trail (which also logs
/// it under the `strongbox::audit` target). `schedule` is the
/// `rotate_every` that caused it, `None` for a rotation someone asked for.
pub fn record_rotation(
    state: &BrokerState,
    v: &KekVersion,
    principal: &str,
    schedule: Option<Duration>,
) {
    let scope = scope_name(state, &v.id.scope);
    tracing::info!(target: "strongbox::audit", principal, kek = %v.id, scheduled = schedule.is_some(), "key rotated");
    let mut event = AuditEvent::success(
        AuditAction::KeyRotate,
        audit::kek_resource(&scope, v.id.version),
    )
    .principal(principal)
    .detail("kek", v.id.label())
    .detail("state", v.state.name())
    .detail("segments", v.segments);
    if let Some(every) = schedule {
        event = event.detail("reason", "rotate_every").detail(
            "rotate_every",
            humantime::format_duration(every).to_string(),
        );
    }
    state.audit.record(event);
}

/// What [`destroy_version`] did.
#[derive(Debug)]
pub struct Destroyed {
    /// The version, now destroyed, and how many segments it leaves
    /// unreadable.
    pub outcome: DestroyOutcome,
    /// Those segments (at most `listed` of them), with `force`.
    pub lost: Vec<SegmentRef>,
}

/// Destroys KEK version `id` (`strongbox keys destroy`) so that, once this
/// returns, nothing under it can be read through this broker and nothing
/// new is written under it:
///
/// 1. the refusals (unknown, already destroyed, still in use without
///    `force`) come first, before anything changes;
/// 2. an active version is retired, so the segments created from now on
///    get a new one;
/// 3. every partition of the scope whose active segment is under `id`
///    seals it (or gives it up when empty), dropping its data key from
///    memory, so appends continue in a new segment;
/// 4. the key manager destroys the version in the provider, evicts the
///    cached data keys it wrapped and marks it destroyed; reads of its
///    segments fail with `key_destroyed` from then on.
///
/// # Errors
///
/// The key manager's refusals and provider or registry failures.
pub fn destroy_version(
    state: &BrokerState,
    id: &KekId,
    force: bool,
    listed: usize,
) -> Result<Destroyed, KeyError> {
    let v = state
        .keys
        .manager()
        .version(id)?
        .ok_or_else(|| KeyError::KekNotFound(id.label()))?;
    if v.state == KeyState::Destroyed || (v.segments > 0 && !force) {
        // Refused: the key manager says why, and nothing has changed.
        return state
            .keys
            .manager()
            .destroy_version(id, force)
            .map(|outcome| Destroyed {
                outcome,
                lost: Vec::new(),
            });
    }
    if v.state == KeyState::Active {
        state.keys.manager().retire(id)?;
    }
    for topic in state.partitions.topics().all() {
        if topic.kek_scope() != id.scope {
            continue;
        }
        for slot in &topic.partitions {
            let PartitionSlot::Ready(p) = slot else {
                continue;
            };
            match p.log().stop_appending_under(id) {
                Ok(true) => {
                    tracing::info!(topic = %p.topic, partition = p.index, kek = %id, "sealed the active segment before its key is destroyed");
                }
                Ok(false) => {}
                // The log is failed and takes no more appends; its key
                // goes with the destruction all the same.
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot seal the active segment before its key is destroyed")
                }
            }
        }
    }
    // Named before the destruction, while the registry is certain of
    // them; the segments just sealed are among them.
    let lost = if force {
        state
            .keys
            .manager()
            .segments_under(id, None, listed)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let outcome = state.keys.manager().destroy_version(id, force)?;
    Ok(Destroyed { outcome, lost })
}

/// Sets `strongbox_key_compromised` to the number of compromised versions.
pub fn refresh_compromised(state: &BrokerState) {
    if let Ok(versions) = state.keys.manager().versions(None) {
        let n = versions
            .iter()
            .filter(|v| v.state == KeyState::Compromised)
            .count();
        state
            .metrics
            .key_compromised
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The scope as people read it: `broker` or `topic:<name>`.
pub fn scope_name(state: &BrokerState, scope: &KekScope) -> String {
    match scope {
        KekScope::Broker => "broker".into(),
        KekScope::Topic(id) => state
            .partitions
            .topics()
            .all()
            .into_iter()
            .find(|t| hex::encode(t.entry.topic_id) == *id)
            .map_or_else(|| format!("topic-{id}"), |t| format!("topic:{}", t.name())),
    }
}

/// `topic/partition@base_offset` for each segment (`topic-<id>/p/<segment
/// id>` when the broker does not serve it), in the order given.
pub fn segment_names(state: &BrokerState, segments: &[SegmentRef]) -> Vec<String> {
    let topics = state.partitions.topics().all();
    let mut bases: HashMap<([u8; 16], u32), HashMap<[u8; 16], u64>> = HashMap::new();
    segments
        .iter()
        .map(|s| {
            let topic = topics.iter().find(|t| t.entry.topic_id == s.topic_id);
            let base = topic.and_then(|t| {
                let map = bases.entry((s.topic_id, s.partition)).or_insert_with(|| {
                    match t.partitions.get(s.partition as usize) {
                        Some(PartitionSlot::Ready(p)) => p
                            .log()
                            .segments()
                            .into_iter()
                            .map(|i| (i.segment_id, i.base_offset))
                            .collect(),
                        _ => HashMap::new(),
                    }
                });
                map.get(&s.segment_id).copied()
            });
            match (topic, base) {
                (Some(t), Some(base)) => format!("{}/{}@{base}", t.name(), s.partition),
                (Some(t), None) => format!(
                    "{}/{}/segment-{}",
                    t.name(),
                    s.partition,
                    hex::encode(s.segment_id)
                ),
                (None, _) => s.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(scope: KekScope, n: u32, state: KeyState, created_at: i64) -> KekVersion {
        KekVersion {
            id: KekId { scope, version: n },
            state,
            provider: "file".into(),
            created_at,
            state_changed_at: created_at,
            segments: 0,
        }
    }

    #[test]
    fn only_active_versions_old_enough_are_due() {
        let day = 24 * 3600 * 1000;
        let topic = KekScope::Topic("ab".repeat(16));
        let versions = [
            version(KekScope::Broker, 1, KeyState::DecryptOnly, 0),
            version(KekScope::Broker, 2, KeyState::Active, 10 * day),
            version(topic.clone(), 1, KeyState::Active, 0),
            version(KekScope::Topic("cd".repeat(16)), 1, KeyState::Destroyed, 0),
        ];
        let every = Duration::from_secs(90 * 24 * 3600);
        assert!(scopes_due(&versions, every, 89 * day).is_empty());
        assert_eq!(scopes_due(&versions, every, 90 * day), vec![topic.clone()]);
        assert_eq!(
            scopes_due(&versions, every, 100 * day),
            vec![KekScope::Broker, topic]
        );
    }

    #[test]
    fn the_maintenance_pass_rotates_scopes_that_are_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::BrokerConfig::from_toml_str(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n\
             [keys]\nrotate_every = \"1h\"\n",
            dir.path(),
        )
        .expect("config");
        let metrics = std::sync::Arc::new(BrokerMetrics::new().expect("metrics"));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let state = BrokerState::open(config, metrics, shutdown).expect("state");
        let v1 = state.keys.manager().rotate(&KekScope::Broker).expect("v1");
        assert_eq!(v1.id.version, 1);
        let now = strongbox_protocol::clock::now_ms();
        let hour = 3_600_000;

        assert!(rotate_due(&state, now + hour / 2).is_empty(), "not due yet");
        let rotated = rotate_due(&state, now + 2 * hour);
        assert_eq!(rotated.len(), 1);
        assert_eq!(rotated[0].id.version, 2);
        let versions = state
            .keys
            .manager()
            .versions(Some(&KekScope::Broker))
            .expect("versions");
        let states: Vec<_> = versions.iter().map(|v| (v.id.version, v.state)).collect();
        assert_eq!(
            states,
            vec![(1, KeyState::DecryptOnly), (2, KeyState::Active)]
        );
        // The new version's age counts from its own creation.
        assert!(rotate_due(&state, now + hour / 2).is_empty());
        let again = rotate_due(&state, now + 3 * hour);
        assert_eq!(again.iter().map(|v| v.id.version).collect::<Vec<_>>(), [3]);
        assert!(probe_provider(&state));
    }

    #[test]
    fn metrics_follow_provider_calls() {
        let metrics = BrokerMetrics::new().expect("metrics");
        let m = KeyMetrics::new(&metrics, "pkcs11");
        m.aead(AeadOp::Seal, 100);
        m.aead(AeadOp::Open, 40);
        m.fsync(Duration::from_millis(2));
        m.key_operation(KeyOp::Wrap, "pkcs11", Duration::from_micros(80), None);
        assert!(m.provider_is_up());
        m.key_operation(
            KeyOp::Wrap,
            "pkcs11",
            Duration::from_micros(80),
            Some(&KeyError::Unavailable("token gone".into())),
        );
        assert!(!m.provider_is_up());
        // An answer, even a refusal, means the provider is back.
        m.key_operation(
            KeyOp::Unwrap,
            "pkcs11",
            Duration::from_micros(80),
            Some(&KeyError::UnwrapRejected { kek: "k".into() }),
        );
        assert!(m.provider_is_up());
        // Another provider kind's calls (another broker in the process)
        // are not ours.
        m.key_operation(KeyOp::Wrap, "file", Duration::from_micros(80), None);

        assert_eq!(metrics.aead_bytes.with_label_values(&["seal"]).get(), 100);
        assert_eq!(metrics.aead_bytes.with_label_values(&["open"]).get(), 40);
        assert_eq!(metrics.fsync_latency.get_sample_count(), 1);
        assert_eq!(
            metrics
                .key_operations
                .with_label_values(&["wrap", "pkcs11"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .key_operations
                .with_label_values(&["wrap", "file"])
                .get(),
            0
        );
        assert_eq!(metrics.hsm_errors.with_label_values(&["wrap"]).get(), 1);
        assert_eq!(metrics.hsm_errors.with_label_values(&["unwrap"]).get(), 1);
        assert_eq!(
            metrics
                .key_operation_latency
                .with_label_values(&["wrap"])
                .get_sample_count(),
            2
        );
    }
}
