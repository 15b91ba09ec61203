//! `strongbox e2e ...` (identities, owner keys, signed recipient entries;
//! no broker needed) and the end-to-end flags of `publish` and `subscribe`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use strongbox_client::e2e::{
    E2eOpener, E2eSealer, Identity, Keyring, OwnerKey, OwnerPublicKey, RecipientGrant,
    RecipientKem, RecipientSet, SignedRecipientEntry, UnreadablePolicy,
};
use strongbox_client::protocol::clock::now_ms;
use strongbox_client::{Client, ClientError, ValueSealer};

use crate::UsageError;
use crate::args::{self, millis};
use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::output::{key_values, time_ms};

/// `e2e ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum E2eCommand {
    /// Reader identities: the key pairs (X25519 or X-Wing) that recipients
    /// decrypt with.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Topic owner keys: Ed25519 keys that sign recipient entries.
    #[command(subcommand)]
    Owner(OwnerCommand),
    /// Signed recipient entries for a topic's recipient directory.
    #[command(subcommand)]
    Recipient(RecipientCommand),
}

/// `e2e identity ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum IdentityCommand {
    /// Create an identity file (a secret key, mode 0600) and print its
    /// public key for the topic owner.
    #[command(after_help = "\
--kem x25519 (the default) makes an X25519 key pair, which every client version
reads. --kem x-wing makes an X-Wing key pair (X25519 + ML-KEM-768): records
sealed to it stay confidential even against an adversary who records them now
and breaks X25519 later with a quantum computer. An X-Wing public key is 1216
bytes (printed as x-wing: and hex) and adds about 1.2 KB per record to each
record's header; producers need a client that knows X-Wing to seal to it.

Examples:
  strongbox e2e identity new bob.identity --recipient spiffe://strongbox.dev/bob
  strongbox e2e identity new bob-pq.identity --kem x-wing --recipient spiffe://strongbox.dev/bob")]
    New {
        /// The identity file to create (refuses to overwrite).
        file: PathBuf,
        /// The recipient id this identity reads as (usually its principal).
        #[arg(long, value_name = "ID")]
        recipient: Option<String>,
        /// The kind of key pair: x25519 or x-wing (hybrid post-quantum).
        #[arg(long, value_name = "KEM", default_value = "x25519", value_parser = kem)]
        kem: RecipientKem,
    },
    /// Print an identity's recipient id, public key and fingerprint.
    Show {
        /// The identity file.
        file: PathBuf,
    },
}

/// `e2e owner ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum OwnerCommand {
    /// Create an owner signing key (PKCS#8, mode 0600) and FILE.pub with its
    /// public key, which producers pin with --e2e-owner-key.
    #[command(after_help = "Example:\n  strongbox e2e owner new orders-owner.key")]
    New {
        /// The key file to create (refuses to overwrite).
        file: PathBuf,
    },
    /// Print an owner key's public key.
    Show {
        /// The key file.
        file: PathBuf,
    },
}

/// `e2e recipient ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum RecipientCommand {
    /// Sign a recipient entry; prints it as hex for `strongbox recipients put`.
    #[command(after_help = "\
Example:
  strongbox e2e recipient sign --owner-key orders-owner.key --topic demo.orders \\
      --recipient spiffe://strongbox.dev/bob --public-key 3f1c...e9 --expires 30d")]
    Sign(SignArgs),
    /// Decode a signed entry and, with --owner-key, verify it.
    Show {
        /// The entry, hex.
        entry: String,
        /// The owner public key file to verify against.
        #[arg(long, value_name = "PUBFILE")]
        owner_key: Option<PathBuf>,
        /// The topic it must be for (default: the topic it names).
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
}

/// `e2e recipient sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The owner signing key (PKCS#8).
    #[arg(long, value_name = "FILE")]
    pub(crate) owner_key: PathBuf,
    /// The topic the recipient may read.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) topic: String,
    /// The recipient id (usually its principal).
    #[arg(long, value_name = "ID")]
    pub(crate) recipient: String,
    /// The recipient's public key: an identity file, a file holding the
    /// key, or the key itself (64 hex digits for X25519, x-wing: and 2432
    /// hex digits for X-Wing).
    #[arg(long, value_name = "KEY|FILE")]
    pub(crate) public_key: String,
    /// Producers stop sealing to the recipient after this long (such as 30d).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub(crate) expires: Option<Duration>,
}

/// The end-to-end flags of `publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishE2eArgs {
    /// Seal values end to end under the active key of this keyring file.
    #[arg(long, value_name = "FILE", conflicts_with = "e2e_recipients")]
    pub(crate) e2e_keyring: Option<PathBuf>,
    /// The keyring key to seal under (default: the keyring's only key).
    #[arg(long, value_name = "ID", requires = "e2e_keyring")]
    pub(crate) e2e_key_id: Option<String>,
    /// Seal values end to end to the recipients in this topic's recipient
    /// directory (the topic published to), verified with --e2e-owner-key.
    #[arg(long, value_name = "TOPIC", requires = "e2e_owner_key")]
    pub(crate) e2e_recipients: Option<String>,
    /// The topic owner's public key file; recipient entries not signed by
    /// it are refused.
    #[arg(long, value_name = "PUBFILE", requires = "e2e_recipients")]
    pub(crate) e2e_owner_key: Option<PathBuf>,
}

/// The end-to-end flags of `subscribe`.
#[derive(Debug, Args)]
pub(crate) struct SubscribeE2eArgs {
    /// Open end-to-end sealed values with the keys of this keyring file.
    #[arg(long, value_name = "FILE")]
    pub(crate) e2e_keyring: Option<PathBuf>,
    /// Open values sealed to this identity file; repeat for more.
    #[arg(long = "e2e-identity", value_name = "FILE")]
    pub(crate) e2e_identities: Vec<PathBuf>,
    /// For a record that cannot be opened: fail (exit 1 naming its key),
    /// skip (counted, reported on exit) or ciphertext (print it as stored,
    /// with a strongbox-e2e-error header).
    #[arg(long, value_name = "POLICY", default_value = "fail", value_parser = policy)]
    pub(crate) e2e_on_missing_key: UnreadablePolicy,
}

fn policy(s: &str) -> Result<UnreadablePolicy, String> {
    s.parse()
}

fn kem(s: &str) -> Result<RecipientKem, String> {
    RecipientKem::parse(s).ok_or_else(|| format!("{s:?} is not a key kind (x25519 or x-wing)"))
}

/// The sealer the publish flags ask for, if any.
pub(crate) async fn sealer(
    client: &Client,
    topic: &str,
    args: &PublishE2eArgs,
) -> anyhow::Result<Option<Arc<dyn ValueSealer>>> {
    if let Some(file) = &args.e2e_keyring {
        let keyring = Keyring::load(file)?;
        let sealer = E2eSealer::keyring(keyring, args.e2e_key_id.as_deref())?;
        return Ok(Some(Arc::new(sealer)));
    }
    let (Some(directory), Some(owner)) = (&args.e2e_recipients, &args.e2e_owner_key) else {
        return Ok(None);
    };
    if directory != topic {
        return Err(UsageError(format!(
            "--e2e-recipients names {directory} but the records go to {topic}: recipient \
             entries are signed for one topic"
        ))
        .into());
    }
    let pinned = OwnerPublicKey::load(owner)?;
    let verified = RecipientSet::fetch(&client.admin(), directory, &pinned)
        .await
        .with_context(|| format!("cannot read the recipients of {directory}"))?;
    for refused in &verified.refused {
        eprintln!("warning: {refused}");
    }
    let set = verified.strict()?;
    let names: Vec<&str> = set.recipients().iter().map(|r| r.id.as_str()).collect();
    eprintln!(
        "sealing to {} recipient(s): {}",
        names.len(),
        names.join(", ")
    );
    Ok(Some(Arc::new(E2eSealer::recipients([set])?)))
}

/// The opener the subscribe flags ask for, if any.
pub(crate) fn opener(args: &SubscribeE2eArgs) -> anyhow::Result<Option<Arc<E2eOpener>>> {
    if args.e2e_keyring.is_none() && args.e2e_identities.is_empty() {
        return Ok(None);
    }
    let mut opener = E2eOpener::new(args.e2e_on_missing_key);
    if let Some(file) = &args.e2e_keyring {
        opener = opener.with_keyring(Keyring::load(file)?);
    }
    for file in &args.e2e_identities {
        opener = opener.with_identity(Identity::load(file)?);
    }
    Ok(Some(Arc::new(opener)))
}

/// True when `error` is a record the opener refused under `fail`, which
/// ends the command.
pub(crate) fn is_fatal(error: &ClientError, opener: Option<&Arc<E2eOpener>>) -> bool {
    opener.is_some_and(|o| o.policy() == UnreadablePolicy::Fail)
        && matches!(error, ClientError::Transform(_))
}

/// Reports records the opener did not open (on standard error).
pub(crate) fn report_unreadable(opener: Option<&Arc<E2eOpener>>) {
    let Some(opener) = opener else { return };
    let counts = opener.unreadable();
    if counts.is_empty() || opener.policy() == UnreadablePolicy::Fail {
        return;
    }
    let verb = match opener.policy() {
        UnreadablePolicy::Skip => "skipped",
        _ => "delivered as ciphertext",
    };
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{n} under {k}"))
        .collect();
    eprintln!(
        "{verb} {} record(s) this reader cannot open: {}",
        counts.values().sum::<u64>(),
        parts.join(", ")
    );
}

fn pub_path(file: &std::path::Path) -> PathBuf {
    let mut p: OsString = file.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

pub(crate) fn run(global: &GlobalArgs, command: E2eCommand) -> anyhow::Result<()> {
    let mut out = Out::new();
    match command {
        E2eCommand::Identity(IdentityCommand::New {
            file,
            recipient,
            kem,
        }) => {
            let identity = Identity::generate_kem(kem, recipient.as_deref())?;
            identity.create(&file)?;
            show_identity(&mut out, global.json, &identity)?;
        }
        E2eCommand::Identity(IdentityCommand::Show { file }) => {
            show_identity(&mut out, global.json, &Identity::load(&file)?)?;
        }
        E2eCommand::Owner(OwnerCommand::New { file }) => {
            let public_file = pub_path(&file);
            if public_file.exists() {
                anyhow::bail!(
                    "{} already exists (refusing to overwrite a key)",
                    public_file.display()
                );
            }
            let owner = OwnerKey::create(&file)?;
            owner.public_key().create(&public_file)?;
            show_owner(
                &mut out,
                global.json,
                &owner.public_key(),
                Some(&public_file),
            )?;
        }
        E2eCommand::Owner(OwnerCommand::Show { file }) => {
            show_owner(
                &mut out,
                global.json,
                &OwnerKey::load(&file)?.public_key(),
                None,
            )?;
        }
        E2eCommand::Recipient(RecipientCommand::Sign(args)) => {
            let owner = OwnerKey::load(&args.owner_key)?;
            let created_at = now_ms();
            let grant = RecipientGrant {
                topic: args.topic,
                recipient: args.recipient,
                public_key: super::access::read_public_key(&args.public_key)?,
                created_at,
                expires_at: args.expires.map(|d| {
                    created_at.saturating_add(i64::try_from(millis(d)).unwrap_or(i64::MAX))
                }),
            };
            let entry = grant.sign(&owner)?;
            if global.json {
                let mut v = grant_json(&grant);
                v["entry"] = json!(hex::encode(&entry));
                out.json(&v)?;
            } else {
                out.line(&hex::encode(&entry))?;
            }
        }
        E2eCommand::Recipient(RecipientCommand::Show {
            entry,
            owner_key,
            topic,
        }) => {
            let bytes = hex::decode(entry.trim()).context("the entry is not hex")?;
            let signed = SignedRecipientEntry::decode(Bytes::from(bytes))
                .map_err(|p| anyhow::anyhow!("{p}"))?;
            let status = match &owner_key {
                None => "not verified (give --owner-key)".to_owned(),
                Some(file) => {
                    let pinned = OwnerPublicKey::load(file)?;
                    let topic = topic.as_deref().unwrap_or(&signed.grant.topic);
                    match signed.verify(&pinned, topic, now_ms()) {
                        Ok(_) => "verified".to_owned(),
                        Err(p) => format!("refused: {p}"),
                    }
                }
            };
            if global.json {
                let mut v = grant_json(&signed.grant);
                v["signer"] = json!(signed.signer.to_string());
                v["status"] = json!(status);
                out.json(&v)?;
            } else {
                let g = &signed.grant;
                out.write(&key_values(&[
                    ("topic", g.topic.clone()),
                    ("recipient", g.recipient.clone()),
                    ("kem", g.public_key.kem().name().to_owned()),
                    ("public key", g.public_key.to_string()),
                    ("fingerprint", g.public_key.fingerprint_hex()),
                    ("created", time_ms(g.created_at)),
                    (
                        "expires",
                        g.expires_at.map_or_else(|| "never".into(), time_ms),
                    ),
                    ("signed by", signed.signer.to_string()),
                    ("status", status),
                ]))?;
            }
        }
    }
    Ok(())
}

fn show_identity(out: &mut Out, json: bool, identity: &Identity) -> anyhow::Result<()> {
    let pk = identity.public_key();
    if json {
        out.json(&json!({
            "recipient": identity.recipient(),
            "kem": pk.kem().name(),
            "public_key": pk.to_string(),
            "fingerprint": pk.fingerprint_hex(),
        }))?;
    } else {
        out.write(&key_values(&[
            ("recipient", identity.recipient().unwrap_or("-").to_owned()),
            ("kem", pk.kem().name().to_owned()),
            ("public key", pk.to_string()),
            ("fingerprint", pk.fingerprint_hex()),
        ]))?;
    }
    Ok(())
}

fn show_owner(
    out: &mut Out,
    json: bool,
    key: &OwnerPublicKey,
    public_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if json {
        out.json(&json!({
            "public_key": key.to_string(),
            "fingerprint": key.fingerprint_hex(),
            "public_key_file": public_file.map(|p| p.display().to_string()),
        }))?;
    } else {
        let mut pairs = vec![
            ("public key", key.to_string()),
            ("fingerprint", key.fingerprint_hex()),
        ];
        if let Some(p) = public_file {
            pairs.push(("written to", p.display().to_string()));
        }
        out.write(&key_values(&pairs))?;
    }
    Ok(())
}

pub(crate) fn grant_json(g: &RecipientGrant) -> Value {
    json!({
        "topic": g.topic,
        "recipient": g.recipient,
        "kem": g.public_key.kem().name(),
        "public_key": g.public_key.to_string(),
        "fingerprint": g.public_key.fingerprint_hex(),
        "created_at": g.created_at,
        "expires_at": g.expires_at,
    })
}
