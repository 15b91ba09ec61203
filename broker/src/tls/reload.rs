//! Certificates without restarts: the broker's own certificate and key, and
//! the client CA bundle, replaced while the broker runs.
//!
//! - [`ServerCertResolver`] sits in the `rustls::ServerConfig` as its
//!   certificate resolver and hands every new handshake the certificate
//!   in force. A reload reads `tls.cert` and `tls.key`, checks that they
//!   parse, that the key matches the certificate and that the certificate
//!   is valid now, and only then swaps them. Established connections keep
//!   what they negotiated.
//! - The client CA bundle lives in the [`ReloadingClientVerifier`] with
//!   the CRLs; a reload rebuilds its verifier with the new roots. As after
//!   a CRL reload, open connections re-check their client certificate
//!   against the new verifier: a connection whose CA was taken out of the
//!   bundle is closed, the others carry on.
//! - [`TlsReloader`] reloads everything on SIGHUP and, every
//!   `tls.crl_reload`, whatever file changed (size or modification time).
//!
//! A file that fails a check changes nothing: the material in force stays,
//! and an error log line names the file and says why. A file is not
//! retried until it changes again, so a broken file is reported once, not
//! every interval.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::{
    FileStamp, ReloadingClientVerifier, TlsError, build_inner, content, load_certs, load_key,
    read_crl_files, stamp,
};

/// What a certificate is, for logs and `config check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject, as text.
    pub subject: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertSummary {
    /// Summarizes the DER certificate `der` read from `path`.
    ///
    /// # Errors
    ///
    /// The certificate does not parse.
    pub fn of(what: &'static str, path: &Path, der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            content(
                what,
                path,
                format!("the first certificate does not parse: {e}"),
            )
        })?;
        let validity = cert.validity();
        Ok(Self {
            subject: cert.subject().to_string(),
            serial: hex::encode(cert.raw_serial()),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// Why the certificate is not valid at `now` (seconds since the
    /// epoch), if it is not.
    pub fn invalid_at(&self, now: i64) -> Option<String> {
        if now < self.not_before {
            Some(format!(
                "it is not valid yet (from {})",
                cert_time(self.not_before)
            ))
        } else if now > self.not_after {
            Some(format!("it expired on {}", cert_time(self.not_after)))
        } else {
            None
        }
    }
}

/// `secs` since the epoch as an RFC 3339 UTC time (certificate validity is
/// in whole seconds).
pub fn cert_time(secs: i64) -> String {
    strongbox_protocol::rfc3339::format_ms(secs.saturating_mul(1000))
        .unwrap_or_else(|| format!("{secs} (seconds since the epoch)"))
}

/// Reads a CA bundle (PEM) into a root store.
///
/// # Errors
///
/// The file cannot be read, holds no certificate, or one of its
/// certificates cannot be a trust anchor; the error names the file.
pub fn load_client_ca(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs("tls.client_ca", path)? {
        roots.add(ca).map_err(|e| {
            content(
                "tls.client_ca",
                path,
                format!("unusable CA certificate: {e}"),
            )
        })?;
    }
    Ok(roots)
}

/// The broker's certificate and key, replaceable while it runs.
pub struct ServerCertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, CertSummary)>,
    stamps: Mutex<(FileStamp, FileStamp)>,
    /// `not_after` of the certificate in force, for the expiry gauge.
    not_after: AtomicI64,
}

impl std::fmt::Debug for ServerCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertResolver")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certificate", &self.summary())
            .finish_non_exhaustive()
    }
}

impl ServerCertResolver {
    /// Loads `cert` and `key` (at start). A certificate that is not valid
    /// now is accepted with a warning (the broker starts; clients will
    /// refuse it), so that an operator can still reach a broker whose
    /// clock or certificate is wrong.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed, or a key that does not match
    /// the certificate.
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamps = (stamp(&cert), stamp(&key));
        let (certified, summary) = read_certified(&cert, &key, &provider)?;
        if let Some(why) = summary.invalid_at(strongbox_protocol::clock::now_secs()) {
            tracing::warn!(file = %cert.display(), subject = %summary.subject, "tls.cert: {why}; clients will refuse it: replace it and send SIGHUP");
        }
        Ok(Self {
            not_after: AtomicI64::new(summary.not_after),
            cert_path: cert,
            key_path: key,
            provider,
            current: RwLock::new((Arc::new(certified), summary)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The certificate in force.
    pub fn summary(&self) -> CertSummary {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// `not_after` of the certificate in force (seconds since the epoch).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Acquire)
    }

    /// Re-reads the certificate and key and, when they pass every check,
    /// uses them for new handshakes. Returns the new certificate.
    ///
    /// # Errors
    ///
    /// The reason, naming the file; the certificate in force stays.
    pub fn reload(&self) -> Result<CertSummary, TlsError> {
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) =
            (stamp(&self.cert_path), stamp(&self.key_path));
        let (certified, summary) = read_certified(&self.cert_path, &self.key_path, &self.provider)?;
        if let Some(why) = summary.invalid_at(strongbox_protocol::clock::now_secs()) {
            return Err(content("tls.cert", &self.cert_path, why));
        }
        self.not_after.store(summary.not_after, Ordering::Release);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            (Arc::new(certified), summary.clone());
        Ok(summary)
    }

    /// Reloads when the certificate or key file changed since the last
    /// (attempted) load.
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload).
    pub fn reload_if_changed(&self) -> Result<Option<CertSummary>, TlsError> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        let changed = *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) != now;
        if changed {
            self.reload().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone(),
        )
    }
}

/// Reads a certificate chain and its key and checks that they belong
/// together.
fn read_certified(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertSummary), TlsError> {
    let chain = load_certs("tls.cert", cert)?;
    let leaf = chain
        .first()
        .ok_or_else(|| content("tls.cert", cert, "no CERTIFICATE block found".into()))?;
    let summary = CertSummary::of("tls.cert", cert, leaf)?;
    let key_der = load_key("tls.key", key)?;
    let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        content(
            "tls.key",
            key,
            format!(
                "cannot be used with the certificate {}: {e}",
                cert.display()
            ),
        )
    })?;
    Ok((certified, summary))
}

impl ReloadingClientVerifier {
    /// Records the CA bundle file the roots came from, so that
    /// [`reload_client_ca`](Self::reload_client_ca) can read it again.
    pub fn with_client_ca_file(mut self, path: PathBuf) -> Self {
        self.ca_stamp = Mutex::new(stamp(&path));
        self.ca_file = Some(path);
        self
    }

    /// The CA bundle file, when there is one.
    pub fn client_ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Re-reads the CA bundle (and the CRLs, which are checked against the
    /// new roots) and swaps the verifier. Open connections re-check their
    /// certificate against it. Returns the number of trusted CAs.
    ///
    /// # Errors
    ///
    /// The bundle or a CRL cannot be read or used, named in the error; the
    /// bundle and CRLs in force stay.
    pub fn reload_client_ca(&self) -> Result<usize, TlsError> {
        let Some(path) = &self.ca_file else {
            return Ok(self.current_roots().len());
        };
        *self.ca_stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp(path);
        let roots = Arc::new(load_client_ca(path)?);
        let loaded = read_crl_files(&self.crl_paths)?;
        let mut in_force = self.in_force.lock().unwrap_or_else(PoisonError::into_inner);
        // A stale CRL file is reported by the CRL reload, not here again.
        let (chosen, _refused) = in_force.select(loaded);
        let inner = build_inner(&roots, &chosen, self.policy, &self.provider)?;
        let count = roots.len();
        *self.roots.write().unwrap_or_else(PoisonError::into_inner) = roots;
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = inner;
        in_force.commit(&chosen);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(count)
    }

    /// True when the CA bundle file changed since the last (attempted)
    /// load.
    pub fn client_ca_changed(&self) -> bool {
        self.ca_file.as_ref().is_some_and(|path| {
            *self.ca_stamp.lock().unwrap_or_else(PoisonError::into_inner) != stamp(path)
        })
    }
}

/// The kinds of TLS material, as metric labels.
const MATERIALS: &[&str] = &["certificate", "client_ca", "crls"];

/// Metrics of TLS reloads.
#[derive(Debug, Clone)]
pub struct TlsMetrics {
    /// Reloads refused, by `material`.
    failures: IntCounterVec,
    /// Reloads applied, by `material`.
    reloads: IntCounterVec,
    /// `not_after` of the broker's certificate in force.
    expiry: IntGauge,
}

impl TlsMetrics {
    /// Registers the families on `registry`.
    ///
    /// # Errors
    ///
    /// A name already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let failures = IntCounterVec::new(
            Opts::new(
                "strongbox_tls_reload_failures_total",
                "TLS files refused on reload (the material in force stayed), by material.",
            ),
            &["material"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "strongbox_tls_reloads_total",
                "TLS material reloaded while running, by material.",
            ),
            &["material"],
        )?;
        let expiry = IntGauge::new(
            "strongbox_tls_certificate_expiry_timestamp_seconds",
            "When the broker's certificate in force expires, seconds since the Unix epoch.",
        )?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        for m in MATERIALS {
            failures.with_label_values(&[m]);
            reloads.with_label_values(&[m]);
        }
        Ok(Self {
            failures,
            reloads,
            expiry,
        })
    }
}

/// What one reload pass did, per material: `None` when it was not
/// attempted (nothing changed).
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// The broker's certificate and key.
    pub certificate: Option<Result<CertSummary, String>>,
    /// The client CA bundle: the number of CAs.
    pub client_ca: Option<Result<usize, String>>,
    /// The CRLs: the verifier generation.
    pub crls: Option<Result<u64, String>>,
}

impl ReloadReport {
    /// True when something was refused.
    pub fn has_failures(&self) -> bool {
        matches!(self.certificate, Some(Err(_)))
            || matches!(self.client_ca, Some(Err(_)))
            || matches!(self.crls, Some(Err(_)))
    }
}

/// Reloads the broker's TLS material: all of it on SIGHUP, what changed on
/// a timer.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    cert: Arc<ServerCertResolver>,
    verifier: Arc<ReloadingClientVerifier>,
    metrics: Option<TlsMetrics>,
}

impl TlsReloader {
    /// A reloader of `cert` and `verifier`, counting into `metrics`.
    pub fn new(
        cert: Arc<ServerCertResolver>,
        verifier: Arc<ReloadingClientVerifier>,
        metrics: Option<TlsMetrics>,
    ) -> Self {
        if let Some(m) = &metrics {
            m.expiry.set(cert.not_after());
        }
        Self {
            cert,
            verifier,
            metrics,
        }
    }

    /// Everything, whether or not the files changed (SIGHUP). Each outcome
    /// is logged. Blocking (file reads and parsing).
    pub fn reload_all(&self) -> ReloadReport {
        let report = ReloadReport {
            certificate: Some(self.cert.reload().map_err(|e| e.to_string())),
            client_ca: Some(self.verifier.reload_client_ca().map_err(|e| e.to_string())),
            crls: Some(self.verifier.reload().map_err(|e| e.to_string())),
        };
        self.account(&report, true);
        report
    }

    /// What changed since the last look. Each outcome is logged. Blocking.
    pub fn reload_changed(&self) -> ReloadReport {
        let report = ReloadReport {
            certificate: self
                .cert
                .reload_if_changed()
                .map_err(|e| e.to_string())
                .transpose(),
            client_ca: self
                .verifier
                .client_ca_changed()
                .then(|| self.verifier.reload_client_ca().map_err(|e| e.to_string())),
            crls: self
                .verifier
                .reload_if_changed()
                .map_err(|e| e.to_string())
                .transpose(),
        };
        self.account(&report, false);
        report
    }

    /// Logs and counts the outcomes of `report` (of a SIGHUP when
    /// `signal`).
    fn account(&self, report: &ReloadReport, signal: bool) {
        let count = |material: &str, ok: bool| {
            if let Some(m) = &self.metrics {
                let family = if ok { &m.reloads } else { &m.failures };
                family.with_label_values(&[material]).inc();
            }
        };
        match &report.certificate {
            Some(Ok(c)) => {
                count("certificate", true);
                if let Some(m) = &self.metrics {
                    m.expiry.set(c.not_after);
                }
                tracing::info!(
                    file = %self.cert.cert_path().display(),
                    subject = %c.subject,
                    serial = %c.serial,
                    not_after = %cert_time(c.not_after),
                    "TLS certificate loaded; new connections use it"
                );
            }
            Some(Err(e)) => {
                count("certificate", false);
                let kept = self.cert.summary();
                tracing::error!(
                    error = %e,
                    kept_serial = %kept.serial,
                    kept_not_after = %cert_time(kept.not_after),
                    "TLS certificate reload refused; the certificate in force stays"
                );
            }
            None => {}
        }
        match &report.client_ca {
            Some(Ok(n)) => {
                count("client_ca", true);
                tracing::info!(
                    file = %self.verifier.client_ca_file().map(|p| p.display().to_string()).unwrap_or_default(),
                    authorities = n,
                    "client CA bundle loaded; new connections are checked against it, open ones re-checked"
                );
            }
            Some(Err(e)) => {
                count("client_ca", false);
                tracing::error!(error = %e, "client CA bundle reload refused; the bundle in force stays");
            }
            None => {}
        }
        match &report.crls {
            Some(Ok(generation)) => {
                count("crls", true);
                if signal {
                    tracing::info!(generation, "CRLs reloaded");
                } else {
                    tracing::info!(generation, "client certificate revocation lists reloaded");
                }
            }
            Some(Err(e)) => {
                count("crls", false);
                if signal {
                    tracing::error!(error = %e, "CRL reload failed; keeping the previous CRLs");
                } else {
                    tracing::error!(error = %e, "CRL reload failed; the previous CRLs stay in force");
                }
            }
            None => {}
        }
    }

    /// Looks for changed files every `interval` until `shutdown` turns true
    /// (or its sender goes away).
    pub fn spawn_watcher(
        &self,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = shutdown.wait_for(|stop| *stop) => {
                        let _ = r;
                        return;
                    }
                }
                let r = me.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || r.reload_changed()).await {
                    tracing::error!(error = %e, "TLS reload task failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertSpec, TestCa};

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = TestCa::new("Test CA").expect("ca");
        let first = ca.issue(&CertSpec::server(&["localhost"])).expect("cert");
        let cert = write(dir.path(), "broker.pem", first.cert_pem.as_bytes());
        let key = write(dir.path(), "broker.key", first.key_pem().as_bytes());
        let resolver = ServerCertResolver::load(
            cert.clone(),
            key.clone(),
            super::super::crypto_provider(Default::default()),
        )
        .expect("load");
        let before = resolver.summary();

        let second = ca.issue(&CertSpec::server(&["localhost"])).expect("cert");
        std::fs::write(&cert, second.cert_pem.as_bytes()).expect("write");
        // The key still belongs to the first certificate: refused.
        let e = resolver.reload().expect_err("mismatch").to_string();
        assert!(e.contains("broker.key") && e.contains("broker.pem"), "{e}");
        assert_eq!(resolver.summary(), before);

        std::fs::write(&key, second.key_pem().as_bytes()).expect("write");
        let after = resolver.reload().expect("reload");
        assert_ne!(after.serial, before.serial);
        assert_eq!(resolver.summary(), after);
        // Unchanged files are not reloaded.
        assert!(resolver.reload_if_changed().expect("no change").is_none());

        std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
        let e = resolver
            .reload_if_changed()
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("broker.pem"), "{e}");
        assert_eq!(resolver.summary(), after);
        // Reported once: not retried until the file changes again.
        assert!(resolver.reload_if_changed().expect("same file").is_none());
    }

    #[test]
    fn an_expired_certificate_is_refused_on_reload() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = TestCa::new("Test CA").expect("ca");
        let good = ca.issue(&CertSpec::server(&["localhost"])).expect("cert");
        let cert = write(dir.path(), "broker.pem", good.cert_pem.as_bytes());
        let key = write(dir.path(), "broker.key", good.key_pem().as_bytes());
        let resolver = ServerCertResolver::load(
            cert.clone(),
            key.clone(),
            super::super::crypto_provider(Default::default()),
        )
        .expect("load");
        let spec = CertSpec::server(&["localhost"]).expired();
        let old = ca.issue(&spec).expect("cert");
        std::fs::write(&cert, old.cert_pem.as_bytes()).expect("write");
        std::fs::write(&key, old.key_pem().as_bytes()).expect("write");
        let e = resolver.reload().expect_err("expired").to_string();
        assert!(e.contains("expired") && e.contains("broker.pem"), "{e}");
        let kept = CertSummary::of("tls.cert", &cert, &good.cert_der).expect("summary");
        assert_eq!(resolver.summary(), kept);
    }
}
