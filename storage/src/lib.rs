//! The Strongbox storage engine: the encrypted partition log, key providers,
//! the key registry and the metadata store.
//!
//! The core is synchronous and does no networking; the broker drives it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::panic
)]

pub mod aead;
pub mod data_dir;
pub mod io;
pub mod keys;
pub mod log;
pub mod meta;
pub mod observe;
