//! Access requests as the `strongbox` CLI shows them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strongbox_client::protocol::clock::now_ms;

use crate::cli_checks::cli_json;
use crate::{BrokerProcess, START_TIMEOUT, Signal};

/// The access request `id` as `profile`'s principal sees it in `access
/// list`, if it sees it.
///
/// # Errors
///
/// The CLI fails, or its output is not a JSON list.
pub fn listed_request(profile: &Path, id: u64) -> Result<Option<Value>> {
    let list = cli_json(profile, &["access", "list"])?;
    Ok(list
        .as_array()
        .context("a list")?
        .iter()
        .find(|r| r["id"] == id)
        .cloned())
}

/// Waits out `expires_at`, then triggers maintenance (SIGHUP) until
/// request `id` shows `expired` to `profile`'s principal.
///
/// # Errors
///
/// The CLI fails, the request is not listed, or it has not expired after
/// [`START_TIMEOUT`].
pub async fn expire_request(
    broker: &BrokerProcess,
    profile: &Path,
    id: u64,
    expires_at: i64,
) -> Result<()> {
    let wait = u64::try_from(expires_at.saturating_sub(now_ms()).max(0)).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait + 200)).await;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        broker.signal(Signal::SIGHUP)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if listed_request(profile, id)?.context("listed")?["state"] == "expired" {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "request {id} never expired");
    }
}
