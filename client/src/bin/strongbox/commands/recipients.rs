//! `strongbox recipients ...`: a topic's end-to-end recipient directory on
//! the broker.

use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Subcommand;
use serde_json::{Value, json};
use strongbox_client::e2e::{OwnerPublicKey, SignedRecipientEntry, verify_entry};
use strongbox_client::protocol::clock::now_ms;
use strongbox_client::protocol::model::RecipientEntry;

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::commands::e2e::grant_json;
use crate::connect;
use crate::output::{Table, time_ms};

/// `recipients ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum RecipientsCommand {
    /// List a topic's recipients; with --owner-key, verify each entry.
    #[command(
        after_help = "Example:\n  strongbox recipients list demo.orders --owner-key orders-owner.key.pub"
    )]
    List {
        /// The topic.
        topic: String,
        /// The owner public key file to verify the entries against.
        #[arg(long, value_name = "PUBFILE")]
        owner_key: Option<PathBuf>,
    },
    /// Add or replace a recipient with an entry from `e2e recipient sign`.
    #[command(after_help = "Example:\n  strongbox recipients put demo.orders 53425245010020...")]
    Put {
        /// The topic.
        topic: String,
        /// The signed entry, hex.
        entry: String,
    },
    /// Remove a recipient.
    Remove {
        /// The topic.
        topic: String,
        /// The recipient id.
        recipient: String,
    },
}

pub(crate) async fn run(global: &GlobalArgs, command: RecipientsCommand) -> anyhow::Result<()> {
    // Check what can be checked before connecting.
    let (topic, put, pinned) = match &command {
        RecipientsCommand::Put { topic, entry } => {
            let bytes = hex::decode(entry.trim()).context("the entry is not hex")?;
            let signed = SignedRecipientEntry::decode(Bytes::from(bytes))
                .map_err(|p| anyhow::anyhow!("{p}"))?;
            if signed.grant.topic != *topic {
                anyhow::bail!("the entry is for topic {}, not {topic}", signed.grant.topic);
            }
            let entry = RecipientEntry {
                recipient: signed.grant.recipient.clone(),
                entry: signed.bytes().clone(),
            };
            (topic.clone(), Some(entry), None)
        }
        RecipientsCommand::List { topic, owner_key } => {
            let pinned = owner_key.as_ref().map(OwnerPublicKey::load).transpose()?;
            (topic.clone(), None, pinned)
        }
        RecipientsCommand::Remove { topic, .. } => (topic.clone(), None, None),
    };
    let client = connect::connect(global).await?;
    let admin = client.admin();
    let result = async {
        let entries = match (command, put) {
            (RecipientsCommand::Put { .. }, Some(entry)) => {
                admin.recipients_put(topic.clone(), entry).await?
            }
            (RecipientsCommand::Remove { recipient, .. }, _) => {
                admin.recipients_remove(topic.clone(), recipient).await?
            }
            _ => admin.recipients_list(topic.clone()).await?,
        };
        let mut out = Out::new();
        if global.json {
            out.json(&Value::Array(
                entries
                    .iter()
                    .map(|e| entry_json(e, &topic, pinned.as_ref()))
                    .collect(),
            ))?;
        } else {
            out.write(&entry_table(&entries, &topic, pinned.as_ref()))?;
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    result
}

/// What a listing says about an entry.
fn status(entry: &RecipientEntry, topic: &str, pinned: Option<&OwnerPublicKey>) -> String {
    match pinned {
        None => "not verified".into(),
        Some(key) => match verify_entry(entry, key, topic, now_ms()) {
            Ok(_) => "verified".into(),
            Err(e) => format!("refused: {e}"),
        },
    }
}

fn entry_table(entries: &[RecipientEntry], topic: &str, pinned: Option<&OwnerPublicKey>) -> String {
    let mut table = Table::new(&["RECIPIENT", "KEY", "CREATED", "EXPIRES", "STATUS"]);
    for e in entries {
        let (key, created, expires) = match SignedRecipientEntry::decode(e.entry.clone()) {
            Ok(s) => (
                s.grant.public_key.fingerprint_hex(),
                time_ms(s.grant.created_at),
                s.grant.expires_at.map_or_else(|| "never".into(), time_ms),
            ),
            Err(_) => ("-".into(), "-".into(), "-".into()),
        };
        table.row(vec![
            e.recipient.clone(),
            key,
            created,
            expires,
            status(e, topic, pinned),
        ]);
    }
    table.render()
}

fn entry_json(e: &RecipientEntry, topic: &str, pinned: Option<&OwnerPublicKey>) -> Value {
    let mut v = match SignedRecipientEntry::decode(e.entry.clone()) {
        Ok(s) => {
            let mut v = grant_json(&s.grant);
            v["signer"] = json!(s.signer.to_string());
            v
        }
        Err(_) => json!({}),
    };
    v["recipient"] = json!(e.recipient);
    v["entry"] = json!(hex::encode(&e.entry));
    v["status"] = json!(status(e, topic, pinned));
    v
}
