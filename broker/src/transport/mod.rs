//! The transport: the QUIC endpoint and its accept loop, each
//! connection, frame I/O on its streams, and the handlers each stream's
//! first frame dispatches to (producer, subscription, admin).

pub mod admin;
pub mod connection;
pub mod endpoint;
pub mod produce;
pub mod stream_io;
pub mod subscribe;
