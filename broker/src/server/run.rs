//! Starting and stopping a broker: storage, listener, metrics endpoint and
//! background maintenance.
//!
//! [`run`] returns once everything is bound, so the caller can print the
//! addresses; [`RunningBroker::shutdown`] stops in order: stop accepting,
//! let connections finish and acknowledge what they accepted, stop the
//! maintenance and metrics tasks, then close every partition log (which
//! syncs whatever a `none` or `interval` topic still holds in memory).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::endpoint::{AcceptSettings, Server};
use crate::identity::IdentityMapper;
use crate::metrics::BrokerMetrics;
use crate::metrics::http::{self, HttpState};
use crate::server::topics::{PartitionSlot, retention};
use crate::server::{BrokerState, MAINTENANCE_INTERVAL, StartError, connection, now_ms};
use crate::tls::{ReloadingClientVerifier, server_tls};

/// A broker that is serving.
#[derive(Debug)]
pub struct RunningBroker {
    /// The QUIC address it listens on.
    pub addr: SocketAddr,
    /// The metrics endpoint's address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Shared state, for embedding and tests.
    pub state: Arc<BrokerState>,
    verifier: Arc<ReloadingClientVerifier>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    serving: JoinHandle<crate::endpoint::ServeReport>,
}

/// Opens storage, binds the listener and the metrics endpoint, and starts
/// serving. Must run inside a multi-threaded tokio runtime.
///
/// # Errors
///
/// [`StartError`] when storage, TLS material or a listener cannot be set
/// up.
pub async fn run(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    let (stop, shutdown) = watch::channel(false);
    let metrics =
        Arc::new(BrokerMetrics::new().map_err(|e| StartError::Other(format!("metrics: {e}")))?);
    let state = {
        let config = config.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::task::spawn_blocking(move || BrokerState::open(config, metrics, shutdown))
            .await
            .map_err(|e| StartError::Other(format!("opening storage: {e}")))??
    };
    let hook = metrics.auth_failure_hook(None);
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
    );
    let server = Server::bind(&config.listener, tls.config.clone(), settings)
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
    tasks.push(
        tls.verifier
            .spawn_watcher(config.tls.crl_reload.0, shutdown.clone()),
    );
    tasks.push(tokio::spawn(maintenance(state.clone(), shutdown.clone())));

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
        verifier: tls.verifier,
        stop,
        tasks,
        serving,
    })
}

impl RunningBroker {
    /// Re-reads the CRL files and the ACL rules (SIGHUP).
    pub fn reload(&self) {
        match self.verifier.reload() {
            Ok(generation) => tracing::info!(generation, "CRLs reloaded"),
            Err(e) => tracing::error!(error = %e, "CRL reload failed; keeping the previous CRLs"),
        }
        match self.state.reload_acl() {
            Ok(generation) => tracing::info!(generation, "ACL reloaded"),
            Err(e) => {
                tracing::error!(error = %e.message, "ACL reload failed; keeping the previous rules")
            }
        }
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
    for topic in state.topics.all() {
        let Some(topic) = state.topics.remove(topic.name()) else {
            continue;
        };
        let Ok(topic) = Arc::try_unwrap(topic) else {
            continue;
        };
        for slot in topic.partitions {
            let PartitionSlot::Ready(p) = slot else {
                continue;
            };
            let (name, index) = (p.topic.clone(), p.index);
            match Arc::try_unwrap(p) {
                Ok(p) => {
                    if let Err(e) = p.into_log().close() {
                        tracing::error!(topic = %name, partition = index, error = %e, "closing the log failed");
                    }
                }
                Err(_) => {
                    tracing::warn!(topic = %name, partition = index, "log still in use at shutdown")
                }
            }
        }
    }
}

/// Rolls segments that are due, applies retention, and drops expired
/// grants, every [`MAINTENANCE_INTERVAL`].
async fn maintenance(state: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::server::stopped(&mut shutdown) => return,
        }
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || maintain(&s)).await;
    }
}

fn maintain(state: &BrokerState) {
    for topic in state.topics.all() {
        let policy = retention(&topic.entry);
        for slot in &topic.partitions {
            let PartitionSlot::Ready(p) = slot else {
                continue;
            };
            if let Err(e) = p.log().roll_if_due() {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "segment roll failed");
            }
            match p.log().apply_retention(&policy) {
                Ok(deleted) if !deleted.is_empty() => tracing::info!(
                    target: "strongbox::audit",
                    topic = %p.topic,
                    partition = p.index,
                    segments = deleted.len(),
                    "retention deleted segments (key envelopes first)"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                }
            }
        }
    }
    match state.meta.write(|b| b.remove_expired_acls(now_ms())) {
        Ok(expired) if !expired.is_empty() => {
            tracing::info!(target: "strongbox::audit", rules = expired.len(), "expired ACL rules removed");
            if let Err(e) = state.reload_acl() {
                tracing::error!(error = %e.message, "ACL reload failed");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "removing expired ACL rules failed"),
    }
}
