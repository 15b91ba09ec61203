//! The metrics endpoint over real TCP on 127.0.0.1: routes, readiness, and
//! what it does with malformed, oversized and slow requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strongbox_broker::metrics::BrokerMetrics;
use strongbox_broker::metrics::http::{self, HttpState, MAX_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const GUARD: Duration = Duration::from_secs(30);

struct Endpoint {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    metrics: Arc<BrokerMetrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start() -> Endpoint {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(BrokerMetrics::new().unwrap());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, rx) = watch::channel(false);
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let task = tokio::spawn(http::serve(listener, state, rx));
    Endpoint {
        addr,
        ready,
        metrics,
        stop,
        task,
    }
}

impl Endpoint {
    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(GUARD, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Sends `raw` and reads the whole response (the server closes after it).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    tokio::time::timeout(GUARD, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        // A server that closes while we still send may reset; what arrived
        // before is the answer.
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("no response")
}

async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
}

fn status(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn metrics_are_served_in_text_format() {
    let e = start().await;
    e.metrics.connections_total.inc_by(7);
    e.metrics
        .messages_in
        .with_label_values(&["orders"])
        .inc_by(3);
    let resp = get(e.addr, "/metrics").await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4"),
        "{resp}"
    );
    assert!(
        body(&resp).contains("strongbox_connections_total 7"),
        "{resp}"
    );
    assert!(body(&resp).contains("strongbox_messages_in_total{topic=\"orders\"} 3"));
    let declared: usize = resp
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(declared, body(&resp).len());
    // A query string does not change the route.
    assert_eq!(status(&get(e.addr, "/metrics?name[]=x").await), "200");
    e.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let e = start().await;
    assert_eq!(status(&get(e.addr, "/healthz").await), "200");
    let not_ready = get(e.addr, "/readyz").await;
    assert_eq!(status(&not_ready), "503", "{not_ready}");
    e.ready.store(true, Ordering::Release);
    assert_eq!(status(&get(e.addr, "/readyz").await), "200");
    e.ready.store(false, Ordering::Release);
    assert_eq!(status(&get(e.addr, "/readyz").await), "503");
    e.stop().await;
}

#[tokio::test]
async fn head_gets_headers_only() {
    let e = start().await;
    let resp = exchange(e.addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status(&resp), "200");
    assert!(body(&resp).is_empty(), "{resp}");
    assert!(!resp.contains("Content-Length: 0\r\n"), "{resp}");
    e.stop().await;
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let e = start().await;
    assert_eq!(status(&get(e.addr, "/").await), "404");
    assert_eq!(status(&get(e.addr, "/metrics/extra").await), "404");
    let post = exchange(
        e.addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&post), "405");
    assert!(post.contains("Allow: GET, HEAD"), "{post}");
    e.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused() {
    let e = start().await;
    assert_eq!(
        status(&exchange(e.addr, b"\x16\x03\x01\x02\x00\r\n\r\n").await),
        "400"
    );
    assert_eq!(
        status(&exchange(e.addr, b"GET /metrics\r\n\r\n").await),
        "400"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
    let resp = exchange(e.addr, &huge).await;
    assert_eq!(status(&resp), "431", "{resp}");
    // Still serving.
    assert_eq!(status(&get(e.addr, "/healthz").await), "200");
    e.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_disconnected() {
    let e = start().await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"GET /metr").await.unwrap();
    // The server gives up on the head after its read timeout and closes
    // without an answer; the guard only catches a server that never does.
    let mut buf = Vec::new();
    let n = tokio::time::timeout(GUARD, s.read_to_end(&mut buf))
        .await
        .expect("the server kept a silent connection open")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    e.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let e = start().await;
    let addr = e.addr;
    e.stop().await;
    let refused = tokio::time::timeout(GUARD, TcpStream::connect(addr))
        .await
        .unwrap();
    assert!(refused.is_err());
}
