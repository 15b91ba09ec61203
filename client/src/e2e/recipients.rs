//! The recipients a producer seals to: verified from a topic's recipient
//! directory on the broker, or given directly.

use strongbox_protocol::clock::now_ms;

use super::error::EntryProblem;
use super::{E2eError, OwnerPublicKey, RecipientKey, verify_entry};
use crate::admin::Admin;
use crate::error::ClientError;
use crate::protocol::model::RecipientEntry;

/// One recipient a producer seals data keys to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient id, written into every record header.
    pub id: String,
    /// Its X25519 public key.
    pub public_key: RecipientKey,
    /// Milliseconds since the Unix epoch after which the producer stops
    /// sealing to it (a new data key is made without it).
    pub expires_at: Option<i64>,
}

/// The recipients of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientSet {
    topic: String,
    recipients: Vec<Recipient>,
}

/// The outcome of checking a topic's recipient directory.
#[derive(Debug, Clone)]
pub struct VerifiedRecipients {
    /// The entries that verified.
    pub set: RecipientSet,
    /// The entries refused, each an [`E2eError::Entry`] naming it.
    pub refused: Vec<E2eError>,
}

impl VerifiedRecipients {
    /// The set, provided nothing but expired entries was refused and at
    /// least one recipient is left. An entry that is unsigned, signed by
    /// another key, for another topic or malformed means the directory
    /// was tampered with or misconfigured, so a producer stops rather than
    /// seal to a partial list.
    ///
    /// # Errors
    ///
    /// The first such refusal, or [`E2eError::NoRecipients`].
    pub fn strict(self) -> Result<RecipientSet, E2eError> {
        for e in &self.refused {
            match e {
                E2eError::Entry {
                    problem: EntryProblem::Expired { .. },
                    recipient,
                } => tracing::warn!(
                    topic = %self.set.topic,
                    recipient = %recipient,
                    "not sealing to an expired recipient entry"
                ),
                other => return Err(other.clone()),
            }
        }
        if self.set.recipients.is_empty() {
            return Err(E2eError::NoRecipients {
                topic: self.set.topic,
                detail: if self.refused.is_empty() {
                    "the topic's recipient directory is empty".into()
                } else {
                    "every entry has expired".into()
                },
            });
        }
        Ok(self.set)
    }
}

impl RecipientSet {
    /// Recipients whose public keys the caller already trusts (obtained
    /// out of band, not from the broker's directory). No signature is
    /// checked.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a recipient id outside 1..=255 bytes or a
    /// repeated id.
    pub fn from_trusted_keys(
        topic: impl Into<String>,
        recipients: Vec<Recipient>,
    ) -> Result<Self, E2eError> {
        let mut recipients = recipients;
        recipients.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in recipients.windows(2) {
            if let [a, b] = pair
                && a.id == b.id
            {
                return Err(E2eError::invalid(format!(
                    "recipient {} is listed twice",
                    a.id
                )));
            }
        }
        for r in &recipients {
            super::header::check_short_name("recipient id", &r.id)?;
        }
        Ok(Self {
            topic: topic.into(),
            recipients,
        })
    }

    /// Checks a topic's directory entries against the pinned owner key at
    /// `now_ms`. Of several valid entries for one recipient the newest
    /// (by `created_at`) wins.
    pub fn verify(
        topic: &str,
        pinned: &OwnerPublicKey,
        entries: &[RecipientEntry],
        now_ms: i64,
    ) -> VerifiedRecipients {
        let mut accepted: Vec<(i64, Recipient)> = Vec::new();
        let mut refused = Vec::new();
        for entry in entries {
            match verify_entry(entry, pinned, topic, now_ms) {
                Ok(grant) => {
                    let r = Recipient {
                        id: grant.recipient,
                        public_key: grant.public_key,
                        expires_at: grant.expires_at,
                    };
                    match accepted.iter_mut().find(|(_, a)| a.id == r.id) {
                        Some(slot) if slot.0 < grant.created_at => *slot = (grant.created_at, r),
                        Some(_) => {}
                        None => accepted.push((grant.created_at, r)),
                    }
                }
                Err(e) => refused.push(e),
            }
        }
        let mut recipients: Vec<Recipient> = accepted.into_iter().map(|(_, r)| r).collect();
        recipients.sort_by(|a, b| a.id.cmp(&b.id));
        VerifiedRecipients {
            set: Self {
                topic: topic.to_owned(),
                recipients,
            },
            refused,
        }
    }

    /// Fetches `topic`'s recipient directory from the broker and checks it
    /// against the pinned owner key.
    ///
    /// # Errors
    ///
    /// The broker's refusal or a connection error. Refused entries are in
    /// the result; see [`VerifiedRecipients::strict`].
    pub async fn fetch(
        admin: &Admin,
        topic: &str,
        pinned: &OwnerPublicKey,
    ) -> Result<VerifiedRecipients, ClientError> {
        let entries = admin.recipients_list(topic).await?;
        Ok(Self::verify(topic, pinned, &entries, now_ms()))
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The recipients, by id.
    pub fn recipients(&self) -> &[Recipient] {
        &self.recipients
    }

    /// Recipients not expired at `now_ms`.
    pub(crate) fn current(&self, now_ms: i64) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(move |r| r.expires_at.is_none_or(|at| at > now_ms))
    }
}
