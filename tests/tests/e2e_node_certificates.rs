//! A node certificate on the client listener, against a real broker: it is
//! held to ACL rules that name its principal exactly, and each refusal is
//! an audited, counted denial.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use strongbox_broker::pki::{CertSpec, IssuedCert, TestCa};
use strongbox_client::protocol::model::{AclEffect, AclRule, Operations};
use strongbox_client::{
    Client, ClientConfig, ErrorCode, PemSource, ProducerConfig, ProducerRecord,
};
use strongbox_tests::client::{connect, topic};
use strongbox_tests::{BrokerProcess, cli};

/// A node of the development trust domain.
const NODE: &str = "spiffe://strongbox.dev/strongbox/node/9";
/// A service of the same trust domain.
const SERVICE: &str = "spiffe://strongbox.dev/svc/ingest";
const TOPIC: &str = "demo.nodes";

fn dev_ca(dir: &Path) -> Result<TestCa> {
    let cert = std::fs::read_to_string(dir.join("ca/ca.pem"))?;
    let key = std::fs::read_to_string(dir.join("ca/ca.key"))?;
    Ok(TestCa::load(&cert, &key)?)
}

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

fn allow(principal: &str) -> AclRule {
    AclRule {
        principal: principal.into(),
        topic: TOPIC.into(),
        operations: Operations::PUBLISH,
        effect: AclEffect::Allow,
        expires_at: None,
    }
}

/// The audit record of the node's denial, polled for (the trail is
/// written in the background), bounded.
fn node_denial(broker: &BrokerProcess) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(&broker.profile("admin"), &["audit", "tail", "--json"])?;
        let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("audit tail --json")?;
        if let Some(r) = records.into_iter().find(|r| {
            r["action"] == "acl.deny"
                && r["principal"] == NODE
                && r["details"]["reason"] == "node_certificate"
        }) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("no audited node_certificate denial for {NODE}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_is_refused_client_operations_unless_a_rule_names_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let ca = dev_ca(&dir)?;
    let node = ca.issue(&CertSpec::client_uri(NODE))?;
    let service = ca.issue(&CertSpec::client_uri(SERVICE))?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic(TOPIC, topic(1)).await?;
    // A rule for every principal of the trust domain: nodes are principals
    // of it too, but it must not reach them.
    admin
        .admin()
        .acl_grant(allow("spiffe://strongbox.dev/*"))
        .await?;
    let plain = ProducerConfig {
        idempotent: false,
        ..ProducerConfig::default()
    };

    let svc = Client::connect(config_for(&broker, &service)).await?;
    let ack = svc
        .producer(plain.clone())
        .await?
        .send_and_wait(ProducerRecord::new(TOPIC, "from a service").partition(0))
        .await?;
    assert_eq!(
        ack.offset, 0,
        "the wildcard rule grants a client certificate"
    );

    let denials_before = broker.metric_sum("strongbox_acl_denials_total")?;
    let as_node = Client::connect(config_for(&broker, &node)).await?;
    assert_eq!(as_node.principal(), NODE);
    let producer = as_node.producer(plain).await?;
    let refused = producer
        .send_and_wait(ProducerRecord::new(TOPIC, "from a node").partition(0))
        .await
        .expect_err("a node certificate is not a client");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthorized), "{refused}");
    let message = refused.to_string();
    assert!(
        message.starts_with(&format!("not authorized: {NODE} may not publish {TOPIC}"))
            && message.contains("a node certificate"),
        "{message}"
    );
    let denials_after = broker.metric_sum("strongbox_acl_denials_total")?;
    assert!(
        denials_after > denials_before,
        "the refusal is counted ({denials_before} -> {denials_after})"
    );
    let record = node_denial(&broker)?;
    assert_eq!(record["outcome"], "denied");
    assert_eq!(record["details"]["operation"], "publish");

    // A rule that names the node: allowed, on the same connection.
    admin.admin().acl_grant(allow(NODE)).await?;
    let ack = producer
        .send_and_wait(ProducerRecord::new(TOPIC, "from a node, named").partition(0))
        .await?;
    assert_eq!(ack.offset, 1);
    Ok(())
}
