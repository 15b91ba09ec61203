//! Prometheus metrics: the families of DESIGN.md ("Operability"), as typed
//! handles on one registry, and the small HTTP endpoint that serves them
//! ([`http`]).
//!
//! Every family is registered at start, and every series whose label values
//! are known in advance (refusal reasons, authentication stages, ACL
//! operations, key operations) is created at zero, so a scrape shows the
//! full set before the first connection and an alert on `increase()` sees
//! the first event. Per-topic families get a series when a topic is loaded
//! or created ([`BrokerMetrics::touch_topic`]) and lose it through
//! [`BrokerMetrics::forget_topic`] when the topic is deleted, which bounds
//! their cardinality by the number of live topics; consumer lag gets one
//! when a group commits.
//!
//! ```
//! use strongbox_broker::metrics::BrokerMetrics;
//!
//! let m = BrokerMetrics::new()?;
//! m.messages_in.with_label_values(&["orders"]).inc_by(3);
//! assert!(m.encode()?.contains("strongbox_messages_in_total{topic=\"orders\"} 3"));
//! # Ok::<(), prometheus::Error>(())
//! ```

pub mod http;
pub mod process;

use std::fmt;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use strongbox_protocol::model::Operations;

use crate::tls::{AuthFailure, AuthFailureHook, AuthStage};

/// The `reason` label values of `strongbox_connections_refused_total`:
/// over the connection limit, then the authentication stages.
pub const REFUSAL_REASONS: &[&str] = &[
    "limit",
    "certificate",
    "handshake",
    "key_exchange",
    "identity",
];

/// The authentication stages, as `strongbox_auth_failures_total` labels them.
const AUTH_STAGES: &[AuthStage] = &[
    AuthStage::Certificate,
    AuthStage::Handshake,
    AuthStage::KeyExchange,
    AuthStage::Identity,
];

/// The key exchange groups whose `strongbox_tls_handshakes_total` series
/// exist from the start: every group some `tls.key_exchange` policy allows.
const KX_GROUPS: &[&str] = &[
    "X25519MLKEM768",
    "SecP256r1MLKEM768",
    "X25519",
    "secp256r1",
    "secp384r1",
];

/// Latency buckets, in seconds: 50 µs to 2.5 s. Appends on a fast disk
/// land in the first buckets, HSM calls and fsyncs in the middle ones.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// The broker's metrics.
pub struct BrokerMetrics {
    registry: Registry,
    /// Connections open now (after the handshake and identity check).
    pub connections_active: IntGauge,
    /// Connections accepted since start.
    pub connections_total: IntCounter,
    /// Connection attempts refused, by `reason`: `limit` (over
    /// `listener.max_connections`), `certificate` (the client certificate
    /// was rejected: unknown CA, expired, revoked), `handshake` (no
    /// certificate, no common ALPN), `key_exchange` (no key exchange group
    /// that `tls.key_exchange` accepts: under `require-hybrid`, a
    /// classical-only client), `identity` (no acceptable principal).
    pub connections_refused: IntCounterVec,
    /// Authentication failures, by `stage` (`certificate`, `handshake`,
    /// `key_exchange`, `identity`).
    pub auth_failures: IntCounterVec,
    /// Completed TLS handshakes, by the key exchange `group` negotiated
    /// (`X25519MLKEM768`, `X25519`, ...).
    pub tls_handshakes: IntCounterVec,
    /// Requests denied by ACLs, by `operation`.
    pub acl_denials: IntCounterVec,
    /// Certificates and requests the peer links refused, by `reason`.
    pub peer_denials: IntCounterVec,
    /// Records appended, by `topic`.
    pub messages_in: IntCounterVec,
    /// Records delivered to subscribers, by `topic`.
    pub messages_out: IntCounterVec,
    /// Record batch bytes appended, by `topic`.
    pub bytes_in: IntCounterVec,
    /// Record batch bytes delivered, by `topic`.
    pub bytes_out: IntCounterVec,
    /// Time from a `Produce` frame's arrival to its acknowledgement.
    pub produce_latency: Histogram,
    /// Time to read one `Records` frame's worth of batches from the log.
    pub fetch_latency: Histogram,
    /// Duration of each fsync of the log.
    pub fsync_latency: Histogram,
    /// Bytes sealed and opened with AES-256-GCM, by `operation`
    /// (`seal`, `open`).
    pub aead_bytes: IntCounterVec,
    /// Key provider operations, by `operation` (`wrap`, `unwrap`,
    /// `generate`, `lookup`, `destroy`, `rewrap`) and `provider` (`file`,
    /// `pkcs11`).
    pub key_operations: IntCounterVec,
    /// Latency of key provider operations, by `operation`.
    pub key_operation_latency: HistogramVec,
    /// Errors returned by the HSM (or the file key provider), by
    /// `operation`.
    pub hsm_errors: IntCounterVec,
    /// 1 while the key provider answers, 0 after a call failed because it
    /// was unreachable (until a call succeeds again).
    pub key_provider_up: IntGauge,
    /// KEK versions marked compromised and not yet destroyed: alert when
    /// above 0.
    pub key_compromised: IntGauge,
    /// Subscriptions open now.
    pub subscriptions_active: IntGauge,
    /// Records between a group's committed offset and the partition's end,
    /// by `topic`, `partition` and `group`.
    pub consumer_lag: IntGaugeVec,
}

impl fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerMetrics").finish_non_exhaustive()
    }
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(r: &Registry, name: &str, help: &str) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl BrokerMetrics {
    /// All families, registered on a fresh registry.
    ///
    /// # Errors
    ///
    /// Only on a programming error (a duplicate or malformed name).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let connections_active = IntGauge::new(
            "strongbox_connections_active",
            "Client connections open now.",
        )?;
        r.register(Box::new(connections_active.clone()))?;
        let connections_total = IntCounter::new(
            "strongbox_connections_total",
            "Client connections accepted since start.",
        )?;
        r.register(Box::new(connections_total.clone()))?;
        let subscriptions_active =
            IntGauge::new("strongbox_subscriptions_active", "Subscriptions open now.")?;
        r.register(Box::new(subscriptions_active.clone()))?;
        let key_provider_up = IntGauge::new(
            "strongbox_key_provider_up",
            "1 while the key provider answers; 0 after a call failed because it was unreachable.",
        )?;
        key_provider_up.set(1);
        r.register(Box::new(key_provider_up.clone()))?;
        let key_compromised = IntGauge::new(
            "strongbox_key_compromised",
            "Key-encryption key versions marked compromised and not yet destroyed.",
        )?;
        r.register(Box::new(key_compromised.clone()))?;
        let key_operation_latency = HistogramVec::new(
            HistogramOpts::new(
                "strongbox_key_operation_seconds",
                "Latency of key provider operations.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        r.register(Box::new(key_operation_latency.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "strongbox_consumer_lag",
                "Records between a consumer group's committed offset and the partition end.",
            ),
            &["topic", "partition", "group"],
        )?;
        r.register(Box::new(consumer_lag.clone()))?;
        let m = Self {
            connections_refused: counter_vec(
                &r,
                "strongbox_connections_refused_total",
                "Connection attempts refused.",
                &["reason"],
            )?,
            auth_failures: counter_vec(
                &r,
                "strongbox_auth_failures_total",
                "Refused authentications, by stage.",
                &["stage"],
            )?,
            tls_handshakes: counter_vec(
                &r,
                "strongbox_tls_handshakes_total",
                "Completed TLS handshakes, by the key exchange group negotiated.",
                &["group"],
            )?,
            acl_denials: counter_vec(
                &r,
                "strongbox_acl_denials_total",
                "Requests denied by ACLs.",
                &["operation"],
            )?,
            peer_denials: counter_vec(
                &r,
                "strongbox_peer_denials_total",
                "Certificates and requests refused on the links between cluster nodes.",
                &["reason"],
            )?,
            messages_in: counter_vec(
                &r,
                "strongbox_messages_in_total",
                "Records appended.",
                &["topic"],
            )?,
            messages_out: counter_vec(
                &r,
                "strongbox_messages_out_total",
                "Records delivered to subscribers.",
                &["topic"],
            )?,
            bytes_in: counter_vec(
                &r,
                "strongbox_bytes_in_total",
                "Record batch bytes appended.",
                &["topic"],
            )?,
            bytes_out: counter_vec(
                &r,
                "strongbox_bytes_out_total",
                "Record batch bytes delivered.",
                &["topic"],
            )?,
            produce_latency: histogram(
                &r,
                "strongbox_produce_latency_seconds",
                "Time from a Produce frame's arrival to its acknowledgement.",
            )?,
            fetch_latency: histogram(
                &r,
                "strongbox_fetch_latency_seconds",
                "Time to read the batches of one Records frame from the log.",
            )?,
            fsync_latency: histogram(
                &r,
                "strongbox_fsync_latency_seconds",
                "Duration of log fsyncs.",
            )?,
            aead_bytes: counter_vec(
                &r,
                "strongbox_aead_bytes_total",
                "Bytes sealed or opened with AES-256-GCM.",
                &["operation"],
            )?,
            key_operations: counter_vec(
                &r,
                "strongbox_key_operations_total",
                "Key provider operations.",
                &["operation", "provider"],
            )?,
            hsm_errors: counter_vec(
                &r,
                "strongbox_hsm_errors_total",
                "Errors returned by the HSM.",
                &["operation"],
            )?,
            registry: r,
            connections_active,
            connections_total,
            key_operation_latency,
            key_provider_up,
            key_compromised,
            subscriptions_active,
            consumer_lag,
        };
        m.create_known_series();
        Ok(m)
    }

    /// Creates, at zero, the series whose label values are known before
    /// anything happens, so they are scraped from the start.
    fn create_known_series(&self) {
        for reason in REFUSAL_REASONS {
            self.connections_refused.with_label_values(&[reason]);
        }
        for stage in AUTH_STAGES {
            self.auth_failures.with_label_values(&[stage.name()]);
        }
        for group in KX_GROUPS {
            self.tls_handshakes.with_label_values(&[group]);
        }
        for (_, name) in Operations::NAMED {
            self.acl_denials.with_label_values(&[name]);
        }
        for reason in strongbox_peer::DenyReason::ALL {
            self.peer_denials.with_label_values(&[reason.name()]);
        }
    }

    /// Creates the per-topic series of `topic` at zero (a topic loaded at
    /// start or just created), so a dashboard shows it before its first
    /// record. The broker's own topics (`_audit`) get none.
    pub fn touch_topic(&self, topic: &str) {
        if topic.starts_with('_') {
            return;
        }
        for family in [
            &self.messages_in,
            &self.messages_out,
            &self.bytes_in,
            &self.bytes_out,
        ] {
            family.with_label_values(&[topic]);
        }
    }

    /// The registry, to add families the broker defines elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in Prometheus text format 0.0.4.
    ///
    /// # Errors
    ///
    /// Only on an encoder failure.
    pub fn encode(&self) -> prometheus::Result<String> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Counts an authentication failure, which is also a refused
    /// connection (reason: its stage).
    pub fn record_auth_failure(&self, failure: &AuthFailure) {
        self.auth_failures
            .with_label_values(&[failure.stage.name()])
            .inc();
        self.connections_refused
            .with_label_values(&[failure.stage.name()])
            .inc();
    }

    /// A hook for the TLS verifier and the endpoint that counts failures
    /// here and then passes them on to `next` (the audit trail, say).
    pub fn auth_failure_hook(self: &Arc<Self>, next: Option<AuthFailureHook>) -> AuthFailureHook {
        let me = self.clone();
        Arc::new(move |f: &AuthFailure| {
            me.record_auth_failure(f);
            if let Some(next) = &next {
                next(f);
            }
        })
    }

    /// Drops the per-topic series of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        for family in [
            &self.messages_in,
            &self.messages_out,
            &self.bytes_in,
            &self.bytes_out,
        ] {
            // Absent series are fine: the topic may never have been used.
            let _ = family.remove_label_values(&[topic]);
        }
    }

    /// Drops the lag series of one group on one partition.
    pub fn forget_consumer_lag(&self, topic: &str, partition: u32, group: &str) {
        let _ = self
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string(), group]);
    }
}

/// One unit of a gauge, held for as long as the thing it counts lives:
/// added when made, taken back when dropped, so a task that is aborted
/// (and never reaches its own clean-up code) cannot leave the gauge high.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Adds one to `gauge` until the guard is dropped.
    pub fn hold(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_family_is_exposed() {
        let m = BrokerMetrics::new().unwrap();
        // Labelled families only appear once they have a series: those of
        // a topic when it is loaded or created.
        m.touch_topic("t");
        m.aead_bytes.with_label_values(&["seal"]);
        m.key_operations.with_label_values(&["unwrap", "pkcs11"]);
        m.key_operation_latency.with_label_values(&["unwrap"]);
        m.hsm_errors.with_label_values(&["unwrap"]);
        m.consumer_lag.with_label_values(&["t", "0", "g"]);
        let text = m.encode().unwrap();
        for name in [
            "strongbox_connections_active",
            "strongbox_connections_total",
            "strongbox_connections_refused_total",
            "strongbox_auth_failures_total",
            "strongbox_tls_handshakes_total",
            "strongbox_acl_denials_total",
            "strongbox_peer_denials_total",
            "strongbox_messages_in_total",
            "strongbox_messages_out_total",
            "strongbox_bytes_in_total",
            "strongbox_bytes_out_total",
            "strongbox_produce_latency_seconds_bucket",
            "strongbox_fetch_latency_seconds_bucket",
            "strongbox_fsync_latency_seconds_bucket",
            "strongbox_aead_bytes_total",
            "strongbox_key_operations_total",
            "strongbox_key_operation_seconds_bucket",
            "strongbox_hsm_errors_total",
            "strongbox_key_provider_up",
            "strongbox_key_compromised",
            "strongbox_subscriptions_active",
            "strongbox_consumer_lag",
        ] {
            assert!(text.contains(&format!("\n{name}")), "{name} missing");
        }
    }

    #[test]
    fn series_with_known_labels_start_at_zero() {
        let text = BrokerMetrics::new().unwrap().encode().unwrap();
        for line in [
            "strongbox_connections_active 0",
            "strongbox_subscriptions_active 0",
            "strongbox_connections_refused_total{reason=\"limit\"} 0",
            "strongbox_connections_refused_total{reason=\"certificate\"} 0",
            "strongbox_connections_refused_total{reason=\"handshake\"} 0",
            "strongbox_connections_refused_total{reason=\"key_exchange\"} 0",
            "strongbox_connections_refused_total{reason=\"identity\"} 0",
            "strongbox_auth_failures_total{stage=\"certificate\"} 0",
            "strongbox_auth_failures_total{stage=\"handshake\"} 0",
            "strongbox_auth_failures_total{stage=\"key_exchange\"} 0",
            "strongbox_tls_handshakes_total{group=\"X25519MLKEM768\"} 0",
            "strongbox_tls_handshakes_total{group=\"X25519\"} 0",
            "strongbox_auth_failures_total{stage=\"identity\"} 0",
            "strongbox_acl_denials_total{operation=\"publish\"} 0",
            "strongbox_acl_denials_total{operation=\"admin\"} 0",
        ] {
            assert!(
                text.contains(&format!("\n{line}\n")),
                "{line} missing:\n{text}"
            );
        }
        assert!(!text.contains("topic=\"_audit\""));
    }

    #[test]
    fn an_authentication_failure_is_a_refused_connection() {
        let m = BrokerMetrics::new().unwrap();
        m.record_auth_failure(&AuthFailure {
            stage: AuthStage::Certificate,
            reason: "revoked".into(),
            claimed: None,
            remote: None,
        });
        assert_eq!(m.auth_failures.with_label_values(&["certificate"]).get(), 1);
        assert_eq!(
            m.connections_refused
                .with_label_values(&["certificate"])
                .get(),
            1
        );
        assert_eq!(m.connections_refused.with_label_values(&["limit"]).get(), 0);
    }

    #[tokio::test]
    async fn a_guard_gives_its_unit_back_when_its_task_is_aborted() {
        let m = Arc::new(BrokerMetrics::new().unwrap());
        let (held, wait) = tokio::sync::oneshot::channel::<()>();
        let m2 = m.clone();
        let task = tokio::spawn(async move {
            let _active = GaugeGuard::hold(&m2.subscriptions_active);
            let _ = held.send(());
            std::future::pending::<()>().await;
        });
        wait.await.unwrap();
        assert_eq!(m.subscriptions_active.get(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(m.subscriptions_active.get(), 0);
    }

    #[test]
    fn hook_counts_and_forwards() {
        let m = Arc::new(BrokerMetrics::new().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let hook = m.auth_failure_hook(Some(Arc::new(move |f: &AuthFailure| {
            seen2.lock().unwrap().push(f.stage);
        })));
        hook(&AuthFailure {
            stage: AuthStage::Handshake,
            reason: "x".into(),
            claimed: None,
            remote: None,
        });
        assert_eq!(m.auth_failures.with_label_values(&["handshake"]).get(), 1);
        assert_eq!(*seen.lock().unwrap(), vec![AuthStage::Handshake]);
    }

    #[test]
    fn forget_topic_drops_its_series() {
        let m = BrokerMetrics::new().unwrap();
        m.messages_in.with_label_values(&["gone"]).inc();
        m.forget_topic("gone");
        m.forget_topic("never-used");
        assert!(!m.encode().unwrap().contains("gone"));
    }
}
