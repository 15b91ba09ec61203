//! State of long-running background jobs, kept in the `singletons.v1`
//! table so a job survives a crash and resumes at the next start.
//!
//! Today there is one: the rewrap job (`rewrap_job`), which re-wraps data
//! key envelopes under a scope's active KEK version.

use redb::TableHandle;
use serde::{Deserialize, Serialize};

use super::codec::{corrupt, decode, encode};
use super::tables::SINGLETONS;
use super::{Batch, MetaError, MetaView};
use crate::keys::{KekId, KekScope};

const REWRAP_JOB: &str = "rewrap_job";

/// The rewrap job: what it rewraps and how far it got. Stored as JSON:
/// `{scope, from_version, principal, started_at, updated_at, finished_at,
/// done, failed}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapJobState {
    /// The KEK scope whose envelopes are rewrapped.
    pub scope: KekScope,
    /// Only envelopes under this version; every older live version when
    /// `None`.
    pub from_version: Option<u32>,
    /// Who started it (a principal, or the broker itself).
    pub principal: String,
    /// When it started, ms since the Unix epoch.
    pub started_at: i64,
    /// When this state was written.
    pub updated_at: i64,
    /// When it finished; `None` while it still has work (a broker that
    /// starts with such a job resumes it).
    pub finished_at: Option<i64>,
    /// Envelopes rewrapped so far. Counted by the key registry in the
    /// transaction that records each move (see
    /// [`Batch::assign_segment_kek`]), so it is exact across a crash and
    /// never goes back.
    pub done: u64,
    /// Envelopes that could not be rewrapped in the last run.
    pub failed: u64,
}

#[derive(Serialize, Deserialize)]
struct RewrapJobJson {
    scope: String,
    from_version: Option<u32>,
    principal: String,
    started_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    done: u64,
    failed: u64,
}

impl MetaView<'_> {
    /// The rewrap job, running or last finished, if there ever was one.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn rewrap_job(&self) -> Result<Option<RewrapJobState>, MetaError> {
        let Some(bytes) = self.get_with(SINGLETONS, REWRAP_JOB, <[u8]>::to_vec)? else {
            return Ok(None);
        };
        let j: RewrapJobJson = decode(SINGLETONS.name(), REWRAP_JOB, &bytes)?;
        let scope = KekScope::parse(&j.scope)
            .ok_or_else(|| corrupt(SINGLETONS.name(), REWRAP_JOB, "unknown scope label"))?;
        Ok(Some(RewrapJobState {
            scope,
            from_version: j.from_version,
            principal: j.principal,
            started_at: j.started_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
            done: j.done,
            failed: j.failed,
        }))
    }
}

impl Batch<'_> {
    /// Stores the rewrap job's state. A new job (another scope or start
    /// time) replaces the old one; for the same job the stored `done` is
    /// kept when it is larger (the registry counts moves as they commit, and
    /// the job's own copy may be older).
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn put_rewrap_job(&mut self, job: &RewrapJobState) -> Result<(), MetaError> {
        let mut job = job.clone();
        if let Some(stored) = self.rewrap_job()?
            && stored.scope == job.scope
            && stored.started_at == job.started_at
        {
            job.done = job.done.max(stored.done);
        }
        let value = encode(
            "rewrap job",
            &RewrapJobJson {
                scope: job.scope.label(),
                from_version: job.from_version,
                principal: job.principal.clone(),
                started_at: job.started_at,
                updated_at: job.updated_at,
                finished_at: job.finished_at,
                done: job.done,
                failed: job.failed,
            },
        )?;
        self.put(SINGLETONS, REWRAP_JOB, value.as_slice())?;
        Ok(())
    }

    /// Counts one envelope moved off version `from` towards the unfinished
    /// rewrap job that drains it, if there is one.
    pub(super) fn count_rewrap_move(&mut self, from: &KekId) -> Result<(), MetaError> {
        let Some(mut job) = self.rewrap_job()? else {
            return Ok(());
        };
        if job.finished_at.is_some()
            || job.scope != from.scope
            || job.from_version.is_some_and(|v| v != from.version)
        {
            return Ok(());
        }
        job.done = job.done.saturating_add(1);
        self.put_rewrap_job(&job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaStore;

    #[test]
    fn round_trips_and_reports_corruption() {
        let meta = MetaStore::in_memory().expect("meta");
        assert_eq!(meta.read(|r| r.rewrap_job()).expect("read"), None);
        let job = RewrapJobState {
            scope: KekScope::Topic("ab".repeat(16)),
            from_version: Some(2),
            principal: "spiffe://strongbox.dev/admin".into(),
            started_at: 10,
            updated_at: 20,
            finished_at: None,
            done: 7,
            failed: 1,
        };
        meta.write(|b| b.put_rewrap_job(&job)).expect("write");
        assert_eq!(
            meta.read(|r| r.rewrap_job()).expect("read"),
            Some(job.clone())
        );
        let finished = RewrapJobState {
            finished_at: Some(30),
            ..job.clone()
        };
        meta.write(|b| b.put_rewrap_job(&finished)).expect("write");
        assert_eq!(
            meta.read(|r| r.rewrap_job()).expect("read"),
            Some(finished.clone())
        );
        // An older copy of the same job never lowers its count.
        let stale = RewrapJobState {
            done: 3,
            ..finished.clone()
        };
        meta.write(|b| b.put_rewrap_job(&stale)).expect("write");
        assert_eq!(
            meta.read(|r| r.rewrap_job()).expect("read").map(|j| j.done),
            Some(7)
        );
        // A new job starts from its own count.
        let next = RewrapJobState {
            started_at: 40,
            done: 0,
            finished_at: None,
            ..job
        };
        meta.write(|b| b.put_rewrap_job(&next)).expect("write");
        assert_eq!(meta.read(|r| r.rewrap_job()).expect("read"), Some(next));

        meta.write(|b| b.put(SINGLETONS, REWRAP_JOB, &b"{\"scope\":\"nope\"}"[..]))
            .expect("write garbage");
        match meta.read(|r| r.rewrap_job()) {
            Err(MetaError::Corrupt { table, key, .. }) => {
                assert_eq!(table, "singletons.v1");
                assert_eq!(key, REWRAP_JOB);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
