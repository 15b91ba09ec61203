//! A **protocol test peer** for the client's wire behaviour. It is *not*
//! the broker: it keeps topics as an in-memory `Vec` of record batches per
//! partition and has none of the broker's storage, encryption, ACL engine
//! or configuration.
//!
//! It runs a real quinn server on 127.0.0.1:0 with mutual TLS (certificates
//! from [`certs`]), maps the client certificate's SPIFFE URI to a
//! principal, and drives the broker-side session machines of
//! `strongbox_protocol::session` (`BrokerControl`, `BrokerProducerStream`,
//! `BrokerSubscription`, `BrokerAdminStream`) so that every frame the
//! client sends is checked by the same rules the broker applies. Tests can
//! script it: deny an operation to a principal, drop the connection after
//! a number of `Produce` frames, and observe duplicates and credit use.
//!
//! Everything it starts stops when it is dropped.

#![allow(dead_code, unreachable_pub)]

pub mod certs;
mod streams;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder};
use strongbox_protocol::model::AclRule;
use strongbox_protocol::session::control::{BrokerControl, BrokerControlConfig};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use certs::TestPki;

/// The limits the peer announces in `Welcome`.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    pub max_in_flight: u32,
    pub max_batch_size: u32,
    pub keepalive: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            max_batch_size: 1 << 20,
            keepalive: Duration::from_secs(5),
        }
    }
}

/// One stored batch.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: u64,
    pub count: u32,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

/// Idempotence state of one producer on one partition.
#[derive(Debug, Default)]
struct SequenceState {
    /// Sequence of the last record appended.
    last: Option<u32>,
    /// (base sequence, base offset) of every appended batch.
    batches: Vec<(u32, u64)>,
}

#[derive(Debug, Default)]
pub struct State {
    /// Topic name to partition count.
    pub topics: BTreeMap<String, u32>,
    pub logs: HashMap<(String, u32), Vec<StoredBatch>>,
    /// (principal, operation, topic) refused with `NotAuthorized`.
    pub denied: Vec<(String, String, String)>,
    pub acls: Vec<AclRule>,
    /// Committed offsets per (group, topic, partition).
    pub commits: HashMap<(String, String, u32), u64>,
    producers: HashMap<u64, u16>,
    sequences: HashMap<(u64, String, u32), SequenceState>,
    next_producer: u64,
}

impl State {
    pub fn end_offset(&self, topic: &str, partition: u32) -> u64 {
        self.logs
            .get(&(topic.to_owned(), partition))
            .and_then(|l| l.last())
            .map_or(0, |b| b.base_offset + u64::from(b.count))
    }

    /// Every record value of a partition, in offset order.
    pub fn values(&self, topic: &str, partition: u32) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        for b in self
            .logs
            .get(&(topic.to_owned(), partition))
            .into_iter()
            .flatten()
        {
            let batch = RecordBatch::parse(b.bytes.clone()).expect("stored batches are valid");
            for r in batch.records() {
                out.push((b.base_offset + u64::from(r.index), r.value));
            }
        }
        out
    }

    fn is_denied(&self, principal: &str, op: &str, topic: &str) -> bool {
        self.denied
            .iter()
            .any(|(p, o, t)| p == principal && o == op && t == topic)
    }
}

/// Counters tests assert on.
#[derive(Debug, Default)]
pub struct Stats {
    pub produce_frames: AtomicUsize,
    pub duplicates: AtomicUsize,
    pub connections: AtomicUsize,
    /// Records bytes sent on subscriptions, in `credit_cost` units.
    pub records_bytes_sent: AtomicU64,
    /// Credit granted by subscribers (initial and `Credit` frames).
    pub credit_granted: AtomicU64,
    /// Largest amount of records bytes sent beyond the credit granted.
    pub max_overdraft: AtomicU64,
    pub commits: AtomicUsize,
}

/// What the peer shares with its connection tasks.
pub struct Shared {
    pub state: Mutex<State>,
    pub stats: Stats,
    pub appended: Notify,
    /// A subscription could not send although records were waiting.
    pub stalled: Notify,
    /// Close the connection once this many `Produce` frames have arrived
    /// (after appending the last one, before acknowledging it). 0: never.
    pub drop_after_produce: AtomicUsize,
    /// Close the connection after this many `Records` frames. 0: never.
    pub drop_after_records: AtomicUsize,
    /// Refuse this many upcoming `Produce` frames with the retriable
    /// `partition_unavailable`.
    pub refuse_produce: AtomicUsize,
    /// Take `Produce` frames and never answer them (a broker that hangs).
    pub swallow_produce: AtomicBool,
    /// Refuse this many upcoming `Subscribe` frames with the retriable
    /// `partition_unavailable`.
    pub refuse_subscribe: AtomicUsize,
    /// Offset ranges `(topic, partition, first, end)` whose batches the
    /// peer reports with `PartitionError` (`data_damaged`) instead of
    /// sending them.
    pub damaged: Mutex<Vec<(String, u32, u64, u64)>>,
    /// When set, every admin request but `WhoAmI` is refused with
    /// `not_leader` carrying this hint.
    pub not_leader: Mutex<Option<strongbox_protocol::model::LeaderHint>>,
    pub limits: PeerLimits,
}

/// The running peer.
pub struct Peer {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub pki: Arc<TestPki>,
    endpoint: quinn::Endpoint,
    accept: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.accept.abort();
        self.endpoint.close(0u32.into(), b"test over");
    }
}

impl Peer {
    pub async fn start(pki: Arc<TestPki>, limits: PeerLimits) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("add ca");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.server.cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server chain");
        let key = PrivateKeyDer::from_pem_slice(pki.server.key.as_bytes()).expect("server key");
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        tls.alpn_protocols = vec![strongbox_protocol::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic server");
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(1000u32.into());
        server.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server, (std::net::Ipv4Addr::LOCALHOST, 0).into())
            .expect("bind 127.0.0.1:0");
        let addr = endpoint.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_producer: 1000,
                ..State::default()
            }),
            stats: Stats::default(),
            appended: Notify::new(),
            stalled: Notify::new(),
            drop_after_produce: AtomicUsize::new(0),
            drop_after_records: AtomicUsize::new(0),
            refuse_produce: AtomicUsize::new(0),
            swallow_produce: AtomicBool::new(false),
            refuse_subscribe: AtomicUsize::new(0),
            damaged: Mutex::new(Vec::new()),
            not_leader: Mutex::new(None),
            limits,
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        Self {
            addr,
            shared,
            pki,
            endpoint,
            accept,
        }
    }

    /// A client configuration for `who`.
    pub fn client_config(&self, who: &certs::CertPem) -> strongbox_client::ClientConfig {
        let mut config = strongbox_client::ClientConfig::new(
            self.addr.to_string(),
            strongbox_client::PemSource::pem(self.pki.ca.as_bytes().to_vec()),
            strongbox_client::PemSource::pem(who.cert.as_bytes().to_vec()),
            strongbox_client::PemSource::pem(who.key.as_bytes().to_vec()),
        );
        config.server_name = Some("localhost".into());
        config.connect_timeout = Duration::from_secs(10);
        config.reconnect.initial_backoff = Duration::from_millis(10);
        config.reconnect.max_backoff = Duration::from_millis(200);
        config.reconnect.give_up_after = Some(Duration::from_secs(20));
        config
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.shared
            .state
            .lock()
            .expect("state")
            .topics
            .insert(name.to_owned(), partitions);
    }

    pub fn deny(&self, principal: &str, op: &str, topic: &str) {
        self.shared.state.lock().expect("state").denied.push((
            principal.to_owned(),
            op.to_owned(),
            topic.to_owned(),
        ));
    }

    pub fn allow_all(&self) {
        self.shared.state.lock().expect("state").denied.clear();
    }

    pub fn values(&self, topic: &str, partition: u32) -> Vec<(u64, Bytes)> {
        self.shared
            .state
            .lock()
            .expect("state")
            .values(topic, partition)
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                return;
            };
            shared.stats.connections.fetch_add(1, Ordering::SeqCst);
            let principal = principal_of(&conn).unwrap_or_else(|| "anonymous".into());
            serve_connection(conn, principal, shared).await;
        });
    }
}

/// The first SAN URI of the client's leaf certificate.
fn principal_of(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    })
}

async fn serve_connection(conn: quinn::Connection, principal: String, shared: Arc<Shared>) {
    let Ok((send, recv)) = conn.accept_bi().await else {
        return;
    };
    let control = tokio::spawn(streams::control(
        conn.clone(),
        send,
        recv,
        principal.clone(),
        shared.clone(),
    ));
    let mut tasks = vec![control];
    loop {
        let Ok((send, recv)) = conn.accept_bi().await else {
            break;
        };
        tasks.push(tokio::spawn(streams::dispatch(
            conn.clone(),
            send,
            recv,
            principal.clone(),
            shared.clone(),
        )));
    }
    for t in tasks {
        t.abort();
    }
}

/// Reads frames from a receive stream.
pub struct Reader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl Reader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE),
        }
    }

    /// The next frame; `None` at the end of the stream or on any error.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(_) => return None,
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                _ => return None,
            }
        }
    }
}

pub async fn write(send: &mut quinn::SendStream, frame: &Frame) -> bool {
    match frame.to_bytes(DEFAULT_MAX_FRAME_SIZE) {
        Ok(bytes) => send.write_all(&bytes).await.is_ok(),
        Err(_) => false,
    }
}

pub fn control_config(limits: &PeerLimits) -> BrokerControlConfig {
    BrokerControlConfig {
        versions: vec![1],
        broker_id: "test-peer".into(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        max_batch_size: limits.max_batch_size,
        max_in_flight: limits.max_in_flight,
        keepalive: limits.keepalive,
        handshake_timeout: Duration::from_secs(5),
    }
}

pub fn new_control(limits: &PeerLimits, principal: &str) -> BrokerControl {
    BrokerControl::new(
        control_config(limits),
        principal,
        tokio::time::Instant::now().into_std(),
    )
}
