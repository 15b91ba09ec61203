//! A key provider outage, against SoftHSM2 (the token's directory moved
//! away) and the file provider (the key directory moved away), with the
//! broker running throughout:
//!
//! - appends to the active segment, whose data key is in memory, go on;
//! - a segment roll, which needs a new data key wrapped, fails closed: the
//!   producer gets `key_unavailable` with a message naming the provider,
//!   and so does every append until the provider is back (the full
//!   segment was sealed; nothing is written without a key);
//!   `strongbox_hsm_errors_total` rises and `strongbox_key_provider_up`
//!   drops to 0; a rotation is refused the same way;
//! - the provider comes back: appends and rolls succeed again, with no
//!   restart, the gauge is 1 again, and the partition holds exactly the
//!   acknowledged records, in order.

mod e2e_keys_support;

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use e2e_keys_support::{Provider, Setup, cli_ok, status, topic_config, value};
use strongbox_client::ErrorCode;
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::produce::Produce;
use strongbox_tests::client::{connect, read_n};
use strongbox_tests::raw::{self, FrameStream};

const TOPIC: &str = "keys.outage";
const LEN: usize = 200;
const SEGMENT_BYTES: u64 = 16 * 1024;
/// A record that cannot fit in what is left of a segment once ten small
/// ones are in it: forces a roll.
const BIG: usize = 15 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_outage_fails_closed_and_recovers_softhsm() -> Result<()> {
    outage(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_directory_outage_fails_closed_and_recovers_file() -> Result<()> {
    outage(Provider::File).await
}

/// A producer stream spoken by hand, so the test sees each refusal as the
/// broker sends it (the client library retries `key_unavailable`, which is
/// retriable, until its delivery timeout).
struct RawProducer {
    stream: FrameStream,
    next: u64,
    _conn: quinn::Connection,
    _keep_alive: tokio::task::JoinHandle<()>,
}

impl RawProducer {
    async fn open(broker: &strongbox_tests::BrokerProcess) -> Result<Self> {
        let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "admin")?).await?;
        let (control, _) = raw::handshake(&conn).await?;
        let keep_alive = raw::keep_alive(control);
        Ok(Self {
            stream: FrameStream::open(&conn).await?,
            next: 1,
            _conn: conn,
            _keep_alive: keep_alive,
        })
    }

    /// Appends one record: its offset, or the broker's code and message.
    async fn append(&mut self, value: &str) -> Result<Result<u64, (u16, String)>> {
        let mut b = BatchBuilder::new(1_700_000_000_000);
        b.push(1_700_000_000_000, None, &[], value.as_bytes())?;
        let correlation_id = self.next;
        self.next += 1;
        self.stream
            .send(&Frame::Produce(Produce {
                correlation_id,
                topic: TOPIC.into(),
                partition: 0,
                batch: b.finish()?,
            }))
            .await?;
        match self.stream.next().await {
            Ok(Frame::ProduceAck(a)) if a.correlation_id == correlation_id => Ok(Ok(a.base_offset)),
            Ok(Frame::Error(e)) if e.correlation_id == correlation_id => {
                Ok(Err((e.code, e.message)))
            }
            other => bail!("unexpected answer to a Produce: {other:?}"),
        }
    }

    async fn append_ok(&mut self, value: &str) -> Result<u64> {
        match self.append(value).await? {
            Ok(offset) => Ok(offset),
            Err((code, message)) => bail!("append refused ({code}): {message}"),
        }
    }
}

async fn outage(provider: Provider) -> Result<()> {
    let setup = Setup::new(provider, 200)?;
    let admin = setup.admin();
    let mut broker = setup.start()?;
    let pid = broker.pid();
    let client = connect(&admin).await?;
    client
        .admin()
        .create_topic(TOPIC, topic_config(1, SEGMENT_BYTES, false))
        .await?;
    let mut producer = RawProducer::open(&broker).await?;
    let mut written: Vec<String> = Vec::new();
    for i in 0..5 {
        let v = value("out", i, LEN);
        producer.append_ok(&v).await?;
        written.push(v);
    }
    let errors_before = broker.metric_sum("strongbox_hsm_errors_total")?;
    ensure!(broker.metric_sum("strongbox_key_provider_up")? == 1.0);

    setup.take_provider_away()?;

    // The active segment's key is in memory: appends go on.
    for i in 5..10 {
        let v = value("out", i, LEN);
        producer.append_ok(&v).await?;
        written.push(v);
    }

    // A record that needs a new segment is refused with key_unavailable,
    // and so is every record after it until the provider is back.
    let big = value("big", 0, BIG);
    for v in [big.clone(), value("out", 99, LEN)] {
        match producer.append(&v).await? {
            Err((code, message)) => {
                ensure!(
                    code == ErrorCode::KeyUnavailable.as_u16(),
                    "expected key_unavailable, got {code}: {message}"
                );
                let names_provider = match provider {
                    Provider::SoftHsm => message.contains("PKCS#11"),
                    Provider::File => message.contains("key directory"),
                };
                ensure!(names_provider, "the error names the provider: {message}");
            }
            Ok(offset) => bail!("appended at {offset}: no roll was needed, or it got a key"),
        }
    }
    ensure!(
        broker.metric_sum("strongbox_hsm_errors_total")? > errors_before,
        "hsm errors counted:\n{}",
        broker.metrics_text()?
    );
    ensure!(broker.metric_sum("strongbox_key_provider_up")? == 0.0);
    // Rotation needs the provider too; the registry still answers.
    let rotate = strongbox_tests::cli(&admin, &["keys", "rotate"])?;
    ensure!(
        rotate.status.code() == Some(1),
        "rotation during the outage"
    );
    let s = status(&admin, None)?;
    ensure!(
        s["versions"].as_array().is_some_and(|v| v.len() == 1),
        "{s}"
    );

    setup.bring_provider_back()?;

    // Rolls and appends work again, in the same process.
    for v in [big, value("out", 10, LEN), value("out", 11, LEN)] {
        producer.append_ok(&v).await?;
        written.push(v);
    }
    ensure!(broker.metric_sum("strongbox_key_provider_up")? == 1.0);
    ensure!(broker.pid() == pid && broker.is_running(), "no restart");
    cli_ok(&admin, &["keys", "rotate"])?;

    let mut consumer = client
        .subscribe(
            strongbox_client::Subscription::partition(TOPIC, 0),
            strongbox_client::ConsumerConfig::default(),
        )
        .await?;
    let records = read_n(&mut consumer, written.len()).await?;
    strongbox_tests::client::expect_quiet(&mut consumer, Duration::from_millis(300)).await?;
    consumer.close().await;
    for (i, (r, want)) in records.iter().zip(&written).enumerate() {
        ensure!(
            r.offset == i as u64 && r.value == want.as_bytes(),
            "record {i}"
        );
    }
    client.close().await;
    ensure!(broker.terminate()? == Some(0), "{}", broker.log_text());
    Ok(())
}
