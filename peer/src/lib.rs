//! Node identity and the peer transport of a Strongbox cluster.
//!
//! Nodes talk to each other on a QUIC listener of their own
//! (`cluster.peer_listen`, ALPN `strongbox-peer/1`) with mutual TLS both
//! ways. A node is known by the URI SAN of its certificate,
//! `spiffe://<trust domain>/strongbox/node/<id>` ([`identity`]); the
//! listener accepts only certificates of current members, chained to the
//! cluster CA, and refuses every request whose claimed sender id differs
//! from the certificate's. Every refusal goes to a [`PeerObserver`], which
//! the broker turns into audit records and metrics.
//!
//! Calls are request/response, one QUIC stream each, framed as in
//! [`frame`] (docs/PROTOCOL.md, "Peer protocol"). Payloads are opaque to
//! the transport; [`PeerClient::call`] encodes typed messages with
//! [`codec`] (postcard).
//!
//! ```no_run
//! # async fn demo(tls: strongbox_peer::NodeTls) -> Result<(), strongbox_peer::PeerError> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use strongbox_peer::{HandlerError, LogObserver, NodeId, PeerConfig, PeerEndpoint, PeerHandler};
//!
//! struct Echo;
//! impl PeerHandler for Echo {
//!     async fn handle(&self, _from: NodeId, method: u16, payload: Bytes) -> Result<Bytes, HandlerError> {
//!         match method {
//!             1 => Ok(payload),
//!             other => Err(HandlerError::unknown_method(other)),
//!         }
//!     }
//! }
//!
//! let members = Arc::new(|id: NodeId| id == 1 || id == 2);
//! let endpoint = PeerEndpoint::bind(
//!     "127.0.0.1:7444".parse().unwrap(), tls, PeerConfig::default(), members, Arc::new(LogObserver),
//! )?;
//! endpoint.serve(Arc::new(Echo));
//! let client = endpoint.client(Arc::new(|id: NodeId| (id == 2).then(|| "127.0.0.1:7445".parse().unwrap())));
//! let answer: String = client.call(2, 1, "hello").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

mod client;
pub mod codec;
mod config;
mod endpoint;
mod error;
pub mod frame;
pub mod identity;
mod observer;
pub mod tls;

pub use client::PeerClient;
pub use config::PeerConfig;
pub use endpoint::{PeerEndpoint, PeerHandler};
pub use error::{HandlerError, PeerError};
pub use frame::{ALPN, ErrorCode};
pub use identity::{IdentityError, NodeId, NodeIdentity, claims_node_identity};
pub use observer::{
    AddressBook, Denial, DenyReason, Direction, LogObserver, Membership, PeerObserver,
};
pub use tls::NodeTls;
