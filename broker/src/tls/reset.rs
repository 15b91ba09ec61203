//! The secret behind the QUIC endpoint's stateless resets.

/// The secret that keys the endpoint's stateless resets (RFC 9000,
/// section 10.3): HMAC-SHA256 under the broker's TLS private key of a fixed
/// label, so every run of a broker with the same identity sends the same
/// reset token for a connection id. A client whose broker restarted
/// learns from its first packet afterwards that the connection is gone.
/// It is never logged, and this copy is zeroized when dropped.
pub struct EndpointSecret(zeroize::Zeroizing<[u8; 32]>);

impl EndpointSecret {
    /// Derives the secret from the TLS private key.
    pub fn from_private_key(key: &rustls::pki_types::PrivateKeyDer<'_>) -> Self {
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.secret_der());
        let tag = ring::hmac::sign(&mac, b"strongbox/quic-stateless-reset/v1");
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(tag.as_ref());
        Self(secret)
    }

    /// The key of the endpoint's stateless-reset tokens.
    pub fn reset_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0[..])
    }
}

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn key(bytes: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bytes.to_vec()))
    }

    #[test]
    fn the_reset_secret_is_stable_per_key_and_never_shown() {
        let a = EndpointSecret::from_private_key(&key(b"broker key one"));
        let again = EndpointSecret::from_private_key(&key(b"broker key one"));
        let b = EndpointSecret::from_private_key(&key(b"broker key two"));
        assert_eq!(*a.0, *again.0, "a restart derives the same secret");
        assert_ne!(*a.0, *b.0);
        assert_ne!(&a.0[..14], b"broker key one", "not the key itself");
        assert_eq!(format!("{a:?}"), "EndpointSecret(..)");
    }
}
