//! The command line: global options and one type per command.
//!
//! New command groups (`keys`, `audit`, `access`, `keyring`) add a variant
//! to [`Command`] with their own `Subcommand` enum and a module under
//! `commands/`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use strongbox_client::protocol::model::{Durability, Operations};
use strongbox_client::{KeyExchange, StartPosition};

use crate::args;

const ABOUT: &str = "Publish, subscribe and administer a Strongbox broker.";

const AFTER_HELP: &str = "\
Connection:
  Give a profile (a TOML file with broker, ca, cert and key; `strongbox-broker dev`
  writes one per identity) with --profile or STRONGBOX_PROFILE, or give --broker,
  --ca, --cert and --client-key. They override the profile's values and go before
  or after the command name (`--key FILE` works too, before the command only:
  `publish --key` is the record key).

Output:
  Tables for people; --json prints JSON instead (one object per line for
  `publish` and `subscribe`).

Exit status:
  0 success, 1 failure (the reason on stderr), 2 usage error.

Examples:
  STRONGBOX_PROFILE=strongbox-dev/profiles/alice.toml strongbox whoami
  strongbox --profile alice.toml publish demo.greetings hello
  strongbox --profile alice.toml subscribe demo.greetings --from earliest";

/// The `strongbox` command.
#[derive(Debug, Parser)]
#[command(name = "strongbox", version, about = ABOUT, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The help heading of the connection options.
const CONNECTION: &str = "Connection options";

/// Options every command takes, before or after the command name (except
/// `--key`, which after the command is `publish`'s record key).
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Profile file with the broker address and credentials.
    #[arg(long, global = true, env = "STRONGBOX_PROFILE", value_name = "FILE", help_heading = CONNECTION)]
    pub(crate) profile: Option<PathBuf>,
    /// Broker address, HOST:PORT (overrides the profile).
    #[arg(long, global = true, value_name = "HOST:PORT", help_heading = CONNECTION)]
    pub(crate) broker: Option<String>,
    /// CA certificate(s) that sign the broker's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE", help_heading = CONNECTION)]
    pub(crate) ca: Option<PathBuf>,
    /// This client's certificate chain (PEM).
    #[arg(long, global = true, value_name = "FILE", help_heading = CONNECTION)]
    pub(crate) cert: Option<PathBuf>,
    /// This client's private key (PEM), before the command name only
    /// (`publish --key` is the record key); --client-key goes anywhere.
    #[arg(long = "key", id = "key_file", value_name = "FILE", help_heading = CONNECTION)]
    pub(crate) key: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long = "client-key", global = true, value_name = "FILE", help_heading = CONNECTION)]
    pub(crate) client_key: Option<PathBuf>,
    /// Name expected in the broker's certificate (default: the broker host).
    #[arg(long, global = true, value_name = "NAME", help_heading = CONNECTION)]
    pub(crate) server_name: Option<String>,
    /// TLS key exchange groups to offer: prefer-hybrid (post-quantum
    /// X25519MLKEM768 first, the default), require-hybrid (refuse a broker
    /// without it) or classical (overrides the profile's key_exchange).
    #[arg(long, global = true, value_name = "POLICY", value_parser = args::key_exchange, help_heading = CONNECTION)]
    pub(crate) key_exchange: Option<KeyExchange>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl GlobalArgs {
    /// The private key file: `--client-key` or `--key`.
    ///
    /// # Errors
    ///
    /// Both are given, naming different files.
    pub(crate) fn key_file(&self) -> Result<Option<&PathBuf>, String> {
        match (&self.key, &self.client_key) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "--key {} and --client-key {} name different private keys; give one",
                a.display(),
                b.display()
            )),
            (a, b) => Ok(b.as_ref().or(a.as_ref())),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the principal the broker maps your certificate to, and the TLS
    /// key exchange group of the connection.
    #[command(after_help = "\
Prints the principal, the broker's id, whether the principal is a superuser, and
the key exchange group this connection negotiated in its TLS handshake
(X25519MLKEM768 for the hybrid post-quantum exchange; X25519 or a NIST curve for
a classical one). With --json: {\"principal\", \"broker_id\", \"superuser\",
\"key_exchange\"}.

Example:
  strongbox --profile alice.toml whoami")]
    Whoami,
    /// Publish records to a topic.
    #[command(after_help = "\
Each MESSAGE is one record. Without MESSAGE, every line of standard input is one
record. Prints the partition and offset of each record once the broker has made
it durable.

If the connection drops (the broker restarts), reconnects and sends again every
record not yet acknowledged; the broker stores each record once. A record not
acknowledged within --timeout fails the command. Exit status 0 only when every
record was acknowledged; 1 with the reason otherwise.

Examples:
  strongbox publish demo.greetings hello world
  strongbox publish demo.orders --key customer-7 --header kind=created '{\"id\":1}'
  seq 1 1000 | strongbox publish demo.numbers
  strongbox publish demo.orders --e2e-keyring orders.keyring '{\"id\":2}'
  strongbox publish demo.health --e2e-recipients demo.health --e2e-owner-key owner.key.pub 'note'")]
    Publish(PublishArgs),
    /// Read records from a topic.
    #[command(after_help = "\
Without --partition or --group, reads every partition. With --group, the broker
assigns partitions among the group's members and resumes from the group's
committed offsets; progress is committed as records are printed. Ctrl-C stops
cleanly.

A partition with damaged records is reported with one warning line on standard
error (topic, partition, offsets, reason); the other partitions go on, and the
command exits with status 1 at the end (after --count records, or when the
subscription ends). --skip-damaged goes on past the damaged offsets instead of
stopping that partition. Subscribing (and resubscribing after a lost connection)
must succeed within --timeout; waiting for new records is not limited.

Examples:
  strongbox subscribe demo.greetings --from earliest
  strongbox subscribe demo.greetings --partition 0 --from 1200 --count 10
  strongbox subscribe demo.greetings --from @2026-01-31T09:00:00Z --json
  strongbox subscribe demo.orders --group billing
  strongbox subscribe demo.orders --e2e-keyring reader.keyring --e2e-on-missing-key skip
  strongbox subscribe demo.health --e2e-identity bob.identity")]
    Subscribe(SubscribeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Grant, revoke and list ACL rules.
    #[command(subcommand)]
    Acl(AclCommand),
    /// Read and verify the hash-chained audit trail.
    #[command(subcommand)]
    Audit(crate::commands::audit::AuditCommand),
    /// Rotate, rewrap, retire, destroy and inspect key-encryption keys.
    #[command(subcommand)]
    Keys(crate::commands::keys::KeysCommand),
    /// Local end-to-end keyrings: versioned symmetric topic keys.
    #[command(subcommand)]
    Keyring(crate::commands::keyring::KeyringCommand),
    /// End-to-end identities, topic owner keys and signed recipient entries.
    #[command(subcommand)]
    E2e(crate::commands::e2e::E2eCommand),
    /// List, add and remove a topic's end-to-end recipients on the broker.
    #[command(subcommand)]
    Recipients(crate::commands::recipients::RecipientsCommand),
    /// Ask for access to a topic; approve or deny what others asked.
    #[command(subcommand)]
    Access(crate::commands::access::AccessCommand),
    /// The cluster's nodes and their state; add and remove nodes.
    #[command(subcommand)]
    Cluster(crate::commands::cluster::ClusterCommand),
}

/// `publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Record key (also chooses the partition by hash).
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// A header; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = args::header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Partition (default: by key hash, or spread when there is no key).
    #[arg(long, value_name = "N")]
    pub(crate) partition: Option<u32>,
    /// Record values; read from standard input, one per line, when absent.
    #[arg(value_name = "MESSAGE")]
    pub(crate) messages: Vec<String>,
    /// Fail when a record is not acknowledged this long after it was read
    /// (while the broker is unreachable or refuses it with a retriable
    /// error).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = args::duration)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) e2e: crate::commands::e2e::PublishE2eArgs,
}

/// `subscribe`.
#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Where to start: earliest, latest, an offset, or @TIME (RFC 3339). For a
    /// group, only where it has no committed offset.
    #[arg(long, value_name = "POSITION", default_value = "earliest", value_parser = args::start_position)]
    pub(crate) from: StartPosition,
    /// Read only this partition.
    #[arg(long, value_name = "N", conflicts_with = "group")]
    pub(crate) partition: Option<u32>,
    /// Read as a member of this consumer group.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Fail when subscribing, or subscribing again after a lost
    /// connection, takes longer than this.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = args::duration)]
    pub(crate) timeout: Duration,
    /// After reporting damaged records of a partition, go on from the end
    /// of the damaged range instead of stopping that partition.
    #[arg(long)]
    pub(crate) skip_damaged: bool,
    #[command(flatten)]
    pub(crate) e2e: crate::commands::e2e::SubscribeE2eArgs,
}

/// `topic ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    #[command(after_help = "\
Examples:
  strongbox topic create demo.orders --partitions 6 --retention 7d
  strongbox topic create payments --durability interval:100 --dedicated-kek")]
    Create(TopicCreateArgs),
    /// List topics.
    List {
        /// Only topics whose names start with this.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
    },
    /// Show a topic's settings and partitions.
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic and crypto-shred its data.
    Delete {
        /// The topic.
        name: String,
    },
    /// Let a read-only partition take writes again, accepting the loss of
    /// what it no longer has.
    #[command(after_help = "\
A partition opens read-only when its log is shorter than the offsets it
acknowledged, or misses a segment the broker knows of (topic describe shows
why). Restore it from a backup if you can. Otherwise this accepts the loss:
writing continues after the highest offset the partition ever acknowledged
(and every offset a consumer group committed), never below; readers read
across the gap. Needs the admin permission on the topic; audited.

Example:
  strongbox topic recover orders --partition 2 --accept-loss")]
    Recover {
        /// The topic.
        name: String,
        /// The partition.
        #[arg(long, value_name = "N")]
        partition: u32,
        /// Confirm that the lost records are gone for good.
        #[arg(long)]
        accept_loss: bool,
    },
}

/// `topic create`.
#[derive(Debug, Args)]
pub(crate) struct TopicCreateArgs {
    /// The topic's name.
    pub(crate) name: String,
    /// Number of partitions.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// When appends are acknowledged: fsync, interval:MS or none.
    #[arg(long, value_name = "MODE", default_value = "fsync", value_parser = args::durability)]
    pub(crate) durability: Durability,
    /// Delete data older than this (such as 7d, 12h), or `forever` to keep
    /// it whatever its age; without it the broker's default applies.
    #[arg(long, value_name = "DURATION", value_parser = args::retention)]
    pub(crate) retention: Option<u64>,
    /// Delete the oldest data while a partition is larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub(crate) retention_bytes: Option<u64>,
    /// Protect the topic with a key-encryption key of its own, destroyed with it.
    #[arg(long)]
    pub(crate) dedicated_kek: bool,
}

/// `acl ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AclCommand {
    /// Add a rule.
    #[command(after_help = "\
Patterns are exact names, a prefix ending in * (demo.*), or * for anything.
Operations: publish, subscribe, describe, create, delete, alter, grant, keys,
audit, admin.

Examples:
  strongbox acl grant --principal spiffe://strongbox.dev/bob --topic 'demo.*' --op publish
  strongbox acl grant --principal 'spiffe://prod/*' --topic payments --op subscribe --deny
  strongbox acl grant --principal spiffe://strongbox.dev/carol --topic demo.x --op subscribe --expires 7d")]
    Grant(AclRuleArgs),
    /// Remove operations from a rule.
    #[command(after_help = "\
Takes the operations given with --op out of every rule granted at runtime with
exactly this principal and topic pattern (and effect: allow, or deny with
--deny). A rule left without operations is deleted. Open connections see the
change at their next request. Rules from the broker's config file are refused:
edit the file and send the broker SIGHUP. Exit status 1 when no rule matches.

Examples:
  strongbox acl revoke --principal spiffe://strongbox.dev/bob --topic 'demo.*' --op publish
  strongbox acl revoke --principal 'spiffe://prod/*' --topic payments --op subscribe --deny")]
    Revoke(AclRevokeArgs),
    /// List rules.
    List {
        /// Only rules with exactly this principal pattern.
        #[arg(long, value_name = "PATTERN")]
        principal: Option<String>,
        /// Only rules with exactly this topic pattern.
        #[arg(long, value_name = "PATTERN")]
        topic: Option<String>,
    },
}

/// The rules `acl revoke` takes operations out of.
#[derive(Debug, Args)]
pub(crate) struct AclRevokeArgs {
    /// Principal pattern, exactly as in the rule.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) principal: String,
    /// Topic pattern, exactly as in the rule.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) topic: String,
    /// Operations to remove, comma-separated.
    #[arg(long = "op", value_name = "OPS", value_parser = args::operations)]
    pub(crate) operations: Operations,
    /// Act on deny rules instead of allow rules.
    #[arg(long)]
    pub(crate) deny: bool,
}

/// A rule for `acl grant`.
#[derive(Debug, Args)]
pub(crate) struct AclRuleArgs {
    /// Principal pattern.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) principal: String,
    /// Topic pattern.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) topic: String,
    /// Operations, comma-separated.
    #[arg(long = "op", value_name = "OPS", value_parser = args::operations)]
    pub(crate) operations: Operations,
    /// A deny rule (deny wins over any allow).
    #[arg(long)]
    pub(crate) deny: bool,
    /// The rule expires after this long (such as 7d).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub(crate) expires: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strongbox").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn publish_with_headers_key_and_messages() {
        let cli = parse(&[
            "--json", "publish", "demo.x", "--key", "k", "--header", "a=1", "--header", "b=2",
            "one", "two",
        ])
        .expect("parses");
        assert!(cli.global.json);
        let Command::Publish(p) = cli.command else {
            panic!("publish")
        };
        assert_eq!(p.key.as_deref(), Some("k"));
        assert_eq!(
            p.headers,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(p.messages, vec!["one", "two"]);
    }

    #[test]
    fn key_file_and_record_key_do_not_clash() {
        let cli = parse(&[
            "--broker", "h:1", "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "publish",
            "t", "--key", "user-7", "m",
        ])
        .expect("parses");
        assert_eq!(cli.global.key, Some(PathBuf::from("k.pem")));
        let Command::Publish(p) = cli.command else {
            panic!("publish")
        };
        assert_eq!(p.key.as_deref(), Some("user-7"));
    }

    #[test]
    fn connection_options_go_after_the_command_too() {
        for args in [
            &[
                "whoami",
                "--broker",
                "h:1",
                "--ca",
                "ca.pem",
                "--cert",
                "c.pem",
                "--client-key",
                "k.pem",
                "--server-name",
                "broker.example",
            ][..],
            &[
                "keys",
                "status",
                "--broker",
                "h:1",
                "--ca",
                "ca.pem",
                "--cert",
                "c.pem",
                "--client-key",
                "k.pem",
                "--server-name",
                "broker.example",
            ][..],
            &[
                "--broker",
                "h:1",
                "--ca",
                "ca.pem",
                "--cert",
                "c.pem",
                "--client-key",
                "k.pem",
                "--server-name",
                "broker.example",
                "whoami",
            ][..],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let g = &cli.global;
            assert_eq!(g.broker.as_deref(), Some("h:1"), "{args:?}");
            assert_eq!(g.ca, Some(PathBuf::from("ca.pem")));
            assert_eq!(g.cert, Some(PathBuf::from("c.pem")));
            assert_eq!(g.key_file(), Ok(Some(&PathBuf::from("k.pem"))));
            assert_eq!(g.server_name.as_deref(), Some("broker.example"));
        }
        // After `publish`, --key is the record key and --client-key the
        // private key.
        let cli = parse(&[
            "publish",
            "t",
            "--key",
            "user-7",
            "--client-key",
            "k.pem",
            "m",
        ])
        .expect("parses");
        assert_eq!(cli.global.key_file(), Ok(Some(&PathBuf::from("k.pem"))));
        let Command::Publish(p) = cli.command else {
            panic!("publish")
        };
        assert_eq!(p.key.as_deref(), Some("user-7"));
        // Two different private keys is a mistake.
        let cli = parse(&["--key", "a.pem", "whoami", "--client-key", "b.pem"]).expect("parses");
        assert!(cli.global.key_file().is_err());
    }

    #[test]
    fn every_command_help_shows_the_connection_options() {
        // Every command path, as a user types it.
        let mut paths: Vec<Vec<String>> = Vec::new();
        let mut stack: Vec<(Vec<String>, clap::Command)> = vec![(Vec::new(), Cli::command())];
        while let Some((path, cmd)) = stack.pop() {
            for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
                let mut p = path.clone();
                p.push(sub.get_name().to_owned());
                paths.push(p.clone());
                stack.push((p, sub.clone()));
            }
        }
        assert!(paths.len() > 20, "only {} commands found", paths.len());
        for path in paths {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let err = parse(&args).expect_err("--help ends parsing");
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{path:?}");
            let help = err.render().to_string();
            for flag in [
                "--profile",
                "--broker",
                "--ca",
                "--cert",
                "--client-key",
                "--server-name",
                "--json",
            ] {
                assert!(
                    help.contains(flag),
                    "`{path:?} --help` lacks {flag}:\n{help}"
                );
            }
        }
    }

    #[test]
    fn bad_header_is_a_usage_error() {
        let err = parse(&["publish", "t", "--header", "novalue"]).expect_err("bad header");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn subscribe_from_forms_and_global_json_after_the_command() {
        let cli = parse(&[
            "subscribe",
            "t",
            "--from",
            "@2026-01-31T09:00:00Z",
            "--json",
        ])
        .expect("parses");
        assert!(cli.global.json);
        let Command::Subscribe(s) = cli.command else {
            panic!("subscribe")
        };
        assert_eq!(s.from, StartPosition::Timestamp(1_769_850_000_000));
        let cli = parse(&["subscribe", "t"]).expect("parses");
        let Command::Subscribe(s) = cli.command else {
            panic!("subscribe")
        };
        assert_eq!(s.from, StartPosition::Earliest, "default");
        assert_eq!(
            parse(&["subscribe", "t", "--from", "soon"])
                .expect_err("bad position")
                .exit_code(),
            2
        );
        assert_eq!(
            parse(&["subscribe", "t", "--partition", "1", "--group", "g"])
                .expect_err("conflict")
                .kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn topic_create_values() {
        let cli = parse(&[
            "topic",
            "create",
            "x",
            "--partitions",
            "3",
            "--durability",
            "interval:50",
            "--retention",
            "7d",
            "--retention-bytes",
            "1000",
            "--dedicated-kek",
        ])
        .expect("parses");
        let Command::Topic(TopicCommand::Create(c)) = cli.command else {
            panic!("topic create")
        };
        assert_eq!(c.partitions, 3);
        assert_eq!(c.durability, Durability::Interval { interval_ms: 50 });
        assert_eq!(c.retention, Some(604_800_000));
        assert_eq!(c.retention_bytes, Some(1000));
        assert!(c.dedicated_kek);
        assert!(parse(&["topic", "create", "x", "--partitions", "0"]).is_err());
        // `forever` is 0 on the wire: no age limit.
        let cli = parse(&["topic", "create", "x", "--retention", "forever"]).expect("parses");
        let Command::Topic(TopicCommand::Create(c)) = cli.command else {
            panic!("topic create")
        };
        assert_eq!(c.retention, Some(0));
        assert!(parse(&["topic", "create", "x", "--retention", "0s"]).is_err());
    }

    #[test]
    fn acl_revoke_takes_no_expiry() {
        let cli = parse(&[
            "acl",
            "revoke",
            "--principal",
            "p",
            "--topic",
            "demo.*",
            "--op",
            "publish",
        ])
        .expect("parses");
        let Command::Acl(AclCommand::Revoke(r)) = cli.command else {
            panic!("acl revoke")
        };
        assert_eq!(r.operations, Operations::PUBLISH);
        assert!(!r.deny);
        assert_eq!(
            parse(&[
                "acl",
                "revoke",
                "--principal",
                "p",
                "--topic",
                "t",
                "--op",
                "publish",
                "--expires",
                "1h"
            ])
            .expect_err("--expires means nothing to a revoke")
            .kind(),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn acl_grant_values() {
        let cli = parse(&[
            "acl",
            "grant",
            "--principal",
            "p",
            "--topic",
            "demo.*",
            "--op",
            "publish,subscribe",
            "--deny",
            "--expires",
            "1h",
        ])
        .expect("parses");
        let Command::Acl(AclCommand::Grant(r)) = cli.command else {
            panic!("acl grant")
        };
        assert_eq!(
            r.operations,
            Operations::PUBLISH.union(Operations::SUBSCRIBE)
        );
        assert!(r.deny);
        assert_eq!(r.expires, Some(Duration::from_secs(3600)));
        assert_eq!(
            parse(&[
                "acl",
                "grant",
                "--principal",
                "p",
                "--topic",
                "t",
                "--op",
                "fly"
            ])
            .expect_err("bad op")
            .exit_code(),
            2
        );
        assert_eq!(
            parse(&["acl", "grant", "--topic", "t", "--op", "publish"])
                .expect_err("missing principal")
                .kind(),
            ErrorKind::MissingRequiredArgument
        );
    }
}
