//! Node identity: the one place that decides which node a certificate
//! names.
//!
//! A node's certificate carries exactly one URI subject alternative name,
//! `spiffe://<trust domain>/strongbox/node/<id>`, where `<id>` is the node's
//! numeric id written in decimal, without leading zeros, and never zero.
//! The trust domain follows the SPIFFE rules (lowercase letters, digits,
//! `.`, `-` and `_`), so the URI cannot carry a port, user information, a
//! query or a fragment.
//!
//! The certificate bytes are untrusted input: they come from the network
//! before (and after) the chain is verified. Parsing never panics, and a
//! certificate that names a node ambiguously (two node URIs, or a node URI
//! next to another URI) is refused rather than resolved by a preference
//! rule, since the client listener and the peer listener must never read
//! two different identities out of one certificate.
//!
//! ```
//! use strongbox_peer::identity::NodeIdentity;
//!
//! let id = NodeIdentity::parse_uri("spiffe://prod.example/strongbox/node/7").unwrap();
//! assert_eq!((id.trust_domain(), id.node_id()), ("prod.example", 7));
//! assert_eq!(id.uri(), "spiffe://prod.example/strongbox/node/7");
//! assert!(NodeIdentity::parse_uri("spiffe://prod.example/strongbox/node/07").is_err());
//! ```

use std::fmt;

use x509_parser::extensions::GeneralName;

/// A node's numeric id: never zero, never reused.
pub type NodeId = u64;

/// The scheme and authority separator of a SPIFFE ID.
const SCHEME: &str = "spiffe://";
/// The path of a node identity, before the id.
const NODE_PATH: &str = "/strongbox/node/";
/// Longest trust domain accepted (the SPIFFE limit).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest URI quoted back in an error message.
const MAX_QUOTED: usize = 128;

/// A node identity read from a certificate: trust domain and node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    trust_domain: String,
    id: NodeId,
}

/// Why a certificate or URI is not a valid node identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not exactly one X.509 certificate.
    #[error("the certificate cannot be parsed: {0}")]
    Unparseable(String),
    /// No URI SAN names a node: a client or server certificate, not a
    /// node's.
    #[error(
        "the certificate names no node (no URI SAN of the form spiffe://<trust domain>/strongbox/node/<id>)"
    )]
    NotANode,
    /// A node URI sits next to other URI SANs, so the identity would be
    /// ambiguous.
    #[error(
        "the certificate has {count} URI SANs; a node certificate must have exactly one, its node URI"
    )]
    Ambiguous {
        /// How many URI SANs the certificate has.
        count: usize,
    },
    /// The URI looks like a node identity but is malformed.
    #[error("{uri:?} is not a valid node identity: {reason}")]
    Malformed {
        /// The URI (shortened, control characters escaped).
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The node belongs to another trust domain than the one configured.
    #[error("node {id} belongs to trust domain {found:?}, not to {expected:?}")]
    ForeignTrustDomain {
        /// The configured trust domain.
        expected: String,
        /// The certificate's.
        found: String,
        /// The node id the certificate names.
        id: NodeId,
    },
}

impl NodeIdentity {
    /// The identity of node `id` in `trust_domain`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Malformed`] for an id of zero or a trust domain
    /// that is not a SPIFFE trust domain.
    pub fn new(trust_domain: impl Into<String>, id: NodeId) -> Result<Self, IdentityError> {
        let trust_domain = trust_domain.into();
        let uri = format!("{SCHEME}{trust_domain}{NODE_PATH}{id}");
        if id == 0 {
            return Err(malformed(&uri, "the node id must not be zero"));
        }
        check_trust_domain(&trust_domain).map_err(|reason| malformed(&uri, reason))?;
        Ok(Self { trust_domain, id })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// The URI SAN a certificate for this node carries.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}{NODE_PATH}{}", self.trust_domain, self.id)
    }

    /// Parses a node URI, strictly: `spiffe://<trust domain>/strongbox/node/<id>`
    /// and nothing else (no trailing slash, port, query or fragment).
    ///
    /// # Errors
    ///
    /// [`IdentityError::NotANode`] when the URI is not a SPIFFE ID with
    /// the node path, [`IdentityError::Malformed`] when it has the node
    /// path but a bad trust domain or id.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        if !looks_like_node(uri) {
            return Err(IdentityError::NotANode);
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| malformed(uri, "the scheme must be spiffe:// in lowercase"))?;
        let (domain, tail) = rest
            .split_once('/')
            .ok_or_else(|| malformed(uri, "it has no path"))?;
        check_trust_domain(domain).map_err(|reason| malformed(uri, reason))?;
        let digits = tail
            .strip_prefix(NODE_PATH.trim_start_matches('/'))
            .ok_or_else(|| malformed(uri, "its path is not /strongbox/node/<id>"))?;
        let id = parse_id(digits).map_err(|reason| malformed(uri, reason))?;
        Ok(Self {
            trust_domain: domain.to_owned(),
            id,
        })
    }

    /// Reads the node identity out of a DER certificate: exactly one URI
    /// SAN, and it is a valid node URI.
    ///
    /// # Errors
    ///
    /// See [`IdentityError`]; never panics, whatever the bytes.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let uris = uri_sans(der)?;
        let node_like = uris.iter().filter(|u| looks_like_node(u)).count();
        match (uris.as_slice(), node_like) {
            (_, 0) => Err(IdentityError::NotANode),
            ([only], _) => Self::parse_uri(only),
            (all, _) => Err(IdentityError::Ambiguous { count: all.len() }),
        }
    }

    /// As [`from_certificate`](Self::from_certificate), and the node must
    /// belong to `trust_domain`.
    ///
    /// # Errors
    ///
    /// As [`from_certificate`](Self::from_certificate), or
    /// [`IdentityError::ForeignTrustDomain`].
    pub fn from_certificate_in(der: &[u8], trust_domain: &str) -> Result<Self, IdentityError> {
        let id = Self::from_certificate(der)?;
        if id.trust_domain != trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                expected: trust_domain.to_owned(),
                found: id.trust_domain,
                id: id.id,
            });
        }
        Ok(id)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{NODE_PATH}{}", self.trust_domain, self.id)
    }
}

/// True when `der` is a certificate with a URI SAN that claims a node
/// identity, valid or not. The client listener uses it to hold node
/// certificates to explicit ACL rules: a malformed node claim counts as a
/// claim, so a broken node certificate gets no more than a valid one.
pub fn claims_node_identity(der: &[u8]) -> bool {
    uri_sans(der).is_ok_and(|uris| uris.iter().any(|u| looks_like_node(u)))
}

/// A SPIFFE URI whose path starts like a node's: what counts as a claim
/// to be a node. Compared without regard to ASCII case, so that
/// `SPIFFE://X/Strongbox/Node/1` is refused as malformed rather than
/// treated as a client name.
fn looks_like_node(uri: &str) -> bool {
    let Some(rest) = uri
        .get(..SCHEME.len())
        .filter(|s| s.eq_ignore_ascii_case(SCHEME))
        .and_then(|_| uri.get(SCHEME.len()..))
    else {
        return false;
    };
    let path = rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("");
    path.get(..NODE_PATH.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(NODE_PATH))
}

/// Every URI SAN of a DER certificate, as text.
fn uri_sans(der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Unparseable(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparseable(format!("subjectAltName: {e}")))?;
    Ok(san
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

/// The SPIFFE trust domain rules: 1 to 255 characters of `a-z 0-9 . - _`.
fn check_trust_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("the trust domain is empty");
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("the trust domain is longer than 255 characters");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("the trust domain may only hold a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

/// A decimal u64, no sign, no leading zero, not zero.
fn parse_id(digits: &str) -> Result<NodeId, &'static str> {
    if digits.is_empty() {
        return Err("the node id is missing");
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the node id must be decimal digits only");
    }
    if digits.starts_with('0') {
        return Err("the node id must not be zero or have leading zeros");
    }
    digits
        .parse::<NodeId>()
        .map_err(|_| "the node id does not fit in 64 bits")
}

fn malformed(uri: &str, reason: &'static str) -> IdentityError {
    let mut shown: String = uri.chars().take(MAX_QUOTED).collect();
    if shown.chars().any(char::is_control) {
        shown = shown.escape_default().to_string();
    }
    IdentityError::Malformed { uri: shown, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_uris_parse() {
        let id = NodeIdentity::parse_uri("spiffe://a.b-c_d/strongbox/node/18446744073709551615")
            .expect("valid");
        assert_eq!(id.node_id(), u64::MAX);
        assert_eq!(id.trust_domain(), "a.b-c_d");
        assert_eq!(NodeIdentity::parse_uri(&id.uri()), Ok(id.clone()));
        assert_eq!(id.to_string(), id.uri());
    }

    #[test]
    fn malformed_node_uris_are_refused() {
        for bad in [
            "spiffe://td/strongbox/node/",
            "spiffe://td/strongbox/node/0",
            "spiffe://td/strongbox/node/007",
            "spiffe://td/strongbox/node/+7",
            "spiffe://td/strongbox/node/-7",
            "spiffe://td/strongbox/node/7/",
            "spiffe://td/strongbox/node/7?x=1",
            "spiffe://td/strongbox/node/7#f",
            "spiffe://td/strongbox/node/1 ",
            "spiffe://td/strongbox/node/18446744073709551616",
            "spiffe://TD/strongbox/node/1",
            "spiffe://td:443/strongbox/node/1",
            "spiffe://user@td/strongbox/node/1",
            "spiffe:///strongbox/node/1",
            "SPIFFE://td/strongbox/node/1",
            "spiffe://td/Strongbox/Node/1",
        ] {
            assert!(
                matches!(
                    NodeIdentity::parse_uri(bad),
                    Err(IdentityError::Malformed { .. })
                ),
                "{bad}: {:?}",
                NodeIdentity::parse_uri(bad)
            );
        }
    }

    #[test]
    fn other_uris_are_not_nodes() {
        for other in [
            "spiffe://td/ns/payments/sa/api",
            "spiffe://td/strongbox/nodes/1",
            "spiffe://td/strongbox/node",
            "https://td/strongbox/node/1",
            "spiffe://td",
            "",
        ] {
            assert_eq!(
                NodeIdentity::parse_uri(other),
                Err(IdentityError::NotANode),
                "{other}"
            );
        }
    }

    #[test]
    fn new_checks_its_parts() {
        assert!(NodeIdentity::new("td", 0).is_err());
        assert!(NodeIdentity::new("Td", 1).is_err());
        assert!(NodeIdentity::new("", 1).is_err());
        assert!(NodeIdentity::new("x".repeat(256), 1).is_err());
        assert_eq!(
            NodeIdentity::new("td", 3).expect("valid").uri(),
            "spiffe://td/strongbox/node/3"
        );
    }

    #[test]
    fn garbage_is_unparseable() {
        assert!(matches!(
            NodeIdentity::from_certificate(&[0x30, 0x03, 0x02, 0x01]),
            Err(IdentityError::Unparseable(_))
        ));
        assert!(!claims_node_identity(&[]));
    }
}
