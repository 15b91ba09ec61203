//! CRLs change while the endpoint runs: by the file watcher, by an explicit
//! reload (SIGHUP), and badly (a broken CRL file keeps the previous one).

mod common;

use std::time::Duration;

use common::{
    GUARD, Options, alert, client_endpoint, good_client, replace_file, request, request_on, start,
};
use strongbox_broker::pki::CertSpec;

#[tokio::test]
async fn watcher_picks_up_a_new_crl_without_restart() {
    let b = start(Options {
        crl_reload: "100ms",
        ..Options::default()
    })
    .await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/leaver"))
            .unwrap();
    assert_eq!(
        request(b.addr, good_client(&b.ca, &cert)).await.unwrap(),
        "spiffe://corp/leaver"
    );
    let generation = b.verifier.generation();

    replace_file(&b.crl_path, &b.ca.crl(&[&cert], 2).unwrap());
    tokio::time::timeout(GUARD, async {
        while b.verifier.generation() == generation {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the watcher never reloaded the CRL");

    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_REVOKED), "{err:?}");
    b.stop().await;
}

#[tokio::test]
async fn explicit_reload_takes_effect_and_unchanged_files_do_not_reload() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    assert!(request(b.addr, good_client(&b.ca, &cert)).await.is_ok());
    assert_eq!(b.verifier.reload_if_changed().unwrap(), None);

    replace_file(&b.crl_path, &b.ca.crl(&[&cert], 2).unwrap());
    let g = b.verifier.reload().unwrap();
    assert_eq!(g, 2);
    assert_eq!(b.verifier.reload_if_changed().unwrap(), None);
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_REVOKED), "{err:?}");

    // Un-revoking works the same way.
    replace_file(&b.crl_path, &b.ca.crl(&[], 3).unwrap());
    assert_eq!(b.verifier.reload_if_changed().unwrap(), Some(3));
    assert!(request(b.addr, good_client(&b.ca, &cert)).await.is_ok());
    b.stop().await;
}

#[tokio::test]
async fn broken_crl_keeps_the_previous_one() {
    let b = start(Options::default()).await;
    let revoked =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/revoked"))
            .unwrap();
    let good =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/good"))
            .unwrap();
    replace_file(&b.crl_path, &b.ca.crl(&[&revoked], 2).unwrap());
    b.verifier.reload().unwrap();

    replace_file(
        &b.crl_path,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    );
    assert!(b.verifier.reload().is_err());
    assert_eq!(b.verifier.generation(), 2);
    // The same broken file is not retried until it changes again.
    assert_eq!(b.verifier.reload_if_changed().unwrap(), None);

    let err = request(b.addr, good_client(&b.ca, &revoked))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_REVOKED), "{err:?}");
    assert!(request(b.addr, good_client(&b.ca, &good)).await.is_ok());

    std::fs::remove_file(&b.crl_path).unwrap();
    assert!(b.verifier.reload_if_changed().is_err());
    assert!(request(b.addr, good_client(&b.ca, &good)).await.is_ok());
    b.stop().await;
}

#[tokio::test]
async fn a_crl_from_another_ca_leaves_status_unknown_and_refuses() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let other = strongbox_broker::pki::TestCa::new("Other CA").unwrap();
    replace_file(&b.crl_path, &other.crl(&[], 1).unwrap());
    b.verifier.reload().unwrap();
    // Fail closed: with CRLs configured, a certificate none of them covers
    // is refused (tls.allow_unknown_revocation_status = false).
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::UNKNOWN_CA), "{err:?}");
    b.stop().await;
}

#[tokio::test]
async fn session_resumption_cannot_bypass_revocation() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/resumer"))
            .unwrap();
    // One client endpoint and one client config: rustls' session cache
    // would offer a ticket on the second connection if the broker gave one.
    let endpoint = client_endpoint();
    let config = good_client(&b.ca, &cert);
    assert!(request_on(&endpoint, b.addr, config.clone()).await.is_ok());

    replace_file(&b.crl_path, &b.ca.crl(&[&cert], 2).unwrap());
    b.verifier.reload().unwrap();
    let err = request_on(&endpoint, b.addr, config).await.unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_REVOKED), "{err:?}");
    let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
    b.stop().await;
}

#[tokio::test]
async fn open_connections_can_be_rechecked_after_a_reload() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let now = rustls::pki_types::UnixTime::now();
    b.verifier
        .check_chain(std::slice::from_ref(&cert.cert_der), now)
        .unwrap();
    replace_file(&b.crl_path, &b.ca.crl(&[&cert], 2).unwrap());
    b.verifier.reload().unwrap();
    assert!(
        b.verifier
            .check_chain(std::slice::from_ref(&cert.cert_der), now)
            .is_err()
    );
    assert!(b.verifier.check_chain(&[], now).is_err());
    // Re-checking is not an authentication attempt.
    assert!(b.failures.lock().unwrap().is_empty());
    b.stop().await;
}
