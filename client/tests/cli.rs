//! The `strongbox` binary: exit codes, output, and its commands against the
//! protocol test peer (see `peer/mod.rs`; it is not the broker).

mod peer;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use peer::{Peer, PeerLimits, TestPki};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const GUARD: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `strongbox` with `args` (and `stdin`), without the caller's
/// profile variable.
async fn strongbox(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strongbox"));
    cmd.args(args)
        .env_remove("STRONGBOX_PROFILE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn strongbox");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .expect("strongbox hung")
        .expect("strongbox ran");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        stderr: String::from_utf8(out.stderr).expect("utf-8"),
    }
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

    fn profile(&self, name: &str) -> PathBuf {
        let who = match name {
            "alice" => &self.peer.pki.alice,
            "bob" => &self.peer.pki.bob,
            _ => &self.peer.pki.admin,
        };
        self.peer
            .pki
            .write_profile(self.dir.path(), name, who, &self.peer.addr.to_string())
    }
}

#[tokio::test]
async fn usage_errors_exit_with_2() {
    for args in [
        &["publish", "t", "--header", "novalue", "m"][..],
        &["subscribe", "t", "--from", "yesterday"],
        &["subscribe", "t", "--from", "@2026-01-31"],
        &["topic", "create", "t", "--durability", "sometimes"],
        &[
            "acl",
            "grant",
            "--principal",
            "p",
            "--topic",
            "t",
            "--op",
            "fly",
        ],
        &["no-such-command"],
        // No profile and no --broker/--ca/--cert/--key.
        &["whoami"],
    ] {
        let run = strongbox(args, None).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("error"), "{args:?}: {}", run.stderr);
    }
}

#[tokio::test]
async fn help_explains_the_commands_with_examples() {
    let run = strongbox(&["--help"], None).await;
    assert_eq!(run.code, 0);
    for word in [
        "whoami",
        "publish",
        "subscribe",
        "topic",
        "acl",
        "STRONGBOX_PROFILE",
        "Examples",
    ] {
        assert!(run.stdout.contains(word), "--help lacks {word}");
    }
    let run = strongbox(&["subscribe", "--help"], None).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("--from earliest"), "{}", run.stdout);
}

#[tokio::test]
async fn a_failure_exits_with_1_and_a_one_line_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "broker = \"127.0.0.1:1\"\nca = \"missing-ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    )
    .expect("write");
    let run = strongbox(
        &["--profile", profile.to_str().expect("utf-8"), "whoami"],
        None,
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: cannot load CA certificates from "),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_may_not_publish() {
    let s = Setup::new().await;
    s.peer.create_topic("demo.greetings", 1);
    s.peer
        .deny("spiffe://strongbox.dev/bob", "publish", "demo.greetings");
    let bob = s.profile("bob");
    let run = strongbox(
        &[
            "--profile",
            bob.to_str().expect("utf-8"),
            "publish",
            "demo.greetings",
            "hi",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "error: not authorized: spiffe://strongbox.dev/bob may not publish demo.greetings\n"
    );
    assert_eq!(run.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_subscribe() {
    let s = Setup::new().await;
    s.peer.create_topic("demo.greetings", 1);
    let alice = s.profile("alice");
    let alice = alice.to_str().expect("utf-8");

    let run = strongbox(&["--profile", alice, "whoami"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "principal     spiffe://strongbox.dev/alice\nbroker        test-peer\nsuperuser     no\n\
         key exchange  X25519MLKEM768\n"
    );

    let run = strongbox(
        &[
            "--profile",
            alice,
            "publish",
            "demo.greetings",
            "--key",
            "user-7",
            "--header",
            "kind=greeting",
            "hello",
            "world",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "demo.greetings[0]@0\ndemo.greetings[0]@1\n");

    // One record per line of standard input.
    let run = strongbox(
        &["--profile", alice, "--json", "publish", "demo.greetings"],
        Some("three\nfour\r\n"),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "{\"offset\":2,\"partition\":0,\"topic\":\"demo.greetings\"}\n\
         {\"offset\":3,\"partition\":0,\"topic\":\"demo.greetings\"}\n"
    );

    let run = strongbox(
        &[
            "--profile",
            alice,
            "subscribe",
            "demo.greetings",
            "--from",
            "1",
            "--count",
            "3",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[0]["value"], "world");
    assert_eq!(lines[0]["key"], "user-7");
    assert_eq!(lines[0]["headers"][0]["name"], "kind");
    assert_eq!(lines[0]["headers"][0]["value"], "greeting");
    assert_eq!(lines[2]["value"], "four");
    assert_eq!(lines[2]["key"], serde_json::Value::Null);

    let run = strongbox(
        &[
            "--profile",
            alice,
            "subscribe",
            "demo.greetings",
            "--partition",
            "0",
            "--count",
            "1",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("demo.greetings[0]@0 ")
            && run.stdout.ends_with(" user-7 {kind=greeting} hello\n"),
        "{}",
        run.stdout
    );

    // A group commits what it printed; the next run resumes after it.
    for expected in ["hello", "world"] {
        let run = strongbox(
            &[
                "--profile",
                alice,
                "--json",
                "subscribe",
                "demo.greetings",
                "--group",
                "g1",
                "--count",
                "1",
            ],
            None,
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let line: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("json");
        assert_eq!(line["value"], expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_acl_commands() {
    let s = Setup::new().await;
    let admin = s.profile("admin");
    let admin = admin.to_str().expect("utf-8");

    let run = strongbox(
        &[
            "--profile",
            admin,
            "topic",
            "create",
            "demo.orders",
            "--partitions",
            "3",
            "--retention",
            "7d",
            "--durability",
            "interval:100",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("partitions     3\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("retention      7days\n"),
        "{}",
        run.stdout
    );

    let run = strongbox(&["--profile", admin, "topic", "list"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("NAME         PARTITIONS"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("demo.orders  3 "), "{}", run.stdout);

    let run = strongbox(
        &[
            "--profile",
            admin,
            "--json",
            "topic",
            "describe",
            "demo.orders",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let topic: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(topic["partitions"], 3);
    assert_eq!(topic["partition_state"].as_array().map(Vec::len), Some(3));

    let run = strongbox(
        &["--profile", admin, "topic", "create", "demo.orders"],
        None,
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "error: topic demo.orders already exists\n");

    let run = strongbox(
        &[
            "--profile",
            admin,
            "acl",
            "grant",
            "--principal",
            "spiffe://strongbox.dev/bob",
            "--topic",
            "demo.*",
            "--op",
            "publish,subscribe",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "PRINCIPAL                   TOPIC   OPERATIONS         EFFECT  EXPIRES\n\
         spiffe://strongbox.dev/bob  demo.*  publish,subscribe  allow   never\n"
    );
    let run = strongbox(
        &[
            "--profile",
            admin,
            "--json",
            "acl",
            "list",
            "--topic",
            "demo.*",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rules: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(
        rules[0]["operations"],
        serde_json::json!(["publish", "subscribe"])
    );

    let run = strongbox(
        &["--profile", admin, "topic", "delete", "demo.orders"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "deleted topic demo.orders\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_connection_flags_work_without_a_profile() {
    let s = Setup::new().await;
    s.profile("alice");
    let dir = s.dir.path();
    let path = |f: &str| dir.join(f).to_str().expect("utf-8").to_owned();
    let broker = s.peer.addr.to_string();
    let (ca, cert, key) = (path("ca.pem"), path("alice.pem"), path("alice.key"));
    let run = strongbox(
        &[
            "--broker",
            &broker,
            "--server-name",
            "localhost",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--json",
            "whoami",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "{\"broker_id\":\"test-peer\",\"key_exchange\":\"X25519MLKEM768\",\"principal\":\"spiffe://strongbox.dev/alice\",\"superuser\":false}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_a_subscription_cleanly() {
    use tokio::io::AsyncBufReadExt;

    let s = Setup::new().await;
    s.peer.create_topic("demo.tail", 1);
    let alice = s.profile("alice");
    let run = strongbox(
        &[
            "--profile",
            alice.to_str().expect("utf-8"),
            "publish",
            "demo.tail",
            "first",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    let mut child = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args([
            "--profile",
            alice.to_str().expect("utf-8"),
            "subscribe",
            "demo.tail",
        ])
        .env_remove("STRONGBOX_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(GUARD, lines.next_line())
        .await
        .expect("hung")
        .expect("read")
        .expect("a line");
    assert!(first.ends_with(" - first"), "{first}");
    // The subscription is live; interrupt it as a person would.
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = tokio::time::timeout(GUARD, child.wait())
        .await
        .expect("exits after Ctrl-C")
        .expect("status");
    assert_eq!(status.code(), Some(0));
}
