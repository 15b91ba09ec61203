//! Topic ACLs against a real broker: refusals through the CLI, and grants
//! and revocations that take effect on connections already open.

use std::process::Output;

use anyhow::{Result, bail};
use strongbox_client::protocol::batch::BatchBuilder;
use strongbox_client::protocol::frame::Frame;
use strongbox_client::protocol::frames::produce::Produce;
use strongbox_client::protocol::model::{AclEffect, AclRule, Operations};
use strongbox_client::{ConsumerConfig, ErrorCode, ProducerConfig, ProducerRecord, Subscription};
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::raw::{self, FrameStream};
use strongbox_tests::{BrokerProcess, cli};

const BOB: &str = "spiffe://strongbox.dev/bob";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit 1 with exactly one line on stderr, containing `reason`.
fn assert_refused(out: &Output, reason: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    let err = stderr(out);
    assert!(err.contains(reason), "stderr {err:?} lacks {reason:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one-line reason: {err:?}"
    );
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refusals_and_the_broker_keeps_serving() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let (alice, bob, admin) = (
        broker.profile("alice"),
        broker.profile("bob"),
        broker.profile("admin"),
    );

    // bob may only subscribe on demo.*: publishing on no topic at all, he
    // is refused the producer id the CLI asks for first.
    let out = cli(&bob, &["publish", "demo.greetings", "hi"])?;
    assert_refused(
        &out,
        "not authorized: spiffe://strongbox.dev/bob may not publish to any topic",
    );
    assert!(stdout(&out).is_empty(), "nothing reported as published");

    // The broker goes on: alice publishes and subscribes.
    let out = cli(
        &alice,
        &[
            "--json",
            "publish",
            "demo.greetings",
            "--key",
            "k1",
            "--header",
            "kind=hello",
            "hello",
            "world",
        ],
    )?;
    assert_ok(&out);
    let acks: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(acks.len(), 2, "{acks:?}");
    let out = cli(
        &alice,
        &[
            "--json",
            "subscribe",
            "demo.greetings",
            "--from",
            "earliest",
            "--count",
            "2",
        ],
    )?;
    assert_ok(&out);
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let values: Vec<String> = records
        .iter()
        .map(|r| r["value"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(values, ["hello", "world"], "{records:?}");

    // bob may subscribe and sees what alice wrote.
    let out = cli(
        &bob,
        &[
            "subscribe",
            "demo.greetings",
            "--from",
            "earliest",
            "--count",
            "2",
        ],
    )?;
    assert_ok(&out);
    assert!(stdout(&out).contains("hello") && stdout(&out).contains("world"));

    // A topic outside demo.* is refused for alice, whichever way.
    assert_ok(&cli(&admin, &["topic", "create", "payments.cards"])?);
    assert_refused(
        &cli(
            &alice,
            &["publish", "payments.cards", "--partition", "0", "4111"],
        )?,
        "not authorized: spiffe://strongbox.dev/alice may not publish payments.cards",
    );
    // Without a partition the CLI first asks for the partition count,
    // which needs `describe`: refused as well.
    assert_refused(
        &cli(&alice, &["publish", "payments.cards", "4111"])?,
        "not authorized: spiffe://strongbox.dev/alice may not",
    );
    assert_refused(
        &cli(
            &alice,
            &[
                "subscribe",
                "payments.cards",
                "--partition",
                "0",
                "--count",
                "1",
            ],
        )?,
        "not authorized: spiffe://strongbox.dev/alice may not subscribe payments.cards",
    );
    assert_refused(
        &cli(&alice, &["topic", "create", "demo.mine"])?,
        "not authorized: spiffe://strongbox.dev/alice may not create demo.mine",
    );
    // bob is refused the admin's ACL commands too.
    assert_refused(
        &cli(
            &bob,
            &[
                "acl",
                "grant",
                "--principal",
                BOB,
                "--topic",
                "demo.*",
                "--op",
                "publish",
            ],
        )?,
        "not authorized",
    );

    // Still serving after all the refusals.
    assert_ok(&cli(&alice, &["publish", "demo.greetings", "again"])?);
    let out = cli(&alice, &["whoami"])?;
    assert_ok(&out);
    assert!(stdout(&out).contains("spiffe://strongbox.dev/alice"));
    Ok(())
}

/// The code answering `Produce` number `id` on `stream`: 0 for an ack.
async fn produce_on(stream: &mut FrameStream, id: u64, topic: &str) -> Result<u16> {
    let mut batch = BatchBuilder::new(1_700_000_000_000);
    batch.push(1_700_000_000_000, None, &[], format!("raw-{id}").as_bytes())?;
    stream
        .send(&Frame::Produce(Produce {
            correlation_id: id,
            topic: topic.into(),
            partition: 0,
            batch: batch.finish()?,
        }))
        .await?;
    match stream.next().await {
        Ok(Frame::ProduceAck(ack)) if ack.correlation_id == id => Ok(0),
        Ok(Frame::Error(e)) if e.correlation_id == id => Ok(e.code),
        other => bail!("answer to Produce {id}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_revocations_reach_open_streams() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let admin = broker.profile("admin");
    assert_ok(&cli(&admin, &["topic", "create", "demo.acl-raw"])?);
    let rule = [
        "--principal",
        BOB,
        "--topic",
        "demo.acl-raw",
        "--op",
        "publish",
    ];
    let grant: Vec<&str> = ["acl", "grant"].iter().chain(&rule).copied().collect();
    let revoke: Vec<&str> = ["acl", "revoke"].iter().chain(&rule).copied().collect();

    // One raw connection and one producer stream, by hand, so that nothing
    // can reconnect or reopen behind the test's back.
    let conn = raw::connect(broker.addr, raw::profile_config(&dir, "bob")?).await?;
    let (_control, _welcome) = raw::handshake(&conn).await?;
    let mut stream = FrameStream::open(&conn).await?;
    let refused = ErrorCode::NotAuthorized.as_u16();
    assert_eq!(produce_on(&mut stream, 1, "demo.acl-raw").await?, refused);
    assert_ok(&cli(&admin, &grant)?);
    assert_eq!(produce_on(&mut stream, 2, "demo.acl-raw").await?, 0);
    assert_eq!(produce_on(&mut stream, 3, "demo.acl-raw").await?, 0);
    assert_ok(&cli(&admin, &revoke)?);
    assert_eq!(produce_on(&mut stream, 4, "demo.acl-raw").await?, refused);
    assert_ok(&cli(&admin, &grant)?);
    assert_eq!(produce_on(&mut stream, 5, "demo.acl-raw").await?, 0);
    assert!(conn.close_reason().is_none(), "the connection stayed open");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_revocations_reach_open_connections() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let admin_profile = broker.profile("admin");
    let admin = connect(&admin_profile).await?;
    admin.admin().create_topic("demo.acl", topic(1)).await?;

    // One connection and one producer for bob, kept for the whole test. Not
    // idempotent: a producer id is only for a principal that may publish
    // somewhere, which bob may not yet.
    let bob = connect(&broker.profile("bob")).await?;
    let producer = bob
        .producer(ProducerConfig {
            idempotent: false,
            ..ProducerConfig::default()
        })
        .await?;
    let send = |value: &'static str| {
        let producer = &producer;
        async move {
            producer
                .send_and_wait(ProducerRecord::new("demo.acl", value).partition(0))
                .await
        }
    };
    let refused = send("refused-1")
        .await
        .expect_err("bob may not publish yet");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthorized), "{refused}");
    assert_eq!(
        refused.to_string(),
        "not authorized: spiffe://strongbox.dev/bob may not publish demo.acl"
    );

    // The admin grants publish (through the CLI, another connection).
    let out = cli(
        &admin_profile,
        &[
            "acl",
            "grant",
            "--principal",
            BOB,
            "--topic",
            "demo.acl",
            "--op",
            "publish",
        ],
    )?;
    assert_ok(&out);
    let first = send("allowed-1").await?;
    assert_eq!((first.partition, first.offset), (0, 0));
    let second = send("allowed-2").await?;
    assert_eq!(second.offset, 1);
    assert!(bob.is_connected(), "the same connection all along");

    // The revocation closes the door again on the same stream.
    let out = cli(
        &admin_profile,
        &[
            "acl",
            "revoke",
            "--principal",
            BOB,
            "--topic",
            "demo.acl",
            "--op",
            "publish",
        ],
    )?;
    assert_ok(&out);
    let refused = send("refused-2").await.expect_err("revoked");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthorized), "{refused}");

    // A deny rule wins over an allow on the same connection: grant through
    // the library this time, then deny.
    let rule = |effect| AclRule {
        principal: BOB.into(),
        topic: "demo.acl".into(),
        operations: Operations::PUBLISH,
        effect,
        expires_at: None,
    };
    admin.admin().acl_grant(rule(AclEffect::Allow)).await?;
    let third = send("allowed-3").await?;
    assert_eq!(third.offset, 2);
    admin.admin().acl_grant(rule(AclEffect::Deny)).await?;
    let refused = send("refused-3").await.expect_err("denied");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthorized), "{refused}");
    assert!(bob.is_connected(), "the same connection all along");

    // Subscriptions are checked when they open: revoke bob's subscribe on
    // demo.acl and a new subscription on the open connection is refused,
    // while alice reads exactly the allowed records.
    admin
        .admin()
        .acl_grant(AclRule {
            operations: Operations::SUBSCRIBE,
            ..rule(AclEffect::Deny)
        })
        .await?;
    let e = bob
        .subscribe(
            Subscription::partition("demo.acl", 0),
            ConsumerConfig::default(),
        )
        .await
        .expect_err("subscribe denied");
    assert_eq!(e.code(), Some(ErrorCode::NotAuthorized), "{e}");

    let alice = connect(&broker.profile("alice")).await?;
    let mut consumer = alice
        .subscribe(
            Subscription::partition("demo.acl", 0),
            ConsumerConfig::default(),
        )
        .await?;
    let records = read_n(&mut consumer, 3).await?;
    let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
    assert_eq!(
        values,
        [&b"allowed-1"[..], b"allowed-2", b"allowed-3"],
        "only allowed records were stored"
    );
    strongbox_tests::client::expect_quiet(&mut consumer, std::time::Duration::from_millis(300))
        .await?;
    consumer.close().await;
    let _ = producer.close().await;
    Ok(())
}
