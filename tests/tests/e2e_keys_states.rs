//! Key version states, against SoftHSM2 and the file provider, on topics
//! with a dedicated key:
//!
//! - `keys destroy` is refused with `key_in_use` and the number of segments
//!   that still need the version; `--force` destroys it, names the segments
//!   it leaves unreadable, and reading them then fails with
//!   `key_destroyed` (before and after a restart) while the rest of the
//!   topic reads on and the broker keeps serving; `keys retire` makes the
//!   active version decrypt-only and the next segment gets a new one;
//! - `keys compromised` raises an alert (an `alert` audit record and the
//!   `strongbox_key_compromised` gauge) and its segments are rewrapped
//!   before those of older versions; once rewrapped it can be destroyed
//!   without force and the gauge falls back.

mod e2e_keys_support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use e2e_keys_support::{
    Provider, Setup, assert_partition, cli_ok, envelopes, expected, publish, status, topic_config,
    value, versions,
};
use futures::StreamExt;
use serde_json::Value;
use strongbox_client::{ConsumerConfig, ErrorCode, StartPosition, Subscription};
use strongbox_tests::client::{connect, read_n};

const LEN: usize = 400;
const SEGMENT_BYTES: u64 = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_is_refused_then_forced_softhsm() -> Result<()> {
    destroy_is_refused_then_forced(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_is_refused_then_forced_file() -> Result<()> {
    destroy_is_refused_then_forced(Provider::File).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compromised_alerts_and_goes_first_softhsm() -> Result<()> {
    compromised_alerts_and_goes_first(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compromised_alerts_and_goes_first_file() -> Result<()> {
    compromised_alerts_and_goes_first(Provider::File).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_takes_effect_at_once_softhsm() -> Result<()> {
    destroy_takes_effect_at_once(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_takes_effect_at_once_file() -> Result<()> {
    destroy_takes_effect_at_once(Provider::File).await
}

/// How long a read of a shredded segment may take to fail: it must fail
/// at once, not after the client's retries run out.
const PROMPT: Duration = Duration::from_secs(20);

/// Reads from offset `from` of partition 0 of `topic`: the first item.
async fn first_item(
    client: &strongbox_client::Client,
    topic: &str,
    from: u64,
) -> Result<Result<strongbox_client::ConsumedRecord, strongbox_client::ClientError>> {
    let mut consumer = client
        .subscribe(
            Subscription::partition(topic, 0).start(StartPosition::Offset(from)),
            ConsumerConfig::default(),
        )
        .await?;
    let item = tokio::time::timeout(PROMPT, consumer.next())
        .await
        .with_context(|| format!("no answer within {PROMPT:?}"))?;
    consumer.close().await;
    item.context("the subscription ended without an item")
}

/// `keys destroy --force` on a running broker, with the segment under the
/// version still the active one and its data key cached from a read: the
/// next read fails with `key_destroyed` at once, in the same broker
/// process, and again after a restart; appends go on in a new segment
/// under the new version, which reads back.
async fn destroy_takes_effect_at_once(provider: Provider) -> Result<()> {
    const TOPIC: &str = "keys.live";
    let setup = Setup::new(provider, 200)?;
    let admin = setup.admin();
    let mut broker = setup.start()?;
    let client = connect(&admin).await?;
    // Segments large enough that everything stays in the active one.
    client
        .admin()
        .create_topic(TOPIC, topic_config(1, 1 << 20, true))
        .await?;
    publish(&client, TOPIC, 1, "live", 0..5, LEN).await?;
    let item = first_item(&client, TOPIC, 0).await?;
    ensure!(item.is_ok_and(|r| r.offset == 0), "readable before");
    cli_ok(&admin, &["keys", "rotate", "--topic", TOPIC])?;

    let out = cli_ok(
        &admin,
        &["keys", "destroy", "1", "--topic", TOPIC, "--force"],
    )?;
    ensure!(
        out.contains("1 segments are now unreadable") && out.contains(&format!("{TOPIC}/0@0")),
        "{out}"
    );
    for from in [0, 4] {
        match first_item(&client, TOPIC, from).await? {
            Err(e) if e.code() == Some(ErrorCode::KeyDestroyed) => {}
            Err(e) => bail!("reading from {from}: expected key_destroyed, got {e}"),
            Ok(r) => bail!(
                "read record {} of a destroyed key in the same process",
                r.offset
            ),
        }
    }
    // Appends go on, under v2, and read back.
    publish(&client, TOPIC, 1, "live", 5..8, LEN).await?;
    let item = first_item(&client, TOPIC, 5).await?;
    ensure!(
        item.as_ref()
            .is_ok_and(|r| r.offset == 5 && r.value == value("live", 5, LEN).as_bytes()),
        "{item:?}"
    );
    let v = versions(&status(&admin, Some(TOPIC))?, &format!("topic:{TOPIC}"));
    ensure!(
        v.get(&1).is_some_and(|(st, _)| st == "destroyed")
            && v.get(&2).is_some_and(|(st, n)| st == "active" && *n == 1),
        "{v:?}"
    );

    // After a restart: the partition is served, the shredded records fail
    // at once, the others read.
    client.close().await;
    ensure!(broker.terminate()? == Some(0), "{}", broker.log_text());
    let broker = setup.start()?;
    let client = connect(&admin).await?;
    match first_item(&client, TOPIC, 0).await? {
        Err(e) if e.code() == Some(ErrorCode::KeyDestroyed) => {}
        other => bail!("after the restart: expected key_destroyed, got {other:?}"),
    }
    let item = first_item(&client, TOPIC, 7).await?;
    ensure!(item.as_ref().is_ok_and(|r| r.offset == 7), "{item:?}");
    client.close().await;
    drop(broker);
    Ok(())
}

/// The first thing a subscription from `start` yields must be an error
/// with `code`.
async fn first_read_fails(
    client: &strongbox_client::Client,
    topic: &str,
    start: StartPosition,
    code: ErrorCode,
) -> Result<()> {
    let mut consumer = client
        .subscribe(
            Subscription::partition(topic, 0).start(start),
            ConsumerConfig::default(),
        )
        .await?;
    let item = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .context("no answer to the read")?;
    consumer.close().await;
    match item {
        Some(Err(e)) if e.code() == Some(code) => Ok(()),
        Some(Err(e)) => bail!("expected {code:?}, got {e} ({:?})", e.code()),
        Some(Ok(r)) => bail!("read record {} of a destroyed key", r.offset),
        None => bail!("the subscription ended without an error"),
    }
}

async fn destroy_is_refused_then_forced(provider: Provider) -> Result<()> {
    const TOPIC: &str = "keys.shred";
    let setup = Setup::new(provider, 200)?;
    let admin = setup.admin();
    let mut broker = setup.start()?;
    let client = connect(&admin).await?;
    let info = client
        .admin()
        .create_topic(TOPIC, topic_config(1, SEGMENT_BYTES, true))
        .await?;
    publish(&client, TOPIC, 1, "sh", 0..30, LEN).await?;
    cli_ok(&admin, &["keys", "rotate", "--topic", TOPIC])?;
    publish(&client, TOPIC, 1, "sh", 30..50, LEN).await?;
    let scope = format!("topic:{TOPIC}");
    let v = versions(&status(&admin, Some(TOPIC))?, &scope);
    let n1 = v.get(&1).map(|(_, n)| *n).unwrap_or(0);
    ensure!(n1 >= 5, "{v:?}");
    // The first segment written under v2 starts here.
    let first_v2 = envelopes(&setup.data_dir(), &info.topic_id)?
        .iter()
        .find(|(_, (_, ver))| *ver == 2)
        .map(|((_, base), _)| *base)
        .ok_or_else(|| anyhow!("no segment under v2"))?;

    // Refused, with the count, through the CLI and the client library.
    let out = strongbox_tests::cli(&admin, &["keys", "destroy", "1", "--topic", TOPIC])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.contains(&format!("still wraps {n1} segment")),
        "the refusal gives the count {n1}: {stderr}"
    );
    let refused = client
        .admin()
        .key_destroy(Some(TOPIC), 1, false)
        .await
        .expect_err("refused");
    ensure!(refused.code() == Some(ErrorCode::KeyInUse), "{refused}");
    ensure!(
        versions(&status(&admin, Some(TOPIC))?, &scope).get(&1)
            == Some(&("decrypt-only".to_owned(), n1)),
        "nothing changed"
    );

    // Forced: destroyed, and the answer names what is lost.
    let out = cli_ok(
        &admin,
        &[
            "keys", "destroy", "1", "--topic", TOPIC, "--force", "--json",
        ],
    )?;
    let answer: Value = serde_json::from_str(out.trim())?;
    ensure!(answer["segments"] == n1, "{answer}");
    ensure!(answer["version"]["state"] == "destroyed", "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&format!("{n1} segments are now unreadable"))
            && message.contains(&format!("{TOPIC}/0@0")),
        "{message}"
    );
    let out = strongbox_tests::cli(&admin, &["keys", "destroy", "1", "--topic", TOPIC])?;
    ensure!(out.status.code() == Some(1), "destroying twice is refused");

    // Reading the lost segments fails with key_destroyed; the rest reads.
    lost_and_kept(&client, first_v2).await?;
    ensure!(broker.is_running(), "the broker is still serving");
    // The same after a restart: the partition opens, its lost segments
    // stay lost.
    client.close().await;
    ensure!(broker.terminate()? == Some(0), "{}", broker.log_text());
    let broker = setup.start()?;
    let client = connect(&admin).await?;
    lost_and_kept(&client, first_v2).await?;
    ensure!(
        client.admin().describe_topic(TOPIC).await?.partitions.len() == 1,
        "the topic is served"
    );

    // Retire the active version: the next segment gets v3.
    let out = cli_ok(&admin, &["keys", "retire", "2", "--topic", TOPIC])?;
    ensure!(out.contains("decrypt-only"), "{out}");
    publish(&client, TOPIC, 1, "sh", 50..60, LEN).await?;
    let scope = format!("topic:{TOPIC}");
    let v = versions(&status(&admin, Some(TOPIC))?, &scope);
    ensure!(
        v.get(&2).is_some_and(|(st, _)| st == "decrypt-only"),
        "{v:?}"
    );
    ensure!(
        v.get(&3).is_some_and(|(st, n)| st == "active" && *n >= 1),
        "{v:?}"
    );
    let newest = envelopes(&setup.data_dir(), &info.topic_id)?;
    ensure!(
        newest.values().last().is_some_and(|(_, ver)| *ver == 3),
        "{newest:?}"
    );
    client.close().await;
    drop(broker);
    Ok(())
}

/// Reading `keys.shred` from the earliest offset fails with
/// `key_destroyed`; from `first_v2` on, records 0..50 read back.
async fn lost_and_kept(client: &strongbox_client::Client, first_v2: u64) -> Result<()> {
    const TOPIC: &str = "keys.shred";
    first_read_fails(
        client,
        TOPIC,
        StartPosition::Earliest,
        ErrorCode::KeyDestroyed,
    )
    .await?;
    let mut consumer = client
        .subscribe(
            Subscription::partition(TOPIC, 0).start(StartPosition::Offset(first_v2)),
            ConsumerConfig::default(),
        )
        .await?;
    let rest = read_n(&mut consumer, 50 - usize::try_from(first_v2)?).await?;
    consumer.close().await;
    for r in &rest {
        ensure!(r.value == value("sh", usize::try_from(r.offset)?, LEN).as_bytes());
    }
    Ok(())
}

/// Every audit record, as stored.
fn audit_records(admin: &Path) -> Result<Vec<Value>> {
    cli_ok(admin, &["audit", "tail", "--json"])?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("audit record {l}")))
        .collect()
}

/// Waits until the audit trail holds records matching `pred`, in order.
async fn wait_for_audit(
    admin: &Path,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = audit_records(admin)?;
        if pred(&records) {
            return Ok(records);
        }
        if Instant::now() > deadline {
            bail!("no {what} in the audit trail: {records:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn compromised_alerts_and_goes_first(provider: Provider) -> Result<()> {
    const TOPIC: &str = "keys.comp";
    let setup = Setup::new(provider, 10)?;
    let admin = setup.admin();
    let broker = setup.start()?;
    let client = connect(&admin).await?;
    client
        .admin()
        .create_topic(TOPIC, topic_config(1, SEGMENT_BYTES, true))
        .await?;
    publish(&client, TOPIC, 1, "cp", 0..30, LEN).await?;
    cli_ok(&admin, &["keys", "rotate", "--topic", TOPIC])?;
    publish(&client, TOPIC, 1, "cp", 30..60, LEN).await?;
    cli_ok(&admin, &["keys", "rotate", "--topic", TOPIC])?;
    publish(&client, TOPIC, 1, "cp", 60..70, LEN).await?;
    let scope = format!("topic:{TOPIC}");
    let before = versions(&status(&admin, Some(TOPIC))?, &scope);
    let (n1, n2) = (before[&1].1, before[&2].1);
    ensure!(n1 >= 5 && n2 >= 5, "{before:?}");
    ensure!(broker.metric_sum("strongbox_key_compromised")? == 0.0);

    let out = cli_ok(&admin, &["keys", "compromised", "2", "--topic", TOPIC])?;
    ensure!(out.contains("first in the rewrap queue"), "{out}");
    ensure!(broker.metric_sum("strongbox_key_compromised")? == 1.0);
    let resource = format!("kek:{scope}/v2");
    wait_for_audit(&admin, "compromised alert", |r| {
        r.iter().any(|x| {
            x["action"] == "key.compromised"
                && x["outcome"] == "alert"
                && x["resource"] == resource.as_str()
                && x["principal"] == "spiffe://strongbox.dev/admin"
        })
    })
    .await?;

    // Rewrap everything, following it with --wait, while watching the
    // registry: v1 is not touched while v2 still wraps anything.
    let waiting = {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            cli_ok(&admin, &["keys", "rewrap", "--topic", TOPIC, "--wait"])
        })
    };
    let mut samples = Vec::new();
    while !waiting.is_finished() {
        let v = versions(&status(&admin, Some(TOPIC))?, &scope);
        samples.push((v[&1].1, v[&2].1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = waiting.await??;
    ensure!(out.contains("rewrap finished"), "{out}");
    for (v1, v2) in &samples {
        ensure!(
            *v1 == n1 || *v2 == 0,
            "v1 was rewrapped while the compromised v2 still had {v2} segments: {samples:?}"
        );
    }
    let after = versions(&status(&admin, Some(TOPIC))?, &scope);
    ensure!(after[&1].1 == 0 && after[&2].1 == 0, "{after:?}");
    let records = wait_for_audit(&admin, "drained versions", |r| {
        r.iter()
            .filter(|x| x["action"] == "key.rewrap.progress" && x["details"]["state"] == "finished")
            .count()
            >= 1
    })
    .await?;
    let drained: Vec<u64> = records
        .iter()
        .filter(|x| x["action"] == "key.rewrap.progress")
        .filter_map(|x| x["details"]["drained_version"].as_u64())
        .collect();
    ensure!(
        drained == [2, 1],
        "the compromised version is drained first: {drained:?}"
    );

    // Nothing needs v2 any more: destroyed without force, the alert ends.
    let out = cli_ok(&admin, &["keys", "destroy", "2", "--topic", TOPIC])?;
    ensure!(out.contains("no segment needed it"), "{out}");
    ensure!(broker.metric_sum("strongbox_key_compromised")? == 0.0);
    assert_partition(&client, TOPIC, 0, &expected("cp", 0..70, 1, 0, LEN)).await?;
    client.close().await;
    Ok(())
}
