//! A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Three fixed GET routes do not need a web framework, and a small parser
//! is easy to keep strict: the request head must arrive within
//! [`READ_TIMEOUT`] and fit in [`MAX_HEAD`] bytes, only `GET` and `HEAD` are
//! served, and every response closes the connection. At most
//! [`MAX_CONNECTIONS`] requests are served at once; further connections are
//! closed unanswered, so a flood on this port cannot starve the broker.
//!
//! Routes:
//! - `/metrics`: the Prometheus text format 0.0.4;
//! - `/healthz`: 200 while the process runs;
//! - `/readyz`: 200 when the shared ready flag is set (the broker sets it
//!   once its storage is open and its listener bound), 503 otherwise;
//! - anything else: 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::BrokerMetrics;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for the request head to arrive, and for the response to
/// be written.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most request bytes read and discarded after answering.
const MAX_DRAIN: usize = 64 * 1024;
/// Time spent discarding them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests served concurrently.
pub const MAX_CONNECTIONS: usize = 32;

/// Shared state of the HTTP endpoint.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The metrics to serve.
    pub metrics: Arc<BrokerMetrics>,
    /// `/readyz` answers 200 only while this is true.
    pub ready: Arc<AtomicBool>,
}

/// Binds the metrics listener.
///
/// # Errors
///
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves requests on `listener` until `shutdown` turns true (or its
/// sender is dropped). Requests in progress are abandoned at shutdown;
/// they are idempotent reads.
pub async fn serve(listener: TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint busy; closing connection");
            continue;
        };
        let state = state.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &state).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
    tasks.shutdown().await;
}

/// A parsed request: only what routing needs.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
    path: String,
}

/// Why a request head is refused, with the status to answer.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    MethodNotAllowed,
    TooLarge,
}

async fn handle(mut stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let parsed = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => return Ok(()), // too slow: close without answering
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(()), // closed before sending a request
        Ok(Ok(Some(head))) => parse_head(&head),
    };
    let head_only = matches!(
        parsed,
        Ok(Request {
            head_only: true,
            ..
        })
    );
    let response = match parsed {
        Ok(req) => route(&req, state),
        Err(Refusal::BadRequest) => Response::text(400, "Bad Request", "bad request\n"),
        Err(Refusal::TooLarge) => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Err(Refusal::MethodNotAllowed) => {
            let mut r = Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
            r.extra = "Allow: GET, HEAD\r\n";
            r
        }
    };
    let bytes = response.to_bytes(head_only);
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))?;
    // Closing a socket with unread input makes the kernel send a reset,
    // which can destroy the response before the client reads it (a 431
    // answered while the client is still sending). Read and discard a
    // bounded amount first.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut sink = [0u8; 4096];
        let mut left = MAX_DRAIN;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Reads until the blank line ending the head. `Ok(None)` when the peer
/// closed first; a head over [`MAX_HEAD`] is returned truncated so that the
/// parser answers 431.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok((!buf.is_empty()).then_some(buf));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_HEAD {
            return Ok(Some(buf));
        }
    }
}

fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n");
    if end.is_none() && head.len() > MAX_HEAD {
        return Err(Refusal::TooLarge);
    }
    let head = std::str::from_utf8(head).map_err(|_| Refusal::BadRequest)?;
    let line = head.split("\r\n").next().ok_or(Refusal::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(Refusal::BadRequest);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(Refusal::MethodNotAllowed);
        }
        _ => return Err(Refusal::BadRequest),
    };
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or(target)
        .to_string();
    Ok(Request { head_only, path })
}

fn route(req: &Request, state: &HttpState) -> Response {
    match req.path.as_str() {
        "/metrics" => match state.metrics.encode() {
            Ok(body) => Response {
                status: 200,
                reason: "OK",
                content_type: prometheus::TEXT_FORMAT,
                extra: "",
                body: body.into_bytes(),
            },
            Err(e) => {
                tracing::error!(error = %e, "encoding metrics failed");
                Response::text(500, "Internal Server Error", "cannot encode metrics\n")
            }
        },
        "/healthz" => Response::text(200, "OK", "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => Response::text(200, "OK", "ready\n"),
        "/readyz" => Response::text(503, "Service Unavailable", "not ready\n"),
        _ => Response::text(404, "Not Found", "not found\n"),
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: body.as_bytes().to_vec(),
        }
    }

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, Refusal> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn parses_get_and_head() {
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request {
                head_only: false,
                path: "/metrics".into()
            })
        );
        assert_eq!(
            parse("HEAD /healthz HTTP/1.0\r\n\r\n").map(|r| r.head_only),
            Ok(true)
        );
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(
            parse("POST /metrics HTTP/1.1\r\n\r\n"),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(parse("GET /metrics\r\n\r\n"), Err(Refusal::BadRequest));
        assert_eq!(
            parse("GET metrics HTTP/1.1\r\n\r\n"),
            Err(Refusal::BadRequest)
        );
        assert_eq!(parse("GET / SPDY/3\r\n\r\n"), Err(Refusal::BadRequest));
        assert_eq!(parse("get / HTTP/1.1\r\n\r\n"), Err(Refusal::BadRequest));
        assert_eq!(parse(""), Err(Refusal::BadRequest));
        assert_eq!(
            parse_head(&[0xff, 0xfe, b'\r', b'\n']),
            Err(Refusal::BadRequest)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&big), Err(Refusal::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse_head(&bytes);
        }
    }
}
