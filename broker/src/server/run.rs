//! Starting and stopping a broker: storage, listener, metrics endpoint and
//! background maintenance.
//!
//! [`run`] returns once everything is bound, so the caller can print the
//! addresses; [`RunningBroker::shutdown`] stops in order: stop accepting,
//! let connections finish and acknowledge what they accepted, stop the
//! maintenance and metrics tasks, sign a last checkpoint, then close every
//! partition log (which syncs whatever a `none` or `interval` topic still
//! holds in memory) and record each partition's durable end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strongbox_protocol::clock::now_ms;
use strongbox_storage::io::{StorageIo, default_io};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{AuditAction, AuditEvent, BROKER_PRINCIPAL, topic_resource};
use crate::checkpoint::{self, Checkpointer};
use crate::config::BrokerConfig;
use crate::identity::IdentityMapper;
use crate::metrics::BrokerMetrics;
use crate::metrics::http::{self, HttpState};
use crate::services::keys::key_lifecycle;
use crate::services::partitions::topics::{PartitionSlot, retention};
use crate::services::{BrokerState, MAINTENANCE_INTERVAL, StartError};
use crate::tls::reload::TlsMetrics;
use crate::tls::{TlsReloader, server_tls};
use crate::transport::connection;
use crate::transport::endpoint::{AcceptSettings, Server};

/// A broker that is serving.
#[derive(Debug)]
pub struct RunningBroker {
    /// The QUIC address it listens on.
    pub addr: SocketAddr,
    /// The metrics endpoint's address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Shared state, for embedding and tests.
    pub state: Arc<BrokerState>,
    /// The certificate, client CA bundle and CRLs, reloaded on SIGHUP.
    tls: TlsReloader,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    serving: JoinHandle<crate::transport::endpoint::ServeReport>,
    /// Wakes the maintenance task for a pass now (SIGHUP).
    maintain_now: Arc<tokio::sync::Notify>,
    /// Signs checkpoints; `None` when `checkpoints.enabled` is false.
    checkpoints: Option<Arc<Checkpointer>>,
    /// This node of the cluster's metadata group; `None` without
    /// `[cluster]`.
    cluster: Option<super::cluster::ClusterNode>,
}

/// Opens storage, binds the listener and the metrics endpoint, and starts
/// serving. Must run inside a multi-threaded tokio runtime.
///
/// # Errors
///
/// [`StartError`] when storage, TLS material or a listener cannot be set
/// up.
pub async fn run(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    run_with_io(config, default_io()).await
}

/// [`run`] with the partition logs on `io` (tests inject storage faults
/// this way).
///
/// # Errors
///
/// As [`run`].
pub async fn run_with_io(
    config: BrokerConfig,
    io: Arc<dyn StorageIo>,
) -> Result<RunningBroker, StartError> {
    let (stop, shutdown) = watch::channel(false);
    let metrics =
        Arc::new(BrokerMetrics::new().map_err(|e| StartError::Other(format!("metrics: {e}")))?);
    let state = {
        let config = config.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::task::spawn_blocking(move || {
            BrokerState::open_with_io(config, metrics, shutdown, io)
        })
        .await
        .map_err(|e| StartError::Other(format!("opening storage: {e}")))??
    };
    register_process_metrics(&metrics, &config)?;
    crate::services::partitions::audit_topic::start_audit(&state);
    state
        .keys
        .rewrap()
        .resume(&state)
        .map_err(|e| StartError::Other(format!("rewrap job: {e}")))?;
    let checkpoints = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || Checkpointer::prepare(&state))
            .await
            .map_err(|e| StartError::Other(format!("checkpoints: {e}")))?
            .map_err(StartError::Other)?
    };
    let hook = metrics.auth_failure_hook(Some(state.audit.auth_failure_hook()));
    let tls = server_tls(&config.tls, Some(hook.clone()))
        .map_err(|e| StartError::Other(e.to_string()))?;
    let identity = Arc::new(
        IdentityMapper::from_config(&config.identity)
            .map_err(|e| StartError::Other(e.to_string()))?,
    );
    let settings = AcceptSettings::from_config(
        &config.listener,
        identity,
        Some(hook),
        Some(metrics.clone()),
    )
    .with_key_exchange(config.tls.key_exchange);
    let server = Server::bind(&config.listener, &tls, settings)
        .map_err(|e| StartError::Other(e.to_string()))?;
    let addr = server
        .local_addr()
        .map_err(|e| StartError::Other(format!("listener address: {e}")))?;

    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let metrics_addr = if config.metrics.enabled {
        let listener = http::bind(config.metrics.listen).await.map_err(|e| {
            StartError::Other(format!("metrics.listen {}: {e}", config.metrics.listen))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| StartError::Other(format!("metrics address: {e}")))?;
        let http_state = HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        tasks.push(tokio::spawn(http::serve(
            listener,
            http_state,
            shutdown.clone(),
        )));
        Some(bound)
    } else {
        None
    };
    let tls_metrics = TlsMetrics::new(metrics.registry())
        .map_err(|e| StartError::Other(format!("TLS metrics: {e}")))?;
    let reloader = TlsReloader::new(tls.cert.clone(), tls.verifier.clone(), Some(tls_metrics));
    // One watcher for every TLS file: certificate, key, CA bundle, CRLs.
    tasks.push(reloader.spawn_watcher(config.tls.crl_reload.0, shutdown.clone()));
    let _ = state.client_verifier.set(tls.verifier.clone());
    let _ = state.client_addr.set(addr);
    crate::transport::admin::log_cluster_role(&config);
    let cluster = match &config.cluster {
        Some(c) => {
            let (node, follow) =
                super::cluster::start(&state, &config, c, shutdown.clone()).await?;
            tasks.extend(follow);
            Some(node)
        }
        None => None,
    };
    tasks.extend(start_control_socket(&state, &metrics, &shutdown)?);
    let maintain_now = Arc::new(tokio::sync::Notify::new());
    tasks.push(tokio::spawn(maintenance(
        state.clone(),
        shutdown.clone(),
        maintain_now.clone(),
    )));
    tasks.push(tokio::spawn(
        crate::services::partitions::partition_watch::run(state.clone(), shutdown.clone()),
    ));
    if let Some(c) = &checkpoints {
        tasks.push(tokio::spawn(checkpoint::run_periodic(
            c.clone(),
            state.clone(),
            shutdown.clone(),
        )));
    }

    let handler_state = state.clone();
    let serving = tokio::spawn(server.serve(shutdown, move |accepted| {
        connection::serve(handler_state.clone(), accepted)
    }));
    ready.store(true, Ordering::Release);
    tracing::info!(%addr, metrics = ?metrics_addr, broker = %config.broker.id, "broker serving");
    Ok(RunningBroker {
        addr,
        metrics_addr,
        state,
        tls: reloader,
        stop,
        tasks,
        serving,
        maintain_now,
        checkpoints,
        cluster,
    })
}

/// The process figures (memory, CPU, descriptors, start time) and the
/// data directory's free space, read at each scrape.
fn register_process_metrics(
    metrics: &BrokerMetrics,
    config: &BrokerConfig,
) -> Result<(), StartError> {
    use crate::metrics::process::{DiskCollector, ProcessCollector};
    let err = |e: prometheus::Error| StartError::Other(format!("process metrics: {e}"));
    let registry = metrics.registry();
    registry
        .register(Box::new(ProcessCollector::new().map_err(err)?))
        .map_err(err)?;
    registry
        .register(Box::new(
            DiskCollector::new(config.broker.data_dir.clone()).map_err(err)?,
        ))
        .map_err(err)
}

/// The local control socket (`strongbox-broker backup`). A socket that
/// cannot be bound leaves the broker running without it, and says so.
fn start_control_socket(
    state: &Arc<BrokerState>,
    metrics: &BrokerMetrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, StartError> {
    use crate::backup::control::{BackupMetrics, ControlSocket};
    let backup_metrics = BackupMetrics::new(metrics.registry())
        .map_err(|e| StartError::Other(format!("backup metrics: {e}")))?;
    match ControlSocket::bind(&state.config.broker.data_dir) {
        Ok(socket) => {
            tracing::debug!(socket = %socket.path().display(), "control socket listening");
            Ok(Some(tokio::spawn(socket.serve(
                state.clone(),
                backup_metrics,
                shutdown.clone(),
            ))))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: `strongbox-broker backup` cannot reach this broker");
            Ok(None)
        }
    }
}

impl RunningBroker {
    /// What `SIGHUP` does: re-reads the broker's certificate and key, the
    /// client CA bundle and the CRL files (new handshakes use them; open
    /// connections are re-checked against the new CA bundle and CRLs);
    /// re-reads and validates the config file and applies its `[acl]`
    /// section (superusers and `[[acl.rules]]`) to new and open
    /// connections; and runs a maintenance pass now (grants whose time is
    /// up go at once). A TLS or config file that does not load keeps what
    /// was in force, and the log says why; other changed sections are named
    /// as needing a restart.
    pub async fn reload(&self) {
        self.maintain_now();
        let tls = self.tls.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || tls.reload_all()).await {
            tracing::error!(error = %e, "TLS reload task failed");
        }
        // Under the admin lock, so a reload cannot replace the rules with a
        // snapshot read before a grant that commits at the same moment.
        let _guard = self.state.admin_lock.lock().await;
        let state = self.state.clone();
        let reloaded = tokio::task::spawn_blocking(move || state.reload_config()).await;
        match reloaded {
            Ok(Ok(r)) => {
                tracing::info!(
                    generation = r.generation,
                    config_rules = r.config_rules,
                    superusers = r.superusers,
                    "ACL reloaded from the config file"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        sections = %r.restart_needed.join(", "),
                        "these sections of the config file changed; a reload applies only [acl]: restart the broker to apply them"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "config reload failed; keeping the previous ACL rules")
            }
            Err(e) => tracing::error!(error = %e, "config reload task failed"),
        }
    }

    /// Runs a maintenance pass (key provider probe, due rotations and
    /// rolls, retention, expired grants) now rather than at the next tick.
    pub fn maintain_now(&self) {
        self.maintain_now.notify_one();
    }

    /// Stops gracefully: no new connections or requests, every accepted
    /// append answered, logs synced and closed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        match self.serving.await {
            Ok(report) => tracing::info!(
                accepted = report.accepted,
                aborted = report.aborted,
                "listener stopped"
            ),
            Err(e) => tracing::error!(error = %e, "listener task failed"),
        }
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(node) = self.cluster {
            node.stop().await;
        }
        // An unfinished rewrap stops at its next step and resumes at the
        // next start; it must let go of the logs before they close.
        self.state.keys.rewrap().stopped().await;
        // A last watch pass: fenced logs try to resume, what the logs did
        // on their own reaches the audit trail before it closes.
        let s = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || s.partitions.watch().pass(&s)).await;
        // Nothing appends any more: the last checkpoint records the state
        // this stop leaves, and goes to the trail before it closes.
        if let Some(c) = self.checkpoints.clone() {
            let state = self.state.clone();
            let signed = tokio::task::spawn_blocking(move || {
                c.checkpoint(&state, checkpoint::Reason::Shutdown)
            })
            .await;
            if let Err(e) = signed {
                tracing::error!(error = %e, "the shutdown checkpoint task failed");
            }
        }
        // Write what the trail still holds before its topic closes.
        self.state.audit.shutdown().await;
        let state = self.state;
        let closed = tokio::task::spawn_blocking(move || close_all(&state)).await;
        if let Err(e) = closed {
            tracing::error!(error = %e, "closing the logs failed");
        }
        tracing::info!("stopped");
    }
}

/// Seals and closes every partition log. A log some straggling task still
/// holds is closed when that task drops it (its `Drop` syncs what is
/// pending; the next start recovers its active segment).
fn close_all(state: &BrokerState) {
    // Names only: a listed `Arc<Topic>` kept alive here would make every
    // `try_unwrap` below fail, and no log would be sealed.
    let names: Vec<String> = state
        .partitions
        .topics()
        .all()
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    let mut ends = Vec::new();
    for name in names {
        let Some(topic) = state.partitions.topics().remove(&name) else {
            continue;
        };
        let Ok(topic) = Arc::try_unwrap(topic) else {
            tracing::warn!(topic = %name, "topic still in use at shutdown; its logs are not sealed (the next start recovers them)");
            continue;
        };
        let topic_id = topic.entry.topic_id;
        for slot in topic.partitions {
            let PartitionSlot::Ready(p) = slot else {
                continue;
            };
            let (name, index) = (p.topic.clone(), p.index);
            let writable = p.read_only_reason().is_none();
            match Arc::try_unwrap(p) {
                Ok(p) => {
                    match p.into_log().close_with_end() {
                        // Everything written is durable once the log closed.
                        Ok(end) if writable => ends.push((topic_id, index, end)),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(topic = %name, partition = index, error = %e, "closing the log failed");
                        }
                    }
                }
                Err(_) => {
                    tracing::warn!(topic = %name, partition = index, "log still in use at shutdown")
                }
            }
        }
    }
    state.partitions.watch().record(state, ends);
}

/// Checks that the key provider answers, rotates keys that are due
/// (`keys.rotate_every`), rolls segments that are due, applies retention,
/// and drops expired grants, every [`MAINTENANCE_INTERVAL`]; and drops each
/// grant (with its audit records) the moment it expires.
async fn maintenance(
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
    now: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A grant with an expiry changes the ACL generation: look for a new
    // next expiry when it moves.
    let mut acl_changes = tokio::time::interval(ACL_CHANGE_CHECK);
    acl_changes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_generation = None;
    // Config rules expiring from now on get their `acl.expire` record.
    let mut expired_up_to = now_ms();
    let mut next_expiry: Option<i64> = None;
    loop {
        let full = tokio::select! {
            _ = tick.tick() => true,
            () = now.notified() => true,
            () = sleep_until_ms(next_expiry) => false,
            _ = acl_changes.tick() => {
                if seen_generation == Some(state.acl.generation()) {
                    continue;
                }
                seen_generation = Some(state.acl.generation());
                let s = state.clone();
                next_expiry = tokio::task::spawn_blocking(move || next_expiry_of(&s, expired_up_to))
                    .await
                    .unwrap_or(None);
                continue;
            }
            () = crate::shutdown::stopped(&mut shutdown) => return,
        };
        let s = state.clone();
        let since = expired_up_to;
        let pass = tokio::task::spawn_blocking(move || {
            let until = now_ms();
            if full {
                maintain(&s);
            }
            expire_grants(&s, since, until);
            (until, next_expiry_of(&s, until))
        })
        .await;
        if let Ok((until, next)) = pass {
            expired_up_to = until;
            next_expiry = next;
            seen_generation = Some(state.acl.generation());
        }
    }
}

/// How often the maintenance task looks for an ACL change (a new grant
/// whose expiry may come before the next one it knows of).
const ACL_CHANGE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

fn next_expiry_of(state: &BrokerState, after: i64) -> Option<i64> {
    crate::services::access::requests::next_expiry(state, after)
        .inspect_err(|e| tracing::error!(error = %e, "cannot read the grants' expiry times"))
        .ok()
        .flatten()
}

/// Sleeps until `at` (ms since the epoch); forever without one.
async fn sleep_until_ms(at: Option<i64>) {
    match at {
        Some(at) => {
            let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            // A millisecond late, so the grant is over when the pass runs.
            tokio::time::sleep(std::time::Duration::from_millis(wait.saturating_add(1))).await;
        }
        None => std::future::pending().await,
    }
}

fn maintain(state: &BrokerState) {
    let provider_up = key_lifecycle::probe_provider(state);
    if provider_up {
        key_lifecycle::rotate_due(state, now_ms());
    }
    key_lifecycle::refresh_compromised(state);
    for topic in state.partitions.topics().all() {
        let policy = retention(&topic.entry);
        for slot in &topic.partitions {
            let PartitionSlot::Ready(p) = slot else {
                continue;
            };
            // A segment rolled now could not be followed by a new one while
            // the key provider is down: keep appending to it until it is
            // back (a roll for size still fails closed).
            if provider_up && let Err(e) = p.log().roll_if_due() {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "segment roll failed");
            }
            match p.log().apply_retention(&policy) {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(
                        target: "strongbox::audit",
                        topic = %p.topic,
                        partition = p.index,
                        segments = deleted.len(),
                        "retention deleted segments (key envelopes first)"
                    );
                    state.audit.record(
                        AuditEvent::success(AuditAction::TopicRetention, topic_resource(&p.topic))
                            .principal(BROKER_PRINCIPAL)
                            .detail("partition", p.index)
                            .detail("segments", deleted.len())
                            .detail("base_offsets", deleted),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                }
            }
        }
    }
}

/// Removes the rules, approved access requests and recipient entries whose
/// expiry is over at `now` and records their `acl.expire` and
/// `access.expire` events; records `acl.expire` for each config rule that
/// expired after `since` (config rules stay in the file; they stop
/// applying).
fn expire_grants(state: &BrokerState, since: i64, now: i64) {
    // Expired rules, and approved access requests past their expiry with
    // their rules and recipient entries. Under the admin lock, as every ACL
    // change: a reload here must not publish rules read before a
    // concurrent grant's commit after that grant's own reload.
    let _admin = state.admin_lock.blocking_lock();
    match crate::services::access::requests::remove_expired(state, now) {
        Ok(expired) if !expired.is_empty() => {
            tracing::info!(target: "strongbox::audit", rules = expired.len(), "expired ACL rules removed");
            for entry in &expired {
                state.audit.record(expire_event(&entry.rule));
            }
            if let Err(e) = state.reload_acl() {
                tracing::error!(error = %e.message, "ACL reload failed");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e.message, "removing expired ACL rules failed"),
    }
    for rule in state.config_acl_rules() {
        if rule.expires_at.is_some_and(|t| since < t && t <= now) {
            tracing::info!(target: "strongbox::audit", principal = %rule.principal, topic = %rule.topic, operations = %rule.operations, "a config ACL rule expired");
            state
                .audit
                .record(expire_event(&rule).detail("source", "config"));
        }
    }
}

/// The `acl.expire` event of `rule`.
fn expire_event(rule: &strongbox_protocol::model::AclRule) -> AuditEvent {
    AuditEvent::success(AuditAction::AclExpire, topic_resource(&rule.topic))
        .principal(BROKER_PRINCIPAL)
        .detail("rule_principal", rule.principal.clone())
        .detail("operations", rule.operations.to_string())
        .detail("effect", format!("{:?}", rule.effect).to_lowercase())
        .detail("expires_at", rule.expires_at)
}
