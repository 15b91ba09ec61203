//! Harness for the workspace-level end-to-end tests.
//!
//! [`BrokerProcess`] runs the real `strongbox-broker` binary in `dev` mode
//! on `127.0.0.1:0` in a temporary directory, reads the address it bound
//! from its output, and stops it by PID (SIGTERM for a graceful stop,
//! SIGKILL for a crash, SIGKILL on drop). [`cli`] runs the real `strongbox`
//! binary against it.
//!
//! The binaries are looked up next to the test executable's profile
//! directory (`target/<profile>/`); build them first with
//! `cargo build --workspace --bins` (the test script does).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// How long a broker gets to start or stop before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRONGBOX_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target/<profile> directory")
}

/// The path of the workspace binary `name`, which must have been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (scripts/test-all does), or point STRONGBOX_BIN_DIR at them",
        path.display()
    );
    path
}

/// A running `strongbox-broker dev` process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    /// The development directory.
    pub dir: PathBuf,
    /// The QUIC address it bound.
    pub addr: SocketAddr,
    /// The metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl BrokerProcess {
    /// Starts a dev broker in `dir` (created on first use) on a free port.
    ///
    /// # Errors
    ///
    /// The process does not start or does not report its address in time.
    pub fn start_dev(dir: &Path) -> Result<Self> {
        Self::start_dev_with(dir, &[])
    }

    /// As [`BrokerProcess::start_dev`], with extra environment variables.
    ///
    /// # Errors
    ///
    /// As [`BrokerProcess::start_dev`].
    pub fn start_dev_with(dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_dev_args(dir, &[], env)
    }

    /// As [`BrokerProcess::start_dev_with`], with more `dev` arguments
    /// after `--listen 127.0.0.1:0` (such as `--metrics-listen ADDR`).
    ///
    /// # Errors
    ///
    /// As [`BrokerProcess::start_dev`].
    pub fn start_dev_args(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_dev(dir, &["--listen", "127.0.0.1:0"], args, env)
    }

    /// Starts a dev broker in `dir` listening on `addr`: to restart a
    /// broker where its clients expect it, after [`BrokerProcess::crash`].
    ///
    /// # Errors
    ///
    /// As [`BrokerProcess::start_dev`] (also when the port is taken).
    pub fn start_dev_on(dir: &Path, addr: SocketAddr) -> Result<Self> {
        let listen = addr.to_string();
        Self::spawn_dev(
            dir,
            &["--listen", &listen, "--metrics-listen", "127.0.0.1:0"],
            &[],
            &[],
        )
    }

    fn spawn_dev(dir: &Path, listen: &[&str], args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let log = dir.with_extension("broker.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(binary("strongbox-broker"));
        cmd.arg("dev")
            .args(listen)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning strongbox-broker")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the broker never blocks on stdout.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut metrics = None;
        while addr.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                    if let Some(rest) = line.strip_prefix("metrics on http://") {
                        metrics = rest.trim_end_matches("/metrics").parse().ok();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "broker did not report its address; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Ok(Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            addr: addr.ok_or_else(|| anyhow!("no address"))?,
            metrics,
            log,
        })
    }

    /// Starts `strongbox-broker serve --config CONFIG`; `dir` is the
    /// directory its profiles live in (`dir/profiles/NAME.toml`, as `dev`
    /// lays them out) and its log goes to `dir.serve.log`. The config's
    /// listen addresses should use port 0.
    ///
    /// # Errors
    ///
    /// The process does not start or does not report its addresses in
    /// time.
    pub fn start_serve(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let log = dir.with_extension("serve.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(binary("strongbox-broker"));
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning strongbox-broker serve")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                    if let Some(rest) = line.strip_prefix("metrics on http://") {
                        metrics = rest.trim_end_matches("/metrics").parse().ok();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "broker did not report its addresses; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Ok(Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            addr: addr.ok_or_else(|| anyhow!("no address"))?,
            metrics,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The profile file of `name` (`admin`, `alice`, `bob`).
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("profiles").join(format!("{name}.toml"))
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Resident memory of the process, in KiB.
    ///
    /// # Errors
    ///
    /// The process is gone.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib_of(self.pid().ok_or_else(|| anyhow!("not running"))?)
    }

    /// Sends SIGTERM and waits for a graceful exit; returns its status code.
    ///
    /// # Errors
    ///
    /// The process does not exit within [`START_TIMEOUT`].
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        self.signal_and_wait(Signal::SIGTERM)
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    ///
    /// # Errors
    ///
    /// The signal cannot be sent.
    pub fn crash(&mut self) -> Result<()> {
        self.signal_and_wait(Signal::SIGKILL).map(|_| ())
    }

    fn signal_and_wait(&mut self, signal: Signal) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        kill(pid, signal).context("sending the signal")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit after {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the broker's log holds `count` lines containing
    /// `needle`, failing after [`START_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// The lines did not appear in time.
    pub async fn wait_for_log(&self, needle: &str, count: usize) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self
                .log_text()
                .lines()
                .filter(|l| l.contains(needle))
                .count();
            if found >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the broker log has {found} of {count} lines with {needle:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` without waiting (SIGHUP reloads CRLs and ACLs).
    ///
    /// # Errors
    ///
    /// The process is gone or the signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal).context("sending the signal")
    }

    /// The Prometheus text of `/metrics`.
    ///
    /// # Errors
    ///
    /// The endpoint is off or does not answer.
    pub fn metrics_text(&self) -> Result<String> {
        metrics_text_at(self.metrics.ok_or_else(|| anyhow!("metrics are off"))?)
    }

    /// The sum of every sample of the metric family `name`.
    ///
    /// # Errors
    ///
    /// As [`BrokerProcess::metrics_text`].
    pub fn metric_sum(&self, name: &str) -> Result<f64> {
        Ok(self
            .metrics_text()?
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Prometheus text of `/metrics` at `addr` (the HTTP response,
/// headers included).
///
/// # Errors
///
/// Nothing answers at `addr`.
pub fn metrics_text_at(addr: SocketAddr) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Resident memory of process `pid`, in KiB (for sampling from a task
/// that does not own the [`BrokerProcess`]).
///
/// # Errors
///
/// The process is gone.
pub fn rss_kib_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))
}

/// Runs the `strongbox` CLI with `args` and `STRONGBOX_PROFILE=profile`.
///
/// # Errors
///
/// The binary cannot be run.
pub fn cli(profile: &Path, args: &[&str]) -> Result<Output> {
    cli_with_stdin(profile, args, None)
}

/// As [`cli`], feeding `stdin`.
///
/// # Errors
///
/// The binary cannot be run.
pub fn cli_with_stdin(profile: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    use std::io::Write;
    let mut child = Command::new(binary("strongbox"))
        .args(args)
        .env("STRONGBOX_PROFILE", profile)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning strongbox")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

/// Copies the directory `src` to `dst` (which must not exist), recursively,
/// keeping file and directory permissions: what someone who copies a data
/// directory gets.
///
/// # Errors
///
/// A file or directory cannot be read or written.
pub fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    std::fs::set_permissions(dst, std::fs::metadata(src)?.permissions())?;
    Ok(())
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// True when `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub mod access;
pub mod cli_checks;
pub mod cluster;
pub mod relay;
pub mod running_cli;
pub mod softhsm;

/// Async helpers over the client library.
pub mod client {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::{Context, Result, bail};
    use futures::StreamExt;
    use strongbox_client::{Client, ClientConfig, ConsumedRecord, Consumer};
    use strongbox_protocol::model::{Durability, TopicConfig};

    /// How long a test waits for records before failing.
    pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects with a profile file.
    ///
    /// # Errors
    ///
    /// Connection failures.
    pub async fn connect(profile: &Path) -> Result<Client> {
        let config = ClientConfig::from_profile(profile)
            .with_context(|| format!("profile {}", profile.display()))?;
        Client::connect(config).await.context("connecting")
    }

    /// A topic config with `partitions` partitions and `fsync` durability.
    pub fn topic(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            durability: Durability::Fsync,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: None,
            segment_ms: None,
            dedicated_kek: false,
        }
    }

    /// Reads exactly `n` records, failing on an error item, on the end of
    /// the stream, or after [`READ_TIMEOUT`] without progress.
    ///
    /// # Errors
    ///
    /// As described.
    pub async fn read_n(consumer: &mut Consumer, n: usize) -> Result<Vec<ConsumedRecord>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(READ_TIMEOUT, consumer.next()).await {
                Ok(Some(Ok(record))) => out.push(record),
                Ok(Some(Err(e))) => bail!("after {} records: {e}", out.len()),
                Ok(None) => bail!("stream ended after {} of {n} records", out.len()),
                Err(_) => bail!("no record for {READ_TIMEOUT:?} after {} of {n}", out.len()),
            }
        }
        Ok(out)
    }

    /// Asserts that nothing more arrives within `quiet`.
    ///
    /// # Errors
    ///
    /// A record arrived.
    pub async fn expect_quiet(consumer: &mut Consumer, quiet: Duration) -> Result<()> {
        match tokio::time::timeout(quiet, consumer.next()).await {
            Err(_) => Ok(()),
            Ok(Some(Ok(r))) => bail!("unexpected record {}@{}", r.partition, r.offset),
            Ok(Some(Err(e))) => bail!("unexpected error {e}"),
            Ok(None) => Ok(()),
        }
    }
}

/// Raw QUIC connections that speak the wire protocol by hand, for tests
/// that must send what the client library never would (no certificate, a
/// wrong ALPN, malformed or out-of-order frames).
pub mod raw {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context, Result, anyhow, bail};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder};
    use strongbox_protocol::frames::control::{Hello, Welcome};
    use strongbox_protocol::{ALPN, DecodeError, SUPPORTED_VERSIONS};

    /// How long a raw read waits before the test fails.
    pub const RAW_TIMEOUT: Duration = Duration::from_secs(30);

    /// A client certificate chain and its key.
    #[derive(Debug)]
    pub struct Identity {
        /// The chain, leaf first.
        pub chain: Vec<CertificateDer<'static>>,
        /// The private key.
        pub key: PrivateKeyDer<'static>,
    }

    impl Identity {
        /// From PEM text.
        ///
        /// # Errors
        ///
        /// Either does not parse.
        pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .context("certificate PEM")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).context("key PEM")?;
            Ok(Self { chain, key })
        }

        /// The `<name>.pem` and `<name>.key` of a dev directory's profiles.
        ///
        /// # Errors
        ///
        /// The files cannot be read or parsed.
        pub fn profile(dev_dir: &Path, name: &str) -> Result<Self> {
            let dir = dev_dir.join("profiles");
            Self::from_pem(
                &std::fs::read(dir.join(format!("{name}.pem")))?,
                &std::fs::read(dir.join(format!("{name}.key")))?,
            )
        }
    }

    /// A QUIC client config trusting `ca_pem`, presenting `identity` (or no
    /// certificate), offering `alpn`. TLS 1.3, ring.
    ///
    /// # Errors
    ///
    /// The CA does not parse, or rustls refuses the config.
    pub fn client_config(
        ca_pem: &[u8],
        identity: Option<Identity>,
        alpn: &[&[u8]],
    ) -> Result<quinn::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("CA PEM")?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let mut tls = match identity {
            Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }

    /// The config of a dev directory's profile `name`, with ALPN `strongbox/1`.
    ///
    /// # Errors
    ///
    /// As [`client_config`].
    pub fn profile_config(dev_dir: &Path, name: &str) -> Result<quinn::ClientConfig> {
        client_config(
            &std::fs::read(dev_dir.join("ca/ca.pem"))?,
            Some(Identity::profile(dev_dir, name)?),
            &[ALPN],
        )
    }

    /// Opens a QUIC connection to `addr` (server name `localhost`). With
    /// TLS 1.3 this may succeed even when the broker refuses the client's
    /// certificate: the refusal arrives on the first stream operation.
    ///
    /// # Errors
    ///
    /// The endpoint cannot be created, or the handshake fails.
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<quinn::Connection> {
        let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
        let connecting = endpoint.connect_with(config, addr, "localhost")?;
        let conn = tokio::time::timeout(RAW_TIMEOUT, connecting)
            .await
            .context("QUIC handshake hung")??;
        Ok(conn)
    }

    /// How a stream read ended when it did not yield a frame.
    #[derive(Debug)]
    pub enum End {
        /// The broker finished the stream cleanly.
        Finished,
        /// The broker reset the stream with this code.
        Reset(u64),
        /// The connection is gone.
        Connection(quinn::ConnectionError),
        /// The broker sent bytes that do not decode.
        Decode(DecodeError),
        /// Another read failure.
        Other(String),
    }

    impl End {
        /// The application error code this ending carries: a reset's code,
        /// or the code of an application close of the connection.
        pub fn code(&self) -> Option<u64> {
            match self {
                Self::Reset(code) => Some(*code),
                Self::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                    Some(c.error_code.into_inner())
                }
                _ => None,
            }
        }
    }

    /// One bidirectional stream carrying frames.
    #[derive(Debug)]
    pub struct FrameStream {
        /// The send side.
        pub send: quinn::SendStream,
        /// The receive side.
        pub recv: quinn::RecvStream,
        decoder: FrameDecoder,
    }

    impl FrameStream {
        /// Opens a new bidirectional stream.
        ///
        /// # Errors
        ///
        /// The connection is gone.
        pub async fn open(conn: &quinn::Connection) -> Result<Self, quinn::ConnectionError> {
            let (send, recv) = conn.open_bi().await?;
            Ok(Self {
                send,
                recv,
                decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE),
            })
        }

        /// Writes one frame.
        ///
        /// # Errors
        ///
        /// Encoding or writing failed.
        pub async fn send(&mut self, frame: &Frame) -> Result<()> {
            let bytes = frame.to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
            self.send_raw(&bytes).await
        }

        /// Writes raw bytes.
        ///
        /// # Errors
        ///
        /// Writing failed.
        pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
            self.send.write_all(bytes).await?;
            Ok(())
        }

        /// The next frame from the broker, or how the stream ended.
        /// Fails the test after [`RAW_TIMEOUT`].
        ///
        /// # Errors
        ///
        /// How the stream ended instead of yielding a frame.
        pub async fn next(&mut self) -> Result<Frame, End> {
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => return Ok(frame),
                    Ok(None) => {}
                    Err(e) => return Err(End::Decode(e)),
                }
                let read = tokio::time::timeout(RAW_TIMEOUT, self.recv.read_chunk(64 * 1024, true))
                    .await
                    .map_err(|_| End::Other(format!("no frame within {RAW_TIMEOUT:?}")))?;
                match read {
                    Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                    Ok(None) => return Err(End::Finished),
                    Err(quinn::ReadError::Reset(code)) => {
                        return Err(End::Reset(code.into_inner()));
                    }
                    Err(quinn::ReadError::ConnectionLost(e)) => return Err(End::Connection(e)),
                    Err(e) => return Err(End::Other(e.to_string())),
                }
            }
        }

        /// The next frame, waiting as long as it takes (cancel-safe only
        /// between frames: for `select!` loops that own the stream).
        ///
        /// # Errors
        ///
        /// How the stream ended instead of yielding a frame.
        pub async fn next_unbounded(&mut self) -> Result<Frame, End> {
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => return Ok(frame),
                    Ok(None) => {}
                    Err(e) => return Err(End::Decode(e)),
                }
                match self.recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                    Ok(None) => return Err(End::Finished),
                    Err(quinn::ReadError::Reset(code)) => {
                        return Err(End::Reset(code.into_inner()));
                    }
                    Err(quinn::ReadError::ConnectionLost(e)) => return Err(End::Connection(e)),
                    Err(e) => return Err(End::Other(e.to_string())),
                }
            }
        }

        /// Reads until the broker refuses: the code of an `Error` frame, a
        /// stream reset or an application close of the connection.
        /// Frames other than `Error` before it are returned alongside.
        ///
        /// # Errors
        ///
        /// The stream ended without a code.
        pub async fn refusal(&mut self) -> Result<(u64, Vec<Frame>)> {
            let mut before = Vec::new();
            loop {
                match self.next().await {
                    Ok(Frame::Error(e)) => return Ok((u64::from(e.code), before)),
                    Ok(other) => before.push(other),
                    Err(end) => {
                        return end
                            .code()
                            .map(|c| (c, before))
                            .ok_or_else(|| anyhow!("the stream ended without a code: {end:?}"));
                    }
                }
            }
        }
    }

    /// Opens the control stream and does the Hello/Welcome handshake.
    ///
    /// # Errors
    ///
    /// The broker refused, or answered something else.
    pub async fn handshake(conn: &quinn::Connection) -> Result<(FrameStream, Welcome)> {
        let mut control = FrameStream::open(conn).await?;
        control.send(&hello()).await?;
        match control.next().await {
            Ok(Frame::Welcome(w)) => Ok((control, w)),
            Ok(other) => bail!("expected Welcome, got {other:?}"),
            Err(end) => bail!("no Welcome: {end:?}"),
        }
    }

    /// Keeps a raw connection alive for as long as the returned task runs:
    /// answers the broker's `Ping`s and sends its own every second, so the
    /// broker's keep-alive check never closes it.
    pub fn keep_alive(mut control: FrameStream) -> tokio::task::JoinHandle<()> {
        use strongbox_protocol::frames::control::{Ping, Pong};
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut nonce = 0u64;
            let mut outstanding = false;
            loop {
                tokio::select! {
                    _ = tick.tick(), if !outstanding => {
                        nonce += 1;
                        outstanding = true;
                        if control.send(&Frame::Ping(Ping { nonce })).await.is_err() {
                            return;
                        }
                    }
                    frame = control.next_unbounded() => match frame {
                        Ok(Frame::Ping(p)) => {
                            if control.send(&Frame::Pong(Pong { nonce: p.nonce })).await.is_err() {
                                return;
                            }
                        }
                        Ok(Frame::Pong(_)) => outstanding = false,
                        Ok(_) => {}
                        Err(_) => return,
                    },
                }
            }
        })
    }

    /// The `Hello` of a version 1 client.
    pub fn hello() -> Frame {
        Frame::Hello(Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            client_name: "strongbox-tests/raw".into(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            features: 0,
        })
    }
}
