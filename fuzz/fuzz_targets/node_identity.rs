//! Arbitrary bytes through the node identity parser, as certificates and as
//! URIs.
//!
//! Beyond "no panic": whatever parses is a well-formed identity (a non-zero
//! id, and its URI parses back to the same identity), and a certificate
//! that names a node also counts as claiming one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strongbox_peer::{NodeIdentity, claims_node_identity};

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = NodeIdentity::from_certificate(data) {
        assert!(id.node_id() != 0);
        assert_eq!(NodeIdentity::parse_uri(&id.uri()).as_ref(), Ok(&id));
        assert!(claims_node_identity(data));
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = NodeIdentity::parse_uri(&text) {
        assert!(id.node_id() != 0);
        assert_eq!(id.uri(), text);
    }
});
