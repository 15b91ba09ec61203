//! The key service: rotation, rewrap, retirement and destruction of key
//! encryption keys, and the key metrics.

pub mod key_lifecycle;
pub mod rewrap;
