//! `strongbox audit tail` and `strongbox audit verify`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};
use strongbox_client::Client;
use strongbox_client::audit::{
    AuditRecord, ChainSummary, StoredRecord, TrailReader, VerifyError, verify_trail,
};
use strongbox_client::checkpoint::{self, CheckpointError, CheckpointKey};

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::connect;

/// `audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print audit records, oldest first.
    #[command(after_help = "\
Reading the audit trail needs the `audit` permission on _audit. Prints one line
per record (SEQ, TIME, OUTCOME, ACTION, PRINCIPAL, RESOURCE, DETAILS), or with
--json each record exactly as stored, one JSON object per line.

Examples:
  strongbox audit tail
  strongbox audit tail --from 1200 --json
  strongbox audit tail --follow")]
    Tail {
        /// Keep printing new records until interrupted (Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// Start at this sequence number.
        #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
        from: Option<u64>,
    },
    /// Check the hash chain of the whole trail against the broker's anchor,
    /// and optionally the broker's state against a signed checkpoint.
    #[command(after_help = "\
Reads every record of _audit and checks its format, that sequence numbers run
from 1 without gap, that each record carries the previous record's hash and
that its own hash matches its bytes; then that the trail reaches the head the
broker anchored in its metadata store (a shorter topic was truncated).

With --checkpoint FILE (checkpoints the broker signed and wrote outside its
data directory, one per line: its export directory's .latest.json or
.checkpoints.jsonl) and --checkpoint-key KEY.pem (from `strongbox-broker
checkpoint public-key`), it also checks each checkpoint's signature, and that
the broker is at least as new as every checkpoint: its trail holds the
checkpoint's audit record with the same hash (else its data directory was
rolled back to an older copy), every partition ends at or after the
checkpointed offset, and every key version is in the same or a later state.
The findings shown are against the newest checkpoint the broker fails. Partition ends need `describe` on the topics and the
registry `keys`; without them those checks are reported as not done. Segment
seals are checked offline only (strongbox-broker verify --checkpoint).

Exit status 0 when the trail is intact (and the broker matches the
checkpoint); 1 naming the first bad record, a checkpoint that does not
verify, or each way the broker is older than the checkpoint.

Examples:
  strongbox audit verify
  strongbox audit verify --checkpoint /srv/checkpoints/b1.latest.json \\
      --checkpoint-key checkpoint-key.pem")]
    Verify {
        /// A file of signed checkpoints, one per line.
        #[arg(long, value_name = "FILE", requires = "checkpoint_key")]
        checkpoint: Option<PathBuf>,
        /// The broker's checkpoint public key (PEM).
        #[arg(long, value_name = "KEY.pem", requires = "checkpoint")]
        checkpoint_key: Option<PathBuf>,
    },
}

pub(crate) async fn run(global: &GlobalArgs, command: AuditCommand) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let result = match command {
        AuditCommand::Tail { follow, from } => tail(&client, global.json, follow, from).await,
        AuditCommand::Verify {
            checkpoint: Some(file),
            checkpoint_key: Some(key),
        } => verify_checkpoint(&client, global.json, &file, &key).await,
        AuditCommand::Verify { .. } => verify(&client, global.json).await,
    };
    client.close().await;
    result
}

async fn tail(client: &Client, json: bool, follow: bool, from: Option<u64>) -> anyhow::Result<()> {
    // A record's offset is never above its sequence number minus one, so
    // starting there and skipping lower numbers finds `from` cheaply.
    let from_seq = from.unwrap_or(1);
    let mut reader = TrailReader::open(client, from_seq - 1, follow).await?;
    let mut out = Out::new();
    if !json && !out.line(&header())? {
        reader.close().await;
        return Ok(());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            next = reader.next() => next,
        };
        let record = match next {
            None => break Ok(()),
            Some(Err(e)) => break Err(anyhow::Error::from(e)),
            Some(Ok(record)) => record,
        };
        if header_seq(&record).is_some_and(|seq| seq < from_seq) {
            continue;
        }
        let line = if json {
            String::from_utf8_lossy(&record.value).into_owned()
        } else {
            line(&record)
        };
        match out.line(&line) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    reader.close().await;
    result
}

fn header_seq(record: &StoredRecord) -> Option<u64> {
    std::str::from_utf8(record.seq_header.as_deref()?)
        .ok()?
        .parse()
        .ok()
}

/// Widths of the fixed columns, so a followed trail stays aligned.
const SEQ_WIDTH: usize = 6;
const TIME_WIDTH: usize = 24;
const OUTCOME_WIDTH: usize = 7;
const ACTION_WIDTH: usize = 19;

fn header() -> String {
    format!(
        "{:>SEQ_WIDTH$}  {:<TIME_WIDTH$}  {:<OUTCOME_WIDTH$}  {:<ACTION_WIDTH$}  PRINCIPAL  RESOURCE  DETAILS",
        "SEQ", "TIME", "OUTCOME", "ACTION"
    )
}

/// One record as a line; a record that does not parse is shown as such.
fn line(stored: &StoredRecord) -> String {
    match AuditRecord::parse(&stored.value) {
        Ok(r) => format!(
            "{:>SEQ_WIDTH$}  {:<TIME_WIDTH$}  {:<OUTCOME_WIDTH$}  {:<ACTION_WIDTH$}  {}  {}  {}",
            r.seq,
            r.time,
            r.outcome,
            r.action,
            r.principal.as_deref().unwrap_or("-"),
            r.resource,
            Value::Object(r.details)
        ),
        Err(reason) => format!(
            "{:>SEQ_WIDTH$}  offset {}: not an audit record ({reason})",
            "?", stored.offset
        ),
    }
}

async fn verify(client: &Client, json: bool) -> anyhow::Result<()> {
    let show_progress = !json && std::io::stderr().is_terminal();
    let progress = |done: u64, end: u64| {
        if show_progress && done.is_multiple_of(1000) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\rverifying: {done}/{end} records");
            let _ = err.flush();
        }
    };
    let outcome = verify_trail(client, progress).await;
    if show_progress {
        eprint!("\r\x1b[K");
    }
    let mut out = Out::new();
    match outcome {
        Ok(summary) => {
            if json {
                out.json(&summary_json(&summary))?;
            } else {
                out.line(&summary.to_string())?;
            }
            Ok(())
        }
        Err(VerifyError::Chain(e)) => {
            if json {
                out.json(&json!({
                    "intact": false,
                    "error": e.to_string(),
                    "offset": e.offset(),
                }))?;
            }
            Err(anyhow!(e))
        }
        Err(e) => Err(e).context("audit verify"),
    }
}

async fn verify_checkpoint(
    client: &Client,
    json: bool,
    file: &Path,
    key_file: &Path,
) -> anyhow::Result<()> {
    let key_pem = std::fs::read_to_string(key_file)
        .with_context(|| format!("cannot read --checkpoint-key {}", key_file.display()))?;
    let key = CheckpointKey::from_pem(&key_pem)
        .with_context(|| format!("--checkpoint-key {}", key_file.display()))?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read --checkpoint {}", file.display()))?;
    let show_progress = !json && std::io::stderr().is_terminal();
    let progress = |done: u64, end: u64| {
        if show_progress && done.is_multiple_of(1000) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\rverifying: {done}/{end} records");
            let _ = err.flush();
        }
    };
    let outcome = checkpoint::check(client, &text, &key, progress).await;
    if show_progress {
        eprint!("\r\x1b[K");
    }
    let mut out = Out::new();
    let checked = match outcome {
        Ok(c) => c,
        Err(CheckpointError::Trail(VerifyError::Chain(e))) => {
            if json {
                out.json(&json!({"intact": false, "error": e.to_string(), "offset": e.offset()}))?;
            }
            return Err(anyhow!(e));
        }
        Err(e) => {
            if json {
                out.json(
                    &json!({"intact": false, "checkpoint_ok": false, "error": e.to_string()}),
                )?;
            }
            return Err(anyhow!("{}: {e}", file.display()));
        }
    };
    let ok = checked.is_ok();
    if json {
        let mut v = summary_json(&checked.trail);
        v["checkpoint_ok"] = json!(ok);
        v["checkpoints"] = json!(checked.checkpoints.len());
        v["checkpoints_failed"] = json!(checked.failed);
        v["checkpoint"] = json!({
            "broker_id": checked.against.broker_id,
            "time": checked.against.time,
            "audit_sequence": checked.against.audit.sequence,
            "key_id": checked.against.key_id,
        });
        v["findings"] = Value::Array(
            checked
                .findings
                .iter()
                .map(|f| {
                    json!({
                        "kind": f.kind,
                        "severity": if f.problem { "problem" } else { "notice" },
                        "message": f.message,
                    })
                })
                .collect(),
        );
        out.json(&v)?;
    } else {
        out.line(&checked.trail.to_string())?;
        for f in &checked.findings {
            let tag = if f.problem { "problem" } else { "notice" };
            out.line(&format!("{tag} [{}]: {}", f.kind, f.message))?;
        }
        if ok {
            out.line(&format!(
                "{} checkpoint(s), the newest of {} at {} (audit record {}, key {}): the broker \
                 is at least as new as each",
                checked.checkpoints.len(),
                checked.against.broker_id,
                checked.against.time,
                checked.against.audit.sequence,
                checked.against.key_id
            ))?;
        } else {
            out.line(&format!(
                "the broker fails {} of {} checkpoint(s); the findings are against the newest \
                 it fails ({} at {}, audit record {})",
                checked.failed,
                checked.checkpoints.len(),
                checked.against.broker_id,
                checked.against.time,
                checked.against.audit.sequence
            ))?;
        }
    }
    if ok {
        Ok(())
    } else {
        let problems: Vec<&str> = checked
            .findings
            .iter()
            .filter(|f| f.problem)
            .map(|f| f.kind)
            .collect();
        Err(anyhow!(
            "the broker's state is older than the checkpoint or lost what it saw ({})",
            problems.join(", ")
        ))
    }
}

fn summary_json(s: &ChainSummary) -> Value {
    json!({
        "intact": true,
        "records": s.records,
        "head_sequence": s.last_sequence,
        "head_hash": hex::encode(s.last_hash),
        "anchored_sequence": s.anchored.map(|h| h.sequence),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strongbox").chain(args.iter().copied()))
    }

    #[test]
    fn tail_and_verify_parse() {
        let cli = parse(&["audit", "tail", "--follow", "--from", "17", "--json"]).expect("parses");
        assert!(cli.global.json);
        let Command::Audit(AuditCommand::Tail { follow, from }) = cli.command else {
            panic!("audit tail")
        };
        assert!(follow);
        assert_eq!(from, Some(17));
        assert!(matches!(
            parse(&["audit", "verify"]).expect("parses").command,
            Command::Audit(AuditCommand::Verify {
                checkpoint: None,
                checkpoint_key: None
            })
        ));
        let cli = parse(&[
            "audit",
            "verify",
            "--checkpoint",
            "b1.latest.json",
            "--checkpoint-key",
            "k.pem",
        ])
        .expect("parses");
        let Command::Audit(AuditCommand::Verify {
            checkpoint,
            checkpoint_key,
        }) = cli.command
        else {
            panic!("audit verify")
        };
        assert_eq!(checkpoint, Some(PathBuf::from("b1.latest.json")));
        assert_eq!(checkpoint_key, Some(PathBuf::from("k.pem")));
        // Each needs the other.
        assert!(parse(&["audit", "verify", "--checkpoint", "f"]).is_err());
        assert!(parse(&["audit", "verify", "--checkpoint-key", "k"]).is_err());
        assert_eq!(
            parse(&["audit", "tail", "--from", "0"])
                .expect_err("sequences start at 1")
                .exit_code(),
            2
        );
    }

    #[test]
    fn lines_are_aligned() {
        let value = concat!(
            r#"{"seq":1,"time":"2026-01-31T09:00:00.123Z","principal":null,"#,
            r#""action":"auth.failure","resource":"listener","outcome":"failure","#,
            r#""details":{"stage":"certificate"},"#,
            r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#
        );
        let stored = StoredRecord {
            offset: 0,
            seq_header: Some(Bytes::from_static(b"1")),
            value: Bytes::from_static(value.as_bytes()),
        };
        assert_eq!(
            line(&stored),
            "     1  2026-01-31T09:00:00.123Z  failure  auth.failure         -  listener  {\"stage\":\"certificate\"}"
        );
        assert_eq!(
            header(),
            "   SEQ  TIME                      OUTCOME  ACTION               PRINCIPAL  RESOURCE  DETAILS"
        );
        let junk = StoredRecord {
            offset: 4,
            seq_header: None,
            value: Bytes::from_static(b"nope"),
        };
        assert!(line(&junk).starts_with("     ?  offset 4: not an audit record ("));
        assert_eq!(header_seq(&stored), Some(1));
        assert_eq!(header_seq(&junk), None);
    }
}
