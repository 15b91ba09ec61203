//! The Strongbox broker's network and security foundation.
//!
//! - [`config`]: the TOML configuration, strictly parsed and validated;
//! - [`tls`]: TLS 1.3 with required client certificates and CRLs that
//!   reload without a restart;
//! - [`identity`]: the principal derived from a verified client certificate;
//! - [`acl`]: the topic ACL engine (deny wins, default deny);
//! - [`endpoint`]: the QUIC endpoint, its accept loop and graceful shutdown;
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`,
//!   `/readyz` HTTP endpoint;
//! - [`dev`]: the self-contained development setup of `strongbox-broker dev`;
//! - [`pki`]: a small certificate authority for `dev` and for tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::panic
)]

pub mod acl;
pub mod config;
pub mod dev;
pub mod endpoint;
pub mod identity;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod tls;
