//! The rewrap job, against SoftHSM2 and the file provider:
//!
//! - killed with SIGKILL at random moments while it runs, the broker
//!   restarts, resumes the job from the metadata store, and the job
//!   finishes with every envelope under the active version, nothing failed
//!   and every record readable in order; its progress never goes back
//!   across a kill (`done` only grows, `total` stays the number of
//!   envelopes queued), and the audit record of the finished job reports
//!   exactly that work;
//! - replay across versions: data written under v1, v2 (after a rotation)
//!   and v3, a rewrap of v1 only stopped halfway by a graceful restart,
//!   reads back complete and in order from the earliest offset while the
//!   resumed job runs and after it finished; v2 is left alone.

mod e2e_keys_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use e2e_keys_support::{
    Provider, Rng, Setup, assert_partition, cli_ok, envelopes, expected, publish, rewrap,
    rewrap_finished, status, topic_config, versions,
};
use strongbox_tests::client::connect;

const LEN: usize = 400;
/// About four records per segment.
const SEGMENT_BYTES: u64 = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_resumes_after_sigkill_softhsm() -> Result<()> {
    rewrap_resumes_after_sigkill(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_resumes_after_sigkill_file() -> Result<()> {
    rewrap_resumes_after_sigkill(Provider::File).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_across_versions_with_a_partial_rewrap_softhsm() -> Result<()> {
    replay_across_versions(Provider::SoftHsm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_across_versions_with_a_partial_rewrap_file() -> Result<()> {
    replay_across_versions(Provider::File).await
}

async fn rewrap_resumes_after_sigkill(provider: Provider) -> Result<()> {
    const TOPIC: &str = "keys.rewrap";
    const PARTITIONS: u32 = 2;
    // Slow enough that the job is still running at the kills.
    let setup = Setup::new(provider, 25)?;
    let admin = setup.admin();
    let mut broker = setup.start()?;
    let client = connect(&admin).await?;
    let info = client
        .admin()
        .create_topic(TOPIC, topic_config(PARTITIONS, SEGMENT_BYTES, false))
        .await?;
    publish(&client, TOPIC, PARTITIONS, "rw", 0..200, LEN).await?;
    cli_ok(&admin, &["keys", "rotate"])?;
    publish(&client, TOPIC, PARTITIONS, "rw", 200..260, LEN).await?;
    cli_ok(&admin, &["keys", "rotate"])?;
    publish(&client, TOPIC, PARTITIONS, "rw", 260..280, LEN).await?;
    client.close().await;

    let before = versions(&status(&admin, None)?, "broker");
    let old: u64 = [1, 2]
        .iter()
        .filter_map(|v| before.get(v))
        .map(|(_, n)| n)
        .sum();
    ensure!(old >= 50, "too few envelopes to rewrap: {before:?}");
    let out = cli_ok(&admin, &["keys", "rewrap", "--json"])?;
    let started: serde_json::Value = serde_json::from_str(out.trim())?;
    ensure!(started["segments"] == old, "{started} vs {before:?}");
    ensure!(started["version"]["version"] == 3, "{started}");

    let mut rng = Rng::from_time();
    let mut killed_while_running = 0;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.range(150, 900))).await;
        let (running, total_before, done_before, _) = rewrap(&status(&admin, None)?);
        if running {
            killed_while_running += 1;
        }
        broker.crash()?;
        broker = setup.start()?;
        let (_, total_after, done_after, _) = rewrap(&status(&admin, None)?);
        eprintln!(
            "round {round}: killed (job running: {running}, {done_before}/{total_before}) and \
             restarted ({done_after}/{total_after})"
        );
        ensure!(
            done_after >= done_before,
            "progress went back across a kill: {done_before} -> {done_after} done"
        );
        ensure!(
            total_before == old && total_after == old,
            "the total is the envelopes queued ({old}): {total_before} before the kill, \
             {total_after} after"
        );
    }
    ensure!(
        killed_while_running >= 1,
        "the job was never killed mid-way"
    );
    ensure!(
        broker
            .log_text()
            .contains("resuming the unfinished rewrap job"),
        "the restarted broker did not resume the job:\n{}",
        broker.log_text()
    );

    let done = rewrap_finished(&admin, None).await?;
    let (_, total, moved, failed) = rewrap(&done);
    ensure!(failed == 0, "{done}");
    ensure!(
        total == old && moved == old,
        "every queued envelope counted once: {moved}/{total} of {old}"
    );
    let finished = finished_record(&admin, old).await?;
    ensure!(
        finished["details"]["done"] == old && finished["details"]["total"] == old,
        "the audit record of the finished job reports the work: {finished}"
    );
    let after = versions(&done, "broker");
    ensure!(after.get(&1).is_some_and(|(_, n)| *n == 0), "{done}");
    ensure!(after.get(&2).is_some_and(|(_, n)| *n == 0), "{done}");
    ensure!(
        after
            .get(&3)
            .is_some_and(|(st, n)| st == "active" && *n >= old),
        "{done}"
    );
    for ((p, base), (scope, v)) in envelopes(&setup.data_dir(), &info.topic_id)? {
        ensure!(
            scope == "broker" && v == 3,
            "{TOPIC}/{p} segment at {base} is still under {scope} v{v}"
        );
    }
    let client = connect(&admin).await?;
    for p in 0..PARTITIONS {
        assert_partition(
            &client,
            TOPIC,
            p,
            &expected("rw", 0..280, PARTITIONS, p, LEN),
        )
        .await?;
    }
    client.close().await;
    Ok(())
}

/// The audit record of the finished rewrap job (the trail is written in the
/// background: polled for up to a minute).
async fn finished_record(admin: &std::path::Path, old: u64) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = cli_ok(admin, &["audit", "tail", "--json"])?
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["action"] == "key.rewrap.progress" && r["details"]["state"] == "finished");
        if let Some(r) = found {
            return Ok(r);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no audit record of the finished rewrap of {old} envelopes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn replay_across_versions(provider: Provider) -> Result<()> {
    const TOPIC: &str = "keys.replay";
    let setup = Setup::new(provider, 4)?;
    let admin = setup.admin();
    let mut broker = setup.start()?;
    let client = connect(&admin).await?;
    let info = client
        .admin()
        .create_topic(TOPIC, topic_config(1, SEGMENT_BYTES, false))
        .await?;
    publish(&client, TOPIC, 1, "rp", 0..40, LEN).await?;
    cli_ok(&admin, &["keys", "rotate"])?;
    publish(&client, TOPIC, 1, "rp", 40..80, LEN).await?;
    cli_ok(&admin, &["keys", "rotate"])?;
    publish(&client, TOPIC, 1, "rp", 80..120, LEN).await?;
    let all = expected("rp", 0..120, 1, 0, LEN);
    assert_partition(&client, TOPIC, 0, &all).await?;
    client.close().await;

    let by_version = |v: u32| -> Result<usize> {
        Ok(envelopes(&setup.data_dir(), &info.topic_id)?
            .values()
            .filter(|(_, x)| *x == v)
            .count())
    };
    let (v1, v2) = (by_version(1)?, by_version(2)?);
    ensure!(v1 >= 8 && v2 >= 8, "v1 {v1}, v2 {v2} segments");

    // Rewrap v1 only, and stop the broker once it has begun on this
    // topic (at four envelopes a second it has seconds left to go).
    let out = cli_ok(&admin, &["keys", "rewrap", "--from-version", "1"])?;
    ensure!(out.contains("to strongbox/kek/broker/v3"), "{out}");
    while by_version(1)? == v1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (running, ..) = rewrap(&status(&admin, None)?);
    ensure!(running, "the job ended before the restart; lower its rate");
    ensure!(broker.terminate()? == Some(0), "{}", broker.log_text());
    let partial = by_version(1)?;
    ensure!(
        partial > 0 && partial < v1,
        "the stop should fall mid-way: {partial} of {v1} envelopes still under v1"
    );

    // After the restart the job resumes; reading from the earliest offset
    // meanwhile crosses v1, v3 (rewrapped), v2 and v3 segments.
    broker = setup.start()?;
    let client = connect(&admin).await?;
    assert_partition(&client, TOPIC, 0, &all).await?;
    let done = rewrap_finished(&admin, None).await?;
    ensure!(rewrap(&done).3 == 0, "{done}");
    let v = versions(&done, "broker");
    ensure!(v.get(&1).is_some_and(|(_, n)| *n == 0), "{done}");
    ensure!(
        v.get(&2).is_some_and(|(_, n)| *n > 0),
        "v2 is not in the job: {done}"
    );
    ensure!(
        by_version(1)? == 0 && by_version(2)? == v2,
        "envelopes on disk"
    );
    assert_partition(&client, TOPIC, 0, &all).await?;
    client.close().await;
    drop(broker);
    Ok(())
}
