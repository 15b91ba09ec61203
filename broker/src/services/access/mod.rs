//! The access service: end-to-end access requests and the recipients
//! registered on topics.

pub mod recipients;
pub mod requests;
