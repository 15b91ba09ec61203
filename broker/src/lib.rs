//! The Strongbox broker.
