//! The broker's TLS: TLS 1.3 only, ALPN `strongbox/1`, the key exchange
//! groups of `tls.key_exchange` ([`key_exchange`]: hybrid post-quantum
//! X25519MLKEM768 preferred), and a client certificate required from the
//! configured CA bundle, checked against CRLs that are reloaded while the
//! broker runs.
//!
//! rustls builds a client-certificate verifier once, with its CRLs inside.
//! To change CRLs without restarting, [`ReloadingClientVerifier`] sits in
//! the `ServerConfig` instead and delegates every check to an inner webpki
//! verifier that it swaps whole when the CRL files change. A reload that
//! fails (a truncated file, a CRL that does not parse) keeps the previous
//! verifier: a bad CRL push must not open the door, nor lock everyone out.
//!
//! Every certificate the verifier rejects is reported to an
//! [`AuthFailureHook`] with the reason and the identity the certificate
//! claimed, for metrics and the audit trail.
//!
//! The broker's own certificate and key and the client CA bundle reload the
//! same way (see [`reload`]): new handshakes use the new material,
//! established connections carry on.
//!
//! Session resumption is off. A resumed TLS 1.3 session skips the client
//! certificate check, so a client whose certificate was revoked (or expired)
//! after its first connection could keep reconnecting on its ticket. Broker
//! connections are long-lived; a full handshake each time costs little.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use std::{fmt, fs, io};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::sync::watch;

use crate::config::{CrlCheck, TlsConfig};
use crate::identity::{Principal, extract_identity};

mod crl;
pub mod key_exchange;
pub mod reload;
pub mod reset;

pub use crl::{CrlsInForce, LoadedCrl, Refused, read_crl_files};
pub use key_exchange::{
    KeyExchange, client_config_with, crypto_provider, group_name, is_hybrid, negotiated_group,
};
pub use reload::{CertSummary, ServerCertResolver, TlsReloader, load_client_ca};

/// Where in connection setup an authentication failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStage {
    /// The client certificate was rejected (unknown CA, expired, revoked,
    /// malformed). Reported by the verifier.
    Certificate,
    /// The TLS handshake failed otherwise (no certificate presented, no
    /// common ALPN protocol or cipher). Reported by the endpoint.
    Handshake,
    /// The client offered no key exchange group that `tls.key_exchange`
    /// accepts: under `require-hybrid`, a classical-only client. Reported
    /// by the endpoint.
    KeyExchange,
    /// The certificate was valid but yields no acceptable principal.
    /// Reported by the endpoint.
    Identity,
}

impl AuthStage {
    /// A short lowercase name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Handshake => "handshake",
            Self::KeyExchange => "key_exchange",
            Self::Identity => "identity",
        }
    }
}

/// One refused authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// Where it failed.
    pub stage: AuthStage,
    /// Why, for the operator.
    pub reason: String,
    /// The principal the certificate claimed, when it had a readable one.
    /// Not verified: do not trust it, only record it.
    pub claimed: Option<String>,
    /// The peer's address, when known (the verifier does not see it).
    pub remote: Option<std::net::SocketAddr>,
}

/// Called on every authentication failure. Must be cheap and not block: it
/// runs inside the TLS handshake.
pub type AuthFailureHook = Arc<dyn Fn(&AuthFailure) + Send + Sync>;

/// An error loading TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file is (`tls.cert`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds nothing usable of the expected kind.
    #[error("{what} {path}: {message}")]
    Content {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration (for example a key that does not
    /// match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA bundle or a CRL was refused when building the verifier.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Reads the certificates of a PEM file, in order.
///
/// # Errors
///
/// The file cannot be read, or holds no certificate.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(what, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(content(what, path, "no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1, PEM). Its bytes are never
/// formatted into errors or logs.
///
/// # Errors
///
/// The file cannot be read, or holds no private key.
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_readable_by_others(what, path);
    let bytes = zeroize::Zeroizing::new(read(what, path)?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        content(
            what,
            path,
            "no PEM private key found (PKCS#8, SEC1 or PKCS#1)".into(),
        )
    })
}

/// Reads CRLs from files in PEM (one or more `X509 CRL` blocks) or DER.
///
/// # Errors
///
/// A file cannot be read, holds no CRL, or a CRL in it does not parse;
/// the error names the file.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    Ok(read_crl_files(paths)?.into_iter().map(|c| c.der).collect())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn content(what: &'static str, path: &Path, message: String) -> TlsError {
    TlsError::Content {
        what,
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(what: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "{what}: private key file is accessible to group or others; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_what: &str, _path: &Path) {}

/// How client certificates are checked against CRLs.
#[derive(Debug, Clone, Copy)]
pub struct RevocationPolicy {
    /// Which certificates of the chain are checked.
    pub check: CrlCheck,
    /// Accept a certificate no CRL says anything about.
    pub allow_unknown_status: bool,
    /// Refuse when a CRL is past its `nextUpdate`.
    pub enforce_expiry: bool,
}

/// Size and modification time of a file: a cheap "did it change" check.
type FileStamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A client-certificate verifier whose CRLs can be replaced at run time.
pub struct ReloadingClientVerifier {
    /// The trusted client CAs; replaced whole by a CA bundle reload.
    roots: RwLock<Arc<RootCertStore>>,
    /// The CA bundle file, when the roots came from one (see
    /// [`reload`]).
    ca_file: Option<PathBuf>,
    ca_stamp: Mutex<FileStamp>,
    provider: Arc<CryptoProvider>,
    policy: RevocationPolicy,
    crl_paths: Vec<PathBuf>,
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
    /// The newest CRL of each issuer in the verifier: an older one read
    /// later is refused.
    in_force: Mutex<CrlsInForce>,
    stamps: Mutex<Vec<FileStamp>>,
    generation: AtomicU64,
    hook: Option<AuthFailureHook>,
}

impl fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientVerifier")
            .field("crl_paths", &self.crl_paths)
            .field("generation", &self.generation())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientVerifier {
    /// A verifier trusting `roots`, with the CRLs read from `crl_paths`.
    ///
    /// # Errors
    ///
    /// No roots, or a CRL file that cannot be read or parsed.
    pub fn new(
        roots: RootCertStore,
        crl_paths: Vec<PathBuf>,
        policy: RevocationPolicy,
        provider: Arc<CryptoProvider>,
        hook: Option<AuthFailureHook>,
    ) -> Result<Self, TlsError> {
        let roots = Arc::new(roots);
        let stamps: Vec<FileStamp> = crl_paths.iter().map(|p| stamp(p)).collect();
        let mut in_force = CrlsInForce::default();
        let (chosen, refused) = in_force.select(read_crl_files(&crl_paths)?);
        refused.iter().for_each(Refused::warn);
        let inner = build_inner(&roots, &chosen, policy, &provider)?;
        in_force.commit(&chosen);
        Ok(Self {
            roots: RwLock::new(roots),
            ca_file: None,
            ca_stamp: Mutex::new(None),
            provider,
            policy,
            crl_paths,
            inner: RwLock::new(inner),
            in_force: Mutex::new(in_force),
            stamps: Mutex::new(stamps),
            generation: AtomicU64::new(1),
            hook,
        })
    }

    /// Counts successful (re)loads, starting at 1.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The CRL files watched.
    pub fn crl_paths(&self) -> &[PathBuf] {
        &self.crl_paths
    }

    fn current_roots(&self) -> Arc<RootCertStore> {
        self.roots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads every CRL file and swaps the verifier, whether or not the
    /// files changed (for SIGHUP). A CRL older than the one in force for
    /// the same issuer is refused (with a warning naming its file) and the
    /// newer one stays. Returns the new generation.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed, named in the error; the
    /// previous CRLs stay in force.
    pub fn reload(&self) -> Result<u64, TlsError> {
        let stamps: Vec<FileStamp> = self.crl_paths.iter().map(|p| stamp(p)).collect();
        // Remember the stamps even if the load fails: the same broken file is
        // not retried (and logged) every interval, only once it changes again.
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = stamps;
        let loaded = read_crl_files(&self.crl_paths)?;
        let mut in_force = self.in_force.lock().unwrap_or_else(PoisonError::into_inner);
        let (chosen, refused) = in_force.select(loaded);
        refused.iter().for_each(Refused::warn);
        let roots = self.current_roots();
        let inner = build_inner(&roots, &chosen, self.policy, &self.provider)?;
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = inner;
        in_force.commit(&chosen);
        Ok(self
            .generation
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1))
    }

    /// Reloads when any CRL file's size or modification time changed.
    /// Returns the new generation when it reloaded.
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload).
    pub fn reload_if_changed(&self) -> Result<Option<u64>, TlsError> {
        let now: Vec<FileStamp> = self.crl_paths.iter().map(|p| stamp(p)).collect();
        let changed = *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) != now;
        if changed {
            self.reload().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks a chain against the current CRLs and roots without reporting
    /// a failure: for re-checking open connections after a reload.
    ///
    /// # Errors
    ///
    /// Why the chain is no longer acceptable.
    pub fn check_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.current()
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
    }

    /// Polls the CRL files every `interval` until `shutdown` turns true (or
    /// its sender goes away), reloading on change.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            if me.crl_paths.is_empty() {
                return;
            }
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
                let v = me.clone();
                // File reads and CRL parsing are blocking work.
                match tokio::task::spawn_blocking(move || v.reload_if_changed()).await {
                    Ok(Ok(Some(generation))) => {
                        tracing::info!(generation, "client certificate revocation lists reloaded");
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "CRL reload failed; the previous CRLs stay in force");
                    }
                    Err(e) => tracing::error!(error = %e, "CRL reload task failed"),
                }
            }
        })
    }

    fn report(&self, end_entity: &CertificateDer<'_>, error: &rustls::Error) {
        let Some(hook) = &self.hook else { return };
        let claimed = extract_identity(end_entity)
            .ok()
            .and_then(|id| Principal::new(id.name).ok())
            .map(Principal::into_string);
        hook(&AuthFailure {
            stage: AuthStage::Certificate,
            reason: error.to_string(),
            claimed,
            remote: None,
        });
    }
}

/// The webpki verifier over `crls`. When webpki refuses them, the error
/// names the file of the first CRL it refuses alone.
fn build_inner(
    roots: &Arc<RootCertStore>,
    crls: &[LoadedCrl],
    policy: RevocationPolicy,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let ders = || crls.iter().map(|c| c.der.clone());
    build_with(roots, ders(), policy, provider).map_err(|e| {
        crls.iter()
            .find_map(|c| {
                build_with(roots, [c.der.clone()], policy, provider)
                    .err()
                    .map(|one| content("tls.crls", &c.path, format!("CRL refused: {one}")))
            })
            .unwrap_or(e)
    })
}

fn build_with(
    roots: &Arc<RootCertStore>,
    crls: impl IntoIterator<Item = CertificateRevocationListDer<'static>>,
    policy: RevocationPolicy,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls);
    if policy.check == CrlCheck::EndEntity {
        b = b.only_check_end_entity_revocation();
    }
    if policy.allow_unknown_status {
        b = b.allow_unknown_revocation_status();
    }
    if policy.enforce_expiry {
        b = b.enforce_revocation_expiration();
    }
    Ok(b.build()?)
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA names are offered. The CA bundle can be replaced while the
        // broker runs, and rustls borrows the hints for the verifier's
        // whole life; TLS 1.3 makes them optional, a Strongbox client
        // presents the one certificate its profile names, and peers that
        // have not authenticated yet learn nothing of the trusted CAs.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| self.report(end_entity, e))
    }

    // A client whose certificate is fine but who cannot prove it holds the
    // key fails here; reported like a rejected certificate.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .verify_tls12_signature(message, cert, dss)
            .inspect_err(|e| self.report(cert, e))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|e| self.report(cert, e))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The server's TLS configuration, its verifier and its certificate
/// resolver (kept for reloads: see [`TlsReloader`]).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// For quinn's `QuicServerConfig`.
    pub config: Arc<rustls::ServerConfig>,
    /// The client-certificate verifier: client CA bundle and CRLs.
    pub verifier: Arc<ReloadingClientVerifier>,
    /// Keys the QUIC endpoint's stateless resets, derived from the private
    /// key at start so that it stays the same across restarts.
    pub endpoint: Arc<reset::EndpointSecret>,
    /// The broker's own certificate and key.
    pub cert: Arc<ServerCertResolver>,
}

/// Builds the server TLS configuration described by `[tls]`.
///
/// # Errors
///
/// A file that cannot be read or parsed, a key that does not match the
/// certificate, an unusable CA bundle or CRL.
pub fn server_tls(cfg: &TlsConfig, hook: Option<AuthFailureHook>) -> Result<ServerTls, TlsError> {
    let provider = crypto_provider(cfg.key_exchange);
    let roots = load_client_ca(&cfg.client_ca)?;
    if cfg.crls.is_empty() {
        tracing::warn!(
            "tls.crls is empty: revoked client certificates will be accepted until they expire"
        );
    }
    let policy = RevocationPolicy {
        check: cfg.crl_check,
        allow_unknown_status: cfg.allow_unknown_revocation_status,
        enforce_expiry: cfg.enforce_crl_expiry,
    };
    let verifier = Arc::new(
        ReloadingClientVerifier::new(roots, cfg.crls.clone(), policy, provider.clone(), hook)?
            .with_client_ca_file(cfg.client_ca.clone()),
    );
    let cert = Arc::new(ServerCertResolver::load(
        cfg.cert.clone(),
        cfg.key.clone(),
        provider.clone(),
    )?);
    // The stateless-reset key comes from the key file as it is at start;
    // a certificate renewed later does not change it until a restart.
    let endpoint = Arc::new(reset::EndpointSecret::from_private_key(&load_key(
        "tls.key", &cfg.key,
    )?));
    let config = server_config_with_resolver(provider, verifier.clone(), cert.clone())?;
    Ok(ServerTls {
        config,
        verifier,
        endpoint,
        cert,
    })
}

/// A TLS 1.3-only server config with ALPN `strongbox/1`, no session
/// resumption and no early data, verifying clients with `verifier`. The
/// key exchange groups are those of `provider` (see [`crypto_provider`]).
///
/// # Errors
///
/// The key does not match the certificate, or is of an unsupported type.
pub fn server_config_with(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)?;
    let single = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    server_config_with_resolver(provider, verifier, single)
}

/// As [`server_config_with`], with the certificate chosen per handshake by
/// `resolver` (a [`ServerCertResolver`] replaces it on reload).
///
/// # Errors
///
/// The provider does not support TLS 1.3.
pub fn server_config_with_resolver(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![strongbox_protocol::ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}
