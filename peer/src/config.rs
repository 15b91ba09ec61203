//! Limits and timeouts of the peer transport.

use std::time::Duration;

use crate::frame::DEFAULT_MAX_PAYLOAD;

/// Settings of a [`PeerEndpoint`](crate::PeerEndpoint). The defaults suit a
/// LAN cluster; the `[cluster]` section of the broker's configuration maps
/// onto them.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Largest payload of a request or a response, in bytes. A request
    /// above it is refused with `PayloadTooLarge` before its payload is
    /// read; a caller is refused locally before anything is sent.
    pub max_payload: u32,
    /// How long a call may take, from dialing (when needed) to the last
    /// byte of the response.
    pub call_timeout: Duration,
    /// How long an incoming handshake may take.
    pub handshake_timeout: Duration,
    /// Calls one connection may have in flight (QUIC bidirectional
    /// streams); more wait for a slot.
    pub max_concurrent_calls: u32,
    /// Incoming connections (and handshakes in progress) served at once;
    /// more are refused at once. A cluster has a handful of nodes: the
    /// bound is against floods of handshakes, not a capacity setting.
    pub max_connections: u32,
    /// Keep-alive interval of idle connections.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            call_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_calls: 256,
            max_connections: 64,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}
