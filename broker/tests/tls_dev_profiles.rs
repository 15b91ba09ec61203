//! `strongbox-broker dev` material: created once, reused, refused when half
//! there, accepted by the normal config loader, and usable end to end: the
//! profiles' certificates connect to an endpoint built from its config and
//! map to the expected principals, which its ACLs treat as documented.

mod common;

use std::path::Path;
use std::sync::Arc;

use strongbox_broker::acl::Acl;
use strongbox_broker::config::BrokerConfig;
use strongbox_broker::dev::{DevError, Profile, ensure_dev_dir};
use strongbox_broker::identity::IdentityMapper;
use strongbox_broker::tls::{load_certs, load_key, server_tls};
use strongbox_broker::transport::endpoint::{AcceptSettings, Server};
use strongbox_protocol::model::Operations;
use tokio::sync::{mpsc, watch};

fn listen() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_run_creates_everything_with_private_keys_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("strongbox-dev");
    let layout = ensure_dev_dir(&dir, listen()).unwrap();
    assert!(layout.created);
    assert_eq!(layout.config, dir.join("broker.toml"));
    for f in [
        "ca/ca.pem",
        "ca/crl.pem",
        "tls/broker.pem",
        "profiles/alice.pem",
        "keys",
        "data",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        for key in [
            "ca/ca.key",
            "tls/broker.key",
            "profiles/admin.key",
            "profiles/alice.key",
            "profiles/bob.key",
        ] {
            assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("keys")), 0o700);
    }
    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1);
}

#[test]
fn later_runs_reuse_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    ensure_dev_dir(&dir, listen()).unwrap();
    let ca = std::fs::read(dir.join("ca/ca.pem")).unwrap();
    let again = ensure_dev_dir(&dir, "127.0.0.1:9999".parse().unwrap()).unwrap();
    assert!(!again.created);
    assert_eq!(std::fs::read(dir.join("ca/ca.pem")).unwrap(), ca);
    // The existing config is kept as it is.
    assert!(
        !std::fs::read_to_string(&again.config)
            .unwrap()
            .contains("9999")
    );
}

#[test]
fn an_empty_directory_is_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    std::fs::create_dir(&dir).unwrap();
    assert!(ensure_dev_dir(&dir, listen()).unwrap().created);
}

#[test]
fn a_half_initialised_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    ensure_dev_dir(&dir, listen()).unwrap();
    std::fs::remove_file(dir.join("profiles/bob.key")).unwrap();
    let e = ensure_dev_dir(&dir, listen()).unwrap_err();
    assert!(matches!(e, DevError::Incomplete { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("profiles/bob.key") && text.contains("remove it"),
        "{text}"
    );
    // Nothing was overwritten.
    assert!(dir.join("profiles/bob.pem").exists());
    assert!(!dir.join("profiles/bob.key").exists());
}

#[test]
fn a_foreign_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("project");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        ensure_dev_dir(&dir, listen()),
        Err(DevError::Incomplete { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn the_config_validates_and_grants_what_the_profiles_promise() {
    let tmp = tempfile::tempdir().unwrap();
    let layout =
        ensure_dev_dir(&tmp.path().join("dev"), "127.0.0.1:7443".parse().unwrap()).unwrap();
    let cfg = BrokerConfig::load(&layout.config)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(cfg.listener.addr, "127.0.0.1:7443".parse().unwrap());
    assert_eq!(cfg.metrics.listen.port(), 9644);
    assert_eq!(cfg.tls.crls, vec![layout.crl.clone()]);
    server_tls(&cfg.tls, None).unwrap();

    let acl = Acl::from_config(&cfg.acl).unwrap();
    let admin = "spiffe://strongbox.dev/admin";
    let alice = "spiffe://strongbox.dev/alice";
    let bob = "spiffe://strongbox.dev/bob";
    for op in [
        Operations::PUBLISH,
        Operations::SUBSCRIBE,
        Operations::DESCRIBE,
    ] {
        assert!(acl.check(alice, op, "demo.greetings", 0).allowed);
    }
    assert!(
        acl.check(bob, Operations::SUBSCRIBE, "demo.greetings", 0)
            .allowed
    );
    assert!(
        acl.check(bob, Operations::DESCRIBE, "demo.greetings", 0)
            .allowed
    );
    let d = acl.check(bob, Operations::PUBLISH, "demo.greetings", 0);
    assert_eq!(
        d.denial(bob, Operations::PUBLISH, "demo.greetings")
            .unwrap()
            .to_string(),
        "not authorized: spiffe://strongbox.dev/bob may not publish demo.greetings"
    );
    assert!(!acl.check(alice, Operations::PUBLISH, "orders", 0).allowed);
    assert!(!acl.check(alice, Operations::CREATE, "demo.new", 0).allowed);
    assert!(acl.check(admin, Operations::ADMIN, "anything", 0).allowed);
}

#[test]
fn a_random_port_gets_a_random_metrics_port_and_profiles_follow_the_bound_address() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = ensure_dev_dir(&tmp.path().join("dev"), listen()).unwrap();
    let cfg = BrokerConfig::load(&layout.config).unwrap();
    assert_eq!(cfg.metrics.listen.port(), 0);
    layout
        .set_broker_addr("0.0.0.0:41000".parse().unwrap())
        .unwrap();
    let alice = Profile::load(&layout.profile("alice").unwrap().path).unwrap();
    assert_eq!(alice.broker, "127.0.0.1:41000");
    assert_eq!(alice.server_name.as_deref(), Some("localhost"));
    assert!(alice.ca.ends_with("profiles/../ca/ca.pem"));
    assert!(alice.key.exists() && alice.cert.exists() && alice.ca.exists());
    let hint = layout.quickstart();
    assert!(
        hint.contains("profiles/alice.toml strongbox publish demo.greetings hello"),
        "{hint}"
    );
}

#[tokio::test]
async fn profiles_connect_to_a_broker_built_from_the_dev_config() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = ensure_dev_dir(&tmp.path().join("dev"), listen()).unwrap();
    let cfg = BrokerConfig::load(&layout.config)
        .unwrap()
        .validate()
        .unwrap();
    let tls = server_tls(&cfg.tls, None).unwrap();
    let identity = Arc::new(IdentityMapper::from_config(&cfg.identity).unwrap());
    let settings = AcceptSettings::from_config(&cfg.listener, identity, None, None);
    let server = Server::bind(&cfg.listener, &tls, settings).unwrap();
    let addr = server.local_addr().unwrap();
    layout.set_broker_addr(addr).unwrap();
    let (stop, rx) = watch::channel(false);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(server.serve(rx, move |conn| {
        common::echo_principal(conn, seen_tx.clone())
    }));

    for (name, principal) in [
        ("alice", "spiffe://strongbox.dev/alice"),
        ("bob", "spiffe://strongbox.dev/bob"),
        ("admin", "spiffe://strongbox.dev/admin"),
    ] {
        let profile = Profile::load(&layout.profile(name).unwrap().path).unwrap();
        let client = client_from_profile(&profile);
        let endpoint = common::client_endpoint();
        let answer = tokio::time::timeout(common::GUARD, async {
            let addr: std::net::SocketAddr = profile.broker.parse().unwrap();
            let server_name = profile.server_name.as_deref().unwrap();
            let conn = endpoint
                .connect_with(client, addr, server_name)
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(b"whoami").await.unwrap();
            send.finish().unwrap();
            let answer = recv.read_to_end(1024).await.unwrap();
            conn.close(0u32.into(), b"done");
            answer
        })
        .await
        .unwrap();
        assert_eq!(String::from_utf8(answer).unwrap(), principal);
        assert_eq!(seen.recv().await.as_deref(), Some(principal));
        let _ = tokio::time::timeout(common::GUARD, endpoint.wait_idle()).await;
    }
    stop.send_replace(true);
    tokio::time::timeout(common::GUARD, task)
        .await
        .unwrap()
        .unwrap();
}

/// What a client does with a profile: trust its CA, present its
/// certificate, offer `strongbox/1`.
fn client_from_profile(p: &Profile) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs("ca", &p.ca).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            load_certs("cert", &p.cert).unwrap(),
            load_key("key", &p.key).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![strongbox_protocol::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap(),
    ))
}
