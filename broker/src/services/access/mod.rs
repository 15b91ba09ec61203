//! The access service: end-to-end access requests and the recipients
//! registered on topics.

pub mod access;
pub mod recipients;
