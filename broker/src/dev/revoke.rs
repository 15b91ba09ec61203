//! `strongbox-broker pki revoke`: revoking a certificate of a development
//! directory's CA.
//!
//! The development CA's CRL is `ca/crl.pem`, listed in the generated
//! `broker.toml`. Revoking signs a new CRL with the CA key: every
//! certificate the current one lists, plus the new one, under the next CRL
//! number (so the broker never takes it for an older list). The file is
//! replaced atomically; a running broker loads it within `tls.crl_reload`
//! (5 s for `dev`) or at once on `SIGHUP`, refuses the certificate from
//! then on and closes the connections that use it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{DevError, io_err, missing_entries};
use crate::identity::extract_identity;
use crate::pki::{RevokedSerial, TestCa, write_file};

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate file.
    pub cert: PathBuf,
    /// The principal the certificate carries.
    pub principal: String,
    /// Its serial number, hex.
    pub serial: String,
    /// The CRL file.
    pub crl: PathBuf,
    /// The CRL's number now.
    pub crl_number: u64,
    /// True when an earlier CRL already revoked it (nothing was written).
    pub already_revoked: bool,
    /// How many certificates the CRL revokes.
    pub revoked: usize,
}

fn pki(path: &Path, message: impl Into<String>) -> DevError {
    DevError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The certificate `who` names: a profile (`alice` is
/// `DIR/profiles/alice.pem`) or a PEM file.
fn certificate_path(dir: &Path, who: &str) -> PathBuf {
    if who.contains('/') || who.ends_with(".pem") {
        PathBuf::from(who)
    } else {
        dir.join("profiles").join(format!("{who}.pem"))
    }
}

/// Revokes the certificate `who` (a profile name or a certificate file)
/// issued by the development CA in `dir`, by writing the next CRL.
///
/// # Errors
///
/// `dir` is not a complete development directory, the certificate is
/// missing or not issued by its CA, or a file cannot be read, parsed or
/// written.
pub fn revoke(dir: &Path, who: &str) -> Result<Revocation, DevError> {
    if let Some(missing) = missing_entries(dir)? {
        return Err(DevError::Incomplete {
            dir: dir.to_path_buf(),
            missing: missing.join(", "),
        });
    }
    let cert_path = certificate_path(dir, who);
    let cert_pem = std::fs::read(&cert_path).map_err(io_err(&cert_path))?;
    let cert = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|e| pki(&cert_path, format!("not a PEM certificate: {e}")))?;
    let ca_path = dir.join("ca/ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
    let key_path = dir.join("ca/ca.key");
    let key_pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?);
    let ca = TestCa::load(&ca_pem, &key_pem)?;

    let (serial, issued_by_ca) = {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| pki(&cert_path, format!("the certificate does not parse: {e}")))?;
        let ca_der = ca.cert_der();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref())
            .map_err(|e| pki(&ca_path, format!("the CA certificate does not parse: {e}")))?;
        (
            parsed.tbs_certificate.raw_serial().to_vec(),
            parsed.issuer().as_raw() == ca_parsed.subject().as_raw(),
        )
    };
    if !issued_by_ca {
        return Err(pki(
            &cert_path,
            format!(
                "not issued by the development CA of {} (revoke it with the CA that issued it)",
                dir.display()
            ),
        ));
    }
    let principal = extract_identity(cert.as_ref())
        .map(|id| id.name)
        .unwrap_or_else(|_| "(no identity)".into());

    let crl_path = dir.join("ca/crl.pem");
    let (mut listed, number) = read_crl(&crl_path)?;
    let already_revoked = listed.iter().any(|r| r.serial == serial);
    let mut crl_number = number;
    if !already_revoked {
        listed.push(RevokedSerial {
            serial: serial.clone(),
            revoked_at: SystemTime::now(),
        });
        crl_number = number
            .checked_add(1)
            .ok_or_else(|| pki(&crl_path, "the CRL number cannot grow any more"))?;
        let pem = ca.crl_of_serials(&listed, crl_number)?;
        let tmp = crl_path.with_extension("pem.tmp");
        write_file(&tmp, pem.as_bytes(), false)?;
        // The revocation must outlive a power cut like any other state.
        strongbox_storage::io::durable::rename(&strongbox_storage::io::FileIo, &tmp, &crl_path)
            .map_err(|e| io_err(&crl_path)(e.into()))?;
    }
    Ok(Revocation {
        cert: cert_path,
        principal,
        serial: hex::encode(&serial),
        crl: crl_path,
        crl_number,
        already_revoked,
        revoked: listed.len(),
    })
}

/// The certificates a CRL file revokes and its number.
fn read_crl(path: &Path) -> Result<(Vec<RevokedSerial>, u64), DevError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&pem)
        .map_err(|e| pki(path, format!("not a PEM CRL: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| pki(path, format!("the CRL does not parse: {e}")))?;
    let number = match crl.crl_number() {
        Some(n) => u64::try_from(n.clone())
            .map_err(|_| pki(path, "the CRL number is larger than this tool handles"))?,
        None => 0,
    };
    let listed = crl
        .iter_revoked_certificates()
        .map(|r| RevokedSerial {
            serial: r.raw_serial().to_vec(),
            revoked_at: UNIX_EPOCH
                + Duration::from_secs(u64::try_from(r.revocation_date.timestamp()).unwrap_or(0)),
        })
        .collect();
    Ok((listed, number))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::dev::ensure_dev_dir;
    use crate::tls::read_crl_files;

    #[test]
    fn revoking_writes_the_next_crl_with_every_earlier_entry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("dev");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        ensure_dev_dir(&dir, listen).expect("dev dir");

        let bob = revoke(&dir, "bob").expect("revoke bob");
        assert_eq!(bob.principal, "spiffe://strongbox.dev/bob");
        assert_eq!(
            (bob.crl_number, bob.revoked, bob.already_revoked),
            (2, 1, false)
        );
        let alice = revoke(
            &dir,
            dir.join("profiles/alice.pem").to_str().expect("utf-8"),
        )
        .expect("revoke alice by file");
        assert_eq!((alice.crl_number, alice.revoked), (3, 2));
        let again = revoke(&dir, "bob").expect("bob again");
        assert!(again.already_revoked);
        assert_eq!(again.crl_number, 3, "nothing written");

        let crls = read_crl_files(&[dir.join("ca/crl.pem")]).expect("the broker reads it");
        assert_eq!(crls.len(), 1);
        assert_eq!(crls[0].describe(), "number 3");
        let (listed, _) = read_crl(&dir.join("ca/crl.pem")).expect("read");
        let serials: Vec<String> = listed.iter().map(|r| hex::encode(&r.serial)).collect();
        assert_eq!(serials, [bob.serial.clone(), alice.serial]);

        assert!(revoke(&dir, "carol").is_err(), "no such profile");
        let other = TestCa::new("another CA").expect("ca");
        let stranger = other
            .issue(&crate::pki::CertSpec::client_uri("spiffe://x/y"))
            .expect("cert");
        let path = tmp.path().join("stranger.pem");
        std::fs::write(&path, &stranger.cert_pem).expect("write");
        let e = revoke(&dir, path.to_str().expect("utf-8")).expect_err("another CA's");
        assert!(
            e.to_string().contains("not issued by the development CA"),
            "{e}"
        );
    }
}
