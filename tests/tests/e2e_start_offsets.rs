//! The client crate starts where the subscription says even inside a
//! record batch: docs/PROTOCOL.md, "Subscription stream", "Starting inside a
//! batch" (rule U12c). The broker sends the whole batch that holds
//! `next_offset` (it cannot trim a sealed batch); the client must not hand
//! the application the records before it.

use anyhow::{Result, bail, ensure};
use strongbox_client::{ConsumerConfig, StartPosition, Subscription};
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::produce::Produce;
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::raw::{self, FrameStream};

const TOPIC: &str = "demo.inside";

/// Appends one batch of five records (offsets 0 to 4, timestamps 1000 to
/// 1004) through a raw connection, so that they are certainly one batch.
async fn one_batch_of_five(broker: &BrokerProcess) -> Result<()> {
    let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "alice")?).await?;
    let (_control, _) = raw::handshake(&conn).await?;
    let mut b = BatchBuilder::new(1_000);
    for i in 0..5i64 {
        b.push(1_000 + i, None, &[], format!("r{i}").as_bytes())?;
    }
    let mut s = FrameStream::open(&conn).await?;
    s.send(&Frame::Produce(Produce {
        correlation_id: 1,
        topic: TOPIC.into(),
        partition: 0,
        batch: b.finish()?,
    }))
    .await?;
    match s.next().await {
        Ok(Frame::ProduceAck(ack)) => ensure!(ack.base_offset == 0),
        other => bail!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_delivers_from_next_offset_inside_a_batch() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic(TOPIC, topic(1)).await?;
    one_batch_of_five(&broker).await?;
    let alice = connect(&broker.profile("alice")).await?;

    // From an offset, and from a time, inside the batch.
    for (start, first) in [
        (StartPosition::Offset(2), 2u64),
        (StartPosition::Timestamp(1_003), 3),
    ] {
        let mut consumer = alice
            .subscribe(
                Subscription::partition(TOPIC, 0).start(start),
                ConsumerConfig::default(),
            )
            .await?;
        let got = read_n(&mut consumer, (5 - first) as usize).await?;
        let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
        ensure!(
            offsets == (first..5).collect::<Vec<_>>(),
            "{start:?}: {offsets:?}"
        );
        ensure!(got[0].value == format!("r{first}").as_bytes(), "{start:?}");
        consumer.close().await;
    }

    // A group resuming from a commit inside the batch.
    let mut first = alice
        .subscribe(
            Subscription::group(TOPIC, "inside"),
            ConsumerConfig::default(),
        )
        .await?;
    read_n(&mut first, 5).await?;
    first.commit(0, 4).await?;
    first.close().await;
    let mut again = alice
        .subscribe(
            Subscription::group(TOPIC, "inside"),
            ConsumerConfig::default(),
        )
        .await?;
    let got = read_n(&mut again, 1).await?;
    ensure!(
        got[0].offset == 4 && got[0].value == b"r4".as_slice(),
        "{:?}",
        got[0]
    );
    again.close().await;
    alice.close().await;
    admin.close().await;
    Ok(())
}
