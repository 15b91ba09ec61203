//! Certificate revocation lists: reading them from files, and keeping a
//! newer CRL from being replaced by an older one.
//!
//! Each CRL carries its issuer and a CRL number that the issuer increases
//! with every list it publishes (RFC 5280, 5.2.3). A reload that finds, for
//! some issuer, a lower number than the one in force would un-revoke
//! whatever the newer list added: it is a stale copy put back by mistake
//! (or on purpose). So for each issuer the newest list wins: an older one
//! is refused with a warning naming its file, and the one in force stays.
//! "Newer" is a higher CRL number, or, when either list has none, a later
//! `thisUpdate`.
//!
//! Every error names the file it is about.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::num_bigint::BigUint;

use super::{TlsError, content, read};

/// One CRL, read from a file, with what orders it against others.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// The CRL, DER.
    pub der: CertificateRevocationListDer<'static>,
    /// The file it came from.
    pub path: PathBuf,
    /// The issuer's name, DER: what identifies the list's issuer.
    issuer: Vec<u8>,
    /// The issuer's name, for people.
    pub issuer_name: String,
    /// Its CRL number, when it has one.
    pub number: Option<BigUint>,
    /// Its `thisUpdate`, seconds since the Unix epoch.
    pub this_update: i64,
}

impl LoadedCrl {
    /// Reads what a CRL says about itself.
    ///
    /// # Errors
    ///
    /// The bytes are not a CRL.
    fn parse(
        der: CertificateRevocationListDer<'static>,
        path: &Path,
        index: usize,
    ) -> Result<Self, TlsError> {
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| {
            content(
                "tls.crls",
                path,
                format!("CRL {} of the file does not parse: {e}", index + 1),
            )
        })?;
        Ok(Self {
            issuer: crl.issuer().as_raw().to_vec(),
            issuer_name: crl.issuer().to_string(),
            number: crl.crl_number().cloned(),
            this_update: crl.last_update().timestamp(),
            path: path.to_path_buf(),
            der,
        })
    }

    /// How `self` compares with `other` (of the same issuer) in time.
    fn age_order(&self, other: &Self) -> Ordering {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => self.this_update.cmp(&other.this_update),
        }
    }

    /// `number 4` or `thisUpdate 1700000000`, for messages.
    pub fn describe(&self) -> String {
        match &self.number {
            Some(n) => format!("number {n}"),
            None => format!("no number, thisUpdate {}", self.this_update),
        }
    }
}

/// Reads CRLs from files in PEM (one or more `X509 CRL` blocks) or DER.
///
/// # Errors
///
/// A file cannot be read, holds no CRL, or a CRL in it does not parse;
/// the error names the file.
pub fn read_crl_files(paths: &[PathBuf]) -> Result<Vec<LoadedCrl>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = read("tls.crls", path)?;
        let ders = if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| content("tls.crls", path, format!("not PEM CRLs: {e}")))?;
            if crls.is_empty() {
                return Err(content("tls.crls", path, "no X509 CRL block found".into()));
            }
            crls
        } else if bytes.is_empty() {
            return Err(content("tls.crls", path, "the file is empty".into()));
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        for (i, der) in ders.into_iter().enumerate() {
            out.push(LoadedCrl::parse(der, path, i)?);
        }
    }
    Ok(out)
}

/// A CRL left out because a newer one of the same issuer is at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The file of the older list.
    pub path: PathBuf,
    /// Its issuer.
    pub issuer: String,
    /// Its number (or `thisUpdate`).
    pub refused: String,
    /// The number of the list kept instead.
    pub kept: String,
    /// Where the list kept comes from.
    pub kept_from: PathBuf,
    /// True when the list kept is the one already in force (the file went
    /// back in time), false when another file of this load is newer.
    pub in_force: bool,
}

impl Refused {
    /// Logs the refusal as a warning.
    pub fn warn(&self) {
        tracing::warn!(
            file = %self.path.display(),
            issuer = %self.issuer,
            refused = %self.refused,
            kept = %self.kept,
            kept_from = %self.kept_from.display(),
            "tls.crls: refusing a CRL older than {} for the same issuer; {}",
            if self.in_force { "the one in force" } else { "another one listed" },
            "replace the file with the issuer's newest CRL"
        );
    }
}

/// The newest CRL of each issuer that a verifier was built with.
#[derive(Debug, Default)]
pub struct CrlsInForce {
    newest: HashMap<Vec<u8>, LoadedCrl>,
}

impl CrlsInForce {
    /// For each issuer among `loaded` and those in force, the newest list;
    /// and the lists refused as older. Changes nothing: call
    /// [`CrlsInForce::commit`] once the verifier is built.
    pub fn select(&self, loaded: Vec<LoadedCrl>) -> (Vec<LoadedCrl>, Vec<Refused>) {
        let mut newest: HashMap<Vec<u8>, LoadedCrl> = HashMap::new();
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut refused = Vec::new();
        for crl in loaded {
            match newest.get_mut(&crl.issuer) {
                None => {
                    order.push(crl.issuer.clone());
                    newest.insert(crl.issuer.clone(), crl);
                }
                Some(have) => {
                    let (keep, drop) = if crl.age_order(have) == Ordering::Greater {
                        (crl, have.clone())
                    } else {
                        (have.clone(), crl)
                    };
                    refused.push(refusal(&drop, &keep, false));
                    *have = keep;
                }
            }
        }
        let mut chosen = Vec::with_capacity(order.len());
        for issuer in order {
            let Some(crl) = newest.remove(&issuer) else {
                continue;
            };
            match self.newest.get(&issuer) {
                Some(current) if crl.age_order(current) == Ordering::Less => {
                    refused.push(refusal(&crl, current, true));
                    chosen.push(current.clone());
                }
                _ => chosen.push(crl),
            }
        }
        (chosen, refused)
    }

    /// Records `chosen` as the lists in force.
    pub fn commit(&mut self, chosen: &[LoadedCrl]) {
        self.newest = chosen
            .iter()
            .map(|c| (c.issuer.clone(), c.clone()))
            .collect();
    }
}

fn refusal(older: &LoadedCrl, kept: &LoadedCrl, in_force: bool) -> Refused {
    Refused {
        path: older.path.clone(),
        issuer: older.issuer_name.clone(),
        refused: older.describe(),
        kept: kept.describe(),
        kept_from: kept.path.clone(),
        in_force,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertSpec, TestCa};

    fn crl(ca: &TestCa, revoked: &[&crate::pki::IssuedCert], number: u64, file: &str) -> LoadedCrl {
        let pem = ca.crl(revoked, number).expect("crl");
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).expect("pem");
        LoadedCrl::parse(der, Path::new(file), 0).expect("parse")
    }

    #[test]
    fn an_older_crl_never_replaces_a_newer_one() {
        let ca = TestCa::new("CA one").expect("ca");
        let other = TestCa::new("CA two").expect("ca");
        let alice = ca
            .issue(&CertSpec::client_uri("spiffe://t/alice"))
            .expect("alice");
        let mut in_force = CrlsInForce::default();
        let (chosen, refused) = in_force.select(vec![
            crl(&ca, &[&alice], 4, "one.pem"),
            crl(&other, &[], 1, "two.pem"),
        ]);
        assert!(refused.is_empty());
        assert_eq!(chosen.len(), 2);
        in_force.commit(&chosen);

        // The first CA's file goes back to number 3: refused, number 4
        // stays; the other issuer's newer list is taken.
        let (chosen, refused) = in_force.select(vec![
            crl(&ca, &[], 3, "one.pem"),
            crl(&other, &[], 2, "two.pem"),
        ]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].path, Path::new("one.pem"));
        assert_eq!(refused[0].refused, "number 3");
        assert_eq!(refused[0].kept, "number 4");
        assert!(refused[0].in_force);
        let numbers: Vec<String> = chosen.iter().map(LoadedCrl::describe).collect();
        assert_eq!(numbers, ["number 4", "number 2"]);
        in_force.commit(&chosen);

        // The same number again, or a higher one, is accepted.
        let (chosen, refused) = in_force.select(vec![crl(&ca, &[], 5, "one.pem")]);
        assert!(refused.is_empty());
        assert_eq!(chosen[0].describe(), "number 5");
    }

    #[test]
    fn of_two_lists_of_one_issuer_the_newer_wins() {
        let ca = TestCa::new("CA").expect("ca");
        let (chosen, refused) = CrlsInForce::default().select(vec![
            crl(&ca, &[], 7, "new.pem"),
            crl(&ca, &[], 6, "stale.pem"),
        ]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].path, Path::new("new.pem"));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].path, Path::new("stale.pem"));
        assert!(!refused[0].in_force);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let bad = dir.path().join("bad.crl");
        std::fs::write(&bad, b"\x30\x03\x02\x01\x05").expect("write");
        let e = read_crl_files(std::slice::from_ref(&bad))
            .expect_err("not a CRL")
            .to_string();
        assert!(e.contains("bad.crl") && e.contains("does not parse"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"").expect("write");
        let e = read_crl_files(&[empty]).expect_err("empty").to_string();
        assert!(e.contains("empty.pem"), "{e}");
    }
}
