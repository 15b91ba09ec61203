//! `strongbox-broker health --config FILE`: asks the broker's metrics
//! endpoint whether it is ready (`/readyz`) or, with `--live`, alive
//! (`/healthz`). For container health checks and scripts, where no HTTP
//! client may be installed: exit 0 on HTTP 200, 1 otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::BrokerConfig;

/// `strongbox-broker health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The broker's configuration: metrics.listen says where to ask (an
    /// unspecified address, 0.0.0.0 or [::], is asked on loopback).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Ask /healthz (the process answers) instead of /readyz (storage
    /// open, listener bound).
    #[arg(long)]
    pub live: bool,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs the command: one line on stdout, exit 0 when the answer is 200.
pub fn run_cli(args: &HealthArgs) -> ExitCode {
    let config = match BrokerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: config {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    if !config.metrics.enabled {
        eprintln!(
            "error: metrics.enabled is false in {}: the broker serves no health endpoint",
            args.config.display()
        );
        return ExitCode::FAILURE;
    }
    let path = if args.live { "/healthz" } else { "/readyz" };
    let addr = reachable(config.metrics.listen);
    match probe(addr, path, args.timeout) {
        Ok(200) => {
            println!(
                "{} http://{addr}{path}: 200",
                if args.live { "alive" } else { "ready" }
            );
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!(
                "not {} http://{addr}{path}: {status}",
                if args.live { "alive" } else { "ready" }
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unreachable http://{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The address to connect to for a listener bound to `listen`.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs `path` from `addr`; the HTTP status.
///
/// # Errors
///
/// No connection, no answer in time, or an answer that is not HTTP.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    stream.take(1024).read_to_end(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.lines()
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("the answer is not HTTP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9644".parse().expect("addr")),
            "127.0.0.1:9644".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            reachable("[::]:9644".parse().expect("addr")),
            "[::1]:9644".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            reachable("10.1.2.3:9000".parse().expect("addr")),
            "10.1.2.3:9000".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn the_status_code_is_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for code in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    s.read_exact(&mut byte).expect("read");
                    head.push(byte[0]);
                }
                assert!(head.starts_with(b"GET /readyz HTTP/1.1\r\n"));
                write!(s, "HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").expect("write");
            }
        });
        assert_eq!(
            probe(addr, "/readyz", Duration::from_secs(5)).expect("probe"),
            200
        );
        assert_eq!(
            probe(addr, "/readyz", Duration::from_secs(5)).expect("probe"),
            503
        );
        server.join().expect("server");
        // Nothing listens any more.
        assert!(probe(addr, "/readyz", Duration::from_secs(5)).is_err());
    }
}
