//! The connection to the broker: QUIC with mutual TLS, the control stream
//! handshake, keep-alive, and reconnection with backoff.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongbox_protocol::frames::control::Welcome;
use strongbox_protocol::session::control::{ClientControl, ClientControlConfig, ControlEvent};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::wire::{FrameReader, write_frame};

/// How long `close` waits for the broker to read our `Goodbye`.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// The limits the broker announced in its `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLimits {
    /// The protocol version in use.
    pub version: u16,
    /// Largest frame the broker accepts.
    pub max_frame_size: u32,
    /// Largest record batch the broker accepts.
    pub max_batch_size: u32,
    /// Most unacknowledged batches per producer stream.
    pub max_in_flight: u32,
    /// The keep-alive interval the broker asked for.
    pub keepalive: Duration,
}

/// One established QUIC connection and its control stream.
#[derive(Debug)]
pub(crate) struct Session {
    /// Increases with every connection this client makes.
    pub(crate) generation: u64,
    /// The broker address (`host:port`) this session reached.
    pub(crate) broker: String,
    pub(crate) conn: quinn::Connection,
    pub(crate) welcome: Welcome,
    /// Largest frame we accept.
    pub(crate) recv_max_frame: u32,
    close_tx: Mutex<Option<oneshot::Sender<()>>>,
    control_task: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    /// True while the connection is up.
    pub(crate) fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Largest frame the broker accepts from us.
    pub(crate) fn send_max_frame(&self) -> u32 {
        self.welcome.max_frame_size
    }

    /// Opens a bidirectional stream.
    pub(crate) async fn open_bi(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        self.conn
            .open_bi()
            .await
            .map_err(|e| ClientError::from_connection(&e))
    }

    /// The error that ended the connection, if it has ended.
    pub(crate) fn close_error(&self) -> Option<ClientError> {
        self.conn
            .close_reason()
            .map(|e| ClientError::from_connection(&e))
    }

    /// Says goodbye on the control stream and closes the connection.
    async fn shutdown(&self) {
        let tx = self.close_tx.lock().ok().and_then(|mut g| g.take());
        let task = self.control_task.lock().ok().and_then(|mut g| g.take());
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        if let Some(task) = task {
            let _ = tokio::time::timeout(GOODBYE_GRACE, task).await;
        }
        self.conn.close(0u32.into(), b"goodbye");
    }
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    current: Mutex<Arc<Session>>,
    reconnecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    /// Index in [`ClientConfig::brokers`] of the broker last connected to.
    broker_index: AtomicUsize,
    closed: AtomicBool,
    closed_notify: Notify,
    /// Why the last reconnection attempt failed, while reconnecting.
    last_error: Mutex<Option<ClientError>>,
}

/// A connection to a Strongbox broker.
///
/// `Client` is a cheap handle: clone it to share one QUIC connection
/// between producers, consumers and admin calls. Producers and consumers
/// reconnect on their own when the connection drops, following
/// [`ClientConfig::reconnect`](crate::ClientConfig::reconnect).
///
/// ```no_run
/// use strongbox_client::{Client, ClientConfig};
///
/// # async fn run() -> Result<(), strongbox_client::ClientError> {
/// let client = Client::connect(ClientConfig::from_profile("strongbox-dev/profiles/alice.toml")?).await?;
/// println!("connected as {}", client.principal());
/// println!("broker accepts batches up to {} bytes", client.limits().max_batch_size);
/// client.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the broker and completes the handshake.
    ///
    /// A broker that refuses this client's certificate is reported as
    /// [`ClientError::Authentication`] ("the broker rejected this client's
    /// certificate: ..."): with TLS 1.3 the refusal arrives on the first
    /// stream, which is the handshake this call performs.
    ///
    /// # Errors
    ///
    /// [`ClientError::Credentials`] for unreadable certificates or keys,
    /// [`ClientError::Connect`] or [`ClientError::Timeout`] when the broker
    /// cannot be reached, [`ClientError::Tls`] or
    /// [`ClientError::Authentication`] when TLS fails, and
    /// [`ClientError::Broker`] when the broker refuses the `Hello`.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        // Each broker in turn, once: the first that answers wins. A broker
        // that refuses this client (its certificate, its Hello) ends the
        // search, since the others would refuse it too.
        let brokers: Vec<String> = config.brokers().into_iter().map(str::to_owned).collect();
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut failures = Vec::new();
        let mut connected = None;
        for (index, broker) in brokers.iter().enumerate() {
            let local = endpoint.as_ref().and_then(|e| e.local_addr().ok());
            let attempt = async {
                let addr = resolve(broker, local).await?;
                let ep = match &endpoint {
                    Some(ep) => ep.clone(),
                    None => {
                        let ep = crate::tls::client_endpoint(addr)?;
                        endpoint = Some(ep.clone());
                        ep
                    }
                };
                connect_once(&config, &ep, broker, addr, 1).await
            };
            match attempt.await {
                Ok(session) => {
                    connected = Some((index, session));
                    break;
                }
                Err(e) if !e.is_retriable() || brokers.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::debug!(broker = %broker, error = %e, "broker unreachable; trying the next");
                    failures.push(e);
                }
            }
        }
        let (Some((index, session)), Some(endpoint)) = (connected, endpoint) else {
            return Err(all_failed(&brokers, failures));
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                current: Mutex::new(Arc::new(session)),
                reconnecting: tokio::sync::Mutex::new(()),
                generations: AtomicU64::new(1),
                broker_index: AtomicUsize::new(index),
                closed: AtomicBool::new(false),
                closed_notify: Notify::new(),
                last_error: Mutex::new(None),
            }),
        })
    }

    /// Loads a profile file and connects.
    ///
    /// # Errors
    ///
    /// As [`ClientConfig::from_profile`] and [`Client::connect`].
    pub async fn connect_profile(path: impl AsRef<std::path::Path>) -> Result<Self, ClientError> {
        Self::connect(ClientConfig::from_profile(path)?).await
    }

    /// The principal the broker mapped this client's certificate to.
    pub fn principal(&self) -> String {
        self.current().welcome.principal.clone()
    }

    /// The address (`host:port`) of the broker this client is connected
    /// to, one of [`ClientConfig::brokers`] (or a leader an admin request
    /// was sent on to).
    pub fn broker_addr(&self) -> String {
        self.current().broker.clone()
    }

    /// The broker's identifier.
    pub fn broker_id(&self) -> String {
        self.current().welcome.broker_id.clone()
    }

    /// The TLS key exchange group of the current connection
    /// (`X25519MLKEM768` when the hybrid post-quantum exchange was
    /// negotiated, `X25519` or a NIST curve otherwise).
    pub fn key_exchange_group(&self) -> Option<String> {
        crate::tls::negotiated_group(&self.current().conn)
    }

    /// The limits negotiated with the broker.
    pub fn limits(&self) -> BrokerLimits {
        let w = &self.current().welcome;
        BrokerLimits {
            version: w.version,
            max_frame_size: w.max_frame_size,
            max_batch_size: w.max_batch_size,
            max_in_flight: w.max_in_flight,
            keepalive: Duration::from_millis(u64::from(w.keepalive_ms)),
        }
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// True while the current connection is up.
    pub fn is_connected(&self) -> bool {
        !self.is_closed() && self.current().is_alive()
    }

    /// Admin requests over this connection.
    pub fn admin(&self) -> crate::Admin {
        crate::Admin::new(self.clone())
    }

    /// Creates a producer on this connection; see [`Producer::new`](crate::Producer::new).
    ///
    /// # Errors
    ///
    /// As [`Producer::new`](crate::Producer::new).
    pub async fn producer(
        &self,
        config: crate::ProducerConfig,
    ) -> Result<crate::Producer, ClientError> {
        crate::Producer::new(self, config).await
    }

    /// Subscribes on this connection; see
    /// [`Consumer::subscribe`](crate::Consumer::subscribe).
    ///
    /// # Errors
    ///
    /// As [`Consumer::subscribe`](crate::Consumer::subscribe).
    pub async fn subscribe(
        &self,
        subscription: crate::Subscription,
        config: crate::ConsumerConfig,
    ) -> Result<crate::Consumer, ClientError> {
        crate::Consumer::subscribe(self, subscription, config).await
    }

    /// Says goodbye to the broker and closes the connection. Producers and
    /// consumers of this client fail afterwards with
    /// [`ClientError::Closed`]; close them first to flush their work.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.closed_notify.notify_waiters();
        let session = self.current();
        session.shutdown().await;
        let _ = tokio::time::timeout(GOODBYE_GRACE, self.inner.endpoint.wait_idle()).await;
    }

    /// Why the last attempt to reconnect failed, while the client is
    /// reconnecting (for the message of an operation that timed out).
    pub(crate) fn last_connection_error(&self) -> Option<ClientError> {
        self.inner.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_last_error(&self, error: Option<ClientError>) {
        if let Ok(mut slot) = self.inner.last_error.lock() {
            *slot = error;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn current(&self) -> Arc<Session> {
        match self.inner.current.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The live session, reconnecting first if the connection dropped.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed("the client"));
        }
        let current = self.current();
        if current.is_alive() {
            return Ok(current);
        }
        self.reconnect(current.generation).await
    }

    /// Replaces the session of generation `failed` with a new connection,
    /// retrying with backoff. When another task already replaced it, returns
    /// the newer session.
    ///
    /// # Errors
    ///
    /// The first error that retrying cannot fix (a rejected certificate, a
    /// closed client), or the last error once
    /// [`ReconnectPolicy::give_up_after`](crate::ReconnectPolicy::give_up_after)
    /// has passed.
    pub(crate) async fn reconnect(&self, failed: u64) -> Result<Arc<Session>, ClientError> {
        let _guard = self.inner.reconnecting.lock().await;
        if self.is_closed() {
            return Err(ClientError::Closed("the client"));
        }
        let current = self.current();
        if current.generation != failed && current.is_alive() {
            return Ok(current);
        }
        current.conn.close(0u32.into(), b"reconnecting");
        let brokers: Vec<String> = self
            .inner
            .config
            .brokers()
            .into_iter()
            .map(str::to_owned)
            .collect();
        // Start with the broker after the one that was lost, and go round
        // the list; the backoff delay comes after each round that failed.
        let first = self
            .inner
            .broker_index
            .load(Ordering::SeqCst)
            .wrapping_add(1);
        let policy = self.inner.config.reconnect.clone();
        let started = Instant::now();
        let mut backoff = Backoff::new(policy.clone());
        let mut attempt_no: usize = 0;
        loop {
            let index = first.wrapping_add(attempt_no) % brokers.len().max(1);
            attempt_no = attempt_no.wrapping_add(1);
            let broker = brokers.get(index).cloned().unwrap_or_default();
            let error = match self.connect_to(&broker).await {
                Ok(session) => {
                    self.inner.broker_index.store(index, Ordering::SeqCst);
                    tracing::info!(broker = %broker, generation = session.generation, "reconnected");
                    return Ok(session);
                }
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => e,
            };
            self.set_last_error(Some(error.clone()));
            if policy
                .give_up_after
                .is_some_and(|limit| started.elapsed() >= limit)
            {
                return Err(ClientError::ConnectionLost(format!(
                    "gave up reconnecting after {:.0?}: {error}",
                    started.elapsed()
                )));
            }
            if !attempt_no.is_multiple_of(brokers.len().max(1)) {
                tracing::warn!(broker = %broker, error = %error, "reconnect failed; trying the next broker");
                continue;
            }
            let delay = backoff.next_delay();
            tracing::warn!(broker = %broker, error = %error, ?delay, "reconnect failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.inner.closed_notify.notified() => {}
            }
            if self.is_closed() {
                return Err(ClientError::Closed("the client"));
            }
        }
    }

    /// Connects to `broker` (`host:port`) and makes it the current
    /// session, closing the one before. Used by reconnection and to follow
    /// a leader hint.
    pub(crate) async fn connect_to(&self, broker: &str) -> Result<Arc<Session>, ClientError> {
        let generation = self.inner.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let local = self.inner.endpoint.local_addr().ok();
        let addr = resolve(broker, local).await?;
        let session = Arc::new(
            connect_once(
                &self.inner.config,
                &self.inner.endpoint,
                broker,
                addr,
                generation,
            )
            .await?,
        );
        let old = match self.inner.current.lock() {
            Ok(mut g) => std::mem::replace(&mut *g, session.clone()),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), session.clone()),
        };
        if old.generation != session.generation {
            old.conn.close(0u32.into(), b"moved to another broker");
        }
        if let Some(i) = self
            .inner
            .config
            .brokers()
            .iter()
            .position(|b| *b == broker)
        {
            self.inner.broker_index.store(i, Ordering::SeqCst);
        }
        self.set_last_error(None);
        Ok(session)
    }
}

/// The error when no broker of the list answered: each one's reason.
fn all_failed(brokers: &[String], failures: Vec<ClientError>) -> ClientError {
    let reasons: Vec<String> = brokers
        .iter()
        .zip(&failures)
        .map(|(b, e)| format!("{b}: {e}"))
        .collect();
    match failures.into_iter().last() {
        Some(ClientError::Timeout(_)) => {
            ClientError::Timeout(format!("no broker answered: {}", reasons.join("; ")))
        }
        _ => ClientError::Connect {
            broker: brokers.join(", "),
            message: format!("no broker answered: {}", reasons.join("; ")),
        },
    }
}

/// Resolves `host:port`, preferring the address family of `local` (the
/// endpoint's socket) when given.
async fn resolve(broker: &str, local: Option<SocketAddr>) -> Result<SocketAddr, ClientError> {
    let err = |message: String| ClientError::Connect {
        broker: broker.to_owned(),
        message,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(broker)
        .await
        .map_err(|e| err(format!("cannot resolve the address: {e}")))?
        .collect();
    let preferred = local.and_then(|l| addrs.iter().find(|a| a.is_ipv6() == l.is_ipv6()));
    preferred
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| err("the name resolves to no address".into()))
}

/// Opens one connection and runs the handshake, within the connect timeout.
async fn connect_once(
    config: &ClientConfig,
    endpoint: &quinn::Endpoint,
    broker: &str,
    addr: SocketAddr,
    generation: u64,
) -> Result<Session, ClientError> {
    let quic = crate::tls::quic_client_config(config)?;
    let server_name = config.server_name_for(broker);
    let attempt = async {
        let connecting = endpoint
            .connect_with(quic, addr, &server_name)
            .map_err(|e| ClientError::Connect {
                broker: broker.to_owned(),
                message: e.to_string(),
            })?;
        let conn = connecting.await.map_err(|e| connect_error(broker, &e))?;
        handshake(config, conn, broker, generation).await
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout(format!(
            "no connection to broker {broker} within {:.0?}",
            config.connect_timeout
        ))),
    }
}

fn connect_error(broker: &str, e: &quinn::ConnectionError) -> ClientError {
    match ClientError::from_connection(e) {
        ClientError::Timeout(_) => ClientError::Connect {
            broker: broker.to_owned(),
            message: "no answer (is the broker running and reachable over UDP?)".into(),
        },
        other => other,
    }
}

/// Opens the control stream, sends `Hello` and waits for `Welcome`, then
/// spawns the task that keeps the control stream alive.
async fn handshake(
    config: &ClientConfig,
    conn: quinn::Connection,
    broker: &str,
    generation: u64,
) -> Result<Session, ClientError> {
    let mut control = ClientControl::new(
        ClientControlConfig {
            versions: strongbox_protocol::SUPPORTED_VERSIONS.to_vec(),
            client_name: config.client_name.clone(),
            max_frame_size: config.max_frame_size,
            keepalive: config.keepalive,
        },
        Instant::now().into_std(),
    );
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::from_connection(&e))?;
    let mut reader = FrameReader::new(recv, config.max_frame_size);
    // Until Welcome, send with the smallest maximum any broker accepts.
    let hello_max = strongbox_protocol::frame::DEFAULT_MAX_FRAME_SIZE;
    while let Some(frame) = control.poll_transmit() {
        write_frame(&mut send, &frame, hello_max)
            .await
            .map_err(|e| prefer_close_reason(&conn, e))?;
    }
    let welcome = loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                return Err(conn.close_reason().map_or_else(
                    || {
                        ClientError::Protocol(
                            "the broker ended the control stream before Welcome".into(),
                        )
                    },
                    |e| ClientError::from_connection(&e),
                ));
            }
            Err(e) => return Err(prefer_close_reason(&conn, e)),
        };
        let handled = control.handle_frame(frame, Instant::now().into_std());
        if let Err(v) = handled {
            let _ = write_frame(&mut send, &goodbye(&v), hello_max).await;
            conn.close(v.code.as_u16().into(), v.message.as_bytes());
            return Err(ClientError::from_violation(v));
        }
        match control.poll_event() {
            Some(ControlEvent::Established(welcome)) => break welcome,
            Some(ControlEvent::Refused(error)) => {
                conn.close(0u32.into(), b"refused");
                return Err(ClientError::from_error_frame(&error));
            }
            Some(ControlEvent::Goodbye(goodbye)) => {
                conn.close(0u32.into(), b"goodbye");
                return Err(if goodbye.code == 0 {
                    ClientError::ConnectionLost(format!(
                        "the broker said goodbye during the handshake: {}",
                        goodbye.reason
                    ))
                } else {
                    ClientError::from_code(goodbye.code, goodbye.reason)
                });
            }
            None => {}
        }
    };
    tracing::debug!(principal = %welcome.principal, broker_id = %welcome.broker_id, generation, "connected");
    let (close_tx, close_rx) = oneshot::channel();
    let task = tokio::spawn(run_control(
        conn.clone(),
        control,
        send,
        reader,
        close_rx,
        welcome.max_frame_size,
    ));
    Ok(Session {
        generation,
        broker: broker.to_owned(),
        conn,
        welcome,
        recv_max_frame: config.max_frame_size,
        close_tx: Mutex::new(Some(close_tx)),
        control_task: Mutex::new(Some(task)),
    })
}

/// The `Goodbye` that reports a broker's violation of the protocol.
fn goodbye(v: &strongbox_protocol::session::Violation) -> strongbox_protocol::frame::Frame {
    strongbox_protocol::frame::Frame::Goodbye(strongbox_protocol::frames::control::Goodbye {
        code: v.code.as_u16(),
        reason: v.message.clone(),
    })
}

/// A stream error during the handshake usually means the connection was
/// closed (for example the broker refused the certificate); report that.
fn prefer_close_reason(conn: &quinn::Connection, e: ClientError) -> ClientError {
    conn.close_reason()
        .map_or(e, |reason| ClientError::from_connection(&reason))
}

/// Pumps the control stream: answers pings, sends keep-alives when idle,
/// closes the connection when the broker goes silent or says goodbye, and
/// says goodbye when asked to.
async fn run_control(
    conn: quinn::Connection,
    mut control: ClientControl,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    mut close_rx: oneshot::Receiver<()>,
    max_frame: u32,
) {
    loop {
        while let Some(frame) = control.poll_transmit() {
            if write_frame(&mut send, &frame, max_frame).await.is_err() {
                return;
            }
        }
        while let Some(event) = control.poll_event() {
            match event {
                ControlEvent::Established(_) => {}
                ControlEvent::Goodbye(goodbye) => {
                    tracing::info!(code = goodbye.code, reason = %goodbye.reason, "broker said goodbye");
                    let code = u32::from(goodbye.code);
                    conn.close(code.into(), goodbye.reason.as_bytes());
                    return;
                }
                ControlEvent::Refused(error) => {
                    tracing::warn!(code = error.code, message = %error.message, "broker ended the connection");
                    conn.close(u32::from(error.code).into(), error.message.as_bytes());
                    return;
                }
            }
        }
        if control.is_closed() {
            // Our Goodbye is written: let the broker read it.
            let _ = send.finish();
            let _ = tokio::time::timeout(GOODBYE_GRACE, send.stopped()).await;
            return;
        }
        let deadline = control.poll_timeout().map_or_else(
            || Instant::now() + Duration::from_secs(3600),
            Instant::from_std,
        );
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(frame)) => {
                    if let Err(v) = control.handle_frame(frame, Instant::now().into_std()) {
                        // The client reports a broker violation with Goodbye.
                        let _ = write_frame(&mut send, &goodbye(&v), max_frame).await;
                        conn.close(v.code.as_u16().into(), v.message.as_bytes());
                        return;
                    }
                }
                Ok(None) => {
                    conn.close(0u32.into(), b"control stream finished");
                    return;
                }
                Err(_) => return,
            },
            () = tokio::time::sleep_until(deadline) => {
                if let Err(v) = control.handle_timeout(Instant::now().into_std()) {
                    tracing::warn!(error = %v, "broker stopped answering keep-alives");
                    conn.close(v.code.as_u16().into(), v.message.as_bytes());
                    return;
                }
            }
            _ = &mut close_rx => control.close("client closing"),
            _ = conn.closed() => return,
        }
    }
}
