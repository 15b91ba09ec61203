//! Identity extraction never panics on untrusted DER, and the mapping-rule
//! matcher agrees with a naive backtracking matcher.

use proptest::prelude::*;
use strongbox_broker::identity::{MappingRule, extract_identity};
use strongbox_broker::pki::{CertSpec, TestCa};

/// Naive backtracking: can `literals` (separated by non-empty wildcards)
/// match the whole of `name`?
fn naive_matches(literals: &[&str], name: &str) -> bool {
    fn go(lits: &[&str], rest: &str, first: bool) -> bool {
        let Some((lit, more)) = lits.split_first() else {
            return rest.is_empty();
        };
        if first {
            return rest.strip_prefix(lit).is_some_and(|r| go(more, r, false));
        }
        // A wildcard takes 1..n characters, then `lit` follows.
        let bounds: Vec<usize> = rest
            .char_indices()
            .map(|(i, _)| i)
            .chain([rest.len()])
            .filter(|&end| end > 0)
            .collect();
        bounds.into_iter().any(|end| {
            rest.get(end..)
                .and_then(|after| after.strip_prefix(lit))
                .is_some_and(|r| go(more, r, false))
        })
    }
    go(literals, name, true)
}

fn piece() -> impl Strategy<Value = String> {
    prop::string::string_regex("[ab/é]{0,3}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn rule_matcher_agrees_with_backtracking(
        first in piece(),
        middle in prop::collection::vec(prop::string::string_regex("[ab/é]{1,3}").unwrap(), 0..3),
        last in piece(),
        wildcard in any::<bool>(),
        name in prop::string::string_regex("[ab/é]{0,10}").unwrap(),
    ) {
        // A pattern: first (* middle)* [* last] — wildcards never adjacent.
        let mut literals: Vec<String> = vec![first];
        literals.extend(middle);
        if wildcard {
            literals.push(last);
        }
        let pattern = literals.join("*");
        prop_assume!(!pattern.is_empty());
        let count = literals.len() - 1;
        let template: String = (0..=count).map(|i| format!("<{{{i}}}>")).collect();
        let rule = MappingRule::parse(&pattern, &template).unwrap();
        let lits: Vec<&str> = literals.iter().map(String::as_str).collect();
        let out = rule.apply(&name);
        prop_assert_eq!(out.is_some(), naive_matches(&lits, &name), "pattern {:?} name {:?}", pattern, name);
        if let Some(out) = out {
            // The captures put back between the literals rebuild the name.
            let parts: Vec<&str> = out.trim_start_matches('<').trim_end_matches('>').split("><").collect();
            prop_assert_eq!(parts.len(), count + 1);
            prop_assert_eq!(parts[0], name.as_str());
            let mut rebuilt = literals[0].clone();
            for (cap, lit) in parts[1..].iter().zip(&literals[1..]) {
                prop_assert!(!cap.is_empty());
                rebuilt.push_str(cap);
                rebuilt.push_str(lit);
            }
            prop_assert_eq!(rebuilt, name);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = extract_identity(&bytes);
    }
}

#[test]
fn mutated_certificates_never_panic() {
    let ca = TestCa::new("t").unwrap();
    let mut spec = CertSpec::client_uri("spiffe://t/a");
    spec.dns = vec!["a.t".into()];
    spec.common_name = Some("a".into());
    let der = ca.issue(&spec).unwrap().cert_der.to_vec();
    assert!(extract_identity(&der).is_ok());
    // Every single-byte change, every truncation, and trailing garbage.
    for i in 0..der.len() {
        for delta in [1u8, 0x80, 0xff] {
            let mut m = der.clone();
            m[i] = m[i].wrapping_add(delta);
            let _ = extract_identity(&m);
        }
        let _ = extract_identity(&der[..i]);
    }
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(extract_identity(&trailing).is_err());
}
