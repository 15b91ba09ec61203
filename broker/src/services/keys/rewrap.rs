//! The rewrap job: re-wraps the data key envelopes of one KEK scope under
//! its active version, in the background, after a rotation.
//!
//! - **What it rewraps.** Every envelope under a `decrypt-only` or
//!   `compromised` version of the scope (or only under `from_version`).
//!   The registry's by-version index is the queue: **compromised versions
//!   first**, then the oldest. The order is checked again after each
//!   partition, so a version marked compromised while the job runs is
//!   taken next.
//! - **How.** Partition by partition through the open log
//!   ([`PartitionLog::rewrap_envelopes`]), which holds the log's writer
//!   lock for one envelope at a time, writes the new envelope atomically
//!   and uses it at once; then [`KeyManager::commit_rewrap`] records the
//!   segment under the new version. Only the small envelope changes.
//! - **Rate.** At most `keys.rewrap_rate` envelopes per second, from a
//!   token bucket holding a tenth of a second's worth. The job hands the
//!   log a budget of envelopes per call and waits between calls, never
//!   while the writer lock is held.
//! - **Crash and restart.** The job's state (scope, `from_version`, who
//!   started it, when, counts) is in the metadata store
//!   (`singletons.v1/rewrap_job`) from the moment it starts until it
//!   finishes; a broker that starts with an unfinished job resumes it.
//!   `done` is counted by the key registry in the transaction that records
//!   each envelope's new version (whoever records it: this job, its
//!   reconciliation, or a reader that finds an envelope ahead of the
//!   registry), so it is exact and never goes back across a crash; the job
//!   reads it back from the store rather than counting on its own. `total`
//!   is `done` plus what is still queued (minus nothing: failures are part
//!   of the queue), so it does not move across a crash either.
//!   Envelopes done before the crash name the new version and are not
//!   looked at again. A crash between an envelope and its registry record
//!   leaves the registry one version behind the envelope: the job reads
//!   the envelopes of the segments the registry still lists and corrects
//!   the registry.
//! - **Failures.** While the key provider is unavailable the job waits
//!   and tries again (it never gives up on an outage). An envelope that
//!   cannot be rewrapped (a wrapped key that fails its integrity check, a
//!   partition that cannot be opened) is counted in `failed`, left as it
//!   is, and the job goes on.
//!
//! One job runs at a time in a broker. Its progress is in `KeyStatus`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::model::{KeyState, RewrapProgress};
use strongbox_storage::keys::{KekId, KekScope, KekVersion, KeyError, KeyManager, SegmentRef};
use strongbox_storage::log::{LogError, PartitionLog, Reconciled};
use strongbox_storage::meta::{MetaError, RewrapJobState};
use tokio::task::JoinHandle;

use crate::audit::{AuditAction, AuditEvent};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::keys::key_lifecycle::{provider_down, scope_name};
use crate::services::partitions::partition::Partition;
use crate::services::partitions::topics::PartitionSlot;

/// Registry segments read per page.
const PAGE: usize = 4096;

/// Longest wait between attempts while the key provider is unavailable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often the job writes its counts to the metadata store.
const PERSIST_EVERY: Duration = Duration::from_millis(500);

/// How often a running job writes a progress record to the audit trail.
const AUDIT_EVERY: Duration = Duration::from_secs(60);

/// What `KeyRewrap` asks for.
#[derive(Debug, Clone)]
pub struct RewrapRequest {
    /// The scope whose envelopes to rewrap.
    pub scope: KekScope,
    /// Only envelopes under this version.
    pub from_version: Option<u32>,
    /// Who asked.
    pub principal: String,
}

/// The answer to a started (or already running) job.
#[derive(Debug, Clone)]
pub struct RewrapStarted {
    /// The version envelopes are rewrapped to (the scope's active one).
    pub target: KekVersion,
    /// Envelopes queued.
    pub queued: u64,
    /// What happened, for people.
    pub message: String,
}

/// Counters the job updates and `KeyStatus` reads.
#[derive(Debug, Default)]
struct Progress {
    running: AtomicBool,
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    scope: Mutex<Option<KekScope>>,
}

impl Progress {
    fn scope(&self) -> Option<KekScope> {
        self.scope
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, job: &RewrapJobState, running: bool) {
        *self.scope.lock().unwrap_or_else(PoisonError::into_inner) = Some(job.scope.clone());
        self.done.store(job.done, Ordering::Release);
        self.failed.store(job.failed, Ordering::Release);
        self.total
            .store(job.done.saturating_add(job.failed), Ordering::Release);
        self.running.store(running, Ordering::Release);
    }
}

/// The broker's rewrap job: at most one at a time.
#[derive(Debug)]
pub struct RewrapJobs {
    rate: u32,
    progress: Arc<Progress>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Serializes starting a job.
    starting: tokio::sync::Mutex<()>,
}

impl RewrapJobs {
    /// No job yet; jobs rewrap at most `rate` envelopes per second.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: rate.max(1),
            progress: Arc::new(Progress::default()),
            task: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    /// The progress of the current (or last) job, when it is about `scope`
    /// (any scope when `None`); zeros otherwise.
    pub fn progress(&self, scope: Option<&KekScope>) -> RewrapProgress {
        let p = &self.progress;
        let ours = match (scope, p.scope()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(asked), Some(job)) => *asked == job,
        };
        if !ours {
            return RewrapProgress::default();
        }
        let done = p.done.load(Ordering::Acquire);
        let failed = p.failed.load(Ordering::Acquire);
        RewrapProgress {
            running: p.running.load(Ordering::Acquire),
            total: p
                .total
                .load(Ordering::Acquire)
                .max(done.saturating_add(failed)),
            done,
            failed,
        }
    }

    /// True while a job runs.
    pub fn is_running(&self) -> bool {
        self.progress.running.load(Ordering::Acquire)
    }

    /// Starts a job (or reports the one running for the same scope).
    ///
    /// # Errors
    ///
    /// `conflict` while a job for another scope runs; `not_found`,
    /// `key_destroyed` or `invalid_request` for a `from_version` that is
    /// unknown, destroyed or the active version; key provider and store
    /// failures.
    pub async fn start(
        &self,
        state: &Arc<BrokerState>,
        request: RewrapRequest,
    ) -> Result<RewrapStarted, BrokerError> {
        let _starting = self.starting.lock().await;
        if self.is_running() {
            let running = self.progress.scope();
            if running.as_ref() != Some(&request.scope) {
                return Err(BrokerError::new(
                    ErrorCode::Conflict,
                    format!(
                        "a rewrap of {} is running; wait for it to finish (strongbox keys status)",
                        running.map_or_else(|| "another scope".into(), |s| scope_name(state, &s))
                    ),
                ));
            }
        }
        let state2 = state.clone();
        let req = request.clone();
        let (target, queued) = blocking(move || prepare(&state2, &req)).await??;
        if self.is_running() {
            let p = self.progress(Some(&request.scope));
            return Ok(RewrapStarted {
                message: format!(
                    "a rewrap of {} to {} is already running: {} of {} envelopes done",
                    scope_name(state, &request.scope),
                    target.id,
                    p.done,
                    p.total
                ),
                target,
                queued: p.total.saturating_sub(p.done),
            });
        }
        let now = now_ms();
        let job = RewrapJobState {
            scope: request.scope.clone(),
            from_version: request.from_version,
            principal: request.principal.clone(),
            started_at: now,
            updated_at: now,
            finished_at: None,
            done: 0,
            failed: 0,
        };
        let meta = state.meta.clone();
        let stored = job.clone();
        blocking(move || meta.write(|b| b.put_rewrap_job(&stored)))
            .await?
            .map_err(|e: MetaError| BrokerError::internal("storing the rewrap job", e))?;
        self.progress.set(&job, true);
        self.progress.total.store(queued, Ordering::Release);
        self.spawn(state, job, false);
        Ok(RewrapStarted {
            message: format!(
                "rewrapping {queued} envelopes of {} to {} in the background, at most {} per second",
                scope_name(state, &request.scope),
                target.id,
                self.rate
            ),
            target,
            queued,
        })
    }

    /// At start: loads the last job's counts, and resumes it when it did
    /// not finish.
    ///
    /// # Errors
    ///
    /// The metadata store cannot be read.
    pub fn resume(&self, state: &Arc<BrokerState>) -> Result<(), MetaError> {
        let Some(mut job) = state.meta.read(|r| r.rewrap_job())? else {
            return Ok(());
        };
        if job.finished_at.is_some() {
            self.progress.set(&job, false);
            return Ok(());
        }
        // Failures are retried: they count again if they fail again. They
        // are still queued, so the total does not change.
        job.failed = 0;
        tracing::info!(scope = %job.scope, from_version = ?job.from_version, done = job.done, "resuming the unfinished rewrap job");
        self.progress.set(&job, true);
        let queued: u64 = state
            .keys
            .manager()
            .versions(Some(&job.scope))
            .map(|v| queue(&v, job.from_version).iter().map(|v| v.segments).sum())
            .unwrap_or(0);
        self.progress
            .total
            .store(job.done.saturating_add(queued), Ordering::Release);
        self.spawn(state, job, true);
        Ok(())
    }

    fn spawn(&self, state: &Arc<BrokerState>, job: RewrapJobState, resumed: bool) {
        let runner = Runner {
            state: state.clone(),
            progress: self.progress.clone(),
            limit: RateLimit::new(self.rate, Instant::now()),
            skip: HashSet::new(),
            job,
            last_persist: Instant::now(),
            last_audit: Instant::now(),
        };
        let handle = tokio::spawn(runner.run(resumed));
        if let Some(old) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(handle)
        {
            // A finished job's task; nothing to wait for.
            old.abort();
        }
    }

    /// Waits for the job's task to stop (it stops at its next step once
    /// the broker shuts down; an unfinished job resumes at the next start).
    pub async fn stopped(&self) {
        let handle = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

/// Checks the request against the registry; returns the version to rewrap
/// to (creating one when the scope has no active version) and how many
/// envelopes are queued.
fn prepare(state: &BrokerState, request: &RewrapRequest) -> Result<(KekVersion, u64), BrokerError> {
    let keys = state.keys.manager();
    let versions = keys.versions(Some(&request.scope))?;
    if let Some(n) = request.from_version {
        let name = || format!("v{n} of {}", scope_name(state, &request.scope));
        match versions.iter().find(|v| v.id.version == n) {
            None => {
                return Err(BrokerError::new(
                    ErrorCode::NotFound,
                    format!("there is no key version {}", name()),
                ));
            }
            Some(v) if v.state == KeyState::Active => {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "{} is the active version: rotate first (strongbox keys rotate), then rewrap it",
                        name()
                    ),
                ));
            }
            Some(v) if v.state == KeyState::Destroyed => {
                return Err(BrokerError::new(
                    ErrorCode::KeyDestroyed,
                    format!(
                        "{} is destroyed: the {} envelopes under it cannot be unwrapped any more",
                        name(),
                        v.segments
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let target = match versions.iter().find(|v| v.state == KeyState::Active) {
        Some(v) => v.clone(),
        None => {
            let v = keys.rotate(&request.scope)?;
            crate::services::keys::key_lifecycle::record_rotation(
                state,
                &v,
                &request.principal,
                None,
            );
            v
        }
    };
    let queued = queue(&versions, request.from_version)
        .iter()
        .map(|v| v.segments)
        .sum();
    Ok((target, queued))
}

/// The versions whose envelopes a job rewraps, in the order it takes them:
/// compromised first, then the oldest.
pub fn queue(versions: &[KekVersion], from_version: Option<u32>) -> Vec<KekVersion> {
    let mut q: Vec<KekVersion> = versions
        .iter()
        .filter(|v| matches!(v.state, KeyState::DecryptOnly | KeyState::Compromised))
        .filter(|v| from_version.is_none_or(|f| v.id.version == f))
        .filter(|v| v.segments > 0)
        .cloned()
        .collect();
    q.sort_by_key(|v| (v.state != KeyState::Compromised, v.id.version));
    q
}

/// A token bucket: `rate` envelopes per second, bursts of a tenth of a
/// second's worth (at least one).
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 10.0).floor().max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How many envelopes may go now, or how long to wait for the next.
    ///
    /// # Errors
    ///
    /// The wait, when none may go yet.
    pub fn available(&mut self, now: Instant) -> Result<usize, Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            // Between 1 and `burst` (a tenth of a rate of at most 100000
            // a second): the conversion is exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(self.tokens.floor() as usize)
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// `n` envelopes went.
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Why a slice of work stopped early.
#[derive(Debug)]
enum Failure {
    /// The key provider or the registry is unavailable: wait, retry.
    Transient(String),
    /// This segment's envelope cannot be rewrapped.
    Segment(SegmentRef, String),
    /// The version being drained was destroyed meanwhile.
    VersionGone,
    /// Nothing more can be done in this partition now.
    Partition(String),
}

/// What one call into a partition's log did.
#[derive(Debug)]
struct Slice {
    moved: u64,
    used: usize,
    paused: bool,
    failure: Option<Failure>,
}

/// Rewraps up to `budget` envelopes under `from` in one partition. Runs on
/// the blocking pool.
fn slice(
    keys: &KeyManager,
    log: &PartitionLog,
    from: &KekId,
    budget: usize,
    skip: &HashSet<SegmentRef>,
) -> Slice {
    let mut used = 0usize;
    let mut paused = false;
    let mut current: Option<(SegmentRef, bool)> = None;
    let mut moved = 0u64;
    let result = log.rewrap_envelopes(
        from,
        |ctx, wrapped| {
            let seg = SegmentRef::from(ctx);
            if skip.contains(&seg) {
                // Failed before: keep its envelope as it is (written back
                // unchanged) and go on to the next.
                current = Some((seg, true));
                return Ok(wrapped.clone());
            }
            if used >= budget {
                paused = true;
                return Err(KeyError::Unavailable(
                    "paused by the rewrap rate limit".into(),
                ));
            }
            used += 1;
            current = Some((seg, false));
            keys.rewrap(ctx, wrapped)
        },
        |ctx, wrapped| {
            if wrapped.kek == *from {
                return Ok(());
            }
            keys.commit_rewrap(ctx, wrapped)?;
            moved += 1;
            Ok(())
        },
    );
    let failure = match result {
        Ok(_) => None,
        Err(_) if paused => None,
        Err(e) => Some(classify(e, current, from)),
    };
    Slice {
        moved,
        used,
        paused,
        failure,
    }
}

fn classify(e: LogError, current: Option<(SegmentRef, bool)>, from: &KekId) -> Failure {
    let text = e.to_string();
    match (e, current) {
        (
            LogError::Key {
                source: KeyError::Destroyed(label),
                ..
            },
            _,
        ) if label == from.label() => Failure::VersionGone,
        (
            LogError::Key {
                source: source @ (KeyError::Registry(_) | KeyError::Random),
                ..
            },
            _,
        ) => Failure::Transient(source.to_string()),
        (LogError::Key { source, .. }, _) if provider_down(&source) => {
            Failure::Transient(source.to_string())
        }
        (LogError::Key { .. }, Some((seg, false))) => Failure::Segment(seg, text),
        (LogError::Io { .. }, Some((seg, false))) => Failure::Segment(seg, text),
        _ => Failure::Partition(text),
    }
}

/// The running job.
struct Runner {
    state: Arc<BrokerState>,
    progress: Arc<Progress>,
    limit: RateLimit,
    /// Segments that could not be rewrapped in this run.
    skip: HashSet<SegmentRef>,
    job: RewrapJobState,
    last_persist: Instant,
    last_audit: Instant,
}

/// How a job's run ended.
enum End {
    Finished,
    Stopped,
}

impl Runner {
    async fn run(mut self, resumed: bool) {
        let scope = scope_name(&self.state, &self.job.scope);
        self.audit(if resumed { "resumed" } else { "started" }, None);
        tracing::info!(target: "strongbox::audit", principal = %self.job.principal, scope = %scope, from_version = ?self.job.from_version, resumed, "rewrap job running");
        match self.work().await {
            End::Finished => {
                // Moves made by readers since the last slice count too.
                self.refresh_done().await;
                self.job.finished_at = Some(now_ms());
                self.persist(true).await;
                self.progress.running.store(false, Ordering::Release);
                self.audit("finished", None);
                tracing::info!(target: "strongbox::audit", scope = %scope, done = self.job.done, failed = self.job.failed, "rewrap job finished");
            }
            End::Stopped => {
                self.persist(true).await;
                self.progress.running.store(false, Ordering::Release);
                tracing::info!(scope = %scope, done = self.job.done, "rewrap job stopped with the broker; it resumes at the next start");
            }
        }
    }

    fn stopping(&self) -> bool {
        self.state.is_shutting_down()
    }

    /// Sleeps `d`, or less when the broker shuts down; false then.
    async fn sleep(&self, d: Duration) -> bool {
        let mut shutdown = self.state.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => !self.stopping(),
            () = crate::shutdown::stopped(&mut shutdown) => false,
        }
    }

    async fn work(&mut self) -> End {
        loop {
            if self.stopping() {
                return End::Stopped;
            }
            let state = self.state.clone();
            let scope = self.job.scope.clone();
            let from = self.job.from_version;
            let skip = self.skip.clone();
            let next =
                blocking(move || next_batch(state.keys.manager(), &scope, from, &skip)).await;
            let (version, refs, remaining) = match next {
                Ok(Ok(Some(next))) => next,
                Ok(Ok(None)) => return End::Finished,
                Ok(Err(e)) | Err(BrokerError { message: e, .. }) => {
                    tracing::warn!(error = %e, "rewrap job: cannot read the key registry; retrying");
                    if !self.sleep(Duration::from_secs(1)).await {
                        return End::Stopped;
                    }
                    continue;
                }
            };
            self.set_total(remaining);
            let mut groups: BTreeMap<([u8; 16], u32), Vec<SegmentRef>> = BTreeMap::new();
            for r in refs {
                groups.entry((r.topic_id, r.partition)).or_default().push(r);
            }
            for ((topic_id, partition), segs) in groups {
                match self
                    .partition(&version.id, topic_id, partition, &segs)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return End::Stopped,
                    Err(()) => break,
                }
                if self.queue_head_changed(&version.id).await {
                    break;
                }
            }
            let state = self.state.clone();
            let id = version.id.clone();
            let drained = blocking(move || state.keys.manager().version(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .is_some_and(|v| v.segments == 0);
            if drained {
                self.audit("drained", Some(version.id.version));
                tracing::info!(kek = %version.id, "rewrap job: no envelope is under this version any more");
            }
        }
    }

    /// True when another version should now be drained first (one was
    /// marked compromised).
    async fn queue_head_changed(&self, current: &KekId) -> bool {
        let state = self.state.clone();
        let scope = self.job.scope.clone();
        let from = self.job.from_version;
        blocking(move || state.keys.manager().versions(Some(&scope)))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|v| queue(&v, from).first().map(|h| h.id != *current))
            .unwrap_or(false)
    }

    /// Rewraps the envelopes under `from` in one partition. `Ok(false)`
    /// when the broker is stopping; `Err` when `from` was destroyed.
    async fn partition(
        &mut self,
        from: &KekId,
        topic_id: [u8; 16],
        index: u32,
        segs: &[SegmentRef],
    ) -> Result<bool, ()> {
        let Some(p) = self.find(topic_id, index) else {
            self.fail_all(segs, "its partition is not being served");
            return Ok(true);
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let budget = match self.limit.available(Instant::now()) {
                Ok(n) => n,
                Err(wait) => {
                    if !self.sleep(wait).await {
                        return Ok(false);
                    }
                    continue;
                }
            };
            let state = self.state.clone();
            let part = p.clone();
            let id = from.clone();
            let skip = self.skip.clone();
            let Ok(s) =
                blocking(move || slice(state.keys.manager(), part.log(), &id, budget, &skip)).await
            else {
                return Ok(false);
            };
            self.limit.spend(s.used);
            if s.moved > 0 {
                self.refresh_done().await;
            }
            // More to do here: the budget ran out, or a failed envelope
            // stopped the pass before the end of the partition.
            let again = s.paused || matches!(s.failure, Some(Failure::Segment(..)));
            match s.failure {
                None => backoff = Duration::from_secs(1),
                Some(Failure::Transient(why)) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %why, retry_in = ?backoff, "rewrap job waiting for the key provider");
                    if !self.sleep(backoff).await {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Some(Failure::Segment(seg, why)) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %why, "rewrap job: cannot rewrap an envelope; leaving it as it is");
                    if self.skip.insert(seg) {
                        self.add_failed(1);
                    }
                }
                Some(Failure::VersionGone) => {
                    tracing::warn!(kek = %from, "rewrap job: the version was destroyed while it was being drained");
                    return Err(());
                }
                Some(Failure::Partition(why)) => {
                    // What is still under `from` is counted by the
                    // reconciliation below.
                    tracing::error!(topic = %p.topic, partition = p.index, error = %why, "rewrap job: giving up on this partition for now");
                    break;
                }
            }
            self.persist(false).await;
            if !again {
                break;
            }
            if self.last_audit.elapsed() >= AUDIT_EVERY {
                self.audit("running", None);
            }
        }
        // Segments the registry still lists under `from`: an envelope
        // written just before a crash (the registry is behind), or a
        // segment the log no longer has.
        let state = self.state.clone();
        let part = p.clone();
        let id = from.clone();
        let segs = segs.to_vec();
        let skip = self.skip.clone();
        let reconciled =
            blocking(move || reconcile(state.keys.manager(), &part, &id, &segs, &skip)).await;
        if let Ok((fixed, lost)) = reconciled {
            if fixed > 0 {
                self.refresh_done().await;
            }
            for seg in lost {
                if self.skip.insert(seg) {
                    self.add_failed(1);
                }
            }
        }
        self.persist(false).await;
        Ok(true)
    }

    fn find(&self, topic_id: [u8; 16], index: u32) -> Option<Arc<Partition>> {
        let topic = self
            .state
            .partitions
            .topics()
            .all()
            .into_iter()
            .find(|t| t.entry.topic_id == topic_id)?;
        match topic.partitions.get(index as usize)? {
            PartitionSlot::Ready(p) => Some(p.clone()),
            PartitionSlot::Failed(_) => None,
        }
    }

    fn fail_all(&mut self, segs: &[SegmentRef], why: &str) {
        tracing::error!(segments = segs.len(), error = %why, "rewrap job: cannot rewrap these envelopes; leaving them as they are");
        for s in segs {
            if self.skip.insert(*s) {
                self.add_failed(1);
            }
        }
    }

    /// Reads `done` back from the store, where the key registry counts
    /// every envelope moved off a queued version as it commits.
    async fn refresh_done(&mut self) {
        let meta = self.state.meta.clone();
        let stored = blocking(move || meta.read(|r| r.rewrap_job())).await;
        if let Ok(Ok(Some(job))) = stored
            && job.scope == self.job.scope
            && job.started_at == self.job.started_at
        {
            self.job.done = self.job.done.max(job.done);
            self.progress.done.store(self.job.done, Ordering::Release);
        }
    }

    fn add_failed(&mut self, n: u64) {
        self.job.failed = self.job.failed.saturating_add(n);
        self.progress
            .failed
            .store(self.job.failed, Ordering::Release);
    }

    fn set_total(&self, remaining: u64) {
        self.progress.total.store(
            self.job
                .done
                .saturating_add(self.job.failed)
                .saturating_add(remaining),
            Ordering::Release,
        );
    }

    async fn persist(&mut self, now: bool) {
        if !now && self.last_persist.elapsed() < PERSIST_EVERY {
            return;
        }
        self.last_persist = Instant::now();
        self.job.updated_at = now_ms();
        let meta = self.state.meta.clone();
        let job = self.job.clone();
        match blocking(move || meta.write(|b| b.put_rewrap_job(&job))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "rewrap job: cannot store its progress"),
            Err(e) => tracing::error!(error = %e.message, "rewrap job: cannot store its progress"),
        }
    }

    fn audit(&mut self, what: &str, drained: Option<u32>) {
        self.last_audit = Instant::now();
        let scope = scope_name(&self.state, &self.job.scope);
        let p = self.progress_now();
        let mut event = AuditEvent::success(AuditAction::KeyRewrapProgress, format!("kek:{scope}"))
            .principal(self.job.principal.clone())
            .detail("state", what)
            .detail("total", p.total)
            .detail("done", p.done)
            .detail("failed", p.failed)
            .detail("started_at", self.job.started_at);
        if let Some(v) = self.job.from_version {
            event = event.detail("from_version", v);
        }
        if let Some(v) = drained {
            event = event.detail("drained_version", v);
        }
        self.state.audit.record(event);
    }

    fn progress_now(&self) -> RewrapProgress {
        let done = self.progress.done.load(Ordering::Acquire);
        let failed = self.progress.failed.load(Ordering::Acquire);
        RewrapProgress {
            running: self.progress.running.load(Ordering::Acquire),
            total: self
                .progress
                .total
                .load(Ordering::Acquire)
                .max(done.saturating_add(failed)),
            done,
            failed,
        }
    }
}

/// The next version to drain and its segments not yet given up on, with
/// how many envelopes remain in the whole queue; `None` when the job is
/// done.
fn next_batch(
    keys: &KeyManager,
    scope: &KekScope,
    from: Option<u32>,
    skip: &HashSet<SegmentRef>,
) -> Result<Option<(KekVersion, Vec<SegmentRef>, u64)>, String> {
    let versions = keys.versions(Some(scope)).map_err(|e| e.to_string())?;
    let q = queue(&versions, from);
    let queued: u64 = q.iter().map(|v| v.segments).sum();
    let remaining = queued.saturating_sub(u64::try_from(skip.len()).unwrap_or(u64::MAX));
    for v in q {
        let mut refs = Vec::new();
        let mut after: Option<SegmentRef> = None;
        loop {
            let page = keys
                .segments_under(&v.id, after.as_ref(), PAGE)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last().copied() else {
                break;
            };
            let full = page.len() == PAGE;
            refs.extend(page.into_iter().filter(|s| !skip.contains(s)));
            if !full {
                break;
            }
            after = Some(last);
        }
        if !refs.is_empty() {
            return Ok(Some((v, refs, remaining)));
        }
    }
    Ok(None)
}

/// For each of `segs` the registry still lists under `from` (and not
/// skipped): when the partition's log finds its envelope under another
/// version of the scope, records that (a rewrap interrupted between the
/// envelope and the registry); otherwise it is lost to the job. Returns
/// (corrected, lost).
fn reconcile(
    keys: &KeyManager,
    p: &Partition,
    from: &KekId,
    segs: &[SegmentRef],
    skip: &HashSet<SegmentRef>,
) -> (u64, Vec<SegmentRef>) {
    let mut fixed = 0;
    let mut lost = Vec::new();
    let mut listed = Vec::new();
    for seg in segs.iter().filter(|s| !skip.contains(s)) {
        match keys.meta().read(|r| r.segment_kek(seg)) {
            Ok(Some(k)) if k == *from => listed.push(*seg),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(segment = %seg, error = %e, "rewrap job: cannot read the key registry");
                lost.push(*seg);
            }
        }
    }
    let ids: Vec<[u8; 16]> = listed.iter().map(|s| s.segment_id).collect();
    let results = p
        .log()
        .reconcile_envelopes(from, &ids, |ctx, wrapped| keys.commit_rewrap(ctx, wrapped));
    for (seg, (_, result)) in listed.iter().zip(results) {
        match result {
            Reconciled::Corrected => fixed += 1,
            Reconciled::CommitFailed(e) => {
                tracing::error!(segment = %seg, error = %e, "rewrap job: cannot correct the key registry");
                lost.push(*seg);
            }
            Reconciled::NotCorrected(why) => {
                tracing::error!(segment = %seg, kek = %from, reason = %why, "rewrap job: the registry lists a segment under this version that the log does not hold under it");
                lost.push(*seg);
            }
            _ => lost.push(*seg),
        }
    }
    (fixed, lost)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::internal("the rewrap job", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32, state: KeyState, segments: u64) -> KekVersion {
        KekVersion {
            id: KekId {
                scope: KekScope::Broker,
                version: n,
            },
            state,
            provider: "file".into(),
            created_at: 0,
            state_changed_at: 0,
            segments,
        }
    }

    #[test]
    fn compromised_versions_go_first_then_the_oldest() {
        let versions = [
            v(1, KeyState::DecryptOnly, 5),
            v(2, KeyState::Compromised, 3),
            v(3, KeyState::DecryptOnly, 0),
            v(4, KeyState::Destroyed, 9),
            v(5, KeyState::DecryptOnly, 1),
            v(6, KeyState::Active, 7),
        ];
        let order: Vec<u32> = queue(&versions, None)
            .iter()
            .map(|v| v.id.version)
            .collect();
        assert_eq!(order, vec![2, 1, 5]);
        let only: Vec<u32> = queue(&versions, Some(5))
            .iter()
            .map(|v| v.id.version)
            .collect();
        assert_eq!(only, vec![5]);
        assert!(queue(&versions, Some(6)).is_empty(), "never the active one");
        assert!(queue(&versions, Some(4)).is_empty(), "nor a destroyed one");
    }

    #[test]
    fn the_rate_limit_holds_over_time() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(100, t0);
        // A burst of a tenth of a second's worth, then one every 10 ms.
        assert_eq!(limit.available(t0), Ok(10));
        limit.spend(10);
        let wait = limit.available(t0).expect_err("empty");
        assert!(wait > Duration::from_millis(9) && wait <= Duration::from_millis(10));
        assert_eq!(limit.available(t0 + Duration::from_millis(50)), Ok(5));
        // Idle time never buys more than a burst.
        assert_eq!(limit.available(t0 + Duration::from_secs(60)), Ok(10));

        // Over a simulated minute, taking whatever is available in steps
        // of 7 ms, the total never exceeds rate x time + burst.
        let mut limit = RateLimit::new(100, t0);
        let mut spent = 0usize;
        for step in 0..8_600u64 {
            let now = t0 + Duration::from_millis(7 * step);
            if let Ok(n) = limit.available(now) {
                limit.spend(n);
                spent += n;
            }
            let elapsed = (7 * step) as f64 / 1000.0;
            assert!(
                spent as f64 <= 100.0 * elapsed + 10.0 + 1e-6,
                "{spent} at {elapsed}"
            );
        }
        assert!(spent >= 5_900, "the rate is also reached: {spent}");

        // A rate of 1 still lets one go at a time.
        let mut slow = RateLimit::new(1, t0);
        assert_eq!(slow.available(t0), Ok(1));
    }
}
