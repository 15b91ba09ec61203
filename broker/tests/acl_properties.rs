//! Properties of the ACL engine, against a naive reference implementation
//! that reads the rules of DESIGN.md literally.

use std::sync::Arc;

use proptest::prelude::*;
use strongbox_broker::acl::{Acl, AclSnapshot, DecisionReason};
use strongbox_protocol::model::{AclEffect, AclRule, Operations};

const PRINCIPALS: &[&str] = &["alice", "bob", "svc-a", "svc-b", "spiffe://corp/x", "root"];
const TOPICS: &[&str] = &["demo.x", "demo.y", "orders", "orders.1", "audit", "d"];
const PRINCIPAL_PATTERNS: &[&str] = &[
    "*",
    "alice",
    "bob",
    "svc-*",
    "svc-a",
    "spiffe://corp/*",
    "s*",
    "nobody",
];
const TOPIC_PATTERNS: &[&str] = &[
    "*", "demo.*", "demo.x", "orders*", "orders", "orders.*", "d*", "zzz",
];

/// Every single operation.
fn single_op() -> impl Strategy<Value = Operations> {
    prop::sample::select(
        Operations::NAMED
            .iter()
            .map(|(o, _)| *o)
            .collect::<Vec<_>>(),
    )
}

fn rule() -> impl Strategy<Value = AclRule> {
    (
        prop::sample::select(PRINCIPAL_PATTERNS),
        prop::sample::select(TOPIC_PATTERNS),
        1..=Operations::VALID,
        any::<bool>(),
        prop::option::of(0i64..200),
    )
        .prop_map(|(p, t, ops, deny, expires_at)| AclRule {
            principal: p.to_string(),
            topic: t.to_string(),
            operations: Operations(ops),
            effect: if deny {
                AclEffect::Deny
            } else {
                AclEffect::Allow
            },
            expires_at,
        })
}

fn rules() -> impl Strategy<Value = Vec<AclRule>> {
    prop::collection::vec(rule(), 0..12)
}

fn superusers() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(PRINCIPALS).prop_map(String::from),
        0..2,
    )
}

/// DESIGN.md, read literally.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn reference(
    supers: &[String],
    rules: &[AclRule],
    principal: &str,
    op: Operations,
    topic: &str,
    now: i64,
) -> bool {
    if supers.iter().any(|s| s == principal) {
        return true;
    }
    let applicable: Vec<&AclRule> = rules
        .iter()
        .filter(|r| pattern_matches(&r.principal, principal))
        .filter(|r| pattern_matches(&r.topic, topic))
        .filter(|r| r.operations.contains(Operations::ADMIN) || r.operations.contains(op))
        .filter(|r| r.expires_at.is_none_or(|t| now < t))
        .collect();
    if applicable.iter().any(|r| r.effect == AclEffect::Deny) {
        return false;
    }
    applicable.iter().any(|r| r.effect == AclEffect::Allow)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_matcher_agrees_with_reference(
        supers in superusers(),
        rules in rules(),
        principal in prop::sample::select(PRINCIPALS),
        topic in prop::sample::select(TOPICS),
        op in single_op(),
        now in 0i64..220,
    ) {
        let expected = reference(&supers, &rules, principal, op, topic, now);
        let snap = AclSnapshot::compile(1, supers.clone(), rules.clone()).unwrap();
        let d = snap.check(principal, op, topic, now);
        prop_assert_eq!(d.allowed, expected);
        // The per-connection view decides the same.
        prop_assert_eq!(snap.for_principal(principal).check(op, topic, now).allowed, expected);
        // The rule reported is one that really decided.
        match d.reason {
            DecisionReason::Superuser => prop_assert!(supers.iter().any(|s| s == principal)),
            DecisionReason::NoMatchingRule => prop_assert!(d.matched_rule.is_none()),
            DecisionReason::DeniedByRule | DecisionReason::AllowedByRule => {
                let r = d.matched_rule.clone().unwrap();
                prop_assert_eq!(r.effect == AclEffect::Deny, d.reason == DecisionReason::DeniedByRule);
                prop_assert!(reference(&[], &[(*r).clone()], principal, op, topic, now) == (r.effect == AclEffect::Allow));
            }
        }
    }

    #[test]
    fn deny_always_wins(
        rules in rules(),
        principal in prop::sample::select(PRINCIPALS),
        topic in prop::sample::select(TOPICS),
        op in single_op(),
        now in 0i64..220,
    ) {
        let mut rules = rules;
        rules.push(AclRule {
            principal: principal.to_string(),
            topic: topic.to_string(),
            operations: op,
            effect: AclEffect::Deny,
            expires_at: None,
        });
        let acl = Acl::new([], rules).unwrap();
        let d = acl.check(principal, op, topic, now);
        prop_assert!(!d.allowed);
        prop_assert_eq!(d.reason, DecisionReason::DeniedByRule);
    }

    #[test]
    fn no_rule_means_deny(
        principal in prop::sample::select(PRINCIPALS),
        topic in prop::sample::select(TOPICS),
        op in single_op(),
    ) {
        let acl = Acl::new([], vec![]).unwrap();
        let d = acl.check(principal, op, topic, 0);
        prop_assert!(!d.allowed);
        prop_assert_eq!(d.reason, DecisionReason::NoMatchingRule);
        prop_assert_eq!(
            d.denial(principal, op, topic).unwrap().to_string(),
            format!("not authorized: {principal} may not {op} {topic}")
        );
    }

    #[test]
    fn superusers_are_allowed_whatever_the_rules(
        rules in rules(),
        principal in prop::sample::select(PRINCIPALS),
        topic in prop::sample::select(TOPICS),
        op in single_op(),
        now in 0i64..220,
    ) {
        let mut rules = rules;
        rules.push(AclRule {
            principal: "*".into(),
            topic: "*".into(),
            operations: Operations::ADMIN,
            effect: AclEffect::Deny,
            expires_at: None,
        });
        let acl = Acl::new([principal.to_string()], rules).unwrap();
        let d = acl.check(principal, op, topic, now);
        prop_assert!(d.allowed);
        prop_assert_eq!(d.reason, DecisionReason::Superuser);
    }

    #[test]
    fn expired_rules_are_ignored(
        rules in rules(),
        principal in prop::sample::select(PRINCIPALS),
        topic in prop::sample::select(TOPICS),
        op in single_op(),
        now in 0i64..220,
    ) {
        let live: Vec<AclRule> = rules.iter().filter(|r| r.expires_at.is_none_or(|t| now < t)).cloned().collect();
        let all = Acl::new([], rules).unwrap();
        let only_live = Acl::new([], live).unwrap();
        prop_assert_eq!(
            all.check(principal, op, topic, now).allowed,
            only_live.check(principal, op, topic, now).allowed
        );
    }

    #[test]
    fn open_connection_caches_follow_every_change(
        changes in prop::collection::vec(rules(), 1..6),
        principal in prop::sample::select(PRINCIPALS),
        topic in prop::sample::select(TOPICS),
        op in single_op(),
    ) {
        let acl = Arc::new(Acl::new([], vec![]).unwrap());
        let mut cache = acl.cache_for(principal);
        let mut last = acl.generation();
        for rules in changes {
            let expected = reference(&[], &rules, principal, op, topic, 0);
            let g = acl.replace_rules(rules).unwrap();
            prop_assert!(g > last);
            last = g;
            prop_assert_eq!(cache.check(op, topic, 0).allowed, expected);
        }
    }
}

#[test]
fn admin_grants_and_denies_every_operation() {
    let allow_admin = AclRule {
        principal: "ops".into(),
        topic: "orders.*".into(),
        operations: Operations::ADMIN,
        effect: AclEffect::Allow,
        expires_at: None,
    };
    let acl = Acl::new([], vec![allow_admin]).unwrap();
    for (op, name) in Operations::NAMED {
        assert!(acl.check("ops", *op, "orders.eu", 0).allowed, "{name}");
        assert!(!acl.check("ops", *op, "payments", 0).allowed, "{name}");
    }
}

#[test]
fn time_boxed_grant_expires() {
    let acl = Acl::new(
        [],
        vec![AclRule {
            principal: "contractor".into(),
            topic: "demo.*".into(),
            operations: Operations::SUBSCRIBE,
            effect: AclEffect::Allow,
            expires_at: Some(1_000),
        }],
    )
    .unwrap();
    assert!(
        acl.check("contractor", Operations::SUBSCRIBE, "demo.a", 999)
            .allowed
    );
    assert!(
        !acl.check("contractor", Operations::SUBSCRIBE, "demo.a", 1_000)
            .allowed
    );
}
