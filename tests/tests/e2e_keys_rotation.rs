//! Online rotation, against SoftHSM2 and the file provider: while a
//! producer writes without pause, `strongbox keys rotate` twice makes v2
//! and then v3 active; no acknowledgement fails, the next segment of every
//! partition is wrapped under the new version (its envelope says so, and
//! `keys status` counts it), everything reads back in order, a dedicated
//! topic key rotates on its own, and the key, AEAD and fsync metrics move.

mod e2e_keys_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e_keys_support::{
    Provider, Setup, assert_partition, cli_ok, envelopes, expected, publish, status, topic_config,
    value, versions,
};
use strongbox_client::ProducerRecord;
use strongbox_tests::client::connect;

const TOPIC: &str = "keys.rotation";
const PARTITIONS: u32 = 2;
const LEN: usize = 300;
/// Records per acknowledged round of the producer.
const ROUND: usize = 30;
/// Records written after the last rotation (several segments' worth per
/// partition).
const AFTER_LAST: usize = 180;
/// A bound on the producer, in case rotation never happens.
const MAX_RECORDS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_softhsm() -> Result<()> {
    rotation_under_load(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_file() -> Result<()> {
    rotation_under_load(Provider::File).await
}

/// The sum of the samples of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(labels))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn rotation_under_load(provider: Provider) -> Result<()> {
    let setup = Setup::new(provider, 200)?;
    let broker = setup.start()?;
    let admin = setup.admin();
    let client = connect(&admin).await?;
    let info = client
        .admin()
        .create_topic(TOPIC, topic_config(PARTITIONS, 4096, false))
        .await?;

    // The producer: rounds of records, each round acknowledged before the
    // next, until two rotations happened and AFTER_LAST more records went.
    let acked = Arc::new(AtomicUsize::new(0));
    let rotated_at = Arc::new(AtomicUsize::new(usize::MAX));
    let producing = {
        let client = client.clone();
        let acked = acked.clone();
        let rotated_at = rotated_at.clone();
        tokio::spawn(async move {
            let producer = client.producer(e2e_keys_support::small_batches()).await?;
            let mut sent = 0;
            while sent < MAX_RECORDS
                && sent
                    < rotated_at
                        .load(Ordering::Acquire)
                        .saturating_add(AFTER_LAST)
            {
                let mut round = Vec::with_capacity(ROUND);
                for i in sent..sent + ROUND {
                    let p = u32::try_from(i)? % PARTITIONS;
                    round.push(
                        producer
                            .send(ProducerRecord::new(TOPIC, value("rot", i, LEN)).partition(p))
                            .await?,
                    );
                }
                for (k, d) in round.into_iter().enumerate() {
                    d.await
                        .with_context(|| format!("acknowledgement of record {}", sent + k))?;
                }
                sent += ROUND;
                acked.store(sent, Ordering::Release);
            }
            producer.close().await?;
            anyhow::Ok(sent)
        })
    };

    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            while acked.load(Ordering::Acquire) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for (version, after) in [(2, 120), (3, 300)] {
        wait_for(after).await;
        let out = {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || cli_ok(&admin, &["keys", "rotate"])).await??
        };
        ensure!(
            out.contains(&format!("strongbox/kek/broker/v{version} is now active")),
            "rotate answered: {out}"
        );
        if version == 3 {
            rotated_at.store(acked.load(Ordering::Acquire), Ordering::Release);
        }
    }
    let total = producing
        .await?
        .context("the producer saw a failed acknowledgement")?;
    ensure!(total >= 300 + AFTER_LAST, "only {total} records");

    // v3 is active and wraps the newest segment of every partition; the
    // older versions still wrap the older ones.
    let s = status(&admin, None)?;
    let v = versions(&s, "broker");
    ensure!(
        v.get(&1)
            .is_some_and(|(st, n)| st == "decrypt-only" && *n > 0),
        "{s}"
    );
    ensure!(v.get(&2).is_some_and(|(st, _)| st == "decrypt-only"), "{s}");
    ensure!(
        v.get(&3)
            .is_some_and(|(st, n)| st == "active" && *n >= u64::from(PARTITIONS)),
        "{s}"
    );
    ensure!(
        s["versions"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["provider"] == setup.provider_name())),
        "{s}"
    );
    let env = envelopes(&setup.data_dir(), &info.topic_id)?;
    for p in 0..PARTITIONS {
        let mine: Vec<u32> = env
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|(_, (scope, v))| {
                assert_eq!(scope, "broker");
                *v
            })
            .collect();
        ensure!(
            mine.first() == Some(&1),
            "partition {p} starts under v1: {mine:?}"
        );
        ensure!(
            mine.last() == Some(&3),
            "partition {p} now writes under v3: {mine:?}"
        );
        ensure!(
            mine.windows(2).all(|w| w[0] <= w[1]),
            "versions only go up along partition {p}: {mine:?}"
        );
    }

    // Everything reads back, in order, across the three versions.
    for p in 0..PARTITIONS {
        assert_partition(
            &client,
            TOPIC,
            p,
            &expected("rot", 0..total, PARTITIONS, p, LEN),
        )
        .await?;
    }

    // A dedicated key rotates on its own scope.
    client
        .admin()
        .create_topic("keys.dedicated", topic_config(1, 4096, true))
        .await?;
    publish(&client, "keys.dedicated", 1, "ded", 0..5, 100).await?;
    let out = cli_ok(
        &admin,
        &["keys", "rotate", "--topic", "keys.dedicated", "--json"],
    )?;
    let changed: serde_json::Value = serde_json::from_str(out.trim())?;
    ensure!(changed["version"]["version"] == 2, "{changed}");
    ensure!(
        changed["version"]["scope"] == "topic:keys.dedicated",
        "{changed}"
    );
    let d = versions(
        &status(&admin, Some("keys.dedicated"))?,
        "topic:keys.dedicated",
    );
    ensure!(
        d.get(&1)
            .is_some_and(|(st, n)| st == "decrypt-only" && *n == 1),
        "{d:?}"
    );
    ensure!(d.get(&2).is_some_and(|(st, _)| st == "active"), "{d:?}");
    let b = versions(&status(&admin, None)?, "broker");
    ensure!(b.len() == 3, "the broker key did not rotate: {b:?}");

    // The metrics storage feeds.
    let m = broker.metrics_text()?;
    let kind = setup.provider_name();
    ensure!(
        metric(
            &m,
            "strongbox_key_operations_total",
            &format!("operation=\"generate\",provider=\"{kind}\"")
        ) >= 4.0,
        "generate operations:\n{m}"
    );
    ensure!(
        metric(&m, "strongbox_key_operations_total", "operation=\"wrap\"")
            >= 2.0 * f64::from(PARTITIONS),
        "wrap operations:\n{m}"
    );
    ensure!(
        metric(
            &m,
            "strongbox_key_operation_seconds_count",
            "operation=\"wrap\""
        ) >= 1.0,
        "{m}"
    );
    ensure!(
        metric(&m, "strongbox_aead_bytes_total", "operation=\"seal\"") >= (total * LEN) as f64,
        "sealed bytes:\n{m}"
    );
    ensure!(
        metric(&m, "strongbox_aead_bytes_total", "operation=\"open\"") >= (total * LEN) as f64,
        "{m}"
    );
    ensure!(
        metric(&m, "strongbox_fsync_latency_seconds_count", "") >= 1.0,
        "{m}"
    );
    ensure!(metric(&m, "strongbox_key_provider_up", "") == 1.0, "{m}");
    ensure!(metric(&m, "strongbox_hsm_errors_total", "") == 0.0, "{m}");
    client.close().await;
    drop(broker);
    Ok(())
}
