//! Signed checkpoints: what the broker's state was at a moment, signed by
//! the key provider's checkpoint key, kept where a rolled-back data
//! directory cannot take it back.
//!
//! The audit trail is hash-chained and its head anchored in the metadata
//! store, but both live in the data directory: someone who replaces the
//! whole directory with an older copy (metadata store and log together)
//! leaves a consistent, older state behind, and nothing inside it can tell.
//! A checkpoint records the audit head, each partition's end offset and
//! last seal, and a digest of the key registry, signed with a key that
//! never leaves the HSM; written outside the data directory (and to
//! `_audit`), it is the anchor an older copy cannot match.
//! `strongbox-broker verify --checkpoint` and `strongbox audit verify
//! --checkpoint` compare a data directory (or a running broker) with it.
//!
//! The format, its verification and the comparison with a data directory
//! belong to the `strongbox-checkpoint` crate, which the client shares;
//! this module takes and publishes the broker's checkpoints.
//!
//! - [`Checkpointer`]: takes, signs and publishes checkpoints: at start it
//!   makes sure the provider holds a key ([`Checkpointer::prepare`]), then
//!   [`run_periodic`] signs one every `checkpoints.interval`, and the
//!   broker signs a last one at shutdown.
//! - [`cli`]: `strongbox-broker checkpoint public-key`.

pub mod cli;
mod export;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::model::Durability;
use strongbox_storage::keys::{CheckpointPublicKey, KekVersion, KeyError, KeyProvider};
use strongbox_storage::meta::MetaError;
use tokio::sync::watch;

use strongbox_checkpoint::{AuditMark, PartitionMark, RegistryEntry, SealMark, Unsigned};

use crate::audit::record::{GENESIS_HASH, record_time};
use crate::audit::{AuditAction, AuditEvent, BROKER_PRINCIPAL};
use crate::config::CheckpointsConfig;
use crate::services::BrokerState;
use crate::services::partitions::topics::PartitionSlot;

/// Why a checkpoint was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `checkpoints.interval` passed.
    Interval,
    /// The broker is stopping.
    Shutdown,
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Why a checkpoint could not be taken.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    /// The metadata store could not be read.
    #[error("cannot read the metadata store: {0}")]
    Meta(#[from] MetaError),
    /// The key provider refused or could not be reached.
    #[error("key provider: {0}")]
    Keys(#[from] KeyError),
    /// The signature the provider returned does not verify.
    #[error("the key provider's signature does not verify under its checkpoint public key")]
    BadSignature,
}

/// The checkpoint metrics.
#[derive(Debug, Clone)]
struct Metrics {
    signed: IntCounter,
    failed: IntCounter,
    last: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let signed = IntCounter::new(
            "strongbox_checkpoints_signed_total",
            "Checkpoints signed, appended to the audit trail and exported.",
        )?;
        let failed = IntCounter::new(
            "strongbox_checkpoint_failures_total",
            "Checkpoints that could not be taken, signed or exported.",
        )?;
        let last = IntGauge::new(
            "strongbox_checkpoint_last_time_seconds",
            "Unix time of the newest signed checkpoint (0 before the first).",
        )?;
        registry.register(Box::new(signed.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        registry.register(Box::new(last.clone()))?;
        Ok(Self {
            signed,
            failed,
            last,
        })
    }
}

/// Takes, signs and publishes the checkpoints of one broker.
#[derive(Debug)]
pub struct Checkpointer {
    config: CheckpointsConfig,
    provider: Arc<dyn KeyProvider>,
    public: CheckpointPublicKey,
    metrics: Metrics,
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The line: compact JSON, no newline.
    pub line: String,
    /// When it was taken.
    pub time_ms: i64,
    /// The audit head it records.
    pub audit_sequence: u64,
}

impl Checkpointer {
    /// Makes sure the key provider holds the checkpoint key (creating it on
    /// first use) and registers the metrics. `None` when checkpoints are
    /// off. Blocking.
    ///
    /// # Errors
    ///
    /// The provider cannot make or read the key (a token without EC
    /// support, an HSM that does not answer).
    pub fn prepare(state: &BrokerState) -> Result<Option<Arc<Self>>, String> {
        let config = state.config.checkpoints.clone();
        if !config.enabled {
            tracing::warn!(
                "checkpoints.enabled is false: a data directory rolled back to an older copy \
                 cannot be detected"
            );
            return Ok(None);
        }
        let provider = state.keys.manager().provider().clone();
        let public = provider
            .checkpoint_key(true)
            .map_err(|e| {
                format!(
                    "checkpoints: cannot make or read the checkpoint signing key: {e} (set \
                     checkpoints.enabled = false to run without checkpoints)"
                )
            })?
            .ok_or("checkpoints: the key provider made no checkpoint key")?;
        let metrics = Metrics::new(state.metrics.registry())
            .map_err(|e| format!("checkpoint metrics: {e}"))?;
        if config.export_dir.is_none() && !config.stdout {
            tracing::warn!(
                "checkpoints go only to the audit trail, inside the data directory: set \
                 checkpoints.export_dir (or checkpoints.stdout) so that a rolled-back data \
                 directory can be detected"
            );
        }
        tracing::info!(
            key_id = %public.key_id(),
            interval = %config.interval,
            export_dir = ?config.export_dir,
            "signed checkpoints on"
        );
        Ok(Some(Arc::new(Self {
            config,
            provider,
            public,
            metrics,
        })))
    }

    /// The checkpoint key's public half.
    pub fn public_key(&self) -> &CheckpointPublicKey {
        &self.public
    }

    /// Reads the state and signs it. Blocking (the metadata store, the
    /// HSM).
    ///
    /// # Errors
    ///
    /// [`CheckpointFailure`].
    pub fn take(&self, state: &BrokerState) -> Result<Signed, CheckpointFailure> {
        let unsigned = snapshot(state)?;
        let body = unsigned.body(&self.public.key_id());
        let signature = self.provider.sign_checkpoint(body.as_bytes())?;
        // A provider that signs with another key (a token swapped under a
        // running broker) must not produce checkpoints nobody can verify.
        if !self.public.verifies(body.as_bytes(), &signature) {
            return Err(CheckpointFailure::BadSignature);
        }
        Ok(Signed {
            line: strongbox_checkpoint::signed_line(&body, &signature),
            time_ms: unsigned.time_ms,
            audit_sequence: unsigned.audit.sequence,
        })
    }

    /// Takes a checkpoint and publishes it: a `checkpoint.signed` record in
    /// `_audit`, the export directory, standard output. Failures are
    /// logged, counted and audited; blocking.
    pub fn checkpoint(&self, state: &BrokerState, reason: Reason) -> Option<Signed> {
        let resource = format!("broker:{}", state.config.broker.id);
        let signed = match self.take(state) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.failed.inc();
                tracing::error!(reason = reason.name(), error = %e, "checkpoint failed");
                state.audit.record(
                    AuditEvent::failure(AuditAction::CheckpointSigned, resource)
                        .principal(BROKER_PRINCIPAL)
                        .detail("reason", reason.name())
                        .detail("error", e.to_string()),
                );
                return None;
            }
        };
        state.audit.record(
            AuditEvent::success(AuditAction::CheckpointSigned, resource)
                .principal(BROKER_PRINCIPAL)
                .detail("reason", reason.name())
                .detail("key_id", self.public.key_id())
                .detail("checkpoint", signed.line.clone()),
        );
        let mut exported = true;
        if let Some(dir) = &self.config.export_dir
            && let Err(e) = export::write(dir, &state.config.broker.id, &signed.line)
        {
            exported = false;
            tracing::error!(dir = %dir.display(), error = %e, "cannot export the checkpoint");
        }
        if self.config.stdout {
            export::print(&signed.line);
        }
        if exported {
            self.metrics.signed.inc();
        } else {
            self.metrics.failed.inc();
        }
        self.metrics.last.set(signed.time_ms / 1000);
        tracing::info!(
            reason = reason.name(),
            audit_sequence = signed.audit_sequence,
            "checkpoint signed"
        );
        Some(signed)
    }
}

/// The state to sign, read now.
fn snapshot(state: &BrokerState) -> Result<Unsigned, CheckpointFailure> {
    let time_ms = now_ms();
    // The anchored head: the topic holds at least it, durably.
    let audit = state.meta.read(|r| r.audit_head())?.map_or(
        AuditMark {
            sequence: 0,
            hash: GENESIS_HASH,
        },
        |h| AuditMark {
            sequence: h.sequence,
            hash: h.hash,
        },
    );
    let mut partitions = Vec::new();
    for topic in state.partitions.topics().all() {
        let durability = durability_name(topic.entry.config.durability);
        for slot in &topic.partitions {
            let PartitionSlot::Ready(p) = slot else {
                continue;
            };
            let log = p.log();
            let last_seal = log.segments().iter().rev().find_map(|s| {
                s.seal_mac.map(|mac| SealMark {
                    base_offset: s.base_offset,
                    next_offset: s.next_offset,
                    mac,
                })
            });
            partitions.push(PartitionMark {
                topic: topic.name().to_owned(),
                topic_id: hex::encode(topic.entry.topic_id),
                partition: p.index,
                durability: durability.to_owned(),
                log_start_offset: p.log_start_offset(),
                end_offset: p.high_watermark(),
                last_seal,
            });
        }
    }
    let registry = registry_entries(state.keys.manager().versions(None)?);
    Ok(Unsigned {
        broker_id: state.config.broker.id.clone(),
        time_ms,
        time: record_time(time_ms),
        audit,
        partitions,
        registry,
    })
}

/// The key registry's versions as a checkpoint records them.
pub(crate) fn registry_entries(versions: Vec<KekVersion>) -> Vec<RegistryEntry> {
    versions
        .into_iter()
        .map(|v| RegistryEntry {
            scope: v.id.scope.label(),
            version: v.id.version,
            state: v.state.name().to_owned(),
            created_at: v.created_at,
        })
        .collect()
}

/// The name of a durability, as the checkpoint records it.
pub fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        Durability::Interval { .. } => "interval",
        Durability::None => "none",
    }
}

/// Signs a checkpoint every `checkpoints.interval` until shutdown.
pub async fn run_periodic(
    checkpointer: Arc<Checkpointer>,
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every: Duration = checkpointer.config.interval.0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: a checkpoint as soon as the broker
    // serves, so a fresh start is anchored too.
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::stopped(&mut shutdown) => return,
        }
        let (c, s) = (checkpointer.clone(), state.clone());
        let _ = tokio::task::spawn_blocking(move || c.checkpoint(&s, Reason::Interval)).await;
    }
}
