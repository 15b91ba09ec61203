//! Shared fixtures of the broker's integration tests: a QUIC server on
//! 127.0.0.1:0 with certificates from `pki`, and a client that makes one
//! request on it.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use strongbox_broker::config::BrokerConfig;
use strongbox_broker::identity::IdentityMapper;
use strongbox_broker::metrics::BrokerMetrics;
use strongbox_broker::pki::{CertSpec, IssuedCert, TestCa};
use strongbox_broker::tls::{AuthFailure, ReloadingClientVerifier, server_tls};
use strongbox_broker::transport::endpoint::{
    AcceptSettings, AcceptedConnection, ServeReport, Server,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Hang guard for anything a test waits on.
pub const GUARD: Duration = Duration::from_secs(30);

/// What to vary in a test server.
pub struct Options<'a> {
    /// Extra TOML appended to the generated config (`[identity]`, ...).
    pub extra_toml: String,
    /// Certificates revoked by the CRL the server starts with.
    pub revoked: Vec<&'a IssuedCert>,
    /// `tls.crl_reload`.
    pub crl_reload: &'static str,
    /// `listener.max_connections`.
    pub max_connections: u32,
    /// `listener.shutdown_grace`.
    pub shutdown_grace: &'static str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            extra_toml: String::new(),
            revoked: Vec::new(),
            crl_reload: "1h",
            max_connections: 100,
            shutdown_grace: "5s",
        }
    }
}

/// A running test server.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    pub crl_path: PathBuf,
    pub shutdown: watch::Sender<bool>,
    pub task: JoinHandle<ServeReport>,
    /// Principals the handler saw, in order.
    pub principals: mpsc::UnboundedReceiver<String>,
    /// Authentication failures reported to the hook.
    pub failures: Arc<Mutex<Vec<AuthFailure>>>,
    pub verifier: Arc<ReloadingClientVerifier>,
    pub metrics: Arc<BrokerMetrics>,
    pub crl_watcher: JoinHandle<()>,
}

/// Writes `contents` to `path` atomically (temp file and rename), as an
/// operator publishing a new CRL should.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The handler of the test servers: report the principal, answer one
/// request on the first stream with it, then wait for the client to close
/// or the broker to shut down (and then say `bye` on a second stream if the
/// client opened one).
pub async fn echo_principal(conn: AcceptedConnection, seen: mpsc::UnboundedSender<String>) {
    let AcceptedConnection {
        connection,
        principal,
        mut shutdown,
        ..
    } = conn;
    let _ = seen.send(principal.to_string());
    if let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let _ = recv.read_to_end(1024).await;
        let _ = send.write_all(principal.as_str().as_bytes()).await;
        let _ = send.finish();
    }
    let shutting_down = tokio::select! {
        _ = connection.closed() => false,
        r = shutdown.wait_for(|s| *s) => r.is_ok(),
    };
    if shutting_down {
        // In-flight work is answered before the connection goes.
        if let Ok((mut send, _recv)) = connection.open_bi().await {
            let _ = send.write_all(b"bye").await;
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    }
}

/// Starts a server with a fresh CA.
pub async fn start(opts: Options<'_>) -> TestBroker {
    let ca = TestCa::new("Test CA").unwrap();
    start_with_ca(ca, opts, echo_principal).await
}

/// Starts a server trusting `ca`, running `handler` on each connection.
pub async fn start_with_ca<H, F>(ca: TestCa, opts: Options<'_>, handler: H) -> TestBroker
where
    H: Fn(AcceptedConnection, mpsc::UnboundedSender<String>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let server = ca
        .issue(&CertSpec::server(&["localhost", "127.0.0.1"]))
        .unwrap();
    server.write_to(dir.path(), "server").unwrap();
    let crl_path = dir.path().join("crl.pem");
    std::fs::write(&crl_path, ca.crl(&opts.revoked, 1).unwrap()).unwrap();
    let toml = format!(
        r#"
        [listener]
        addr = "127.0.0.1:0"
        max_connections = {max}
        shutdown_grace = "{grace}"
        udp_recv_buffer = 1048576
        udp_send_buffer = 1048576

        [tls]
        cert = "server.pem"
        key = "server.key"
        client_ca = "ca.pem"
        crls = ["crl.pem"]
        crl_reload = "{reload}"
        {extra}
        "#,
        max = opts.max_connections,
        grace = opts.shutdown_grace,
        reload = opts.crl_reload,
        extra = opts.extra_toml,
    );
    let cfg = BrokerConfig::from_toml_str(&toml, dir.path())
        .unwrap()
        .validate()
        .unwrap();

    let failures = Arc::new(Mutex::new(Vec::new()));
    let sink = failures.clone();
    let metrics = Arc::new(BrokerMetrics::new().unwrap());
    let hook = metrics.auth_failure_hook(Some(Arc::new(move |f: &AuthFailure| {
        sink.lock().unwrap().push(f.clone());
    })));
    let tls = server_tls(&cfg.tls, Some(hook.clone())).unwrap();
    let identity = Arc::new(IdentityMapper::from_config(&cfg.identity).unwrap());
    let settings =
        AcceptSettings::from_config(&cfg.listener, identity, Some(hook), Some(metrics.clone()));
    let server = Server::bind(&cfg.listener, &tls, settings).unwrap();
    let addr = server.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    let crl_watcher = tls.verifier.spawn_watcher(cfg.tls.crl_reload.0, rx.clone());
    let (seen_tx, principals) = mpsc::unbounded_channel();
    let handler = Arc::new(handler);
    let task = tokio::spawn(server.serve(rx, move |conn| {
        let handler = handler.clone();
        let seen = seen_tx.clone();
        async move { handler(conn, seen).await }
    }));
    TestBroker {
        addr,
        ca,
        dir,
        crl_path,
        shutdown,
        task,
        principals,
        failures,
        verifier: tls.verifier,
        metrics,
        crl_watcher,
    }
}

impl TestBroker {
    /// Signals shutdown and waits for the accept loop to finish.
    pub async fn stop(self) -> ServeReport {
        self.shutdown.send_replace(true);
        let report = tokio::time::timeout(GUARD, self.task)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(GUARD, self.crl_watcher)
            .await
            .unwrap()
            .unwrap();
        report
    }

    /// Waits until at least `n` failures were reported, and returns them.
    pub async fn failures(&self, n: usize) -> Vec<AuthFailure> {
        tokio::time::timeout(GUARD, async {
            loop {
                let f = self.failures.lock().unwrap().clone();
                if f.len() >= n {
                    return f;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("auth failure was not reported")
    }
}

/// A quinn client config: TLS 1.3 trusting `ca`, presenting `cert` when
/// given, offering `alpn` (none when empty).
pub fn client_config(
    ca: &TestCa,
    cert: Option<&IssuedCert>,
    alpn: &[&[u8]],
) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert_der.clone()], c.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(Arc::new(tls)).unwrap()))
}

/// The config of a well-behaved client presenting `cert`.
pub fn good_client(ca: &TestCa, cert: &IssuedCert) -> quinn::ClientConfig {
    client_config(ca, Some(cert), &[strongbox_protocol::ALPN])
}

/// Why a request failed, as the client saw it.
#[derive(Debug)]
pub struct Refused {
    /// The TLS alert, when the connection was closed with one.
    pub alert: Option<u8>,
    /// The application close code, when closed by the broker's code.
    pub app_code: Option<u64>,
    /// Whether the server refused the connection outright.
    pub connection_refused: bool,
    /// The error, as text.
    pub message: String,
}

fn refused(e: &quinn::ConnectionError) -> Refused {
    let (alert, app_code, connection_refused) = match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            let alert = code
                .checked_sub(0x100)
                .filter(|a| *a <= 0xff)
                .map(|a| a as u8);
            (alert, None, code == 0x2)
        }
        quinn::ConnectionError::ApplicationClosed(c) => {
            (None, Some(c.error_code.into_inner()), false)
        }
        _ => (None, None, false),
    };
    Refused {
        alert,
        app_code,
        connection_refused,
        message: e.to_string(),
    }
}

/// A client endpoint on 127.0.0.1:0.
pub fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Connects and makes one request; returns the principal the broker
/// answered, or why it failed. With TLS 1.3 a refused client certificate
/// surfaces after `connect`, on the first stream operation, so the outcome
/// is only known once the answer is read.
pub async fn request_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<String, Refused> {
    tokio::time::timeout(GUARD, async {
        let conn = endpoint
            .connect_with(config, addr, "localhost")
            .unwrap()
            .await
            .map_err(|e| refused(&e))?;
        let outcome = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(b"whoami").await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(1024).await.ok()
        }
        .await;
        match outcome {
            Some(bytes) => {
                conn.close(0u32.into(), b"done");
                Ok(String::from_utf8(bytes).unwrap())
            }
            None => {
                let reason = conn.closed().await;
                Err(refused(&reason))
            }
        }
    })
    .await
    .expect("request hung")
}

/// [`request_on`] from a fresh client endpoint.
pub async fn request(addr: SocketAddr, config: quinn::ClientConfig) -> Result<String, Refused> {
    let endpoint = client_endpoint();
    let r = request_on(&endpoint, addr, config).await;
    let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
    r
}

/// TLS alert numbers the tests expect.
pub mod alert {
    pub const CERTIFICATE_REVOKED: u8 = 44;
    pub const CERTIFICATE_EXPIRED: u8 = 45;
    pub const UNKNOWN_CA: u8 = 48;
    pub const CERTIFICATE_REQUIRED: u8 = 116;
    pub const NO_APPLICATION_PROTOCOL: u8 = 120;
}
