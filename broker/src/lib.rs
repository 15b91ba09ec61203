//! The Strongbox broker's network and security foundation.
//!
//! - [`config`]: the TOML configuration, strictly parsed and validated;
//! - [`config_check`]: `strongbox-broker config check`, everything a start
//!   would check, without starting;
//! - [`tls`]: TLS 1.3 with required client certificates, CRLs that
//!   reload without a restart, and the key exchange policy (hybrid
//!   post-quantum X25519MLKEM768 preferred);
//! - [`identity`]: the principal derived from a verified client certificate;
//! - [`acl`]: the topic ACL engine (deny wins, default deny);
//! - [`audit`]: the hash-chained audit trail in the internal topic `_audit`;
//! - [`checkpoint`]: signed checkpoints of the broker's state, which tell
//!   a rolled-back data directory from the real one;
//! - [`backup`]: `strongbox-broker backup`, a consistent copy of a running
//!   broker through its local control socket;
//! - [`health`]: `strongbox-broker health`, the readiness probe for
//!   container health checks;
//! - [`transport`]: the QUIC endpoint, connections, frame I/O on streams and
//!   the dispatch of each stream to its handler;
//! - [`services`]: what the broker serves, each part owning its state:
//!   partitions and producers, keys, access requests and recipients;
//! - [`server`]: running a broker (services, listener, background tasks);
//! - [`shutdown`]: the shutdown signal every task watches;
//! - [`error`]: the error handlers answer with, and its mapping from
//!   storage and key errors;
//! - [`logging`]: log output (text or JSON lines, colour only on a
//!   terminal, `RUST_LOG`-style filters);
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`,
//!   `/readyz` HTTP endpoint;
//! - [`notify`]: readiness notifications to systemd (`Type=notify`);
//! - [`dev`]: the self-contained development setup of `strongbox-broker dev`;
//! - [`pki`]: a small certificate authority for `dev` and for tests;
//! - [`verify`]: `strongbox-broker verify`, the offline check of a data
//!   directory;
//! - [`inspect`]: `strongbox-broker inspect`, the records of a partition as
//!   the broker stores them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::panic
)]

pub mod acl;
pub mod audit;
pub mod backup;
pub mod checkpoint;
pub mod config;
pub mod config_check;
pub mod dev;
pub mod error;
pub mod health;
pub mod identity;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod server;
pub mod services;
pub mod shutdown;
pub mod tls;
pub mod transport;
pub mod verify;
