//! Readiness notifications to the service manager (systemd's
//! `Type=notify`): `READY=1` once the broker serves, `RELOADING=1` while a
//! SIGHUP reload runs, `STOPPING=1` when a graceful stop begins.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or an abstract socket when it starts
//! with `@`); see sd_notify(3). Without that variable (not started by
//! systemd) every call does nothing. A failed send is logged and otherwise
//! ignored: the broker works the same, only the service manager learns
//! less.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The environment variable naming the service manager's socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// The notification socket, when the service manager gave one.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<String>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Self {
        Self::to(std::env::var(NOTIFY_SOCKET_ENV).ok())
    }

    /// To the socket `target` (`/run/systemd/notify`, `@name`), or nowhere.
    pub fn to(target: Option<String>) -> Self {
        Self {
            target: target.filter(|t| !t.is_empty()),
        }
    }

    /// True when notifications go somewhere.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The broker serves: `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}\n",
            one_line(status),
            std::process::id()
        ));
    }

    /// A reload (SIGHUP) begins. `MONOTONIC_USEC` lets a service manager
    /// that tracks reloads (`Type=notify-reload`) match it to its request.
    pub fn reloading(&self) {
        let usec = monotonic_now().map_or(0, |d| d.as_micros());
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading\n"
        ));
    }

    /// A reload ended: ready again.
    pub fn reloaded(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// A graceful stop begins.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping\n");
    }

    /// Sends `message`; returns whether it was delivered (false without a
    /// socket).
    pub fn send(&self, message: &str) -> bool {
        let Some(target) = &self.target else {
            return false;
        };
        match send_to(target, message.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(socket = %target, error = %e, "cannot notify the service manager");
                false
            }
        }
    }
}

fn send_to(target: &str, message: &[u8]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        send_abstract(&socket, name, message)
    } else {
        socket.send_to(message, target).map(|_| ())
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &str, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(message, &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}

/// A status text cannot hold a line break: it would start a new variable.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` now.
fn monotonic_now() -> Option<Duration> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(Duration::from(ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::to(Some(path.display().to_string()));
        assert!(n.is_active());
        n.ready("serving on 127.0.0.1:7443\nsecond line");
        let mut buf = [0u8; 512];
        let len = server.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..len]).expect("utf-8");
        assert!(text.starts_with("READY=1\n"), "{text}");
        assert!(
            text.contains("STATUS=serving on 127.0.0.1:7443 second line\n"),
            "{text}"
        );
        assert!(text.contains(&format!("MAINPID={}\n", std::process::id())));

        n.reloading();
        let len = server.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..len]).expect("utf-8");
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");

        n.stopping();
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping\n");
    }

    #[test]
    fn abstract_sockets_are_reached_too() {
        let name = format!("strongbox-notify-test-{}", std::process::id());
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
            let server = UnixDatagram::bind_addr(&addr).expect("bind");
            assert!(Notifier::to(Some(format!("@{name}"))).send("READY=1\n"));
            let mut buf = [0u8; 64];
            let len = server.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..len], b"READY=1\n");
        }
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier::to(None);
        assert!(!n.is_active());
        assert!(!n.send("READY=1\n"));
        assert!(!Notifier::to(Some(String::new())).is_active());
        // A socket that is not there is logged, not fatal.
        assert!(!Notifier::to(Some("/nonexistent/notify.sock".into())).send("READY=1\n"));
    }
}
