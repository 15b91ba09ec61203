//! A UDP relay between the nodes of a test cluster, to cut nodes off and
//! heal them while their processes keep running.
//!
//! Each node `N` is told (in its config and its peers') that its peer
//! address is the relay's `A_N`; the relay forwards what arrives on `A_N` to
//! the node's real peer listener `R_N`, through one upstream socket per
//! source address so that each QUIC connection keeps a stable path, and
//! relays the answers back from `A_N`. A node's QUIC endpoint dials from
//! its own listener, so a datagram whose source is some `R_M` comes from
//! node `M`.
//!
//! [`Relay::cut`] drops every datagram to or from the nodes named, both
//! ways: sent to their `A_N`, sent by them from their `R_N` to another
//! node's relay address, and the answers of either. [`Relay::heal`] lets
//! them through again. Everything binds 127.0.0.1; the relay never sends
//! anywhere but the nodes' listeners and the sources that wrote to it.
//! Dropping the relay stops and joins all of its threads.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How often a relay thread looks at the stop flag while no datagram comes.
const POLL: Duration = Duration::from_millis(50);

/// Larger than any UDP datagram.
const DATAGRAM: usize = 65_536;

/// How many datagrams went through and how many were dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams forwarded (either way).
    pub forwarded: u64,
    /// Datagrams dropped because a node they came from or went to was cut.
    pub dropped: u64,
}

/// What every relay thread shares.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    cut: Mutex<BTreeSet<u64>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    /// Node `M`'s real peer address → `M`: who sent a datagram.
    senders: HashMap<SocketAddr, u64>,
    /// (from, to) → datagrams node `from` sent from its own peer address to
    /// node `to`'s relay address that were forwarded.
    links: Mutex<HashMap<(u64, u64), u64>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Whether a datagram between node `to` (the one relayed) and the
    /// source `from` may pass now; counts it either way.
    fn pass(&self, to: u64, from: SocketAddr) -> bool {
        let cut = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        let blocked = cut.contains(&to) || self.senders.get(&from).is_some_and(|m| cut.contains(m));
        drop(cut);
        let counter = if blocked {
            &self.dropped
        } else {
            &self.forwarded
        };
        counter.fetch_add(1, Ordering::Relaxed);
        !blocked
    }

    fn spawn(&self, name: String, body: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(body)
            .context("starting a relay thread")?;
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        Ok(())
    }
}

/// A running relay; see the module documentation.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    fronts: Vec<(u64, SocketAddr)>,
}

impl Relay {
    /// Starts relaying for `nodes`, each a node id and its real peer
    /// address `R_N` (on 127.0.0.1); binds one relay address `A_N` per node
    /// on a free port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// An id listed twice, an address off 127.0.0.1, or a socket or thread
    /// that cannot be made.
    pub fn start(nodes: &[(u64, SocketAddr)]) -> Result<Self> {
        let mut senders = HashMap::new();
        for &(id, real) in nodes {
            if !real.ip().is_loopback() {
                bail!("node {id}'s peer address {real} is not on 127.0.0.1");
            }
            if senders.values().any(|m| *m == id) || senders.insert(real, id).is_some() {
                bail!("node {id} or its address {real} is listed twice");
            }
        }
        let shared = Arc::new(Shared {
            senders,
            ..Shared::default()
        });
        let mut relay = Self {
            shared: shared.clone(),
            fronts: Vec::new(),
        };
        for &(id, real) in nodes {
            let front = UdpSocket::bind("127.0.0.1:0").context("binding a relay address")?;
            front.set_read_timeout(Some(POLL))?;
            let addr = front.local_addr()?;
            relay.fronts.push((id, addr));
            let shared = shared.clone();
            relay.shared.spawn(format!("relay-{id}"), move || {
                front_loop(&shared, id, &front, real);
            })?;
        }
        Ok(relay)
    }

    /// `A_N`: the address the cluster must use as node `id`'s peer address.
    ///
    /// # Panics
    ///
    /// `id` is not one of the relay's nodes (a mistake in the test).
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.fronts
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("node {id} has no relay address"))
    }

    /// Cuts `ids` off: every datagram to or from them is dropped.
    pub fn cut(&self, ids: &[u64]) {
        self.shared
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(ids);
    }

    /// Lets datagrams to and from `ids` through again.
    pub fn heal(&self, ids: &[u64]) {
        let mut cut = self
            .shared
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            cut.remove(id);
        }
    }

    /// How many datagrams node `from` sent from its own peer address to
    /// node `to`'s relay address, and the relay forwarded: traffic on the
    /// connections `from` dialed to `to` (not `from`'s answers on the
    /// connections `to` dialed, which come back through `from`'s relay
    /// address).
    pub fn forwarded_between(&self, from: u64, to: u64) -> u64 {
        self.shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(from, to))
            .copied()
            .unwrap_or(0)
    }

    /// What the relay forwarded and dropped so far.
    pub fn counts(&self) -> Counts {
        Counts {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Threads started while joining (a new source) are joined too.
        loop {
            let batch: Vec<_> = std::mem::take(
                &mut *self
                    .shared
                    .threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            if batch.is_empty() {
                break;
            }
            for handle in batch {
                let _ = handle.join();
            }
        }
    }
}

/// Serves node `id`'s relay address: each new source gets an upstream
/// socket connected to `real` and a thread relaying its answers back.
fn front_loop(shared: &Arc<Shared>, id: u64, front: &UdpSocket, real: SocketAddr) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM];
    while !shared.stop.load(Ordering::Relaxed) {
        let (len, from) = match front.recv_from(&mut buf) {
            Ok(got) => got,
            // A timeout, or an ICMP error from an earlier send: go on.
            Err(_) => continue,
        };
        if !shared.pass(id, from) {
            continue;
        }
        if let Some(&sender) = shared.senders.get(&from) {
            *shared
                .links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((sender, id))
                .or_default() += 1;
        }
        let upstream = match upstreams.get(&from) {
            Some(u) => u.clone(),
            None => match open_upstream(shared, id, front, real, from) {
                Ok(u) => {
                    upstreams.insert(from, u.clone());
                    u
                }
                // Dropped like a lost datagram; the next one tries again.
                Err(_) => continue,
            },
        };
        let _ = upstream.send(buf.get(..len).unwrap_or_default());
    }
}

/// An upstream socket for the source `from` of node `id`'s relay address,
/// and the thread that relays `real`'s answers back to `from`.
fn open_upstream(
    shared: &Arc<Shared>,
    id: u64,
    front: &UdpSocket,
    real: SocketAddr,
    from: SocketAddr,
) -> Result<Arc<UdpSocket>> {
    let upstream = UdpSocket::bind("127.0.0.1:0")?;
    upstream.connect(real)?;
    upstream.set_read_timeout(Some(POLL))?;
    let upstream = Arc::new(upstream);
    let back = front.try_clone()?;
    let reader = upstream.clone();
    let thread_shared = shared.clone();
    shared.spawn(format!("relay-{id}-{}", from.port()), move || {
        let mut buf = vec![0u8; DATAGRAM];
        while !thread_shared.stop.load(Ordering::Relaxed) {
            let Ok(len) = reader.recv(&mut buf) else {
                continue;
            };
            if thread_shared.pass(id, from) {
                let _ = back.send_to(buf.get(..len).unwrap_or_default(), from);
            }
        }
    })?;
    Ok(upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in peer listener: echoes every datagram to its sender.
    struct Echo {
        socket: UdpSocket,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Result<Self> {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.set_read_timeout(Some(POLL))?;
            let stop = Arc::new(AtomicBool::new(false));
            let (s, flag) = (socket.try_clone()?, stop.clone());
            let thread = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..len], from);
                    }
                }
            });
            Ok(Self {
                socket,
                stop,
                thread: Some(thread),
            })
        }

        fn addr(&self) -> Result<SocketAddr> {
            Ok(self.socket.local_addr()?)
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Sends `what` from `socket` to `to`; the echo that came back, or
    /// `None` when nothing came within `wait`.
    fn round_trip(
        socket: &UdpSocket,
        to: SocketAddr,
        what: &[u8],
        wait: Duration,
    ) -> Option<Vec<u8>> {
        socket.set_read_timeout(Some(wait)).ok()?;
        socket.send_to(what, to).ok()?;
        let mut buf = [0u8; 2048];
        let (len, from) = socket.recv_from(&mut buf).ok()?;
        (from == to).then(|| buf[..len].to_vec())
    }

    /// A round trip that succeeds, retried a few times as UDP allows.
    fn passes(socket: &UdpSocket, to: SocketAddr, what: &[u8]) -> bool {
        (0..5)
            .any(|_| round_trip(socket, to, what, Duration::from_secs(2)).as_deref() == Some(what))
    }

    #[test]
    fn datagrams_pass_and_answers_come_back_from_the_relay_address() -> Result<()> {
        let (one, two) = (Echo::start()?, Echo::start()?);
        let relay = Relay::start(&[(1, one.addr()?), (2, two.addr()?)])?;
        let client = UdpSocket::bind("127.0.0.1:0")?;
        assert!(passes(&client, relay.addr(1), b"to one"));
        assert!(passes(&client, relay.addr(2), b"to two"));
        // A second source gets its own path.
        let other = UdpSocket::bind("127.0.0.1:0")?;
        assert!(passes(&other, relay.addr(1), b"again"));
        let counts = relay.counts();
        assert!(counts.forwarded >= 6, "{counts:?}");
        assert_eq!(counts.dropped, 0);
        Ok(())
    }

    /// The next datagram on `socket` within `wait`: its bytes and source.
    fn recv(socket: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        socket.set_read_timeout(Some(wait)).ok()?;
        let mut buf = [0u8; 2048];
        let (len, from) = socket.recv_from(&mut buf).ok()?;
        Some((buf.get(..len)?.to_vec(), from))
    }

    #[test]
    fn a_cut_node_neither_receives_nor_sends_and_heal_restores_it() -> Result<()> {
        // Each node's "listener" is also the socket it sends from, as a
        // QUIC endpoint's is.
        let one = UdpSocket::bind("127.0.0.1:0")?;
        let two = UdpSocket::bind("127.0.0.1:0")?;
        let relay = Relay::start(&[(1, one.local_addr()?), (2, two.local_addr()?)])?;
        let stranger = UdpSocket::bind("127.0.0.1:0")?;
        let quiet = Duration::from_millis(500);
        let wait = Duration::from_secs(5);

        // Node 1 to node 2 and the answer back, through the relay.
        one.send_to(b"before", relay.addr(2))?;
        let (got, upstream) = recv(&two, wait).context("node 2 got nothing")?;
        assert_eq!(got, b"before");
        two.send_to(b"answer", upstream)?;
        assert_eq!(recv(&one, wait), Some((b"answer".to_vec(), relay.addr(2))));
        assert_eq!(relay.forwarded_between(1, 2), 1);
        assert_eq!(relay.forwarded_between(2, 1), 0);

        relay.cut(&[1]);
        let before = relay.counts();
        // From the cut node to another's relay address: dropped.
        one.send_to(b"out", relay.addr(2))?;
        assert_eq!(recv(&two, quiet), None, "node 2 heard the cut node");
        // To the cut node's relay address: dropped.
        stranger.send_to(b"in", relay.addr(1))?;
        assert_eq!(recv(&one, quiet), None, "the cut node was reached");
        // Node 2's answer on the path the cut node had opened: dropped.
        two.send_to(b"late", upstream)?;
        assert_eq!(recv(&one, quiet), None, "the cut node got an answer");
        // Others still pass.
        stranger.send_to(b"others", relay.addr(2))?;
        assert_eq!(recv(&two, wait).map(|(b, _)| b), Some(b"others".to_vec()));
        let during = relay.counts();
        assert_eq!(during.dropped, before.dropped + 3, "{during:?}");
        assert_eq!(during.forwarded, before.forwarded + 1, "{during:?}");

        assert_eq!(
            relay.forwarded_between(1, 2),
            1,
            "a dropped one was counted"
        );

        relay.heal(&[1]);
        one.send_to(b"after", relay.addr(2))?;
        assert_eq!(recv(&two, wait), Some((b"after".to_vec(), upstream)));
        assert_eq!(relay.forwarded_between(1, 2), 2);
        two.send_to(b"welcome back", upstream)?;
        assert_eq!(
            recv(&one, wait),
            Some((b"welcome back".to_vec(), relay.addr(2)))
        );
        stranger.send_to(b"in again", relay.addr(1))?;
        assert_eq!(recv(&one, wait).map(|(b, _)| b), Some(b"in again".to_vec()));
        Ok(())
    }

    #[test]
    fn an_answer_to_a_node_cut_after_it_asked_is_dropped() -> Result<()> {
        // A slow upstream: it answers once told to, after the cut.
        let slow = UdpSocket::bind("127.0.0.1:0")?;
        let asker = UdpSocket::bind("127.0.0.1:0")?;
        let relay = Relay::start(&[(1, asker.local_addr()?), (2, slow.local_addr()?)])?;
        asker.send_to(b"question", relay.addr(2))?;
        slow.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 64];
        let (len, upstream) = slow.recv_from(&mut buf)?;
        assert_eq!(&buf[..len], b"question");
        relay.cut(&[1]);
        slow.send_to(b"answer", upstream)?;
        asker.set_read_timeout(Some(Duration::from_millis(500)))?;
        assert!(asker.recv_from(&mut buf).is_err(), "the answer got through");
        assert!(relay.counts().dropped >= 1);
        Ok(())
    }

    #[test]
    fn dropping_the_relay_stops_its_threads_and_frees_its_ports() -> Result<()> {
        let echo = Echo::start()?;
        let relay = Relay::start(&[(1, echo.addr()?)])?;
        let client = UdpSocket::bind("127.0.0.1:0")?;
        assert!(passes(&client, relay.addr(1), b"hello"));
        let addr = relay.addr(1);
        drop(relay);
        // Its address is free again: nothing holds the socket.
        UdpSocket::bind(addr).context("the relay address is still bound")?;
        Ok(())
    }

    #[test]
    fn ids_and_addresses_are_checked() {
        let a: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let b: SocketAddr = "127.0.0.1:10".parse().expect("address");
        let far: SocketAddr = "192.0.2.1:9".parse().expect("address");
        assert!(Relay::start(&[(1, a), (1, b)]).is_err());
        assert!(Relay::start(&[(1, a), (2, a)]).is_err());
        assert!(Relay::start(&[(1, far)]).is_err());
    }
}
