//! Certificates without restarts, against a real broker process:
//!
//! - a renewed server certificate and key are served to new handshakes
//!   after SIGHUP, and after a file change without any signal, while a
//!   connection opened before keeps working on what it negotiated;
//! - a broken certificate file, or a key that does not match, is refused
//!   with a log line naming the file, and the certificate in force stays;
//! - a client CA added to the bundle is trusted after a reload, and one
//!   taken out again closes the connections that depend on it (others
//!   carry on);
//! - the client library reads its certificate files at each connection
//!   attempt: after its old certificate is revoked, it reconnects with the
//!   renewed one it finds in the same files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use strongbox_broker::pki::{CertSpec, IssuedCert, TestCa};
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_tests::raw::{self, FrameStream, Identity};
use strongbox_tests::{BrokerProcess, Signal, binary};

/// The development CA of a dev directory.
fn dev_ca(dev: &Path) -> Result<TestCa> {
    Ok(TestCa::load(
        &std::fs::read_to_string(dev.join("ca/ca.pem"))?,
        &std::fs::read_to_string(dev.join("ca/ca.key"))?,
    )?)
}

/// Replaces `path` atomically (a new file renamed over it), as an operator
/// or a certificate renewal tool should.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes a new broker certificate and key into the dev directory.
fn renew_server(dev: &Path) -> Result<IssuedCert> {
    let cert = dev_ca(dev)?.issue(&CertSpec::server(&["localhost", "127.0.0.1", "::1"]))?;
    replace(&dev.join("tls/broker.key"), cert.key_pem().as_bytes())?;
    replace(&dev.join("tls/broker.pem"), cert.cert_pem.as_bytes())?;
    Ok(cert)
}

fn leaf_of_file(path: &Path) -> Result<Vec<u8>> {
    let der = CertificateDer::pem_slice_iter(&std::fs::read(path)?)
        .next()
        .context("no certificate")??;
    Ok(der.to_vec())
}

/// The certificate the broker presents to a new connection.
async fn presented(broker: &BrokerProcess) -> Result<Vec<u8>> {
    let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "alice")?).await?;
    let leaf = leaf_of(&conn)?;
    conn.close(0u32.into(), b"done");
    Ok(leaf)
}

fn leaf_of(conn: &quinn::Connection) -> Result<Vec<u8>> {
    let chain = conn
        .peer_identity()
        .context("no peer identity")?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| anyhow::anyhow!("not a certificate chain"))?;
    Ok(chain.first().context("empty chain")?.to_vec())
}

/// A raw connection that completed the protocol handshake, kept alive.
struct Open {
    conn: quinn::Connection,
    principal: String,
    _keep_alive: tokio::task::JoinHandle<()>,
}

async fn open(addr: std::net::SocketAddr, config: quinn::ClientConfig) -> Result<Open> {
    let conn = raw::connect(addr, config).await?;
    let (control, welcome) = raw::handshake(&conn).await?;
    Ok(Open {
        conn,
        principal: welcome.principal,
        _keep_alive: raw::keep_alive(control),
    })
}

/// A `WhoAmI` on a new stream of `conn`: proves the connection still
/// serves requests.
async fn whoami(conn: &quinn::Connection) -> Result<String> {
    let mut s = FrameStream::open(conn).await?;
    s.send(&Frame::Request(AdminRequest::WhoAmI)).await?;
    match s.next().await {
        Ok(Frame::Response(AdminResponse::WhoAmI { principal, .. })) => Ok(principal),
        other => bail!("expected WhoAmI, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_served_on_sighup_and_open_connections_carry_on()
-> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dev)?;
    let old = leaf_of_file(&dev.join("tls/broker.pem"))?;
    ensure!(presented(&broker).await? == old);
    let before = open(broker.addr, raw::profile_config(&dev, "alice")?).await?;

    let renewed = renew_server(&dev)?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("TLS certificate loaded", 1).await?;
    let new = presented(&broker).await?;
    ensure!(
        new == renewed.cert_der.to_vec(),
        "new handshakes get the renewed certificate"
    );
    ensure!(new != old);

    // The connection opened before keeps what it negotiated and keeps working,
    // also after the re-check every connection makes when the CA bundle
    // and CRLs are reloaded with it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(
        before.conn.close_reason().is_none(),
        "the open connection was closed"
    );
    ensure!(leaf_of(&before.conn)? == old);
    ensure!(whoami(&before.conn).await? == before.principal);
    let metrics = broker.metrics_text()?;
    ensure!(
        metrics.contains("strongbox_tls_reloads_total{material=\"certificate\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_picked_up_without_a_signal() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dev)?;
    // The dev configuration checks the TLS files every 5 s (tls.crl_reload).
    let renewed = renew_server(&dev)?;
    broker.wait_for_log("TLS certificate loaded", 1).await?;
    ensure!(presented(&broker).await? == renewed.cert_der.to_vec());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_or_key_is_refused_and_the_old_one_kept() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dev)?;
    let cert_path = dev.join("tls/broker.pem");
    let old = leaf_of_file(&cert_path)?;
    let good_pem = std::fs::read(&cert_path)?;

    replace(
        &cert_path,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )?;
    broker.signal(Signal::SIGHUP)?;
    broker
        .wait_for_log("TLS certificate reload refused", 1)
        .await?;
    let line = broker
        .log_text()
        .lines()
        .find(|l| l.contains("TLS certificate reload refused"))
        .context("no refusal line")?
        .to_owned();
    ensure!(line.contains(&cert_path.display().to_string()), "{line}");
    ensure!(
        presented(&broker).await? == old,
        "the old certificate stays in force"
    );

    // A renewed certificate whose key was not replaced: refused, naming the key.
    replace(&cert_path, &good_pem)?;
    let other = dev_ca(&dev)?.issue(&CertSpec::server(&["localhost", "127.0.0.1"]))?;
    replace(&cert_path, other.cert_pem.as_bytes())?;
    broker.signal(Signal::SIGHUP)?;
    broker
        .wait_for_log("TLS certificate reload refused", 2)
        .await?;
    let line = broker
        .log_text()
        .lines()
        .filter(|l| l.contains("TLS certificate reload refused"))
        .nth(1)
        .context("no second refusal")?
        .to_owned();
    ensure!(
        line.contains("broker.key") && line.contains("cannot be used with the certificate"),
        "{line}"
    );
    ensure!(presented(&broker).await? == old);

    // Its key arrives: loaded.
    replace(&dev.join("tls/broker.key"), other.key_pem().as_bytes())?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("TLS certificate loaded", 1).await?;
    ensure!(presented(&broker).await? == other.cert_der.to_vec());
    let metrics = broker.metrics_text()?;
    ensure!(
        metrics.contains("strongbox_tls_reload_failures_total{material=\"certificate\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_added_to_the_bundle_is_trusted_after_a_reload() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dev)?;
    let bundle = dev.join("ca/ca.pem");
    let crls = dev.join("ca/crl.pem");
    let dev_bundle = std::fs::read_to_string(&bundle)?;
    let dev_crl = std::fs::read_to_string(&crls)?;

    let partner = TestCa::new("Partner CA")?;
    let carol = partner.issue(&CertSpec::client_uri("spiffe://partner.example/carol"))?;
    let carol_config = || -> Result<quinn::ClientConfig> {
        raw::client_config(
            dev_bundle.as_bytes(),
            Some(Identity::from_pem(
                carol.cert_pem.as_bytes(),
                carol.key_pem().as_bytes(),
            )?),
            &[strongbox_protocol::ALPN],
        )
    };
    // Not trusted yet: the handshake is refused (TLS 1.3: on the first
    // stream operation).
    let refused = match raw::connect(broker.addr, carol_config()?).await {
        Ok(conn) => raw::handshake(&conn).await.is_err(),
        Err(_) => true,
    };
    ensure!(refused, "a certificate of an unknown CA was accepted");
    let alice = open(broker.addr, raw::profile_config(&dev, "alice")?).await?;

    // The partner CA joins the bundle, with its CRL (the dev configuration
    // refuses certificates no CRL covers).
    replace(
        &bundle,
        format!("{dev_bundle}{}", partner.cert_pem()).as_bytes(),
    )?;
    replace(
        &crls,
        format!("{dev_crl}{}", partner.crl(&[], 1)?).as_bytes(),
    )?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("client CA bundle loaded", 1).await?;
    let carol_conn = open(broker.addr, carol_config()?).await?;
    ensure!(carol_conn.principal == "spiffe://partner.example/carol");

    // Taken out again: carol's open connection is closed, alice's is not.
    replace(&bundle, dev_bundle.as_bytes())?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("client CA bundle loaded", 2).await?;
    tokio::time::timeout(Duration::from_secs(30), carol_conn.conn.closed())
        .await
        .context("carol's connection stayed open after her CA was removed")?;
    ensure!(alice.conn.close_reason().is_none());
    ensure!(whoami(&alice.conn).await? == alice.principal);
    Ok(())
}

/// A profile for `name` whose certificate and key are copies in `dir`.
fn own_profile(dev: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let profiles = dev.join("profiles");
    for ext in ["pem", "key"] {
        std::fs::copy(
            profiles.join(format!("{name}.{ext}")),
            dir.join(format!("{name}.{ext}")),
        )?;
    }
    let text = std::fs::read_to_string(profiles.join(format!("{name}.toml")))?;
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("cert = ") {
            format!(
                "cert = {:?}",
                dir.join(format!("{name}.pem")).display().to_string()
            )
        } else if line.starts_with("key = ") {
            format!(
                "key = {:?}",
                dir.join(format!("{name}.key")).display().to_string()
            )
        } else if line.starts_with("ca = ") {
            format!("ca = {:?}", dev.join("ca/ca.pem").display().to_string())
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, out)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_with_its_renewed_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dev)?;
    let renewing = own_profile(&dev, &tmp.path().join("renewing"), "alice")?;
    let stale = own_profile(&dev, &tmp.path().join("stale"), "alice")?;
    let old_cert = tmp.path().join("renewing/alice.pem.old");
    std::fs::copy(tmp.path().join("renewing/alice.pem"), &old_cert)?;

    let connect = |p: &Path| {
        let mut config = strongbox_client::ClientConfig::from_profile(p)?;
        config.reconnect.initial_backoff = Duration::from_millis(50);
        config.reconnect.max_backoff = Duration::from_millis(500);
        config.reconnect.give_up_after = Some(Duration::from_secs(20));
        anyhow::Ok(config)
    };
    let renewing_client = strongbox_client::Client::connect(connect(&renewing)?).await?;
    let stale_client = strongbox_client::Client::connect(connect(&stale)?).await?;
    ensure!(renewing_client.admin().whoami().await?.principal == "spiffe://strongbox.dev/alice");

    // The renewal lands in the files the profile names; then the old
    // certificate is revoked, which closes both open connections.
    let renewed = dev_ca(&dev)?.issue(&CertSpec::client_uri("spiffe://strongbox.dev/alice"))?;
    let dir = tmp.path().join("renewing");
    replace(&dir.join("alice.key"), renewed.key_pem().as_bytes())?;
    replace(&dir.join("alice.pem"), renewed.cert_pem.as_bytes())?;
    let revoke = std::process::Command::new(binary("strongbox-broker"))
        .args(["pki", "revoke", "--data-dir"])
        .arg(&dev)
        .arg(&old_cert)
        .output()?;
    ensure!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("CRLs reloaded", 1).await?;
    // Both open connections used the revoked certificate: both are closed.
    broker
        .wait_for_log("client certificate no longer accepted", 2)
        .await?;

    // The renewing client comes back with the renewed certificate: the old
    // one is revoked, so nothing else could get it in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match renewing_client.admin().whoami().await {
            Ok(w) if w.principal == "spiffe://strongbox.dev/alice" => break,
            Ok(w) => bail!("unexpected principal {}", w.principal),
            Err(e) => {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the renewing client did not reconnect: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // The client whose files still hold the revoked certificate cannot.
    let stale_result = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match stale_client.admin().whoami().await {
                Ok(_) => {
                    // Its old connection may not have been closed yet.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return e,
            }
        }
    })
    .await
    .context("the client with the revoked certificate kept working")?;
    let text = stale_result.to_string();
    ensure!(
        text.contains("revoked") || text.contains("authentication") || text.contains("certificate"),
        "{text}"
    );
    renewing_client.close().await;
    stale_client.close().await;
    Ok(())
}
