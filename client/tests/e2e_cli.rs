//! The `strongbox` end-to-end commands: keyrings, identities, owner keys,
//! signed entries, and `publish`/`subscribe` with e2e flags against the
//! protocol test peer (see `peer/mod.rs`; it is not the broker).

mod peer;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use peer::{Peer, PeerLimits, TestPki};
use tokio::process::Command;

const GUARD: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn strongbox(args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        GUARD,
        Command::new(env!("CARGO_BIN_EXE_strongbox"))
            .args(args)
            .env_remove("STRONGBOX_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("strongbox hung")
    .expect("strongbox ran");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        stderr: String::from_utf8(out.stderr).expect("utf-8"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn keyring_commands_create_rotate_list_and_export_without_showing_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("orders.keyring");

    let run = strongbox(&["keyring", "new", s(&file), "--id", "orders-key"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("with orders-key v1"), "{}", run.stdout);
    assert_eq!(mode(&file), 0o600);
    let run = strongbox(&["keyring", "new", s(&file), "--id", "orders-key"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);

    for expected in [2, 3] {
        let run = strongbox(&["keyring", "rotate", s(&file)]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stdout
                .starts_with(&format!("orders-key v{expected} is now the active key")),
            "{}",
            run.stdout
        );
    }
    assert_eq!(mode(&file), 0o600);

    let secrets: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&file).expect("reads"))
            .expect("json")["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["key"].as_str().expect("hex")[..16].to_owned())
            .collect();

    let run = strongbox(&["keyring", "list", s(&file)]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].starts_with("ID          VERSION  CREATED"),
        "{}",
        lines[0]
    );
    assert!(lines[3].starts_with("orders-key  3"), "{}", lines[3]);
    assert!(lines[3].ends_with("yes"));
    let run_json = strongbox(&["keyring", "list", s(&file), "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&run_json.stdout).expect("json");
    assert_eq!(listed.as_array().expect("array").len(), 3);
    assert_eq!(listed[2]["version"], 3);
    assert_eq!(listed[2]["active"], true);
    for out in [&run.stdout, &run_json.stdout] {
        for secret in &secrets {
            assert!(!out.contains(secret.as_str()), "key bytes listed");
        }
    }

    let v2 = dir.path().join("v2.keyring");
    let run = strongbox(&[
        "keyring",
        "export",
        s(&file),
        "--id",
        "orders-key",
        "--version",
        "2",
        "--out",
        s(&v2),
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mode(&v2), 0o600);
    let run = strongbox(&["--json", "keyring", "list", s(&v2)]).await;
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(listed.as_array().expect("array").len(), 1);
    assert_eq!(listed[0]["version"], 2);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = strongbox(&["keyring", "list", s(&file)]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
}

#[tokio::test]
async fn identities_owner_keys_and_signed_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = dir.path().join("bob.identity");
    let run = strongbox(&[
        "--json",
        "e2e",
        "identity",
        "new",
        s(&identity),
        "--recipient",
        "spiffe://strongbox.dev/bob",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mode(&identity), 0o600);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let public_key = shown["public_key"].as_str().expect("hex").to_owned();
    assert_eq!(public_key.len(), 64);
    let secret = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(&identity).expect("reads"),
    )
    .expect("json")["secret_key"]
        .as_str()
        .expect("hex")
        .to_owned();
    assert!(!run.stdout.contains(&secret[..16]));

    let owner = dir.path().join("owner.key");
    let run = strongbox(&["e2e", "owner", "new", s(&owner)]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mode(&owner), 0o600);
    let owner_pub = dir.path().join("owner.key.pub");
    assert!(owner_pub.exists());
    let pinned = std::fs::read_to_string(&owner_pub).expect("reads");
    assert!(run.stdout.contains(pinned.trim()), "{}", run.stdout);

    let run = strongbox(&[
        "e2e",
        "recipient",
        "sign",
        "--owner-key",
        s(&owner),
        "--topic",
        "demo.health",
        "--recipient",
        "spiffe://strongbox.dev/bob",
        "--public-key",
        &public_key,
        "--expires",
        "30d",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let entry = run.stdout.trim().to_owned();
    assert!(entry.starts_with("53425245"), "{entry}");

    let run = strongbox(&[
        "e2e",
        "recipient",
        "show",
        &entry,
        "--owner-key",
        s(&owner_pub),
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("status       verified"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&public_key));
    let run = strongbox(&[
        "e2e",
        "recipient",
        "show",
        &entry,
        "--owner-key",
        s(&owner_pub),
        "--topic",
        "demo.other",
    ])
    .await;
    assert!(
        run.stdout
            .contains("refused: it is for topic demo.health, not demo.other"),
        "{}",
        run.stdout
    );
}

struct Setup {
    peer: Peer,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        Self { peer, dir }
    }

    fn profile(&self) -> PathBuf {
        self.peer.pki.write_profile(
            self.dir.path(),
            "alice",
            &self.peer.pki.alice,
            &self.peer.addr.to_string(),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_with_a_keyring_under_each_policy() {
    let st = Setup::new().await;
    st.peer.create_topic("demo.x", 1);
    let profile = st.profile();
    let p = s(&profile);
    let keyring = st.path("demo.keyring");
    let k = s(&keyring);
    assert_eq!(
        strongbox(&["keyring", "new", k, "--id", "demo-key"])
            .await
            .code,
        0
    );

    let run = strongbox(&[
        "--profile",
        p,
        "publish",
        "demo.x",
        "--e2e-keyring",
        k,
        "--key",
        "c-1",
        "first",
        "second",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(strongbox(&["keyring", "rotate", k]).await.code, 0);
    let run = strongbox(&[
        "--profile",
        p,
        "publish",
        "demo.x",
        "--e2e-keyring",
        k,
        "--key",
        "c-1",
        "third",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    let stored = st
        .peer
        .shared
        .state
        .lock()
        .expect("state")
        .values("demo.x", 0);
    assert_eq!(stored.len(), 3);
    assert!(
        stored
            .iter()
            .all(|(_, v)| !v.windows(5).any(|w| w == b"first" || w == b"third"))
    );

    // Everything with the full keyring.
    let run = strongbox(&[
        "--profile",
        p,
        "subscribe",
        "demo.x",
        "--e2e-keyring",
        k,
        "--count",
        "3",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let values: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.rsplit(' ').next().expect("value"))
        .collect();
    assert_eq!(values, ["first", "second", "third"]);
    assert!(!run.stdout.contains("strongbox-e2e"), "{}", run.stdout);

    // A reader holding only v2.
    let v2 = st.path("v2.keyring");
    let v2s = s(&v2);
    let run = strongbox(&[
        "keyring",
        "export",
        k,
        "--id",
        "demo-key",
        "--version",
        "2",
        "--out",
        v2s,
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    let run = strongbox(&[
        "--profile",
        p,
        "subscribe",
        "demo.x",
        "--e2e-keyring",
        v2s,
        "--count",
        "3",
    ])
    .await;
    assert_eq!(run.code, 1, "fail is the default");
    assert_eq!(
        run.stderr.trim(),
        "error: record transform failed: record demo.x/0@0: e2e key demo-key v1 is not in the \
         keyring (it holds v2)"
    );

    let run = strongbox(&[
        "--profile",
        p,
        "subscribe",
        "demo.x",
        "--e2e-keyring",
        v2s,
        "--e2e-on-missing-key",
        "skip",
        "--count",
        "1",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.trim_end().ends_with(" third"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 1);
    assert!(
        run.stderr
            .contains("skipped 2 record(s) this reader cannot open: 2 under demo-key v1"),
        "{}",
        run.stderr
    );

    let run = strongbox(&[
        "--profile",
        p,
        "--json",
        "subscribe",
        "demo.x",
        "--e2e-keyring",
        v2s,
        "--e2e-on-missing-key",
        "ciphertext",
        "--count",
        "3",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let records: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 3);
    for r in &records[..2] {
        assert!(r["value_hex"].is_string(), "ciphertext as stored: {r}");
        let names: Vec<&str> = r["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| h["name"].as_str().expect("name"))
            .collect();
        assert!(names.contains(&"strongbox-e2e-error"), "{r}");
    }
    assert_eq!(records[2]["value"], "third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_recipients_refuses_an_unsigned_directory() {
    let st = Setup::new().await;
    st.peer.create_topic("demo.x", 1);
    let profile = st.profile();
    let owner = st.path("owner.key");
    assert_eq!(strongbox(&["e2e", "owner", "new", s(&owner)]).await.code, 0);
    let owner_pub = st.path("owner.key.pub");

    // The test peer's directory holds one entry nobody signed.
    let run = strongbox(&[
        "--profile",
        s(&profile),
        "publish",
        "demo.x",
        "--e2e-recipients",
        "demo.x",
        "--e2e-owner-key",
        s(&owner_pub),
        "hello",
    ])
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "error: recipient entry reader-of-demo.x refused: not a signed recipient entry"
        ),
        "{}",
        run.stderr
    );
    assert!(
        st.peer
            .shared
            .state
            .lock()
            .expect("state")
            .values("demo.x", 0)
            .is_empty()
    );

    let run = strongbox(&[
        "--profile",
        s(&profile),
        "publish",
        "demo.x",
        "--e2e-recipients",
        "demo.other",
        "--e2e-owner-key",
        s(&owner_pub),
        "hello",
    ])
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);

    let run = strongbox(&[
        "--profile",
        s(&profile),
        "recipients",
        "list",
        "demo.x",
        "--owner-key",
        s(&owner_pub),
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("RECIPIENT"), "{}", run.stdout);
    assert!(run.stdout.contains("reader-of-demo.x"));
    assert!(
        run.stdout
            .contains("refused: recipient entry reader-of-demo.x refused")
    );

    // An entry signed with the CLI goes to the directory as is.
    let bob = st.path("bob.identity");
    let run = strongbox(&[
        "--json",
        "e2e",
        "identity",
        "new",
        s(&bob),
        "--recipient",
        "bob",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let public_key = shown["public_key"].as_str().expect("hex").to_owned();
    let fingerprint = shown["fingerprint"].as_str().expect("hex").to_owned();
    let run = strongbox(&[
        "e2e",
        "recipient",
        "sign",
        "--owner-key",
        s(&owner),
        "--topic",
        "demo.x",
        "--recipient",
        "bob",
        "--public-key",
        &public_key,
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let entry = run.stdout.trim().to_owned();
    let run = strongbox(&[
        "--profile",
        s(&profile),
        "recipients",
        "put",
        "demo.other",
        &entry,
    ])
    .await;
    assert_eq!(run.code, 1, "an entry for another topic is not sent");
    assert!(
        run.stderr
            .contains("the entry is for topic demo.x, not demo.other"),
        "{}",
        run.stderr
    );
    let run = strongbox(&[
        "--profile",
        s(&profile),
        "recipients",
        "put",
        "demo.x",
        &entry,
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run.stdout.lines().nth(1).expect("one entry");
    assert!(line.starts_with("bob"), "{line}");
    assert!(line.contains(&fingerprint), "{line}");
    let run = strongbox(&[
        "--profile",
        s(&profile),
        "recipients",
        "remove",
        "demo.x",
        "bob",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "header only: {}", run.stdout);

    // Records sealed to bob (by a library producer) open with his identity.
    let set = strongbox_client::e2e::RecipientSet::from_trusted_keys(
        "demo.x",
        vec![strongbox_client::e2e::Recipient {
            id: "bob".into(),
            public_key: strongbox_client::e2e::RecipientKey::from_hex(&public_key).expect("hex"),
            expires_at: None,
        }],
    )
    .expect("set");
    let client = strongbox_client::Client::connect(st.peer.client_config(&st.peer.pki.alice))
        .await
        .expect("connects");
    let producer = client
        .producer(strongbox_client::ProducerConfig {
            sealer: Some(Arc::new(
                strongbox_client::e2e::E2eSealer::recipients([set]).expect("sealer"),
            )),
            ..strongbox_client::ProducerConfig::default()
        })
        .await
        .expect("producer");
    producer
        .send_and_wait(strongbox_client::ProducerRecord::new(
            "demo.x",
            "for bob only",
        ))
        .await
        .expect("sent");
    producer.close().await.expect("closed");
    client.close().await;
    let run = strongbox(&[
        "--profile",
        s(&profile),
        "subscribe",
        "demo.x",
        "--e2e-identity",
        s(&bob),
        "--count",
        "1",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.trim_end().ends_with(" for bob only"),
        "{}",
        run.stdout
    );
    let stranger = st.path("stranger.identity");
    assert_eq!(
        strongbox(&["e2e", "identity", "new", s(&stranger)])
            .await
            .code,
        0
    );
    let run = strongbox(&[
        "--profile",
        s(&profile),
        "subscribe",
        "demo.x",
        "--e2e-identity",
        s(&stranger),
        "--count",
        "1",
    ])
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("record demo.x/0@0: e2e record is sealed to recipients bob ("),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn e2e_flags_are_checked_by_the_parser() {
    for (args, why) in [
        (
            vec!["publish", "t", "--e2e-recipients", "t", "m"],
            "needs --e2e-owner-key",
        ),
        (
            vec![
                "publish",
                "t",
                "--e2e-keyring",
                "k",
                "--e2e-recipients",
                "t",
                "--e2e-owner-key",
                "o",
                "m",
            ],
            "one key source",
        ),
        (
            vec!["publish", "t", "--e2e-key-id", "x", "m"],
            "needs a keyring",
        ),
        (
            vec!["subscribe", "t", "--e2e-on-missing-key", "ignore"],
            "unknown policy",
        ),
    ] {
        let run = strongbox(&args).await;
        assert_eq!(run.code, 2, "{why}: {}", run.stderr);
    }
}
