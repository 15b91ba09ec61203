//! The TLS policy that the broker and the client share: which key exchange
//! groups a TLS 1.3 handshake may use ([`KeyExchange`], the setting
//! `tls.key_exchange` of the broker and `key_exchange` of a client
//! profile), and the one place that maps it onto rustls.
//!
//! Both sides build their rustls configurations from [`crypto_provider`],
//! so a policy name means the same groups, in the same order, at either end
//! of a connection.
//!
//! ```
//! use strongbox_tls::KeyExchange;
//!
//! assert_eq!(KeyExchange::parse("require-hybrid"), Some(KeyExchange::RequireHybrid));
//! assert_eq!(KeyExchange::default().name(), "prefer-hybrid");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod key_exchange;

pub use key_exchange::{KeyExchange, crypto_provider, group_name, is_hybrid, negotiated_group};
