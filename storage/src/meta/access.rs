//! ACL rules, access requests and the audit head.

use bytes::Bytes;
use redb::TableHandle;
use serde::{Deserialize, Serialize};
use strongbox_protocol::model::{AccessRequestInfo, AccessState, AclEffect, AclRule, Operations};

use super::codec::{corrupt, decode, encode, hex_array, opt_hex_bytes};
use super::tables::{ACCESS_REQUESTS, ACLS, SINGLETONS};
use super::{Batch, MetaError, MetaView};

/// An ACL rule as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// The rule.
    pub rule: AclRule,
    /// The access request whose approval created it, if any (so expiry or
    /// revocation of the grant removes exactly its rules).
    pub request_id: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// The newest record of the audit hash chain, anchored here so that a
/// truncated audit topic is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sequence number of the newest audit record.
    pub sequence: u64,
    /// Its SHA-256 chain hash.
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
}

const AUDIT_HEAD: &str = "audit_head";

#[derive(Serialize, Deserialize)]
struct AclJson {
    expires_at: Option<i64>,
    request_id: Option<u64>,
    created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct AccessJson {
    requester: String,
    topic: String,
    operations: u16,
    reason: String,
    #[serde(with = "opt_hex_bytes")]
    public_key: Option<Vec<u8>>,
    state: AccessStateJson,
    created_at: i64,
    decided_by: Option<String>,
    decision_reason: Option<String>,
    decided_at: Option<i64>,
    expires_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum AccessStateJson {
    Pending,
    Approved,
    Denied,
    Expired,
}

fn effect_code(e: AclEffect) -> u8 {
    match e {
        AclEffect::Allow => 0,
        AclEffect::Deny => 1,
    }
}

fn acl_key(rule: &AclRule) -> (&str, &str, u16, u8) {
    (
        rule.principal.as_str(),
        rule.topic.as_str(),
        rule.operations.0,
        effect_code(rule.effect),
    )
}

fn access_to_json(r: &AccessRequestInfo) -> AccessJson {
    AccessJson {
        requester: r.requester.clone(),
        topic: r.topic.clone(),
        operations: r.operations.0,
        reason: r.reason.clone(),
        public_key: r.public_key.as_ref().map(|b| b.to_vec()),
        state: match r.state {
            AccessState::Pending => AccessStateJson::Pending,
            AccessState::Approved => AccessStateJson::Approved,
            AccessState::Denied => AccessStateJson::Denied,
            AccessState::Expired => AccessStateJson::Expired,
        },
        created_at: r.created_at,
        decided_by: r.decided_by.clone(),
        decision_reason: r.decision_reason.clone(),
        decided_at: r.decided_at,
        expires_at: r.expires_at,
    }
}

fn access_from_json(id: u64, j: AccessJson) -> Result<AccessRequestInfo, MetaError> {
    if j.operations & !Operations::VALID != 0 {
        return Err(corrupt(
            ACCESS_REQUESTS.name(),
            id,
            "unknown operation bits",
        ));
    }
    Ok(AccessRequestInfo {
        id,
        requester: j.requester,
        topic: j.topic,
        operations: Operations(j.operations),
        reason: j.reason,
        public_key: j.public_key.map(Bytes::from),
        state: match j.state {
            AccessStateJson::Pending => AccessState::Pending,
            AccessStateJson::Approved => AccessState::Approved,
            AccessStateJson::Denied => AccessState::Denied,
            AccessStateJson::Expired => AccessState::Expired,
        },
        created_at: j.created_at,
        decided_by: j.decided_by,
        decision_reason: j.decision_reason,
        decided_at: j.decided_at,
        expires_at: j.expires_at,
    })
}

impl MetaView<'_> {
    /// Every ACL rule, in key order (principal, topic, operations, effect).
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn acls(&self) -> Result<Vec<AclEntry>, MetaError> {
        let mut out = Vec::new();
        self.scan(ACLS, None, |(principal, topic, ops, effect), bytes| {
            let key = format_args!("({principal}, {topic}, {ops:#x}, {effect})");
            let j: AclJson = decode(ACLS.name(), key, bytes)?;
            if ops & !Operations::VALID != 0 {
                return Err(corrupt(ACLS.name(), key, "unknown operation bits"));
            }
            let effect = match effect {
                0 => AclEffect::Allow,
                1 => AclEffect::Deny,
                _ => return Err(corrupt(ACLS.name(), key, "unknown effect")),
            };
            out.push(AclEntry {
                rule: AclRule {
                    principal: principal.to_owned(),
                    topic: topic.to_owned(),
                    operations: Operations(ops),
                    effect,
                    expires_at: j.expires_at,
                },
                request_id: j.request_id,
                created_at: j.created_at,
            });
            Ok(true)
        })?;
        Ok(out)
    }

    /// The access request `id`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn access_request(&self, id: u64) -> Result<Option<AccessRequestInfo>, MetaError> {
        match self.get_with(ACCESS_REQUESTS, id, <[u8]>::to_vec)? {
            Some(b) => access_from_json(id, decode(ACCESS_REQUESTS.name(), id, &b)?).map(Some),
            None => Ok(None),
        }
    }

    /// Every access request, oldest first.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn access_requests(&self) -> Result<Vec<AccessRequestInfo>, MetaError> {
        let mut out = Vec::new();
        self.scan(ACCESS_REQUESTS, None, |id, bytes| {
            out.push(access_from_json(
                id,
                decode(ACCESS_REQUESTS.name(), id, bytes)?,
            )?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The anchored audit head, if any record was written.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn audit_head(&self) -> Result<Option<AuditHead>, MetaError> {
        self.get_with(SINGLETONS, AUDIT_HEAD, <[u8]>::to_vec)?
            .map(|b| decode(SINGLETONS.name(), AUDIT_HEAD, &b))
            .transpose()
    }
}

impl Batch<'_> {
    /// Adds an ACL rule, or replaces the one with the same principal, topic,
    /// operations and effect (updating its expiry); returns true when it
    /// replaced one.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_acl(&mut self, entry: &AclEntry) -> Result<bool, MetaError> {
        let value = encode(
            "acl rule",
            &AclJson {
                expires_at: entry.rule.expires_at,
                request_id: entry.request_id,
                created_at: entry.created_at,
            },
        )?;
        self.put(ACLS, acl_key(&entry.rule), value.as_slice())
    }

    /// Removes the rule with the same principal, topic, operations and
    /// effect as `rule` (its expiry is not compared); returns true when it
    /// was there.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn remove_acl(&mut self, rule: &AclRule) -> Result<bool, MetaError> {
        self.delete(ACLS, acl_key(rule))
    }

    /// Removes every rule created by the access request `request_id`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn remove_acls_of_request(&mut self, request_id: u64) -> Result<Vec<AclRule>, MetaError> {
        let gone: Vec<AclRule> = self
            .acls()?
            .into_iter()
            .filter(|e| e.request_id == Some(request_id))
            .map(|e| e.rule)
            .collect();
        for rule in &gone {
            self.delete(ACLS, acl_key(rule))?;
        }
        Ok(gone)
    }

    /// Removes every rule whose expiry is at or before `now_ms`; returns them.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn remove_expired_acls(&mut self, now_ms: i64) -> Result<Vec<AclEntry>, MetaError> {
        let gone: Vec<AclEntry> = self
            .acls()?
            .into_iter()
            .filter(|e| e.rule.expires_at.is_some_and(|t| t <= now_ms))
            .collect();
        for e in &gone {
            self.delete(ACLS, acl_key(&e.rule))?;
        }
        Ok(gone)
    }

    /// Stores a new access request under a fresh id (ids only grow and are
    /// never reused; `request.id` is ignored); returns the id.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn create_access_request(&mut self, request: &AccessRequestInfo) -> Result<u64, MetaError> {
        let id = self.next_id("access_request_id")?;
        let value = encode("access request", &access_to_json(request))?;
        self.put(ACCESS_REQUESTS, id, value.as_slice())?;
        Ok(id)
    }

    /// Replaces the stored access request `request.id` (a decision, an
    /// expiry).
    ///
    /// # Errors
    ///
    /// [`MetaError::Conflict`] when there is no such request;
    /// [`MetaError::Db`].
    pub fn update_access_request(&mut self, request: &AccessRequestInfo) -> Result<(), MetaError> {
        if self
            .get_with(ACCESS_REQUESTS, request.id, |_| ())?
            .is_none()
        {
            return Err(MetaError::Conflict(format!(
                "access request {} does not exist",
                request.id
            )));
        }
        let value = encode("access request", &access_to_json(request))?;
        self.put(ACCESS_REQUESTS, request.id, value.as_slice())?;
        Ok(())
    }

    /// Moves the audit head forward.
    ///
    /// # Errors
    ///
    /// [`MetaError::Conflict`] when `head.sequence` is not greater than the
    /// stored head's (the chain never goes back); [`MetaError::Corrupt`];
    /// [`MetaError::Db`].
    pub fn advance_audit_head(&mut self, head: &AuditHead) -> Result<(), MetaError> {
        if let Some(old) = self.audit_head()?
            && head.sequence <= old.sequence
        {
            return Err(MetaError::Conflict(format!(
                "audit head cannot move from sequence {} back to {}",
                old.sequence, head.sequence
            )));
        }
        let value = encode("audit head", head)?;
        self.put(SINGLETONS, AUDIT_HEAD, value.as_slice())?;
        Ok(())
    }
}
