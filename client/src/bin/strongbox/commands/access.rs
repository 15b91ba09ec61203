//! `strongbox access ...`: ask for access to a topic, and decide on what
//! others asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{Value, json};
use strongbox_client::e2e::{OwnerKey, RecipientGrant, RecipientKem, RecipientKey};
use strongbox_client::protocol::clock::now_ms;
use strongbox_client::protocol::model::{AccessRequestInfo, AccessState, Operations};

use crate::args::{self, millis};
use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::connect;
use crate::output::{Table, key_values, time_ms};

/// `access ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AccessCommand {
    /// Ask for operations on a topic; a principal holding `grant` on it
    /// approves or denies.
    #[command(after_help = "\
Operations that can be asked for: publish, subscribe, describe. With --public-key,
approval also adds the key to the topic's end-to-end recipients, signed by the
topic owner, so producers seal new records to it.

Examples:
  strongbox access request --topic payments.cards --op subscribe --reason 'INC-4711 on call'
  strongbox access request --topic health.notes --op subscribe --reason 'care team' \\
      --public-key bob.identity")]
    Request {
        /// The topic.
        #[arg(long, value_name = "TOPIC")]
        topic: String,
        /// Operations, comma-separated.
        #[arg(long = "op", value_name = "OPS", value_parser = args::operations)]
        operations: Operations,
        /// Why, for the approvers (required).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Your end-to-end public key: an identity file from `strongbox e2e
        /// identity new` (only its public key is read), a file holding the
        /// key, or the key itself (64 hex digits for X25519, x-wing: and
        /// 2432 hex digits for X-Wing).
        #[arg(long, value_name = "FILE|KEY")]
        public_key: Option<String>,
    },
    /// List your requests and those you may decide (on topics where you
    /// hold `grant`).
    #[command(after_help = "\
One line per request: its id and state (pending, approved, denied, expired), who
asked, for what, when, when the grant expires, the requester's REASON and, for
a decided request, the DECISION REASON the approver gave (required for a
denial). --json prints every field of each request.

Examples:
  strongbox access list --pending
  strongbox access list --json")]
    List {
        /// Only pending requests.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a request: the broker adds the ACL rule (expiring with
    /// --ttl) and, for a request with a public key, the recipient entry
    /// signed here with --owner-key.
    #[command(after_help = "\
Examples:
  strongbox access approve 7 --ttl 7d
  strongbox access approve 8 --ttl 30d --owner-key health-owner.key")]
    Approve {
        /// The request id.
        id: u64,
        /// How long the grant lasts (such as 7d, 12h); without it, until
        /// revoked.
        #[arg(long, value_name = "DURATION", value_parser = args::duration)]
        ttl: Option<Duration>,
        /// The topic owner's signing key (from `strongbox e2e owner new`),
        /// for a request that carries a public key.
        #[arg(long, value_name = "FILE")]
        owner_key: Option<PathBuf>,
    },
    /// Deny a request.
    #[command(
        after_help = "Example:\n  strongbox access deny 9 --reason 'use the aggregated topic instead'"
    )]
    Deny {
        /// The request id.
        id: u64,
        /// Why, for the requester (required).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

pub(crate) async fn run(global: &GlobalArgs, command: AccessCommand) -> anyhow::Result<()> {
    // Read local files before connecting.
    let (public_key, owner) = match &command {
        AccessCommand::Request {
            public_key: Some(arg),
            ..
        } => (Some(read_public_key(arg)?), None),
        AccessCommand::Approve {
            owner_key: Some(file),
            ..
        } => (None, Some(OwnerKey::load(file)?)),
        _ => (None, None),
    };
    let client = connect::connect(global).await?;
    let admin = client.admin();
    let result = async {
        let mut out = Out::new();
        let decided = match command {
            AccessCommand::Request {
                topic,
                operations,
                reason,
                ..
            } => {
                let key = public_key.map(|k| Bytes::copy_from_slice(k.as_bytes()));
                admin.access_request(topic, operations, reason, key).await?
            }
            AccessCommand::List { pending } => {
                let list = admin.access_list(pending).await?;
                if global.json {
                    out.json(&Value::Array(list.iter().map(request_json).collect()))?;
                } else {
                    out.write(&request_table(&list))?;
                }
                return anyhow::Ok(());
            }
            AccessCommand::Approve { id, ttl, .. } => {
                let entry = match &owner {
                    Some(owner) => {
                        let visible = admin.access_list(false).await?;
                        match visible.iter().find(|r| r.id == id) {
                            Some(req) => sign_entry(req, owner, ttl)?,
                            // Not visible: let the broker say why.
                            None => None,
                        }
                    }
                    None => None,
                };
                admin.access_approve(id, ttl, entry).await?
            }
            AccessCommand::Deny { id, reason } => admin.access_deny(id, reason).await?,
        };
        if global.json {
            out.json(&request_json(&decided))?;
        } else {
            out.write(&request_text(&decided))?;
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    result
}

/// The recipient entry for `req`'s public key, signed by the topic owner,
/// expiring with the grant; `None` when the request has no key.
fn sign_entry(
    req: &AccessRequestInfo,
    owner: &OwnerKey,
    ttl: Option<Duration>,
) -> anyhow::Result<Option<Bytes>> {
    let Some(key) = &req.public_key else {
        eprintln!(
            "note: request {} carries no public key; --owner-key is not used",
            req.id
        );
        return Ok(None);
    };
    let key =
        RecipientKey::from_raw(key).map_err(|e| anyhow::anyhow!("request {}: {e}", req.id))?;
    let created_at = now_ms();
    let grant = RecipientGrant {
        topic: req.topic.clone(),
        recipient: req.requester.clone(),
        public_key: key,
        created_at,
        expires_at: ttl
            .map(|d| created_at.saturating_add(i64::try_from(millis(d)).unwrap_or(i64::MAX))),
    };
    Ok(Some(grant.sign(owner)?))
}

/// Only the public half of an identity file is read.
#[derive(Deserialize)]
struct IdentityPublic {
    public_key: String,
}

/// `--public-key`: an identity file, a file holding a public key's text
/// form, or that text itself (64 hex digits for X25519, `x-wing:` and 2432
/// hex digits for X-Wing).
pub(crate) fn read_public_key(arg: &str) -> anyhow::Result<RecipientKey> {
    let path = Path::new(arg);
    if !path.exists() {
        return RecipientKey::from_hex(arg).map_err(|e| {
            anyhow::anyhow!(
                "--public-key: no such file, and not a public key ({e}); give an identity file, \
                 64 hex digits (X25519) or x-wing: and 2432 hex digits"
            )
        });
    }
    // An identity file also holds the secret key: keep the bytes only as
    // long as it takes to find the public key.
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a text file", path.display()))?;
    let hex = match serde_json::from_str::<IdentityPublic>(text) {
        Ok(identity) => identity.public_key,
        Err(_) => text.trim().to_owned(),
    };
    RecipientKey::from_hex(&hex).map_err(|_| {
        anyhow::anyhow!(
            "{}: expected an identity file from `strongbox e2e identity new` or a public key \
             (64 hex digits, or x-wing: and 2432 hex digits)",
            path.display()
        )
    })
}

fn key_text(r: &AccessRequestInfo) -> String {
    r.public_key.as_deref().map_or_else(
        || "-".into(),
        |k| match RecipientKey::from_raw(k) {
            Ok(k) if k.kem() == RecipientKem::X25519 => k.fingerprint_hex(),
            Ok(k) => format!("{} ({})", k.fingerprint_hex(), k.kem()),
            Err(_) => format!("{} bytes", k.len()),
        },
    )
}

fn request_table(list: &[AccessRequestInfo]) -> String {
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "REQUESTER",
        "TOPIC",
        "OPERATIONS",
        "E2E KEY",
        "CREATED",
        "EXPIRES",
        "REASON",
        "DECISION REASON",
    ]);
    for r in list {
        table.row(vec![
            r.id.to_string(),
            r.state.name().to_owned(),
            r.requester.clone(),
            r.topic.clone(),
            r.operations.to_string(),
            key_text(r),
            time_ms(r.created_at),
            r.expires_at.map_or_else(|| "-".into(), time_ms),
            crate::output::escaped(r.reason.as_bytes()),
            r.decision_reason
                .as_deref()
                .map_or_else(|| "-".into(), |why| crate::output::escaped(why.as_bytes())),
        ]);
    }
    table.render()
}

fn request_text(r: &AccessRequestInfo) -> String {
    let mut pairs = vec![
        ("id", r.id.to_string()),
        ("state", r.state.name().to_owned()),
        ("requester", r.requester.clone()),
        ("topic", r.topic.clone()),
        ("operations", r.operations.to_string()),
        ("reason", crate::output::escaped(r.reason.as_bytes())),
        ("e2e key", key_text(r)),
        ("created", time_ms(r.created_at)),
    ];
    if let Some(by) = &r.decided_by {
        pairs.push(("decided by", by.clone()));
    }
    if let Some(at) = r.decided_at {
        pairs.push(("decided", time_ms(at)));
    }
    if let Some(why) = &r.decision_reason {
        pairs.push(("decision reason", crate::output::escaped(why.as_bytes())));
    }
    if r.decided_at.is_some() && r.state != AccessState::Denied {
        pairs.push((
            "expires",
            r.expires_at.map_or_else(|| "never".into(), time_ms),
        ));
    }
    key_values(&pairs)
}

fn request_json(r: &AccessRequestInfo) -> Value {
    json!({
        "id": r.id,
        "state": r.state.name(),
        "requester": r.requester,
        "topic": r.topic,
        "operations": r.operations.names(),
        "reason": r.reason,
        "public_key": r.public_key.as_deref().map(hex::encode),
        "public_key_fingerprint": r.public_key.as_ref().map(|_| key_text(r)),
        "created_at": r.created_at,
        "decided_by": r.decided_by,
        "decision_reason": r.decision_reason,
        "decided_at": r.decided_at,
        "expires_at": r.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(state: AccessState) -> AccessRequestInfo {
        AccessRequestInfo {
            id: 7,
            requester: "spiffe://strongbox.dev/bob".into(),
            topic: "payments.cards".into(),
            operations: Operations::SUBSCRIBE,
            reason: "on call\nINC-1".into(),
            public_key: Some(Bytes::from_static(&[9; 32])),
            state,
            created_at: 1_769_850_000_000,
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn listing_and_json() {
        let r = request(AccessState::Pending);
        let table = request_table(std::slice::from_ref(&r));
        assert!(table.starts_with("ID  STATE"), "{table}");
        assert!(
            table.contains("7   pending  spiffe://strongbox.dev/bob"),
            "{table}"
        );
        assert!(table.contains("on call\\nINC-1"), "escaped reason: {table}");
        let v = request_json(&r);
        assert_eq!(v["state"], "pending");
        assert_eq!(v["operations"], json!(["subscribe"]));
        assert_eq!(v["public_key"], "09".repeat(32));
        assert_eq!(
            v["public_key_fingerprint"],
            RecipientKey::from_bytes([9; 32]).fingerprint_hex()
        );
    }

    #[test]
    fn the_listing_shows_why_a_request_was_denied() {
        let mut denied = request(AccessState::Denied);
        denied.decided_by = Some("spiffe://strongbox.dev/admin".into());
        denied.decision_reason = Some("use ledger.summary\ninstead".into());
        denied.decided_at = Some(1_769_850_100_000);
        let pending = request(AccessState::Pending);
        let table = request_table(&[denied, pending]);
        let header = table.lines().next().expect("header");
        assert!(
            header
                .trim_end()
                .ends_with("REASON          DECISION REASON"),
            "{table}"
        );
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert!(
            rows[0].ends_with("use ledger.summary\\ninstead"),
            "the denial's reason, escaped: {table}"
        );
        assert!(rows[1].trim_end().ends_with('-'), "{table}");
    }

    #[test]
    fn public_key_forms() {
        let dir = tempfile::tempdir().expect("tmp");
        let hex = "ab".repeat(32);
        assert_eq!(
            read_public_key(&hex).expect("hex").to_string(),
            hex,
            "the digits themselves"
        );
        let file = dir.path().join("bob.pub");
        std::fs::write(&file, format!("{hex}\n")).expect("write");
        assert_eq!(
            read_public_key(file.to_str().expect("utf-8"))
                .expect("file")
                .to_string(),
            hex
        );
        let identity = strongbox_client::e2e::Identity::generate(Some("bob")).expect("identity");
        let id_file = dir.path().join("bob.identity");
        identity.create(&id_file).expect("create");
        assert_eq!(
            read_public_key(id_file.to_str().expect("utf-8")).expect("identity"),
            identity.public_key()
        );
        assert!(read_public_key("nope").is_err());
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello").expect("write");
        assert!(read_public_key(junk.to_str().expect("utf-8")).is_err());
    }
}
