//! The transport baseline: what one QUIC stream with mutual TLS carries on
//! this machine, with no broker and no storage.
//!
//! A server and a client run in this process on 127.0.0.1, the server in a
//! tokio runtime of its own with two worker threads (as the broker runs in
//! a process of its own). The server uses the broker's transport settings
//! (`ListenerConfig::default()`: stream and connection windows, 4 MiB UDP
//! buffers, GSO), the client the client crate's (quinn's defaults plus
//! keep-alives); both TLS 1.3 with the broker's provider (aws-lc-rs) and
//! the key exchange groups of `--key-exchange` (the broker's
//! `tls.key_exchange`, `prefer-hybrid` by default), and the server
//! requires a client certificate from its CA, as the broker does. The
//! client opens one bidirectional stream and writes `u32 length | message`
//! records, packed into writes of about `batch_bytes` as the producer packs
//! batches. The server parses the lengths (it does not copy the bytes) and
//! acknowledges the running count of whole messages as a `u64` once per
//! write's worth of messages, as the broker acknowledges each batch. The
//! run ends when the count reaches the number sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use strongbox_broker::config::ListenerConfig;
use strongbox_broker::pki::{CertSpec, IssuedCert, TestCa};
use strongbox_broker::tls::{KeyExchange, crypto_provider, group_name, negotiated_group};
use strongbox_broker::transport::endpoint::{bind_udp, quic_server_config, transport_config};
use tokio::sync::{mpsc, oneshot};

use crate::histogram::Histogram;
use crate::report::{Latency, RawQuicReport, Throughput};

/// ALPN of the baseline (not the broker's: nothing here speaks it).
const ALPN: &[u8] = b"strongbox-bench/raw";
/// Bytes of a message's length prefix.
const PREFIX: usize = 4;
/// Give up when no ack arrives for this long.
const STALL: Duration = Duration::from_secs(60);
/// UDP buffers of the client socket, as the client crate asks for.
const CLIENT_UDP_BUFFER: usize = 4 * 1024 * 1024;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct RawQuicOptions {
    /// Bytes of each message (after its length prefix).
    pub size: usize,
    /// Messages to send.
    pub count: u64,
    /// Bytes per write.
    pub batch_bytes: usize,
    /// Largest UDP payload both ends accept and probe for (MTU discovery);
    /// quinn's defaults (1472 accepted, 1452 probed) when `None`.
    pub udp_payload: Option<u16>,
    /// Key exchange groups of both ends.
    pub key_exchange: KeyExchange,
}

/// Runs the baseline.
///
/// # Errors
///
/// Certificates, sockets or the connection fail, the server acknowledges
/// a different count, or acknowledgements stall for a minute.
pub async fn run(opts: RawQuicOptions) -> Result<RawQuicReport> {
    let size = u32::try_from(opts.size).context("message size over 4 GiB")?;
    if opts.count == 0 {
        bail!("nothing to send: --count is 0");
    }
    let per_write = (opts.batch_bytes / (PREFIX + opts.size)).max(1) as u64;
    let pki = Arc::new(Pki::new(opts.key_exchange)?);
    let (addr_tx, addr_rx) = oneshot::channel();
    let server = {
        let pki = pki.clone();
        let expected = opts.count;
        let udp_payload = opts.udp_payload;
        std::thread::Builder::new()
            .name("raw-quic-server".into())
            .spawn(move || server_thread(&pki, udp_payload, expected, per_write, addr_tx))
            .context("starting the server thread")?
    };
    let server_addr = addr_rx
        .await
        .context("the raw-quic server thread ended early")??;
    let client = client_endpoint(&pki, opts.udp_payload)?;
    let result = drive(&client, server_addr, opts, size, per_write).await;
    client.close(0u32.into(), b"done");
    let served = tokio::task::spawn_blocking(move || server.join()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.wait_idle()).await;
    let (acked, elapsed, latency, group) = result?;
    match served {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the raw-quic server failed")),
        Ok(Err(_)) => bail!("the raw-quic server thread panicked"),
        Err(e) => bail!("waiting for the raw-quic server: {e}"),
    }
    Ok(RawQuicReport {
        key_exchange: group,
        message_bytes: opts.size,
        sent: opts.count,
        acked,
        throughput: Throughput::new(acked, acked.saturating_mul(u64::from(size)), elapsed),
        ack_latency: Latency::of(&latency),
    })
}

/// Certificates for both ends: a CA, a server certificate for
/// `localhost`, a client certificate with a SPIFFE URI, as the broker's
/// development setup issues them.
pub(crate) struct Pki {
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Arc<RootCertStore>,
    server: IssuedCert,
    client: IssuedCert,
}

impl Pki {
    pub(crate) fn new(key_exchange: KeyExchange) -> Result<Self> {
        let ca = TestCa::new("strongbox-bench raw-quic CA")?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der())?;
        Ok(Self {
            provider: crypto_provider(key_exchange),
            roots: Arc::new(roots),
            server: ca.issue(&CertSpec::server(&["localhost"]))?,
            client: ca.issue(&CertSpec::client_uri("spiffe://strongbox.dev/bench"))?,
        })
    }
}

/// quinn's endpoint settings and MTU discovery for `udp_payload`.
fn udp_settings(
    udp_payload: Option<u16>,
) -> Result<(quinn::EndpointConfig, quinn::MtuDiscoveryConfig)> {
    let mut endpoint_config = quinn::EndpointConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    if let Some(payload) = udp_payload {
        endpoint_config.max_udp_payload_size(payload)?;
        mtu.upper_bound(payload);
    }
    Ok((endpoint_config, mtu))
}

/// The server side, in a runtime of its own with two worker threads (as
/// the broker runs in a process of its own): binds, reports its address,
/// serves one connection, and returns the count it acknowledged.
fn server_thread(
    pki: &Pki,
    udp_payload: Option<u16>,
    expected: u64,
    ack_every: u64,
    addr_tx: oneshot::Sender<Result<SocketAddr>>,
) -> Result<u64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async move {
        let endpoint = match server_endpoint(pki, udp_payload) {
            Ok(e) => e,
            Err(e) => {
                let message = format!("{e:#}");
                let _ = addr_tx.send(Err(e));
                bail!("{message}");
            }
        };
        let _ = addr_tx.send(endpoint.local_addr().map_err(Into::into));
        let served = tokio::time::timeout(STALL * 10, serve(&endpoint, expected, ack_every)).await;
        endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        served.map_err(|_| anyhow::anyhow!("the raw-quic server timed out"))?
    })
}

/// A server endpoint on 127.0.0.1 with the broker's transport settings,
/// requiring a client certificate from the CA. Must run inside a runtime.
pub(crate) fn server_endpoint(pki: &Pki, udp_payload: Option<u16>) -> Result<quinn::Endpoint> {
    let (endpoint_config, mtu) = udp_settings(udp_payload)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(pki.roots.clone(), pki.provider.clone())
            .build()?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(pki.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.cert_der.clone()], pki.server.key_der())?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    let listener = ListenerConfig::default();
    let mut server_config = quic_server_config(Arc::new(server_tls), &listener)?;
    let mut server_transport = transport_config(&listener)?;
    server_transport.mtu_discovery_config(Some(mtu));
    server_config.transport_config(Arc::new(server_transport));
    let (socket, _) = bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        listener.udp_recv_buffer as usize,
        listener.udp_send_buffer as usize,
    )?;
    Ok(quinn::Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// A client endpoint on 127.0.0.1 holding the client certificate, with
/// the client crate's transport settings. Must run inside a runtime.
pub(crate) fn client_endpoint(pki: &Pki, udp_payload: Option<u16>) -> Result<quinn::Endpoint> {
    let (endpoint_config, mtu) = udp_settings(udp_payload)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(pki.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(pki.roots.clone())
        .with_client_auth_cert(vec![pki.client.cert_der.clone()], pki.client.key_der())?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client_config =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    // The client crate's transport: quinn's defaults plus keep-alives.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.mtu_discovery_config(Some(mtu));
    client_config.transport_config(Arc::new(transport));
    let (socket, _) = bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        CLIENT_UDP_BUFFER,
        CLIENT_UDP_BUFFER,
    )?;
    let mut client =
        quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))?;
    client.set_default_client_config(client_config);
    Ok(client)
}

/// Accepts one connection and one stream, counts whole messages, and acks
/// the running count every `ack_every` messages (one producer batch's
/// worth) and at the end. Returns the count.
async fn serve(endpoint: &quinn::Endpoint, expected: u64, ack_every: u64) -> Result<u64> {
    let incoming = endpoint
        .accept()
        .await
        .context("the endpoint closed before a connection")?;
    let connection = incoming.await.context("raw-quic handshake")?;
    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .context("accepting the stream")?;
    let mut parser = MessageCounter::default();
    let mut acked = 0u64;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .context("reading the stream")?
    {
        parser.feed(&chunk.bytes);
        if parser.messages >= acked + ack_every || parser.messages >= expected {
            acked = parser.messages;
            send.write_all(&acked.to_be_bytes())
                .await
                .context("writing an ack")?;
        }
        if acked >= expected {
            break;
        }
    }
    send.finish().context("finishing the ack stream")?;
    // Let the client read the last ack before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
    Ok(acked)
}

/// Counts `u32 length | bytes` messages across chunk boundaries.
#[derive(Debug, Default)]
struct MessageCounter {
    /// Bytes of the current message's length prefix seen so far.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
    messages: u64,
}

impl MessageCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = data.get(n..).unwrap_or_default();
                if self.body_left == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let n = (PREFIX - self.prefix_len).min(data.len());
            if let (Some(dst), Some(src)) = (
                self.prefix.get_mut(self.prefix_len..self.prefix_len + n),
                data.get(..n),
            ) {
                dst.copy_from_slice(src);
            }
            self.prefix_len += n;
            data = data.get(n..).unwrap_or_default();
            if self.prefix_len == PREFIX {
                self.prefix_len = 0;
                self.body_left = u32::from_be_bytes(self.prefix) as usize;
                if self.body_left == 0 {
                    self.messages += 1;
                }
            }
        }
    }
}

/// One write: messages `first..end` (cumulative), handed over at `at`.
struct Write {
    first: u64,
    end: u64,
    at: Instant,
}

/// Connects, writes every message, and waits for the final ack. Returns
/// the acked count, the time from the first write to the last ack, and
/// the ack latency of every message.
async fn drive(
    client: &quinn::Endpoint,
    server: SocketAddr,
    opts: RawQuicOptions,
    size: u32,
    per_write: u64,
) -> Result<(u64, Duration, Histogram, String)> {
    let connection = client
        .connect(server, "localhost")?
        .await
        .context("raw-quic handshake")?;
    let group = negotiated_group(&connection).map_or_else(|| "unknown".into(), group_name);
    let (mut send, mut recv) = connection.open_bi().await.context("opening the stream")?;
    let payload = vec![0x5A; opts.size];
    let chunk = |messages: u64| -> Bytes {
        let mut b = BytesMut::with_capacity(messages as usize * (PREFIX + opts.size));
        for _ in 0..messages {
            b.put_u32(size);
            b.put_slice(&payload);
        }
        b.freeze()
    };
    // Every full write carries the same bytes: build them once.
    let full = chunk(per_write);
    let (writes_tx, mut writes_rx) = mpsc::unbounded_channel::<Write>();

    let total = opts.count;
    let acks = async move {
        let mut latency = Histogram::new();
        let mut pending: VecDeque<Write> = VecDeque::new();
        let mut acked = 0u64;
        let mut buf = [0u8; 8];
        while acked < total {
            match tokio::time::timeout(STALL, recv.read_exact(&mut buf)).await {
                Err(_) => bail!("no ack for {STALL:?} ({acked} of {total} acked)"),
                Ok(Err(e)) => bail!("reading acks after {acked} of {total}: {e}"),
                Ok(Ok(())) => {}
            }
            let now = Instant::now();
            let count = u64::from_be_bytes(buf);
            while let Ok(w) = writes_rx.try_recv() {
                pending.push_back(w);
            }
            while let Some(w) = pending.front_mut() {
                let covered = w.end.min(count);
                if covered > w.first {
                    latency.record_duration_n(now - w.at, covered - w.first);
                    w.first = covered;
                }
                if w.first >= w.end {
                    pending.pop_front();
                } else {
                    break;
                }
            }
            acked = count;
        }
        Ok::<_, anyhow::Error>((acked, Instant::now(), latency))
    };
    let writes = async move {
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let n = per_write.min(total - sent);
            let bytes = if n == per_write {
                full.clone()
            } else {
                chunk(n)
            };
            let _ = writes_tx.send(Write {
                first: sent,
                end: sent + n,
                at: Instant::now(),
            });
            send.write_chunk(bytes).await.context("writing messages")?;
            sent += n;
        }
        send.finish().context("finishing the stream")?;
        Ok::<_, anyhow::Error>((started, send))
    };
    let (written, acked) = tokio::join!(writes, acks);
    let (started, _send) = written?;
    let (acked, ended, latency) = acked?;
    connection.close(0u32.into(), b"done");
    Ok((
        acked,
        ended.saturating_duration_since(started),
        latency,
        group,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_split_anywhere() {
        let mut wire = Vec::new();
        for len in [0usize, 1, 5, 1024, 3] {
            wire.extend_from_slice(&(len as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len));
        }
        for split in 1..wire.len() {
            let mut c = MessageCounter::default();
            for piece in wire.chunks(split) {
                c.feed(piece);
            }
            assert_eq!(c.messages, 5, "chunks of {split}");
        }
        let mut c = MessageCounter::default();
        c.feed(&wire[..wire.len() - 1]);
        assert_eq!(c.messages, 4, "the last message is not complete");
    }
}
