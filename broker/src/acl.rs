//! Topic access control: who may do what on which topics.
//!
//! A rule is principal pattern × topic pattern × operations × allow/deny,
//! optionally expiring. Patterns are `*` (anything), an exact name, or a
//! prefix ending in `*` (`orders.*`). The decision for a request:
//!
//! 1. a superuser is allowed everything;
//! 2. else, if any live rule matching the principal, the topic and the
//!    operation denies, the request is denied (**deny wins**);
//! 3. else, if one allows, it is allowed;
//! 4. else it is denied (**default deny**).
//!
//! `admin` in a rule's operations stands for every operation, so an
//! `admin` allow grants all of them on the matching topics and an `admin`
//! deny refuses all of them.
//!
//! Requests are checked far more often than rules change, so a rule set is
//! compiled once into an immutable [`AclSnapshot`] (rules indexed by exact
//! principal) and published behind an `Arc` with a generation number. A
//! connection keeps a [`PrincipalAcl`], the snapshot filtered to its own
//! principal, and refreshes it only when [`Acl::generation`] moves: one
//! atomic load per request in the common case.
//!
//! ```
//! use strongbox_broker::acl::Acl;
//! use strongbox_protocol::model::{AclEffect, AclRule, Operations};
//!
//! let acl = Acl::new(
//!     ["root".to_string()],
//!     vec![AclRule {
//!         principal: "alice".into(),
//!         topic: "demo.*".into(),
//!         operations: Operations::PUBLISH,
//!         effect: AclEffect::Allow,
//!         expires_at: None,
//!     }],
//! )?;
//! assert!(acl.check("alice", Operations::PUBLISH, "demo.x", 0).allowed);
//! let d = acl.check("alice", Operations::SUBSCRIBE, "demo.x", 0);
//! assert_eq!(
//!     d.denial("alice", Operations::SUBSCRIBE, "demo.x").unwrap().to_string(),
//!     "not authorized: alice may not subscribe demo.x"
//! );
//! # Ok::<(), strongbox_broker::acl::AclError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use strongbox_protocol::model::{AclEffect, AclRule, Operations};

/// A principal or topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: anything.
    Any,
    /// An exact name.
    Exact(String),
    /// A prefix (the pattern without its trailing `*`).
    Prefix(String),
}

/// Why a rule is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// A pattern is empty or has a `*` other than at its end.
    #[error("{which} pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// `principal` or `topic`.
        which: &'static str,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The rule names no operation, or unknown operation bits.
    #[error("the rule must name at least one known operation")]
    InvalidOperations,
    /// A superuser entry is empty or a pattern.
    #[error("superuser {0:?} must be an exact principal, not empty and without `*`")]
    InvalidSuperuser(String),
}

impl Pattern {
    /// Parses `*`, an exact name, or a prefix ending in `*`.
    ///
    /// # Errors
    ///
    /// An empty pattern, or one with `*` anywhere but at its end.
    pub fn parse(which: &'static str, pattern: &str) -> Result<Self, AclError> {
        let invalid = |reason| AclError::InvalidPattern {
            which,
            pattern: pattern.to_string(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid("it is empty"));
        }
        if pattern == "*" {
            return Ok(Self::Any);
        }
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(invalid(
                "`*` may only be the whole pattern or its last character",
            )),
            Some(prefix) => Ok(Self::Prefix(prefix.to_string())),
            None if pattern.contains('*') => Err(invalid(
                "`*` may only be the whole pattern or its last character",
            )),
            None => Ok(Self::Exact(pattern.to_string())),
        }
    }

    /// True when `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => e == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule that decided, if a rule did (none for superusers and for
    /// the default deny).
    pub matched_rule: Option<Arc<AclRule>>,
    /// Why.
    pub reason: DecisionReason,
}

/// What decided a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// The principal is a superuser.
    Superuser,
    /// A deny rule matched.
    DeniedByRule,
    /// An allow rule matched and no deny rule did.
    AllowedByRule,
    /// No rule matched.
    NoMatchingRule,
}

impl Decision {
    fn superuser() -> Self {
        Self {
            allowed: true,
            matched_rule: None,
            reason: DecisionReason::Superuser,
        }
    }

    /// The error to show the client when the decision is a denial.
    pub fn denial(&self, principal: &str, op: Operations, topic: &str) -> Option<NotAuthorized> {
        (!self.allowed).then(|| NotAuthorized {
            principal: principal.to_string(),
            operation: op,
            topic: topic.to_string(),
        })
    }
}

/// A denied request, formatted the way clients show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not authorized: {principal} may not {operation} {topic}")]
pub struct NotAuthorized {
    /// Who asked.
    pub principal: String,
    /// What for.
    pub operation: Operations,
    /// On what.
    pub topic: String,
}

/// One rule, compiled.
#[derive(Debug, Clone)]
struct CompiledRule {
    principal: Pattern,
    topic: Pattern,
    /// Operations with `admin` expanded to every operation.
    ops: Operations,
    deny: bool,
    expires_at: Option<i64>,
    rule: Arc<AclRule>,
}

impl CompiledRule {
    fn compile(rule: AclRule) -> Result<Self, AclError> {
        if rule.operations.is_empty() || rule.operations.0 & !Operations::VALID != 0 {
            return Err(AclError::InvalidOperations);
        }
        let ops = if rule.operations.contains(Operations::ADMIN) {
            Operations(Operations::VALID)
        } else {
            rule.operations
        };
        Ok(Self {
            principal: Pattern::parse("principal", &rule.principal)?,
            topic: Pattern::parse("topic", &rule.topic)?,
            ops,
            deny: rule.effect == AclEffect::Deny,
            expires_at: rule.expires_at,
            rule: Arc::new(rule),
        })
    }

    fn live(&self, now_ms: i64) -> bool {
        self.expires_at.is_none_or(|t| now_ms < t)
    }

    fn covers(&self, op: Operations, topic: &str, now_ms: i64) -> bool {
        self.ops.contains(op) && self.live(now_ms) && self.topic.matches(topic)
    }
}

/// Deny wins, then allow, then default deny, over the rules given. The
/// caller has already filtered them by principal.
fn decide<'a>(
    rules: impl Iterator<Item = &'a CompiledRule>,
    op: Operations,
    topic: &str,
    now_ms: i64,
) -> Decision {
    let mut allow = None;
    for r in rules.filter(|r| r.covers(op, topic, now_ms)) {
        if r.deny {
            return Decision {
                allowed: false,
                matched_rule: Some(r.rule.clone()),
                reason: DecisionReason::DeniedByRule,
            };
        }
        allow.get_or_insert_with(|| r.rule.clone());
    }
    match allow {
        Some(rule) => Decision {
            allowed: true,
            matched_rule: Some(rule),
            reason: DecisionReason::AllowedByRule,
        },
        None => Decision {
            allowed: false,
            matched_rule: None,
            reason: DecisionReason::NoMatchingRule,
        },
    }
}

/// An immutable, compiled rule set.
#[derive(Debug)]
pub struct AclSnapshot {
    generation: u64,
    superusers: HashSet<String>,
    rules: Vec<CompiledRule>,
    /// Indexes into `rules` of the rules with an exact principal.
    by_principal: HashMap<String, Vec<usize>>,
    /// Indexes of the rules with a `*` or prefix principal.
    patterned: Vec<usize>,
}

impl AclSnapshot {
    /// Compiles `rules`.
    ///
    /// # Errors
    ///
    /// The first rule or superuser that is not acceptable.
    pub fn compile(
        generation: u64,
        superusers: impl IntoIterator<Item = String>,
        rules: Vec<AclRule>,
    ) -> Result<Self, AclError> {
        let superusers: HashSet<String> = superusers.into_iter().collect();
        if let Some(bad) = superusers.iter().find(|s| s.is_empty() || s.contains('*')) {
            return Err(AclError::InvalidSuperuser(bad.clone()));
        }
        let rules = rules
            .into_iter()
            .map(CompiledRule::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_principal: HashMap<String, Vec<usize>> = HashMap::new();
        let mut patterned = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.principal {
                Pattern::Exact(p) => by_principal.entry(p.clone()).or_default().push(i),
                Pattern::Any | Pattern::Prefix(_) => patterned.push(i),
            }
        }
        Ok(Self {
            generation,
            superusers,
            rules,
            by_principal,
            patterned,
        })
    }

    /// The generation this snapshot was published as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The rules, as given.
    pub fn rules(&self) -> impl Iterator<Item = &AclRule> {
        self.rules.iter().map(|r| r.rule.as_ref())
    }

    /// The superusers.
    pub fn superusers(&self) -> impl Iterator<Item = &str> {
        self.superusers.iter().map(String::as_str)
    }

    /// True when `principal` is a superuser.
    pub fn is_superuser(&self, principal: &str) -> bool {
        self.superusers.contains(principal)
    }

    fn rules_for<'a>(&'a self, principal: &str) -> impl Iterator<Item = &'a CompiledRule> + 'a {
        let exact = self
            .by_principal
            .get(principal)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let patterned = self
            .patterned
            .iter()
            .filter_map(|&i| self.rules.get(i))
            .filter(|r| r.principal.matches(principal))
            .collect::<Vec<_>>();
        exact
            .iter()
            .filter_map(|&i| self.rules.get(i))
            .chain(patterned)
    }

    /// Decides whether `principal` may perform `op` on `topic` at `now_ms`
    /// (milliseconds since the Unix epoch). With several operations in
    /// `op`, every one of them must be allowed.
    pub fn check(&self, principal: &str, op: Operations, topic: &str, now_ms: i64) -> Decision {
        if self.is_superuser(principal) {
            return Decision::superuser();
        }
        check_each(op, |single| {
            decide(self.rules_for(principal), single, topic, now_ms)
        })
    }

    /// The rules that concern `principal`, for a connection to keep.
    pub fn for_principal(&self, principal: &str) -> PrincipalAcl {
        PrincipalAcl {
            generation: self.generation,
            superuser: self.is_superuser(principal),
            rules: self.rules_for(principal).cloned().collect(),
        }
    }

    /// The rules that concern `principal` when it comes from a node
    /// certificate on the client listener: only allow rules that name it
    /// exactly (and the superuser list, which holds exact names), while
    /// every deny rule that matches still applies. A node's certificate
    /// must not pick up client permissions granted to `*` or a prefix.
    pub fn for_node_principal(&self, principal: &str) -> PrincipalAcl {
        PrincipalAcl {
            generation: self.generation,
            superuser: self.is_superuser(principal),
            rules: self
                .rules_for(principal)
                .filter(|r| r.deny || matches!(r.principal, Pattern::Exact(_)))
                .cloned()
                .collect(),
        }
    }
}

/// Applies `one` to each operation in `op` and returns the first denial,
/// or the last allow. An empty `op` is denied.
fn check_each(op: Operations, mut one: impl FnMut(Operations) -> Decision) -> Decision {
    let mut last = None;
    for (single, _) in Operations::NAMED.iter().filter(|(o, _)| op.contains(*o)) {
        let d = one(*single);
        if !d.allowed {
            return d;
        }
        last = Some(d);
    }
    last.unwrap_or(Decision {
        allowed: false,
        matched_rule: None,
        reason: DecisionReason::NoMatchingRule,
    })
}

/// The rules of one principal, cut from a snapshot.
#[derive(Debug, Clone)]
pub struct PrincipalAcl {
    generation: u64,
    superuser: bool,
    rules: Vec<CompiledRule>,
}

impl PrincipalAcl {
    /// The snapshot generation this was cut from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// As [`AclSnapshot::check`], for the principal this was cut for.
    pub fn check(&self, op: Operations, topic: &str, now_ms: i64) -> Decision {
        if self.superuser {
            return Decision::superuser();
        }
        check_each(op, |single| {
            decide(self.rules.iter(), single, topic, now_ms)
        })
    }
}

/// The live ACL: the current snapshot, replaced atomically on change.
pub struct Acl {
    current: RwLock<Arc<AclSnapshot>>,
    generation: AtomicU64,
}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Acl {
    /// An ACL with these superusers and rules, as generation 1.
    ///
    /// # Errors
    ///
    /// A rule or superuser that is not acceptable.
    pub fn new(
        superusers: impl IntoIterator<Item = String>,
        rules: Vec<AclRule>,
    ) -> Result<Self, AclError> {
        let snap = AclSnapshot::compile(1, superusers, rules)?;
        Ok(Self {
            current: RwLock::new(Arc::new(snap)),
            generation: AtomicU64::new(1),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<AclSnapshot> {
        // A poisoned lock still holds a complete snapshot: the writer swaps
        // a whole `Arc` and cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The generation of the current snapshot; it increases on every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the rules (the superusers stay), publishing a new
    /// generation, which it returns.
    ///
    /// # Errors
    ///
    /// A rule that is not acceptable; the current rules then stay.
    pub fn replace_rules(&self, rules: Vec<AclRule>) -> Result<u64, AclError> {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = slot.generation.saturating_add(1);
        let snap = AclSnapshot::compile(next, slot.superusers.iter().cloned(), rules)?;
        *slot = Arc::new(snap);
        // Published after the swap, so whoever sees the new number finds the
        // new snapshot.
        self.generation.store(next, Ordering::Release);
        Ok(next)
    }

    /// Replaces the superusers and the rules, publishing a new generation,
    /// which it returns.
    ///
    /// # Errors
    ///
    /// A rule or superuser that is not acceptable; the current ones then
    /// stay.
    pub fn replace(
        &self,
        superusers: impl IntoIterator<Item = String>,
        rules: Vec<AclRule>,
    ) -> Result<u64, AclError> {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = slot.generation.saturating_add(1);
        let snap = AclSnapshot::compile(next, superusers, rules)?;
        *slot = Arc::new(snap);
        self.generation.store(next, Ordering::Release);
        Ok(next)
    }

    /// Checks against the current snapshot.
    pub fn check(&self, principal: &str, op: Operations, topic: &str, now_ms: i64) -> Decision {
        self.snapshot().check(principal, op, topic, now_ms)
    }

    /// A per-connection view for `principal`, refreshed on change.
    pub fn cache_for(self: &Arc<Self>, principal: impl Into<String>) -> AclCache {
        let principal = principal.into();
        let view = self.snapshot().for_principal(&principal);
        AclCache {
            acl: self.clone(),
            principal,
            view,
            node: false,
        }
    }

    /// As [`cache_for`](Self::cache_for), for a connection that presented a
    /// node certificate (see [`AclSnapshot::for_node_principal`]).
    pub fn cache_for_node(self: &Arc<Self>, principal: impl Into<String>) -> AclCache {
        let principal = principal.into();
        let view = self.snapshot().for_node_principal(&principal);
        AclCache {
            acl: self.clone(),
            principal,
            view,
            node: true,
        }
    }
}

/// One connection's view of the ACL: its principal's rules, re-cut from
/// the live [`Acl`] whenever the generation changes, so grants and revokes
/// take effect on open connections at their next request.
#[derive(Debug)]
pub struct AclCache {
    acl: Arc<Acl>,
    principal: String,
    view: PrincipalAcl,
    /// The connection presented a node certificate.
    node: bool,
}

impl AclCache {
    /// The principal this cache is for.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// True when the connection presented a node certificate.
    pub fn is_node(&self) -> bool {
        self.node
    }

    /// Decides `op` on `topic` with the current rules.
    pub fn check(&mut self, op: Operations, topic: &str, now_ms: i64) -> Decision {
        if self.acl.generation() != self.view.generation {
            let snapshot = self.acl.snapshot();
            self.view = if self.node {
                snapshot.for_node_principal(&self.principal)
            } else {
                snapshot.for_principal(&self.principal)
            };
        }
        self.view.check(op, topic, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, t: &str, ops: Operations, effect: AclEffect) -> AclRule {
        AclRule {
            principal: p.into(),
            topic: t.into(),
            operations: ops,
            effect,
            expires_at: None,
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(Pattern::parse("topic", "*"), Ok(Pattern::Any));
        assert_eq!(
            Pattern::parse("topic", "a.*"),
            Ok(Pattern::Prefix("a.".into()))
        );
        assert_eq!(Pattern::parse("topic", "a"), Ok(Pattern::Exact("a".into())));
        assert!(Pattern::parse("topic", "").is_err());
        assert!(Pattern::parse("topic", "a*b").is_err());
        assert!(Pattern::parse("topic", "*a*").is_err());
        assert!(Pattern::parse("topic", "**").is_err());
    }

    #[test]
    fn admin_implies_every_operation_but_not_the_reverse() {
        let acl = Acl::new(
            [],
            vec![rule("ops", "*", Operations::ADMIN, AclEffect::Allow)],
        )
        .unwrap();
        for (op, _) in Operations::NAMED {
            assert!(acl.check("ops", *op, "t", 0).allowed, "{op}");
        }
        let acl = Acl::new(
            [],
            vec![rule(
                "a",
                "*",
                Operations(Operations::VALID & !Operations::ADMIN.0),
                AclEffect::Allow,
            )],
        )
        .unwrap();
        assert!(!acl.check("a", Operations::ADMIN, "t", 0).allowed);
    }

    #[test]
    fn admin_deny_refuses_everything() {
        let acl = Acl::new(
            [],
            vec![
                rule("a", "*", Operations::PUBLISH, AclEffect::Allow),
                rule("a", "secret.*", Operations::ADMIN, AclEffect::Deny),
            ],
        )
        .unwrap();
        assert!(acl.check("a", Operations::PUBLISH, "open", 0).allowed);
        let d = acl.check("a", Operations::PUBLISH, "secret.x", 0);
        assert!(!d.allowed);
        assert_eq!(d.reason, DecisionReason::DeniedByRule);
    }

    #[test]
    fn multiple_operations_need_all() {
        let acl = Acl::new(
            [],
            vec![rule("a", "*", Operations::PUBLISH, AclEffect::Allow)],
        )
        .unwrap();
        let both = Operations::PUBLISH.union(Operations::SUBSCRIBE);
        assert!(!acl.check("a", both, "t", 0).allowed);
        assert!(!acl.check("a", Operations::default(), "t", 0).allowed);
    }

    #[test]
    fn cache_follows_generation() {
        let acl = Arc::new(Acl::new([], vec![]).unwrap());
        let mut cache = acl.cache_for("bob");
        assert!(!cache.check(Operations::PUBLISH, "demo.x", 0).allowed);
        let g = acl
            .replace_rules(vec![rule(
                "bob",
                "demo.*",
                Operations::PUBLISH,
                AclEffect::Allow,
            )])
            .unwrap();
        assert_eq!(g, 2);
        assert!(cache.check(Operations::PUBLISH, "demo.x", 0).allowed);
        acl.replace_rules(vec![]).unwrap();
        assert!(!cache.check(Operations::PUBLISH, "demo.x", 0).allowed);
    }

    #[test]
    fn failed_replace_keeps_rules() {
        let acl = Acl::new(
            [],
            vec![rule("a", "t", Operations::PUBLISH, AclEffect::Allow)],
        )
        .unwrap();
        assert!(
            acl.replace_rules(vec![rule(
                "a",
                "x*y",
                Operations::PUBLISH,
                AclEffect::Allow
            )])
            .is_err()
        );
        assert_eq!(acl.generation(), 1);
        assert!(acl.check("a", Operations::PUBLISH, "t", 0).allowed);
    }

    #[test]
    fn invalid_superuser_is_refused() {
        assert!(Acl::new(["admin*".to_string()], vec![]).is_err());
        assert!(Acl::new([String::new()], vec![]).is_err());
    }

    #[test]
    fn a_node_principal_gets_only_rules_that_name_it() {
        const NODE: &str = "spiffe://td/strongbox/node/3";
        let acl = Arc::new(
            Acl::new(
                ["spiffe://td/strongbox/node/9".to_string()],
                vec![
                    rule("*", "all.*", Operations::PUBLISH, AclEffect::Allow),
                    rule(
                        "spiffe://td/*",
                        "td.*",
                        Operations::PUBLISH,
                        AclEffect::Allow,
                    ),
                    rule(NODE, "named.*", Operations::PUBLISH, AclEffect::Allow),
                    rule(
                        "spiffe://td/*",
                        "named.secret",
                        Operations::PUBLISH,
                        AclEffect::Deny,
                    ),
                ],
            )
            .expect("rules compile"),
        );
        let mut client = acl.cache_for(NODE);
        let mut node = acl.cache_for_node(NODE);
        assert!(!client.is_node() && node.is_node());
        for topic in ["all.x", "td.x", "named.x"] {
            assert!(
                client.check(Operations::PUBLISH, topic, 0).allowed,
                "{topic}"
            );
        }
        assert!(
            !node.check(Operations::PUBLISH, "all.x", 0).allowed,
            "`*` grants a node nothing"
        );
        assert!(
            !node.check(Operations::PUBLISH, "td.x", 0).allowed,
            "nor does a prefix"
        );
        assert!(
            node.check(Operations::PUBLISH, "named.x", 0).allowed,
            "an exact rule does"
        );
        let d = node.check(Operations::PUBLISH, "named.secret", 0);
        assert_eq!(
            d.reason,
            DecisionReason::DeniedByRule,
            "a patterned deny still applies"
        );
        // A superuser entry names its principal exactly.
        let mut root = acl.cache_for_node("spiffe://td/strongbox/node/9");
        assert!(root.check(Operations::PUBLISH, "any.topic", 0).allowed);
        // The view stays node-only across a rule change.
        acl.replace_rules(vec![rule(
            "*",
            "later.*",
            Operations::PUBLISH,
            AclEffect::Allow,
        )])
        .expect("replace");
        assert!(!node.check(Operations::PUBLISH, "later.x", 0).allowed);
        assert!(client.check(Operations::PUBLISH, "later.x", 0).allowed);
    }
}
