//! The mTLS matrix against a real broker: which certificates get in, which
//! are refused, and that a refusal shows on the first request (with TLS 1.3
//! the QUIC handshake may complete before the broker has judged the client
//! certificate).

use std::path::Path;

use anyhow::{Context, Result, bail};
use strongbox_broker::pki::{CertSpec, IssuedCert, TestCa};
use strongbox_client::{Client, ClientConfig, ClientError, PemSource};
use strongbox_protocol::ALPN;
use strongbox_protocol::frame::Frame;
use strongbox_tests::raw::{self, FrameStream, Identity};
use strongbox_tests::{BrokerProcess, Signal, cli};

/// TLS alerts, as QUIC carries them (0x100 + alert).
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

fn dev_ca(dir: &Path) -> Result<TestCa> {
    let cert = std::fs::read_to_string(dir.join("ca/ca.pem"))?;
    let key = std::fs::read_to_string(dir.join("ca/ca.key"))?;
    Ok(TestCa::load(&cert, &key)?)
}

/// A library client config for `broker` with an inline certificate.
fn config_for(broker: &BrokerProcess, cert: &IssuedCert) -> ClientConfig {
    let mut config = ClientConfig::new(
        broker.addr.to_string(),
        PemSource::file(broker.dir.join("ca/ca.pem")),
        PemSource::pem(cert.cert_pem.as_bytes().to_vec()),
        PemSource::pem(cert.key_pem().as_bytes().to_vec()),
    );
    config.server_name = Some("localhost".into());
    config
}

fn identity(cert: &IssuedCert) -> Result<Identity> {
    Identity::from_pem(cert.cert_pem.as_bytes(), cert.key_pem().as_bytes())
}

/// The TLS alert that closed the connection, if that is how it ended.
fn tls_alert(e: &quinn::ConnectionError) -> Option<u8> {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..0x200)
                .contains(&code)
                .then(|| u8::try_from(code - 0x100).ok())
                .flatten()
        }
        _ => None,
    }
}

/// Connects raw and sends `Hello` as the first request: returns the TLS
/// alert the broker refused the connection with, at whichever step it
/// surfaced (the QUIC handshake or the first stream operation).
async fn refused_alert(broker: &BrokerProcess, config: quinn::ClientConfig) -> Result<u8> {
    let conn = match raw::connect(broker.addr, config).await {
        Ok(conn) => conn,
        Err(e) => {
            let Some(ce) = e.downcast_ref::<quinn::ConnectionError>() else {
                bail!("connect failed otherwise: {e:#}");
            };
            return tls_alert(ce).with_context(|| format!("not a TLS alert: {ce}"));
        }
    };
    let first = async {
        let mut control = FrameStream::open(&conn).await?;
        control.send(&raw::hello()).await?;
        anyhow::Ok(control.next().await)
    };
    match first.await {
        Ok(Ok(Frame::Welcome(w))) => bail!("accepted as {}", w.principal),
        Ok(Ok(other)) => bail!("unexpected first frame {other:?}"),
        Ok(Err(end)) => match end {
            raw::End::Connection(ce) => {
                tls_alert(&ce).with_context(|| format!("not a TLS alert: {ce}"))
            }
            other => bail!("refused without a TLS alert: {other:?}"),
        },
        Err(e) => match conn.close_reason() {
            Some(ce) => tls_alert(&ce).with_context(|| format!("not a TLS alert: {ce}")),
            None => bail!("the first request failed otherwise: {e:#}"),
        },
    }
}

/// The library's error for a connection with `cert`.
async fn library_refusal(broker: &BrokerProcess, cert: &IssuedCert) -> ClientError {
    match Client::connect(config_for(broker, cert)).await {
        Ok(client) => panic!("accepted as {}", client.principal()),
        Err(e) => e,
    }
}

async fn whoami_with(broker: &BrokerProcess, cert: &IssuedCert) -> Result<String> {
    let client = Client::connect(config_for(broker, cert)).await?;
    let me = client.admin().whoami().await?;
    assert_eq!(client.principal(), me.principal, "Welcome and WhoAmI agree");
    assert!(!me.superuser);
    client.close().await;
    Ok(me.principal)
}

async fn alice_still_served(broker: &BrokerProcess) -> Result<()> {
    let alice = strongbox_tests::client::connect(&broker.profile("alice")).await?;
    assert_eq!(
        alice.admin().whoami().await?.principal,
        "spiffe://strongbox.dev/alice"
    );
    alice.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificates_get_their_mapped_principal() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;

    // The CLI, with the profiles `dev` wrote.
    for (name, principal, superuser) in [
        ("alice", "spiffe://strongbox.dev/alice", false),
        ("admin", "spiffe://strongbox.dev/admin", true),
    ] {
        let out = cli(&broker.profile(name), &["whoami", "--json"])?;
        assert!(
            out.status.success(),
            "whoami as {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(json["principal"], principal);
        assert_eq!(json["superuser"], superuser);
        assert_eq!(json["broker_id"], "strongbox-dev");
    }
    let out = cli(&broker.profile("bob"), &["whoami"])?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://strongbox.dev/bob"));

    // Fresh certificates from the development CA: SAN URI first, then SAN
    // DNS, then the subject CN.
    let ca = dev_ca(&dir)?;
    let mut uri = CertSpec::client_uri("spiffe://strongbox.dev/carol");
    uri.dns = vec!["carol.example".into()];
    uri.common_name = Some("carol-cn".into());
    assert_eq!(
        whoami_with(&broker, &ca.issue(&uri)?).await?,
        "spiffe://strongbox.dev/carol"
    );
    let mut dns = CertSpec::client_dns("dave.example");
    dns.common_name = Some("dave-cn".into());
    assert_eq!(
        whoami_with(&broker, &ca.issue(&dns)?).await?,
        "dave.example"
    );
    assert_eq!(
        whoami_with(&broker, &ca.issue(&CertSpec::client_cn("legacy-erin"))?).await?,
        "legacy-erin"
    );

    // The raw handshake reports the same principal in Welcome.
    let conn = raw::connect(broker.addr, raw::profile_config(&dir, "bob")?).await?;
    let (_control, welcome) = raw::handshake(&conn).await?;
    assert_eq!(welcome.principal, "spiffe://strongbox.dev/bob");
    assert_eq!(welcome.version, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_fail_on_the_first_request() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let ca_pem = std::fs::read(dir.join("ca/ca.pem"))?;
    let failures_before = broker.metric_sum("strongbox_auth_failures_total")?;

    // No client certificate at all.
    let alert = refused_alert(&broker, raw::client_config(&ca_pem, None, &[ALPN])?).await?;
    assert_eq!(alert, ALERT_CERTIFICATE_REQUIRED, "no certificate");

    // A certificate from another CA, even one claiming alice's identity.
    let other = TestCa::new("Some other CA")?;
    let impostor = other.issue(&CertSpec::client_uri("spiffe://strongbox.dev/alice"))?;
    let alert = refused_alert(
        &broker,
        raw::client_config(&ca_pem, Some(identity(&impostor)?), &[ALPN])?,
    )
    .await?;
    assert_eq!(alert, ALERT_UNKNOWN_CA, "another CA");
    let e = library_refusal(&broker, &impostor).await;
    assert!(
        matches!(&e, ClientError::Authentication(m) if m.contains("unknown CA")),
        "another CA through the library: {e:?}"
    );

    // An expired certificate from the right CA.
    let ca = dev_ca(&dir)?;
    let expired = ca.issue(&CertSpec::client_uri("spiffe://strongbox.dev/alice").expired())?;
    let alert = refused_alert(
        &broker,
        raw::client_config(&ca_pem, Some(identity(&expired)?), &[ALPN])?,
    )
    .await?;
    assert_eq!(alert, ALERT_CERTIFICATE_EXPIRED, "expired");
    let e = library_refusal(&broker, &expired).await;
    assert!(
        matches!(&e, ClientError::Authentication(m) if m.contains("expired")),
        "expired through the library: {e:?}"
    );

    // A valid certificate offering only another protocol.
    let alice = || Identity::profile(&dir, "alice");
    let alert = refused_alert(
        &broker,
        raw::client_config(&ca_pem, Some(alice()?), &[b"strongbox/2"])?,
    )
    .await?;
    assert_eq!(alert, ALERT_NO_APPLICATION_PROTOCOL, "wrong ALPN");
    let alert = refused_alert(
        &broker,
        raw::client_config(&ca_pem, Some(alice()?), &[b"h3", b"strongbox/0"])?,
    )
    .await?;
    assert_eq!(alert, ALERT_NO_APPLICATION_PROTOCOL, "wrong ALPNs");

    // Every refusal was counted, and the broker goes on serving.
    let failures_after = broker.metric_sum("strongbox_auth_failures_total")?;
    assert!(
        failures_after >= failures_before + 5.0,
        "auth failures counted: {failures_before} -> {failures_after}"
    );
    alice_still_served(&broker).await
}

/// Writes a CRL next to the one the broker watches and renames it over it,
/// so the broker never reads half a file.
fn install_crl(dir: &Path, pem: &str) -> Result<()> {
    let tmp = dir.join("ca/crl.pem.new");
    std::fs::write(&tmp, pem)?;
    std::fs::rename(&tmp, dir.join("ca/crl.pem"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_after_a_crl_reload() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let ca_pem = std::fs::read(dir.join("ca/ca.pem"))?;
    let ca = dev_ca(&dir)?;
    let carol = ca.issue(&CertSpec::client_uri("spiffe://strongbox.dev/carol"))?;
    let dave = ca.issue(&CertSpec::client_uri("spiffe://strongbox.dev/dave"))?;
    assert_eq!(
        whoami_with(&broker, &carol).await?,
        "spiffe://strongbox.dev/carol"
    );
    assert_eq!(
        whoami_with(&broker, &dave).await?,
        "spiffe://strongbox.dev/dave"
    );

    // Carol keeps a connection open across her revocation.
    let carol_conn = raw::connect(
        broker.addr,
        raw::client_config(&ca_pem, Some(identity(&carol)?), &[ALPN])?,
    )
    .await?;
    let (control, _) = raw::handshake(&carol_conn).await?;
    let _keep = raw::keep_alive(control);

    // Revoke carol by replacing the CRL file: the broker's poll (every 5 s
    // in the dev config) picks it up without a restart.
    install_crl(&dir, &ca.crl(&[&carol], 2)?)?;
    broker
        .wait_for_log("client certificate revocation lists reloaded", 1)
        .await?;
    // Her open connection is closed with `authentication_failed` (17).
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(30), carol_conn.closed()).await?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                17,
                "closed as authentication_failed: {c:?}"
            );
        }
        other => panic!("carol's connection should be closed by the broker, got {other:?}"),
    }
    let alert = refused_alert(
        &broker,
        raw::client_config(&ca_pem, Some(identity(&carol)?), &[ALPN])?,
    )
    .await?;
    assert_eq!(alert, ALERT_CERTIFICATE_REVOKED, "carol revoked");
    let e = library_refusal(&broker, &carol).await;
    assert!(
        matches!(&e, ClientError::Authentication(m) if m.contains("revoked")),
        "revoked through the library: {e:?}"
    );
    assert_eq!(
        whoami_with(&broker, &dave).await?,
        "spiffe://strongbox.dev/dave",
        "dave is not on the CRL"
    );

    // Revoke dave too, and make the broker reload at once with SIGHUP.
    install_crl(&dir, &ca.crl(&[&carol, &dave], 3)?)?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("CRLs reloaded", 1).await?;
    let alert = refused_alert(
        &broker,
        raw::client_config(&ca_pem, Some(identity(&dave)?), &[ALPN])?,
    )
    .await?;
    assert_eq!(alert, ALERT_CERTIFICATE_REVOKED, "dave revoked");

    // The development profiles are unaffected.
    alice_still_served(&broker).await
}

/// `strongbox-broker pki revoke` on a running development broker: after
/// the reload the certificate is refused and its open connection closed,
/// and a CRL that does not parse is reported with its file name and
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_revoke_refuses_the_certificate_at_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let bob_config = || raw::profile_config(&dir, "bob");
    let bob_conn = raw::connect(broker.addr, bob_config()?).await?;
    let (control, _) = raw::handshake(&bob_conn).await?;
    let _keep = raw::keep_alive(control);

    let out = std::process::Command::new(strongbox_tests::binary("strongbox-broker"))
        .args(["pki", "revoke", "--data-dir"])
        .arg(&dir)
        .arg("bob")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("spiffe://strongbox.dev/bob") && stdout.contains("CRL number 2"),
        "{stdout}"
    );
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("CRLs reloaded", 1).await?;
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(30), bob_conn.closed()).await?;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == 17),
        "bob's open connection is closed as authentication_failed: {closed:?}"
    );
    assert_eq!(
        refused_alert(&broker, bob_config()?).await?,
        ALERT_CERTIFICATE_REVOKED
    );
    alice_still_served(&broker).await?;

    // A CRL that does not parse: the error names the file.
    install_crl(
        &dir,
        "-----BEGIN X509 CRL-----\nMAMCAQU=\n-----END X509 CRL-----\n",
    )?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("CRL reload failed", 1).await?;
    let log = broker.log_text();
    let failure = log
        .lines()
        .find(|l| l.contains("CRL reload failed"))
        .context("the failure")?;
    assert!(
        failure.contains(&dir.join("ca/crl.pem").display().to_string()),
        "{failure}"
    );
    assert_eq!(
        refused_alert(&broker, bob_config()?).await?,
        ALERT_CERTIFICATE_REVOKED,
        "the CRLs in force stay"
    );
    alice_still_served(&broker).await
}

/// A CRL with a lower number than the one in force for its issuer (a
/// stale copy put back) is refused with a warning naming its file, and
/// what the newer one revokes stays revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crl_never_replaces_a_newer_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let ca_pem = std::fs::read(dir.join("ca/ca.pem"))?;
    let ca = dev_ca(&dir)?;
    let dave = ca.issue(&CertSpec::client_uri("spiffe://strongbox.dev/dave"))?;
    let dave_config = || raw::client_config(&ca_pem, Some(identity(&dave)?), &[ALPN]);

    install_crl(&dir, &ca.crl(&[&dave], 4)?)?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("CRLs reloaded", 1).await?;
    assert_eq!(
        refused_alert(&broker, dave_config()?).await?,
        ALERT_CERTIFICATE_REVOKED
    );

    // Number 3, revoking nobody, put in its place.
    install_crl(&dir, &ca.crl(&[], 3)?)?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("refusing a CRL older than", 1).await?;
    let log = broker.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("refusing a CRL older than"))
        .context("the warning")?;
    assert!(
        warning.contains("crl.pem") && warning.contains("number 3") && warning.contains("number 4"),
        "{warning}"
    );
    assert_eq!(
        refused_alert(&broker, dave_config()?).await?,
        ALERT_CERTIFICATE_REVOKED,
        "dave stays revoked"
    );
    // The issuer's next CRL is taken as usual.
    install_crl(&dir, &ca.crl(&[], 5)?)?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("CRLs reloaded", 3).await?;
    assert_eq!(
        whoami_with(&broker, &dave).await?,
        "spiffe://strongbox.dev/dave",
        "number 5 no longer lists dave"
    );
    Ok(())
}
