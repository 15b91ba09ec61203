//! The mTLS matrix against a real QUIC endpoint on 127.0.0.1: what is
//! refused, with which alert, what is reported, and which principal a valid
//! certificate maps to.

mod common;

use common::{Options, alert, client_config, good_client, request, start};
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_broker::tls::AuthStage;
use strongbox_protocol::ErrorCode;

#[tokio::test]
async fn valid_spiffe_certificate_maps_to_its_uri() {
    let mut b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/ns/pay/sa/api"))
            .unwrap();
    let answer = request(b.addr, good_client(&b.ca, &cert)).await.unwrap();
    assert_eq!(answer, "spiffe://corp/ns/pay/sa/api");
    assert_eq!(
        b.principals.recv().await.unwrap(),
        "spiffe://corp/ns/pay/sa/api"
    );
    assert!(b.failures.lock().unwrap().is_empty());
    b.stop().await;
}

#[tokio::test]
async fn uri_wins_over_dns_and_cn() {
    let b = start(Options::default()).await;
    let mut spec = CertSpec::client_uri("spiffe://corp/a");
    spec.dns = vec!["a.corp".into()];
    spec.common_name = Some("a".into());
    let cert = b.ca.issue(&spec).unwrap();
    assert_eq!(
        request(b.addr, good_client(&b.ca, &cert)).await.unwrap(),
        "spiffe://corp/a"
    );
    b.stop().await;
}

#[tokio::test]
async fn dns_only_certificate_maps_to_its_dns_name() {
    let b = start(Options::default()).await;
    let mut spec = CertSpec::client_dns("billing.svc.corp");
    spec.common_name = Some("ignored".into());
    let cert = b.ca.issue(&spec).unwrap();
    assert_eq!(
        request(b.addr, good_client(&b.ca, &cert)).await.unwrap(),
        "billing.svc.corp"
    );
    b.stop().await;
}

#[tokio::test]
async fn cn_only_certificate_maps_to_its_cn() {
    let b = start(Options::default()).await;
    let cert = b.ca.issue(&CertSpec::client_cn("legacy-batch")).unwrap();
    assert_eq!(
        request(b.addr, good_client(&b.ca, &cert)).await.unwrap(),
        "legacy-batch"
    );
    b.stop().await;
}

#[tokio::test]
async fn mapping_rules_rewrite_the_principal() {
    let b = start(Options {
        extra_toml: r#"
        [[identity.rules]]
        match = "spiffe://corp/ns/*/sa/*"
        principal = "{1}/{2}"
        "#
        .into(),
        ..Options::default()
    })
    .await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/ns/payments/sa/api"))
            .unwrap();
    assert_eq!(
        request(b.addr, good_client(&b.ca, &cert)).await.unwrap(),
        "payments/api"
    );
    // An identity no rule matches is used unchanged.
    let other =
        b.ca.issue(&CertSpec::client_uri("spiffe://elsewhere/x"))
            .unwrap();
    assert_eq!(
        request(b.addr, good_client(&b.ca, &other)).await.unwrap(),
        "spiffe://elsewhere/x"
    );
    b.stop().await;
}

#[tokio::test]
async fn require_match_refuses_unmapped_identities_after_the_handshake() {
    let b = start(Options {
        extra_toml: r#"
        [identity]
        require_match = true
        [[identity.rules]]
        match = "spiffe://corp/*"
        principal = "{1}"
        "#
        .into(),
        ..Options::default()
    })
    .await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://elsewhere/x"))
            .unwrap();
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(
        err.app_code,
        Some(u64::from(ErrorCode::AuthenticationFailed.as_u16())),
        "{err:?}"
    );
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Identity);
    assert!(f[0].remote.is_some());
    b.stop().await;
}

#[tokio::test]
async fn certificate_without_any_name_is_refused_with_authentication_failed() {
    let b = start(Options::default()).await;
    let cert = b.ca.issue(&CertSpec::client()).unwrap();
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(
        err.app_code,
        Some(u64::from(ErrorCode::AuthenticationFailed.as_u16())),
        "{err:?}"
    );
    assert!(err.message.contains("no SAN URI"), "{}", err.message);
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Identity);
    assert_eq!(
        b.metrics
            .auth_failures
            .with_label_values(&["identity"])
            .get(),
        1
    );
    b.stop().await;
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let b = start(Options::default()).await;
    let err = request(
        b.addr,
        client_config(&b.ca, None, &[strongbox_protocol::ALPN]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_REQUIRED), "{err:?}");
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Handshake);
    assert!(f[0].remote.is_some());
    b.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let b = start(Options::default()).await;
    let other = TestCa::new("Other CA").unwrap();
    let cert = other
        .issue(&CertSpec::client_uri("spiffe://corp/mallory"))
        .unwrap();
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::UNKNOWN_CA), "{err:?}");
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Certificate);
    // The claimed identity is recorded for the audit trail.
    assert_eq!(f[0].claimed.as_deref(), Some("spiffe://corp/mallory"));
    assert!(b.principals.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/old").expired())
            .unwrap();
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_EXPIRED), "{err:?}");
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Certificate);
    assert!(
        f[0].reason.to_lowercase().contains("expired"),
        "{}",
        f[0].reason
    );
    b.stop().await;
}

#[tokio::test]
async fn certificate_not_yet_valid_is_refused() {
    let b = start(Options::default()).await;
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(24 * 3600);
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/future").valid(now + day, now + 2 * day))
            .unwrap();
    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_EXPIRED), "{err:?}");
    b.stop().await;
}

#[tokio::test]
async fn revoked_certificate_is_refused_and_others_still_pass() {
    let ca = TestCa::new("Test CA").unwrap();
    let revoked = ca
        .issue(&CertSpec::client_uri("spiffe://corp/revoked"))
        .unwrap();
    let fresh = ca
        .issue(&CertSpec::client_uri("spiffe://corp/fresh"))
        .unwrap();
    let b = common::start_with_ca(
        ca,
        Options {
            revoked: vec![&revoked],
            ..Options::default()
        },
        common::echo_principal,
    )
    .await;
    let err = request(b.addr, good_client(&b.ca, &revoked))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::CERTIFICATE_REVOKED), "{err:?}");
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Certificate);
    assert_eq!(f[0].claimed.as_deref(), Some("spiffe://corp/revoked"));
    assert_eq!(
        request(b.addr, good_client(&b.ca, &fresh)).await.unwrap(),
        "spiffe://corp/fresh"
    );
    b.stop().await;
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let err = request(b.addr, client_config(&b.ca, Some(&cert), &[b"h3"]))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::NO_APPLICATION_PROTOCOL), "{err:?}");
    let f = b.failures(1).await;
    assert_eq!(f[0].stage, AuthStage::Handshake);
    b.stop().await;
}

#[tokio::test]
async fn missing_alpn_is_refused() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let err = request(b.addr, client_config(&b.ca, Some(&cert), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.alert, Some(alert::NO_APPLICATION_PROTOCOL), "{err:?}");
    b.stop().await;
}

#[tokio::test]
async fn each_refusal_is_counted_once() {
    let b = start(Options::default()).await;
    let other = TestCa::new("Other CA").unwrap();
    let foreign = other.issue(&CertSpec::client_uri("spiffe://x/y")).unwrap();
    let expired =
        b.ca.issue(&CertSpec::client_uri("spiffe://x/z").expired())
            .unwrap();
    request(b.addr, good_client(&b.ca, &foreign))
        .await
        .unwrap_err();
    request(b.addr, good_client(&b.ca, &expired))
        .await
        .unwrap_err();
    request(
        b.addr,
        client_config(&b.ca, None, &[strongbox_protocol::ALPN]),
    )
    .await
    .unwrap_err();
    let f = b.failures(3).await;
    // Give a duplicate report a chance to show up before counting.
    let ok = b.ca.issue(&CertSpec::client_uri("spiffe://x/ok")).unwrap();
    request(b.addr, good_client(&b.ca, &ok)).await.unwrap();
    assert_eq!(b.failures.lock().unwrap().len(), 3, "{f:?}");
    assert_eq!(
        b.metrics
            .auth_failures
            .with_label_values(&["certificate"])
            .get(),
        2
    );
    assert_eq!(
        b.metrics
            .auth_failures
            .with_label_values(&["handshake"])
            .get(),
        1
    );
    b.stop().await;
}
