//! The Strongbox client.
