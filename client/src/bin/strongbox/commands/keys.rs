//! `strongbox keys ...`: the key-encryption key lifecycle (status, rotate,
//! rewrap, retire, destroy, compromised).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};
use strongbox_client::protocol::model::{KeyVersionInfo, RewrapProgress};
use strongbox_client::{Admin, KeyChange, KeyStatus};

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::connect;
use crate::output::{Table, time_ms};

/// How often `keys rewrap --wait` asks for progress.
const POLL: Duration = Duration::from_millis(500);

/// Width of the progress bar drawn on a terminal.
const BAR: usize = 30;

/// `keys ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Show key versions, their states and segments, and rewrap progress.
    #[command(after_help = "\
Lists every key-encryption key version (of the broker key and of every topic with
a dedicated key, or only of --topic's): its state (active, decrypt-only,
compromised, destroyed), the provider holding it, how many segment data keys it
wraps, when it was created and when its state last changed; then when each scope
was last rotated and how the rewrap job is doing. Needs the `keys` permission.

Examples:
  strongbox keys status
  strongbox keys status --topic payments --json")]
    Status {
        /// Only this topic's dedicated key.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
    /// Make a new key version active for new segments, at once.
    #[command(after_help = "\
The broker (or --topic's dedicated key) gets a new version in the key provider;
every segment created from now on has its data key wrapped under it. The old
version becomes decrypt-only: it still opens the segments it wraps until they are
rewrapped (strongbox keys rewrap). No restart, no pause in appends.

Example:
  strongbox keys rotate")]
    Rotate {
        /// A topic's dedicated key instead of the broker key.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
    /// Re-wrap older segment data keys under the active version.
    #[command(after_help = "\
Starts a background job that re-wraps every data key envelope under an older
version (or only under --from-version) with the active version: compromised
versions first, at most keys.rewrap_rate envelopes per second. Only the small key
envelopes are rewritten, each atomically. The job survives a broker restart and
resumes. With --wait, shows its progress until it finishes (exit status 1 if some
envelopes could not be rewrapped); with --json, one status object per line.

Examples:
  strongbox keys rewrap --wait
  strongbox keys rewrap --from-version 3 --topic payments")]
    Rewrap {
        /// A topic's dedicated key instead of the broker key.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// Only envelopes under this version.
        #[arg(long, value_name = "N")]
        from_version: Option<u32>,
        /// Follow the job until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Make a version decrypt-only: it no longer wraps new data keys.
    #[command(after_help = "\
The scope gets a new active version when its next segment is created.

Example:
  strongbox keys retire 3")]
    Retire {
        /// The version.
        version: u32,
        /// A topic's dedicated key instead of the broker key.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
    /// Destroy a version in the key provider (crypto-shredding).
    #[command(after_help = "\
Refused (key_in_use) while segments still need the version, with their count:
rewrap them first. With --force the version is destroyed anyway and the answer
names the segments that can no longer be read. Irreversible.

Examples:
  strongbox keys destroy 1
  strongbox keys destroy 1 --force")]
    Destroy {
        /// The version.
        version: u32,
        /// A topic's dedicated key instead of the broker key.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// Destroy it even though segments still need it: they become
        /// unreadable.
        #[arg(long)]
        force: bool,
    },
    /// Mark a version compromised: an alert, and its segments go first in
    /// the rewrap queue.
    #[command(after_help = "\
The version never wraps again but still opens its segments, so they can be
rewrapped: rotate if it was active, run `strongbox keys rewrap`, then destroy
it. The audit trail gets an alert record and strongbox_key_compromised rises.

Example:
  strongbox keys compromised 2")]
    Compromised {
        /// The version.
        version: u32,
        /// A topic's dedicated key instead of the broker key.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
}

pub(crate) async fn run(global: &GlobalArgs, command: KeysCommand) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let admin = client.admin();
    let mut out = Out::new();
    let json = global.json;
    let result = async {
        match command {
            KeysCommand::Status { topic } => {
                let status = admin.key_status(topic.as_deref()).await?;
                if json {
                    out.json(&status_json(&status))?;
                } else {
                    out.write(&status_text(&status))?;
                }
            }
            KeysCommand::Rotate { topic } => {
                changed(&mut out, json, &admin.key_rotate(topic.as_deref()).await?)?;
            }
            KeysCommand::Retire { version, topic } => {
                changed(
                    &mut out,
                    json,
                    &admin.key_retire(topic.as_deref(), version).await?,
                )?;
            }
            KeysCommand::Destroy {
                version,
                topic,
                force,
            } => {
                changed(
                    &mut out,
                    json,
                    &admin.key_destroy(topic.as_deref(), version, force).await?,
                )?;
            }
            KeysCommand::Compromised { version, topic } => {
                changed(
                    &mut out,
                    json,
                    &admin.key_compromised(topic.as_deref(), version).await?,
                )?;
            }
            KeysCommand::Rewrap {
                topic,
                from_version,
                wait,
            } => {
                let change = admin.key_rewrap(topic.as_deref(), from_version).await?;
                changed(&mut out, json, &change)?;
                if wait {
                    follow(&admin, topic.as_deref(), &mut out, json).await?;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    result
}

fn changed(out: &mut Out, json: bool, change: &KeyChange) -> anyhow::Result<()> {
    if json {
        out.json(&json!({
            "version": version_json(&change.version),
            "segments": change.segments,
            "message": change.message,
        }))?;
    } else {
        out.line(&change.message)?;
    }
    Ok(())
}

/// Polls `keys status` until the rewrap job stops.
async fn follow(
    admin: &Admin,
    topic: Option<&str>,
    out: &mut Out,
    json: bool,
) -> anyhow::Result<()> {
    let tty = !json && std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last: Option<RewrapProgress> = None;
    let progress = loop {
        let p = admin.key_status(topic).await?.rewrap;
        if json {
            if !out.json(&rewrap_json(&p))? {
                return Ok(());
            }
        } else if tty {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\r{}", bar(&p));
            let _ = stdout.flush();
        } else if last.is_none_or(|l| (l.done, l.failed) != (p.done, p.failed)) {
            out.line(&progress_line(&p))?;
        }
        last = Some(p);
        if !p.running {
            break p;
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                if tty {
                    println!();
                }
                eprintln!("stopped following; the rewrap goes on in the broker (strongbox keys status)");
                return Ok(());
            }
            () = tokio::time::sleep(POLL) => {}
        }
    };
    if tty {
        println!();
    }
    if progress.failed > 0 {
        bail!(
            "rewrap finished: {} envelopes rewrapped, {} could not be (the broker log says why; \
             they keep their old key version)",
            progress.done,
            progress.failed
        );
    }
    if !json {
        out.line(&format!(
            "rewrap finished: {} envelopes rewrapped",
            progress.done
        ))?;
    }
    Ok(())
}

/// `[#####.....]  40/120 envelopes, 0 failed` for a terminal.
fn bar(p: &RewrapProgress) -> String {
    let total = p.total.max(p.done.saturating_add(p.failed));
    let filled = if total == 0 {
        BAR
    } else {
        usize::try_from(
            (u128::from(p.done.saturating_add(p.failed)) * BAR as u128) / u128::from(total),
        )
        .unwrap_or(BAR)
        .min(BAR)
    };
    format!(
        "[{}{}] {}/{} envelopes, {} failed",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        p.done,
        total,
        p.failed
    )
}

fn progress_line(p: &RewrapProgress) -> String {
    format!(
        "rewrap: {}/{} envelopes, {} failed{}",
        p.done,
        p.total,
        p.failed,
        if p.running { "" } else { " (not running)" }
    )
}

fn version_json(v: &KeyVersionInfo) -> Value {
    json!({
        "scope": v.scope,
        "version": v.version,
        "state": v.state.name(),
        "provider": v.provider,
        "segments": v.segments,
        "created_at": v.created_at,
        "state_changed_at": v.state_changed_at,
    })
}

fn rewrap_json(p: &RewrapProgress) -> Value {
    json!({
        "running": p.running,
        "total": p.total,
        "done": p.done,
        "failed": p.failed,
    })
}

/// When each scope last got a new version by rotation: the creation of its
/// newest version, when it has more than one.
fn last_rotations(versions: &[KeyVersionInfo]) -> BTreeMap<&str, Option<&KeyVersionInfo>> {
    let mut by_scope: BTreeMap<&str, Vec<&KeyVersionInfo>> = BTreeMap::new();
    for v in versions {
        by_scope.entry(v.scope.as_str()).or_default().push(v);
    }
    by_scope
        .into_iter()
        .map(|(scope, vs)| {
            let newest = vs.iter().max_by_key(|v| v.version).copied();
            (scope, newest.filter(|_| vs.len() > 1))
        })
        .collect()
}

fn status_json(s: &KeyStatus) -> Value {
    let rotations: serde_json::Map<String, Value> = last_rotations(&s.versions)
        .into_iter()
        .map(|(scope, v)| {
            (
                scope.to_owned(),
                v.map_or(
                    Value::Null,
                    |v| json!({"version": v.version, "at": v.created_at}),
                ),
            )
        })
        .collect();
    json!({
        "versions": s.versions.iter().map(version_json).collect::<Vec<_>>(),
        "last_rotation": rotations,
        "rewrap": rewrap_json(&s.rewrap),
    })
}

fn status_text(s: &KeyStatus) -> String {
    let mut table = Table::new(&[
        "SCOPE",
        "VERSION",
        "STATE",
        "PROVIDER",
        "SEGMENTS",
        "CREATED",
        "STATE CHANGED",
    ]);
    for v in &s.versions {
        table.row(vec![
            v.scope.clone(),
            v.version.to_string(),
            v.state.name().to_owned(),
            v.provider.clone(),
            v.segments.to_string(),
            time_ms(v.created_at),
            time_ms(v.state_changed_at),
        ]);
    }
    let mut text = if s.versions.is_empty() {
        "no key versions yet (the first segment creates one)\n".to_owned()
    } else {
        table.render()
    };
    text.push('\n');
    for (scope, v) in last_rotations(&s.versions) {
        text.push_str(&match v {
            Some(v) => format!(
                "last rotation  {scope}: {} (v{})\n",
                time_ms(v.created_at),
                v.version
            ),
            None => format!("last rotation  {scope}: never\n"),
        });
    }
    let r = &s.rewrap;
    text.push_str(&if r.running {
        format!("rewrap         running: {}\n", bar(r))
    } else if r.total == 0 && r.done == 0 && r.failed == 0 {
        "rewrap         none\n".to_owned()
    } else {
        format!(
            "rewrap         finished: {} envelopes rewrapped, {} failed\n",
            r.done, r.failed
        )
    });
    text
}

#[cfg(test)]
mod tests {
    use strongbox_client::protocol::model::KeyState;

    use super::*;

    fn v(scope: &str, version: u32, state: KeyState, created_at: i64) -> KeyVersionInfo {
        KeyVersionInfo {
            scope: scope.into(),
            version,
            state,
            provider: "pkcs11".into(),
            created_at,
            state_changed_at: created_at + 5,
            segments: u64::from(version) * 10,
        }
    }

    #[test]
    fn status_shows_versions_rotations_and_progress() {
        let status = KeyStatus {
            versions: vec![
                v("broker", 1, KeyState::DecryptOnly, 1_000),
                v("broker", 2, KeyState::Active, 2_000),
                v("topic:pay", 1, KeyState::Active, 3_000),
            ],
            rewrap: RewrapProgress {
                running: true,
                total: 20,
                done: 5,
                failed: 0,
            },
        };
        let text = status_text(&status);
        assert!(text.starts_with("SCOPE"), "{text}");
        assert!(text.contains("decrypt-only"), "{text}");
        assert!(
            text.contains("last rotation  broker: 1970-01-01T00:00:02.000Z (v2)"),
            "{text}"
        );
        assert!(text.contains("last rotation  topic:pay: never"), "{text}");
        assert!(text.contains("5/20 envelopes, 0 failed"), "{text}");

        let j = status_json(&status);
        assert_eq!(j["versions"][1]["state"], "active");
        assert_eq!(j["versions"][1]["segments"], 20);
        assert_eq!(j["last_rotation"]["broker"]["version"], 2);
        assert_eq!(j["last_rotation"]["topic:pay"], Value::Null);
        assert_eq!(j["rewrap"]["running"], true);
        assert_eq!(j["rewrap"]["done"], 5);
    }

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(std::iter::once("strongbox").chain(args.iter().copied()))
    }

    #[test]
    fn every_subcommand_parses_and_usage_errors_exit_2() {
        use crate::cli::Command;
        let cli = parse(&[
            "keys",
            "rewrap",
            "--topic",
            "pay",
            "--from-version",
            "2",
            "--wait",
            "--json",
        ])
        .expect("parses");
        assert!(cli.global.json);
        let Command::Keys(KeysCommand::Rewrap {
            topic,
            from_version,
            wait,
        }) = cli.command
        else {
            panic!("keys rewrap")
        };
        assert_eq!(topic.as_deref(), Some("pay"));
        assert_eq!(from_version, Some(2));
        assert!(wait);

        let cli = parse(&["keys", "destroy", "1", "--force"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Keys(KeysCommand::Destroy {
                version: 1,
                force: true,
                topic: None
            })
        ));
        for ok in [
            &["keys", "status"][..],
            &["keys", "status", "--topic", "t"],
            &["keys", "rotate"],
            &["keys", "retire", "3", "--topic", "t"],
            &["keys", "compromised", "2"],
        ] {
            parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            &["keys", "destroy"][..],
            &["keys", "retire", "three"],
            &["keys", "rewrap", "--from-version", "-1"],
            &["keys", "spin"],
        ] {
            let e = parse(bad).expect_err("usage error");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn the_bar_fills_with_progress() {
        let p = |done, total| RewrapProgress {
            running: true,
            total,
            done,
            failed: 0,
        };
        assert!(bar(&p(0, 10)).starts_with(&format!("[{}]", ".".repeat(BAR))));
        assert!(bar(&p(10, 10)).starts_with(&format!("[{}]", "#".repeat(BAR))));
        assert!(bar(&p(5, 10)).contains(&"#".repeat(BAR / 2)));
        // Nothing to do is done.
        assert!(bar(&p(0, 0)).starts_with(&format!("[{}]", "#".repeat(BAR))));
    }
}
