//! The cost of setting up a connection: full QUIC + TLS 1.3 handshakes
//! with mutual TLS, one after the other, between a server and a client in
//! this process on 127.0.0.1.
//!
//! The endpoints are those of the raw-QUIC baseline ([`crate::raw_quic`]):
//! the broker's transport settings on the server, the client crate's on the
//! client, certificates from a test CA (ECDSA P-256, as the development
//! setup issues them) and a client certificate the server requires and
//! verifies. The server runs in a tokio runtime of its own with two worker
//! threads, as the broker does in a process of its own.
//!
//! Each handshake: the client connects (no session resumption: the broker
//! turns it off, so every connection pays a full handshake), opens a
//! stream, sends one byte and waits for the server's one-byte answer (so
//! the server has finished its side too, as a `Hello`/`Welcome` exchange
//! would need), then closes. Reported: handshakes per second, the
//! latency of `connect` (to the client's handshake completion) and of the
//! first answer, the bytes the client sent and received per connection
//! (the key shares are where a post-quantum key exchange shows), and the
//! CPU time of the whole process (both ends) per handshake, which depends
//! less than wall time on what else the machine runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::resource::{UsageWho, getrusage};
use serde::Serialize;
use tokio::sync::oneshot;

use strongbox_broker::tls::{KeyExchange, group_name, negotiated_group};

use crate::histogram::Histogram;
use crate::raw_quic::{Pki, client_endpoint, server_endpoint};
use crate::report::{Latency, Spread};

/// Handshakes before the measured ones (code paths and allocator warm).
const WARM_UP: u64 = 20;
/// Give up on one handshake after this long.
const STALL: Duration = Duration::from_secs(30);

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeOptions {
    /// Handshakes per run.
    pub count: u64,
    /// Runs.
    pub runs: u32,
    /// Key exchange groups of both ends.
    pub key_exchange: KeyExchange,
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandshakeRun {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Handshakes per second, one at a time.
    pub per_sec: f64,
    /// From `connect` to the client's handshake completion.
    pub connect: Latency,
    /// From `connect` to the server's answer on the first stream.
    pub first_answer: Latency,
    /// CPU time of the process (client and server) per handshake, µs.
    pub cpu_us_per_handshake: f64,
    /// UDP payload bytes the client sent per connection (mean).
    pub client_sent_bytes: f64,
    /// UDP payload bytes the client received per connection (mean).
    pub client_received_bytes: f64,
    /// UDP datagrams the client sent per connection (mean).
    pub client_sent_datagrams: f64,
}

/// Every run and the spread of each figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandshakeReport {
    /// The key exchange policy of both ends.
    pub policy: String,
    /// The key exchange group the handshakes negotiated.
    pub key_exchange: String,
    /// Each run.
    pub runs: Vec<HandshakeRun>,
    /// Handshakes per second.
    pub per_sec: Spread,
    /// Median `connect` latency, µs.
    pub connect_p50_us: Spread,
    /// Median first-answer latency, µs.
    pub first_answer_p50_us: Spread,
    /// CPU µs per handshake.
    pub cpu_us_per_handshake: Spread,
    /// Client bytes sent per connection.
    pub client_sent_bytes: Spread,
    /// Client bytes received per connection.
    pub client_received_bytes: Spread,
}

impl HandshakeReport {
    fn new(policy: KeyExchange, key_exchange: String, runs: Vec<HandshakeRun>) -> Self {
        let spread =
            |f: &dyn Fn(&HandshakeRun) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        Self {
            policy: policy.name().to_owned(),
            key_exchange,
            per_sec: spread(&|r| r.per_sec),
            connect_p50_us: spread(&|r| r.connect.p50_us),
            first_answer_p50_us: spread(&|r| r.first_answer.p50_us),
            cpu_us_per_handshake: spread(&|r| r.cpu_us_per_handshake),
            client_sent_bytes: spread(&|r| r.client_sent_bytes),
            client_received_bytes: spread(&|r| r.client_received_bytes),
            runs,
        }
    }

    /// Text for people.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "key exchange {} (policy {})\n",
            self.key_exchange, self.policy
        );
        for (i, r) in self.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "run {}: {} handshakes in {:.2} s = {:.0}/s; connect p50 {:.0} µs p99 {:.0} µs; \
                 first answer p50 {:.0} µs; {:.0} µs CPU each; client sent {:.0} B in {:.1} \
                 datagrams, received {:.0} B",
                i + 1,
                r.handshakes,
                r.seconds,
                r.per_sec,
                r.connect.p50_us,
                r.connect.p99_us,
                r.first_answer.p50_us,
                r.cpu_us_per_handshake,
                r.client_sent_bytes,
                r.client_sent_datagrams,
                r.client_received_bytes,
            );
        }
        let _ = writeln!(
            s,
            "summary over {} run(s): median (min .. max)",
            self.runs.len()
        );
        let row = |s: &mut String, name: &str, sp: &Spread| {
            let _ = writeln!(
                s,
                "  {name:<28} {:>10.0}  ({:.0} .. {:.0})",
                sp.median, sp.min, sp.max
            );
        };
        row(&mut s, "handshakes/s", &self.per_sec);
        row(&mut s, "connect p50 (µs)", &self.connect_p50_us);
        row(&mut s, "first answer p50 (µs)", &self.first_answer_p50_us);
        row(&mut s, "CPU per handshake (µs)", &self.cpu_us_per_handshake);
        row(&mut s, "client bytes sent", &self.client_sent_bytes);
        row(&mut s, "client bytes received", &self.client_received_bytes);
        s
    }
}

/// Runs the measurement.
///
/// # Errors
///
/// Certificates or sockets fail, a handshake fails or stalls for
/// [`STALL`].
pub async fn run(opts: HandshakeOptions) -> Result<HandshakeReport> {
    if opts.count == 0 {
        bail!("nothing to measure: --count is 0");
    }
    let pki = Arc::new(Pki::new(opts.key_exchange)?);
    let (addr_tx, addr_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = {
        let pki = pki.clone();
        std::thread::Builder::new()
            .name("handshake-server".into())
            .spawn(move || server_thread(&pki, addr_tx, stop_rx))
            .context("starting the server thread")?
    };
    let addr = addr_rx
        .await
        .context("the handshake server thread ended early")??;
    let client = client_endpoint(&pki, None)?;
    let mut runs = Vec::new();
    let mut outcome = Ok(());
    let mut group = String::from("unknown");
    for _ in 0..WARM_UP {
        match one(&client, addr).await {
            Ok(o) => group = o.group,
            Err(e) => {
                outcome = Err(e.context("warm-up handshake"));
                break;
            }
        }
    }
    if outcome.is_ok() {
        for _ in 0..opts.runs {
            match measure(&client, addr, opts.count).await {
                Ok(r) => runs.push(r),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    client.close(0u32.into(), b"done");
    let _ = stop_tx.send(());
    let served = tokio::task::spawn_blocking(move || server.join()).await;
    outcome?;
    match served {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the handshake server failed")),
        Ok(Err(_)) => bail!("the handshake server thread panicked"),
        Err(e) => bail!("waiting for the handshake server: {e}"),
    }
    Ok(HandshakeReport::new(opts.key_exchange, group, runs))
}

/// What one connection cost the client.
struct One {
    connect: Duration,
    first_answer: Duration,
    sent_bytes: u64,
    received_bytes: u64,
    sent_datagrams: u64,
    group: String,
}

async fn measure(client: &quinn::Endpoint, addr: SocketAddr, count: u64) -> Result<HandshakeRun> {
    let mut connect = Histogram::new();
    let mut first_answer = Histogram::new();
    let (mut sent, mut received, mut datagrams) = (0u64, 0u64, 0u64);
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    for i in 0..count {
        let o = one(client, addr)
            .await
            .with_context(|| format!("handshake {} of {count}", i + 1))?;
        connect.record_duration(o.connect);
        first_answer.record_duration(o.first_answer);
        sent += o.sent_bytes;
        received += o.received_bytes;
        datagrams += o.sent_datagrams;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    let n = count as f64;
    Ok(HandshakeRun {
        handshakes: count,
        seconds: elapsed.as_secs_f64(),
        per_sec: n / elapsed.as_secs_f64().max(1e-9),
        connect: Latency::of(&connect),
        first_answer: Latency::of(&first_answer),
        cpu_us_per_handshake: cpu.as_secs_f64() * 1e6 / n,
        client_sent_bytes: sent as f64 / n,
        client_received_bytes: received as f64 / n,
        client_sent_datagrams: datagrams as f64 / n,
    })
}

/// One connection: handshake, one byte each way, close.
async fn one(client: &quinn::Endpoint, addr: SocketAddr) -> Result<One> {
    let started = Instant::now();
    let connection = tokio::time::timeout(STALL, client.connect(addr, "localhost")?)
        .await
        .context("handshake stalled")?
        .context("handshake")?;
    let connect = started.elapsed();
    let group = negotiated_group(&connection).map_or_else(|| "unknown".into(), group_name);
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&[1]).await?;
        send.finish()?;
        let mut answer = [0u8; 1];
        recv.read_exact(&mut answer).await?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(STALL, exchange)
        .await
        .context("first answer stalled")??;
    let first_answer = started.elapsed();
    let stats = connection.stats();
    connection.close(0u32.into(), b"done");
    Ok(One {
        connect,
        first_answer,
        sent_bytes: stats.udp_tx.bytes,
        received_bytes: stats.udp_rx.bytes,
        sent_datagrams: stats.udp_tx.datagrams,
        group,
    })
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let secs = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok(secs(usage.user_time()) + secs(usage.system_time()))
}

/// The server: answers one byte on the first stream of every connection,
/// until told to stop.
fn server_thread(
    pki: &Pki,
    addr_tx: oneshot::Sender<Result<SocketAddr>>,
    stop: oneshot::Receiver<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async move {
        let endpoint = match server_endpoint(pki, None) {
            Ok(e) => e,
            Err(e) => {
                let message = format!("{e:#}");
                let _ = addr_tx.send(Err(e));
                bail!("{message}");
            }
        };
        let _ = addr_tx.send(endpoint.local_addr().map_err(Into::into));
        tokio::pin!(stop);
        loop {
            let incoming = tokio::select! {
                _ = &mut stop => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                if let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let mut byte = [0u8; 1];
                    if recv.read_exact(&mut byte).await.is_ok() {
                        let _ = send.write_all(&byte).await;
                        let _ = send.finish();
                    }
                }
                let _ = tokio::time::timeout(STALL, connection.closed()).await;
            });
        }
        endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        Ok(())
    })
}
