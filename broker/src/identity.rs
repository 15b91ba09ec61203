//! Who a client is: the principal, derived from its verified certificate.
//!
//! The TLS layer has already checked the chain, validity and revocation; this
//! module only reads names out of the leaf certificate. In order of
//! preference: the first SAN URI (SPIFFE IDs live there), the first SAN DNS
//! name, the subject's first common name. Then the mapping rules from
//! `[identity]` may rewrite it, for example to shorten
//! `spiffe://corp/ns/payments/sa/api` into `payments/api`.
//!
//! A certificate that claims a cluster node's identity is marked as such
//! ([`is_node_certificate`]): it maps to a principal like any other, but
//! only ACL rules naming that principal exactly grant it anything.
//!
//! webpki does not check client names at all, so everything that decides
//! *which* name counts is here, and the certificate bytes are treated as
//! untrusted input: parsing never panics, and a name with control characters
//! (which would forge log lines) is refused.
//!
//! ```
//! use strongbox_broker::identity::{CertIdentity, IdentitySource, IdentityMapper, MappingRule};
//!
//! let mapper = IdentityMapper::new(
//!     vec![MappingRule::parse("spiffe://corp/ns/*/sa/*", "{1}/{2}").unwrap()],
//!     false,
//! );
//! let id = CertIdentity { name: "spiffe://corp/ns/payments/sa/api".into(), source: IdentitySource::SanUri };
//! assert_eq!(mapper.map(&id).unwrap().as_str(), "payments/api");
//! ```

use std::any::Any;
use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Longest principal accepted, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 1024;

/// A mapped, validated principal: what ACLs are checked against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    /// Checks `name` (non-empty, at most [`MAX_PRINCIPAL_LEN`] bytes, no
    /// control characters) and wraps it.
    ///
    /// # Errors
    ///
    /// [`IdentityError::InvalidPrincipal`] when a check fails.
    pub fn new(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_PRINCIPAL_LEN {
            Some("it is longer than 1024 bytes")
        } else if name.chars().any(char::is_control) {
            Some("it contains control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IdentityError::InvalidPrincipal {
                name: escape_for_log(&name),
                reason,
            }),
            None => Ok(Self(name)),
        }
    }

    /// The principal as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The principal as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which part of the certificate an identity was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// A subject alternative name of type URI.
    SanUri,
    /// A subject alternative name of type DNS.
    SanDns,
    /// The subject's common name.
    CommonName,
}

/// The identity read from a certificate, before mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The name as written in the certificate.
    pub name: String,
    /// Where it was found.
    pub source: IdentitySource,
}

/// Why no principal could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("the client certificate cannot be parsed: {0}")]
    Unparseable(String),
    /// No SAN URI, SAN DNS name or common name.
    #[error(
        "the client certificate has no SAN URI, no SAN DNS name and no subject CN to take a principal from"
    )]
    NoIdentity,
    /// The name found is not acceptable as a principal.
    #[error("the identity {name:?} cannot be a principal: {reason}")]
    InvalidPrincipal {
        /// The name, with control characters escaped.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `identity.require_match` is set and no rule matched.
    #[error("no [[identity.rules]] entry matches {0:?}, and identity.require_match is set")]
    NoMatchingRule(String),
}

/// Reads the identity out of a DER certificate.
///
/// # Errors
///
/// [`IdentityError::Unparseable`] for bytes that are not one certificate,
/// [`IdentityError::NoIdentity`] when it carries no usable name.
pub fn extract_identity(der: &[u8]) -> Result<CertIdentity, IdentityError> {
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
    let names = san
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or(&[]);
    let first = |want: IdentitySource| {
        names.iter().find_map(|n| match (n, want) {
            (GeneralName::URI(u), IdentitySource::SanUri)
            | (GeneralName::DNSName(u), IdentitySource::SanDns) => Some(*u),
            _ => None,
        })
    };
    if let Some(uri) = first(IdentitySource::SanUri) {
        return Ok(CertIdentity {
            name: uri.to_string(),
            source: IdentitySource::SanUri,
        });
    }
    if let Some(dns) = first(IdentitySource::SanDns) {
        return Ok(CertIdentity {
            name: dns.to_string(),
            source: IdentitySource::SanDns,
        });
    }
    // A CN in a string type that is not text (BMPString, ...) is skipped
    // rather than guessed at.
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|attr| attr.as_str().ok());
    match cn {
        Some(cn) => Ok(CertIdentity {
            name: cn.to_string(),
            source: IdentitySource::CommonName,
        }),
        None => Err(IdentityError::NoIdentity),
    }
}

/// True when a certificate claims the identity of a cluster node (a URI SAN
/// `spiffe://<trust domain>/strongbox/node/<id>`, valid or not). On the
/// client listener such a certificate is authorized only by ACL rules that
/// name its principal exactly (see `services::authz`); the rules of node
/// identity are the `strongbox-peer` crate's, shared with the peer listener.
pub fn is_node_certificate(der: &[u8]) -> bool {
    strongbox_peer::claims_node_identity(der)
}

/// The leaf certificate out of quinn's `Connection::peer_identity()`, which
/// for rustls is the peer's chain as `Vec<CertificateDer<'static>>`.
///
/// # Errors
///
/// [`IdentityError::NoCertificate`] when there is none.
pub fn leaf_certificate(
    peer_identity: Option<Box<dyn Any>>,
) -> Result<CertificateDer<'static>, IdentityError> {
    let chain = peer_identity
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    chain.into_iter().next().ok_or(IdentityError::NoCertificate)
}

/// One mapping rule: a wildcard pattern and a principal template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingRule {
    /// The literal pieces between the `*`s; one more than there are `*`s.
    literals: Vec<String>,
    template: Vec<TemplatePart>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Capture(usize),
}

/// Why a mapping rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The pattern is empty.
    #[error("the pattern is empty")]
    EmptyPattern,
    /// Two `*` in a row: where one capture ends would be ambiguous.
    #[error("`**` is ambiguous; separate wildcards with literal text")]
    AdjacentWildcards,
    /// The template refers to a capture the pattern does not have.
    #[error("{{{index}}} refers to a wildcard the pattern does not have (it has {count})")]
    NoSuchCapture {
        /// The index written.
        index: usize,
        /// How many wildcards the pattern has.
        count: usize,
    },
    /// A `{` without a matching `}`, or a `{...}` that is not a number.
    #[error(
        "malformed placeholder in template: write {{0}}, {{1}}, ... or {{{{ and }}}} for braces"
    )]
    BadPlaceholder,
    /// The template is empty.
    #[error("the principal template is empty")]
    EmptyTemplate,
}

impl MappingRule {
    /// Parses a rule. In `pattern`, each `*` matches one or more characters
    /// and captures them; each takes the shortest text that lets the rest of
    /// the pattern match, except a trailing `*`, which takes the rest. In
    /// `template`, `{0}` is the whole identity, `{N}` the N-th capture, and
    /// `{{`/`}}` are literal braces.
    ///
    /// # Errors
    ///
    /// See [`RuleError`].
    pub fn parse(pattern: &str, template: &str) -> Result<Self, RuleError> {
        if pattern.is_empty() {
            return Err(RuleError::EmptyPattern);
        }
        if pattern.contains("**") {
            return Err(RuleError::AdjacentWildcards);
        }
        let literals: Vec<String> = pattern.split('*').map(str::to_string).collect();
        let count = literals.len().saturating_sub(1);
        let template = parse_template(template, count)?;
        Ok(Self {
            literals,
            template,
            source: pattern.to_string(),
        })
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.source
    }

    /// The rewritten identity, when the pattern matches `name`.
    pub fn apply(&self, name: &str) -> Option<String> {
        let captures = self.captures(name)?;
        let mut out = String::new();
        for part in &self.template {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Capture(0) => out.push_str(name),
                TemplatePart::Capture(i) => out.push_str(captures.get(i - 1)?),
            }
        }
        Some(out)
    }

    /// The text each `*` matched, or `None` when the pattern does not match.
    fn captures<'a>(&self, name: &'a str) -> Option<Vec<&'a str>> {
        let (first, rest) = self.literals.split_first()?;
        let mut tail = name.strip_prefix(first.as_str())?;
        let Some((last, middle)) = rest.split_last() else {
            // No wildcard: an exact match.
            return tail.is_empty().then(Vec::new);
        };
        // The last literal is anchored at the end; the middle ones are found
        // leftmost, each at least one character after the previous capture
        // started. Leftmost is optimal for existence with `*` wildcards.
        let body_len = tail.len().checked_sub(last.len())?;
        if !tail.ends_with(last.as_str()) {
            return None;
        }
        tail = tail.get(..body_len)?;
        let mut captures = Vec::with_capacity(rest.len());
        for lit in middle {
            let start = tail.char_indices().nth(1).map(|(i, _)| i)?;
            let found = tail.get(start..)?.find(lit.as_str())? + start;
            captures.push(tail.get(..found)?);
            tail = tail.get(found + lit.len()..)?;
        }
        if tail.is_empty() {
            return None;
        }
        captures.push(tail);
        Some(captures)
    }
}

fn parse_template(template: &str, count: usize) -> Result<Vec<TemplatePart>, RuleError> {
    if template.is_empty() {
        return Err(RuleError::EmptyTemplate);
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '}' => return Err(RuleError::BadPlaceholder),
            '{' => {
                let mut digits = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(d) if d.is_ascii_digit() && digits.len() < 4 => digits.push(d),
                        _ => return Err(RuleError::BadPlaceholder),
                    }
                }
                let index: usize = digits.parse().map_err(|_| RuleError::BadPlaceholder)?;
                if index > count {
                    return Err(RuleError::NoSuchCapture { index, count });
                }
                if !text.is_empty() {
                    parts.push(TemplatePart::Text(std::mem::take(&mut text)));
                }
                parts.push(TemplatePart::Capture(index));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(TemplatePart::Text(text));
    }
    Ok(parts)
}

/// Applies the `[identity]` rules to certificate identities.
#[derive(Debug, Clone, Default)]
pub struct IdentityMapper {
    rules: Vec<MappingRule>,
    require_match: bool,
}

impl IdentityMapper {
    /// A mapper trying `rules` in order; with `require_match`, an identity
    /// no rule matches is refused instead of used unchanged.
    pub fn new(rules: Vec<MappingRule>, require_match: bool) -> Self {
        Self {
            rules,
            require_match,
        }
    }

    /// The principal for `identity`: the first matching rule's rewrite, or
    /// the identity itself.
    ///
    /// # Errors
    ///
    /// No rule matched under `require_match`, or the result is not a valid
    /// principal.
    pub fn map(&self, identity: &CertIdentity) -> Result<Principal, IdentityError> {
        match self.rules.iter().find_map(|r| r.apply(&identity.name)) {
            Some(mapped) => Principal::new(mapped),
            None if self.require_match => Err(IdentityError::NoMatchingRule(escape_for_log(
                &identity.name,
            ))),
            None => Principal::new(identity.name.clone()),
        }
    }

    /// Extracts and maps the principal of a DER certificate.
    ///
    /// # Errors
    ///
    /// As [`extract_identity`] and [`map`](Self::map).
    pub fn principal_of(&self, der: &[u8]) -> Result<Principal, IdentityError> {
        self.map(&extract_identity(der)?)
    }
}

/// `name` with control characters escaped, safe to put in a log line.
fn escape_for_log(name: &str) -> String {
    let mut out: String = name.chars().take(MAX_PRINCIPAL_LEN).collect();
    if out.chars().any(char::is_control) {
        out = out.escape_default().to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(pattern: &str, template: &str, name: &str) -> Option<String> {
        MappingRule::parse(pattern, template).unwrap().apply(name)
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        assert_eq!(apply("svc-a", "a", "svc-a").as_deref(), Some("a"));
        assert_eq!(apply("svc-a", "a", "svc-ab"), None);
    }

    #[test]
    fn prefix_capture() {
        assert_eq!(
            apply("spiffe://corp/*", "corp:{1}", "spiffe://corp/x/y").as_deref(),
            Some("corp:x/y")
        );
        // A wildcard matches at least one character.
        assert_eq!(apply("spiffe://corp/*", "{1}", "spiffe://corp/"), None);
    }

    #[test]
    fn interior_wildcards_capture_shortest_then_rest() {
        let r = MappingRule::parse("spiffe://corp/ns/*/sa/*", "{1}/{2}").unwrap();
        assert_eq!(
            r.apply("spiffe://corp/ns/pay/sa/api").as_deref(),
            Some("pay/api")
        );
        assert_eq!(
            r.apply("spiffe://corp/ns/a/sa/b/sa/c").as_deref(),
            Some("a/b/sa/c")
        );
        assert_eq!(r.apply("spiffe://corp/ns//sa/api"), None);
        assert_eq!(r.apply("spiffe://other/ns/pay/sa/api"), None);
    }

    #[test]
    fn suffix_and_whole() {
        assert_eq!(
            apply("*.svc.cluster.local", "{1} ({0})", "api.svc.cluster.local").as_deref(),
            Some("api (api.svc.cluster.local)")
        );
        assert_eq!(apply("*.svc", "{1}", ".svc"), None);
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        assert_eq!(apply("é*é", "{1}", "ééé").as_deref(), Some("é"));
        assert_eq!(apply("*ü*", "{1}-{2}", "aüüb").as_deref(), Some("a-üb"));
    }

    #[test]
    fn template_errors() {
        assert_eq!(
            MappingRule::parse("a*", "{2}"),
            Err(RuleError::NoSuchCapture { index: 2, count: 1 })
        );
        assert_eq!(
            MappingRule::parse("a*", "{x}"),
            Err(RuleError::BadPlaceholder)
        );
        assert_eq!(
            MappingRule::parse("a*", "{1"),
            Err(RuleError::BadPlaceholder)
        );
        assert_eq!(
            MappingRule::parse("a*", "}"),
            Err(RuleError::BadPlaceholder)
        );
        assert_eq!(
            MappingRule::parse("a**", "x"),
            Err(RuleError::AdjacentWildcards)
        );
        assert_eq!(MappingRule::parse("", "x"), Err(RuleError::EmptyPattern));
        assert_eq!(
            apply("a*", "{{{1}}}", "ab").as_deref(),
            Some("{b}"),
            "escaped braces"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_require_match_refuses() {
        let mapper = IdentityMapper::new(
            vec![
                MappingRule::parse("spiffe://a/*", "a-{1}").unwrap(),
                MappingRule::parse("spiffe://*", "any-{1}").unwrap(),
            ],
            true,
        );
        let id = |n: &str| CertIdentity {
            name: n.into(),
            source: IdentitySource::SanUri,
        };
        assert_eq!(mapper.map(&id("spiffe://a/x")).unwrap().as_str(), "a-x");
        assert_eq!(mapper.map(&id("spiffe://b/x")).unwrap().as_str(), "any-b/x");
        assert!(matches!(
            mapper.map(&id("other")),
            Err(IdentityError::NoMatchingRule(_))
        ));
    }

    #[test]
    fn principals_with_control_characters_are_refused() {
        assert!(Principal::new("alice\nadmin").is_err());
        assert!(Principal::new("").is_err());
        assert!(Principal::new("x".repeat(MAX_PRINCIPAL_LEN + 1)).is_err());
        assert!(Principal::new("CN with spaces").is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            extract_identity(&[0x30, 0x03, 0x02, 0x01]),
            Err(IdentityError::Unparseable(_))
        ));
        assert!(extract_identity(&[]).is_err());
    }

    #[test]
    fn no_peer_identity_is_no_certificate() {
        assert_eq!(leaf_certificate(None), Err(IdentityError::NoCertificate));
        let wrong: Box<dyn Any> = Box::new(5u8);
        assert_eq!(
            leaf_certificate(Some(wrong)),
            Err(IdentityError::NoCertificate)
        );
        let empty: Box<dyn Any> = Box::new(Vec::<CertificateDer<'static>>::new());
        assert_eq!(
            leaf_certificate(Some(empty)),
            Err(IdentityError::NoCertificate)
        );
    }
}
