//! HPKE recipients: who can read, signed directory entries the producer
//! accepts or refuses, removal, and identity/owner key files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use strongbox_client::e2e::{
    E2eError, E2eOpener, E2eSealer, EntryProblem, Identity, OwnerKey, OwnerPublicKey,
    RecipientGrant, RecipientKey, RecipientSet, SealedWith, SignedRecipientEntry, UnreadablePolicy,
    sealed_with, verify_entry,
};
use strongbox_client::protocol::model::RecipientEntry;
use strongbox_client::{
    ClientError, ConsumedRecord, Opened, ProducerRecord, ValueOpener, ValueSealer,
};

const TOPIC: &str = "demo.health";
const NOW: i64 = 1_769_850_000_000;
const DAY: i64 = 86_400_000;

fn delivered(r: &ProducerRecord, offset: u64) -> ConsumedRecord {
    ConsumedRecord {
        topic: r.topic.as_str().into(),
        partition: 0,
        offset,
        timestamp: 0,
        key: r.key.clone(),
        headers: r.headers.clone(),
        value: r.value.clone(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

struct World {
    _dir: tempfile::TempDir,
    owner: OwnerKey,
    pinned: OwnerPublicKey,
    bob: Identity,
    carol: Identity,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = OwnerKey::create(dir.path().join("owner.key")).expect("owner");
        let pinned = owner.public_key();
        Self {
            _dir: dir,
            owner,
            pinned,
            bob: Identity::generate(Some("bob")).expect("bob"),
            carol: Identity::generate(Some("carol")).expect("carol"),
        }
    }

    fn grant(&self, who: &Identity, topic: &str, expires_at: Option<i64>) -> RecipientGrant {
        RecipientGrant {
            topic: topic.into(),
            recipient: who.recipient().expect("named").into(),
            public_key: who.public_key(),
            created_at: NOW - DAY,
            expires_at,
        }
    }

    fn entry(&self, who: &Identity) -> RecipientEntry {
        self.grant(who, TOPIC, None)
            .sign_entry(&self.owner)
            .expect("signs")
    }
}

fn seal(sealer: &E2eSealer, value: &str) -> ProducerRecord {
    let mut r = ProducerRecord::new(TOPIC, value.to_owned()).key("patient-1");
    sealer.seal(&mut r).expect("seals");
    r
}

#[test]
fn recipients_read_and_a_non_recipient_gets_a_per_record_error() {
    let w = World::new();
    let set = RecipientSet::verify(TOPIC, &w.pinned, &[w.entry(&w.bob), w.entry(&w.carol)], NOW)
        .strict()
        .expect("both verify");
    let sealer = E2eSealer::recipients([set]).expect("sealer");
    let sealed = seal(&sealer, "blood type 0+");

    let SealedWith::Recipients(names) =
        sealed_with(sealed.headers.last().map(|(_, v)| &v[..]).expect("header")).expect("parses")
    else {
        panic!("a recipients header")
    };
    let ids: Vec<&str> = names.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["bob", "carol"]);

    for reader in [w.bob, w.carol] {
        let opener = E2eOpener::new(UnreadablePolicy::Fail).with_identity(reader);
        let mut r = delivered(&sealed, 4);
        assert_eq!(opener.open(&mut r).expect("opens"), Opened::Deliver);
        assert_eq!(r.value, "blood type 0+".as_bytes());
    }

    let dave = Identity::generate(Some("dave")).expect("dave");
    let dave_fp = dave.public_key().fingerprint_hex();
    let opener = E2eOpener::new(UnreadablePolicy::Fail).with_identity(dave);
    let err = opener
        .open(&mut delivered(&sealed, 4))
        .expect_err("not a recipient");
    let ClientError::Transform(text) = err else {
        panic!("a transform error")
    };
    assert!(
        text.starts_with("record demo.health/0@4: e2e record is sealed to recipients bob ("),
        "{text}"
    );
    assert!(text.contains(&format!(
        "this reader's identity dave ({dave_fp}) is not one of them"
    )));

    let skipper = E2eOpener::new(UnreadablePolicy::Skip)
        .with_identity(Identity::generate(None).expect("anon"));
    assert_eq!(
        skipper.open(&mut delivered(&sealed, 4)).expect("skips"),
        Opened::Skip
    );
    assert_eq!(skipper.unreadable().values().sum::<u64>(), 1);
}

#[test]
fn the_producer_accepts_only_entries_signed_by_the_pinned_owner_for_this_topic() {
    let w = World::new();
    let mallory_dir = tempfile::tempdir().expect("tempdir");
    let mallory = OwnerKey::create(mallory_dir.path().join("m.key")).expect("mallory");
    let eve = Identity::generate(Some("eve")).expect("eve");

    let good = w.entry(&w.bob);
    let unsigned = RecipientEntry {
        recipient: "eve".into(),
        entry: Bytes::from(eve.public_key().as_bytes().to_vec()),
    };
    let other_signer = RecipientEntry {
        recipient: "eve".into(),
        entry: w.grant(&eve, TOPIC, None).sign(&mallory).expect("signs"),
    };
    let mut forged = w
        .grant(&eve, TOPIC, None)
        .sign(&w.owner)
        .expect("signs")
        .to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let bad_signature = RecipientEntry {
        recipient: "eve".into(),
        entry: Bytes::from(forged),
    };
    // A valid signature over bob's entry with eve's key swapped in.
    let mut swapped = w.entry(&w.bob).entry.to_vec();
    let at = swapped
        .windows(32)
        .position(|win| win == w.bob.public_key().as_bytes())
        .expect("bob's key");
    swapped[at..at + 32].copy_from_slice(eve.public_key().as_bytes());
    let key_swapped = RecipientEntry {
        recipient: "bob".into(),
        entry: Bytes::from(swapped),
    };
    let other_topic = w
        .grant(&eve, "demo.other", None)
        .sign_entry(&w.owner)
        .expect("signs");
    let expired = w
        .grant(&w.carol, TOPIC, Some(NOW - 1))
        .sign_entry(&w.owner)
        .expect("signs");
    let misfiled = RecipientEntry {
        recipient: "eve".into(),
        entry: w.entry(&w.bob).entry,
    };

    let entries = [
        good,
        unsigned,
        other_signer,
        bad_signature,
        key_swapped,
        other_topic,
        expired,
        misfiled,
    ];
    let verified = RecipientSet::verify(TOPIC, &w.pinned, &entries, NOW);
    let ids: Vec<&str> = verified
        .set
        .recipients()
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["bob"], "only the good entry is accepted");
    assert_eq!(verified.set.recipients()[0].public_key, w.bob.public_key());

    let problems: Vec<(String, EntryProblem)> = verified
        .refused
        .iter()
        .map(|e| match e {
            E2eError::Entry { recipient, problem } => (recipient.clone(), problem.clone()),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(problems.len(), 7);
    assert!(matches!(&problems[0], (r, EntryProblem::Malformed(_)) if r == "eve"));
    assert!(
        matches!(&problems[1], (_, EntryProblem::OtherSigner { signer, pinned })
            if *signer == mallory.public_key().fingerprint_hex() && *pinned == w.pinned.fingerprint_hex())
    );
    assert_eq!(problems[2].1, EntryProblem::BadSignature);
    assert_eq!(problems[3], ("bob".into(), EntryProblem::BadSignature));
    assert_eq!(
        problems[4].1,
        EntryProblem::OtherTopic {
            entry_topic: "demo.other".into(),
            expected: TOPIC.into()
        }
    );
    assert!(
        matches!(&problems[5], (r, EntryProblem::Expired { expires_at }) if r == "carol" && *expires_at == NOW - 1)
    );
    assert_eq!(
        problems[6],
        (
            "eve".into(),
            EntryProblem::OtherRecipient {
                named: "bob".into()
            }
        )
    );
    assert_eq!(
        verified.refused[0].to_string(),
        "recipient entry eve refused: not a signed recipient entry (no SBRE magic)"
    );
    assert_eq!(
        verified.refused[5].to_string(),
        "recipient entry carol refused: it expired at 2026-01-31T08:59:59.999Z"
    );

    // Strict: a forged entry stops the producer, naming the entry.
    let err = verified.strict().expect_err("a forged entry is fatal");
    assert!(
        err.to_string().starts_with("recipient entry eve refused"),
        "{err}"
    );

    // An expired entry alone is left out, not fatal.
    let set = RecipientSet::verify(
        TOPIC,
        &w.pinned,
        &[entries[0].clone(), entries[6].clone()],
        NOW,
    )
    .strict()
    .expect("expired entries are only left out");
    assert_eq!(set.recipients().len(), 1);
    // Nothing valid at all.
    assert!(matches!(
        RecipientSet::verify(TOPIC, &w.pinned, &[entries[6].clone()], NOW).strict(),
        Err(E2eError::NoRecipients { .. })
    ));
    assert!(matches!(
        RecipientSet::verify(TOPIC, &w.pinned, &[], NOW).strict(),
        Err(E2eError::NoRecipients { .. })
    ));
}

#[test]
fn of_two_entries_for_one_recipient_the_newest_wins() {
    let w = World::new();
    let new_key = Identity::generate(Some("bob")).expect("bob's new key");
    let mut newer = w.grant(&new_key, TOPIC, None);
    newer.created_at = NOW - 10;
    let entries = [newer.sign_entry(&w.owner).expect("signs"), w.entry(&w.bob)];
    let set = RecipientSet::verify(TOPIC, &w.pinned, &entries, NOW)
        .strict()
        .expect("verifies");
    assert_eq!(set.recipients().len(), 1);
    assert_eq!(set.recipients()[0].public_key, new_key.public_key());
}

#[test]
fn a_removed_recipient_cannot_read_records_sealed_after_removal() {
    let w = World::new();
    let both = RecipientSet::verify(TOPIC, &w.pinned, &[w.entry(&w.bob), w.entry(&w.carol)], NOW)
        .strict()
        .expect("verifies");
    let sealer = E2eSealer::recipients([both]).expect("sealer");
    let before = seal(&sealer, "before");
    let only_bob = RecipientSet::verify(TOPIC, &w.pinned, &[w.entry(&w.bob)], NOW)
        .strict()
        .expect("verifies");
    sealer.set_recipients(only_bob).expect("recipients sealer");
    let after = seal(&sealer, "after");

    let carol = E2eOpener::new(UnreadablePolicy::Fail).with_identity(w.carol);
    let mut r = delivered(&before, 0);
    carol
        .open(&mut r)
        .expect("carol read what was sealed to her");
    assert_eq!(r.value, "before".as_bytes());
    let err = carol.open(&mut delivered(&after, 1)).expect_err("removed");
    assert!(
        err.to_string().contains("sealed to recipients bob ("),
        "{err}"
    );

    let bob = E2eOpener::new(UnreadablePolicy::Fail).with_identity(w.bob);
    for (r, v) in [(&before, "before"), (&after, "after")] {
        let mut c = delivered(r, 0);
        bob.open(&mut c).expect("bob reads both");
        assert_eq!(c.value, v.as_bytes());
    }
}

#[test]
fn entries_round_trip_through_their_bytes_and_verify_for_the_broker_side() {
    let w = World::new();
    let grant = w.grant(&w.bob, TOPIC, Some(NOW + 30 * DAY));
    let entry = grant.sign_entry(&w.owner).expect("signs");
    assert_eq!(entry.recipient, "bob");
    let decoded = SignedRecipientEntry::decode(entry.entry.clone()).expect("decodes");
    assert_eq!(decoded.grant, grant);
    assert_eq!(decoded.signer, w.pinned);
    assert_eq!(decoded.bytes(), &entry.entry);
    assert_eq!(
        verify_entry(&entry, &w.pinned, TOPIC, NOW),
        Ok(grant.clone())
    );
    assert!(matches!(
        verify_entry(&entry, &w.pinned, TOPIC, NOW + 31 * DAY),
        Err(E2eError::Entry {
            problem: EntryProblem::Expired { .. },
            ..
        })
    ));
}

#[test]
fn identity_and_owner_files_are_private_and_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = dir.path().join("bob.identity");
    let bob = Identity::generate(Some("spiffe://strongbox.dev/bob")).expect("bob");
    bob.create(&id_file).expect("created");
    assert_eq!(mode(&id_file), 0o600);
    assert!(bob.create(&id_file).is_err(), "no overwrite");
    let text = std::fs::read_to_string(&id_file).expect("reads");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let secret = json["secret_key"].as_str().expect("hex").to_owned();
    assert_eq!(secret.len(), 64);
    let loaded = Identity::load(&id_file).expect("loads");
    assert_eq!(loaded.public_key(), bob.public_key());
    assert_eq!(loaded.recipient(), Some("spiffe://strongbox.dev/bob"));
    let opener = E2eOpener::new(UnreadablePolicy::Fail).with_identity(loaded);
    for shown in [
        format!("{bob:?}"),
        format!("{bob:#?}"),
        format!("{opener:?}"),
    ] {
        assert!(!shown.contains(&secret[..16]), "secret in {shown}");
        assert!(shown.contains(&bob.public_key().fingerprint_hex()));
    }
    std::fs::set_permissions(&id_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(matches!(
        Identity::load(&id_file),
        Err(E2eError::Permissions { mode: 0o640, .. })
    ));

    let owner_file = dir.path().join("owner.key");
    let owner = OwnerKey::create(&owner_file).expect("owner");
    assert_eq!(mode(&owner_file), 0o600);
    let pkcs8 = std::fs::read(&owner_file).expect("reads");
    let loaded = OwnerKey::load(&owner_file).expect("loads");
    assert_eq!(loaded.public_key(), owner.public_key());
    let shown = format!("{owner:?}");
    // The PKCS#8 document holds the 32-byte seed after a 16-byte prefix.
    let seed_hex = hex::encode(&pkcs8[16..48]);
    assert!(!shown.contains(&seed_hex[..16]), "seed in {shown}");
    assert!(shown.contains(&owner.public_key().to_string()));

    let pub_file = dir.path().join("owner.key.pub");
    owner.public_key().create(&pub_file).expect("created");
    assert_eq!(
        OwnerPublicKey::load(&pub_file).expect("loads"),
        owner.public_key()
    );
    assert!(OwnerPublicKey::from_hex("abcd").is_err());
    assert!(RecipientKey::from_hex("not hex").is_err());
}
