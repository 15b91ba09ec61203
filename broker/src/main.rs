//! `strongbox-broker`: the Strongbox broker.
//!
//! ```text
//! strongbox-broker serve --config /etc/strongbox/broker.toml
//! strongbox-broker dev [--data-dir ./strongbox-dev] [--listen 127.0.0.1:7443] [--cluster N [--no-start]]
//! strongbox-broker verify --data-dir DIR [--config FILE] [--json]
//! strongbox-broker inspect --data-dir DIR --topic T [--partition N] [--from OFFSET] [--count N] [--json]
//! strongbox-broker pki revoke [--data-dir DIR] NAME|CERT.pem
//! strongbox-broker backup --config FILE --to DIR
//! strongbox-broker config check FILE
//! strongbox-broker health --config FILE [--live]
//! strongbox-broker checkpoint public-key --config FILE [--create] [--out FILE]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strongbox_broker::config::BrokerConfig;
use strongbox_broker::dev;
use strongbox_broker::notify::Notifier;
use strongbox_broker::server::{self, RunningBroker};
use strongbox_broker::transport;
use strongbox_protocol::model::{Durability, TopicConfig};

mod dev_cluster;

/// The Strongbox broker: encrypted pub/sub over QUIC with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "strongbox-broker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve with a configuration file (see deploy/broker.example.toml).
    ///
    /// Stops gracefully on SIGTERM or SIGINT: no new connections, every
    /// accepted append answered, logs synced.
    ///
    /// SIGHUP re-reads the broker's certificate and key, the client CA
    /// bundle and the CRL files (new handshakes use them, open connections
    /// carry on; an older CRL of an issuer never replaces a newer one),
    /// re-reads and validates FILE and applies its [acl] section
    /// (superusers and [[acl.rules]]) to new and open connections, and
    /// runs a maintenance pass at once (expired grants go). The TLS files
    /// are also reloaded when they change (checked every tls.crl_reload).
    /// A file that does not load changes nothing and the log says why;
    /// other sections of FILE need a restart, and the log names those that
    /// changed.
    ///
    /// Under systemd (Type=notify) it reports READY=1 once it serves,
    /// RELOADING=1 during a SIGHUP reload and STOPPING=1 when it stops.
    /// The log goes to stderr: colour only on a terminal; log.format =
    /// "json" for one JSON object per line; RUST_LOG, when set, overrides
    /// log.level.
    Serve {
        /// The broker's TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a self-contained development broker.
    ///
    /// The first run creates DIR with a development CA, a broker
    /// certificate for localhost, client profiles `admin` (superuser),
    /// `alice` (publish and subscribe on demo.*) and `bob` (subscribe on
    /// demo.*), a file key store and a broker.toml; later runs reuse them.
    /// Each run writes its --listen and --metrics-listen into broker.toml,
    /// keeping the rest of the file. The file key store keeps keys next to
    /// the data: for development only. SIGTERM, SIGINT and SIGHUP act as
    /// for `serve`; `strongbox-broker pki revoke` revokes a development
    /// certificate.
    Dev {
        /// Where the development material and data live.
        #[arg(long, value_name = "DIR", default_value = "strongbox-dev")]
        data_dir: PathBuf,
        /// UDP address to listen on; port 0 picks a free one (the profiles
        /// are rewritten to match).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// TCP address of /metrics, /healthz and /readyz; defaults to port
        /// 9644 on the listen IP, or a free port when --listen uses port 0.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Run N nodes instead of one (1 to 9; 1 is the single broker
        /// above).
        ///
        /// The first run creates DIR/node-1..N (each a broker.toml with a
        /// [cluster] section listing every node, a node certificate, a key
        /// store and data), one development CA and profiles in
        /// DIR/profiles/ listing every node's client address. Each run
        /// writes the current ports into those files, then starts every
        /// node as a child process `strongbox-broker serve --config
        /// DIR/node-I/broker.toml`, its PID in DIR/node-I/broker.pid and
        /// its output in DIR/node-I/broker.log. Node I listens on port
        /// P+I-1 of --listen HOST:P (metrics: M+I-1 of --metrics-listen,
        /// peer: P+100+I-1). SIGTERM or SIGINT stops every node still
        /// running and exits; a node that dies is not restarted (its serve
        /// command is printed, to start it again by hand). The nodes form
        /// one metadata group (topics, ACL rules, offsets, access requests
        /// and recipients are replicated); partition data is not
        /// replicated yet: each node keeps its own log. `strongbox-broker
        /// pki new-node` makes a further node to add.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u16).range(1..=9))]
        cluster: u16,
        /// With --cluster N (2 or more): create the directory (or write
        /// the current ports into it) and print each node's ports and serve
        /// command, but start no node; exits at once.
        #[arg(long, requires = "cluster")]
        no_start: bool,
    },
    /// The development CA: revoke a certificate it issued, or make a
    /// further node for a development cluster.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Check a stopped broker's data directory offline.
    ///
    /// Authenticates every frame, seal and key envelope of every partition
    /// of every topic, checks the envelopes against the key registry and
    /// the registry against the key provider, and reports per partition
    /// what is damaged, which file, and what to do. It reads the files as
    /// they are and repairs nothing. It refuses to run while a broker uses
    /// the directory (it opens the metadata store, which the broker holds).
    ///
    /// The key provider comes from the broker configuration: --config FILE,
    /// or, without --config, DIR/../broker.toml when its broker.data_dir is
    /// DIR (the layout of `strongbox-broker dev`). With --config and no
    /// --data-dir, the configuration's broker.data_dir is checked; give
    /// both to check a copy or a restored backup with that key provider.
    ///
    /// Progress goes to stderr (a live counter on a terminal, a line per
    /// partition otherwise), the report to stdout.
    ///
    /// Exit status: 0 every partition intact, 1 problems found, 2 the
    /// check could not run (usage, configuration, key provider, broker
    /// running).
    Verify(strongbox_broker::verify::VerifyArgs),
    /// Signed checkpoints: export the public key that checks them.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Print a partition's records as a stopped broker stores them.
    ///
    /// Decrypts the at-rest layer with the broker's key provider (from
    /// --config FILE, or DIR/../broker.toml as for verify) and prints each
    /// record's offset, time, key, headers and value: text when UTF-8, hex
    /// otherwise. End-to-end encrypted values show as ciphertext. Read-only;
    /// refuses to run while a broker uses the directory.
    Inspect(strongbox_broker::inspect::InspectArgs),
    /// Copy a running broker's data consistently into a new directory.
    ///
    /// Asks the broker that runs with FILE (through the control socket in
    /// its broker.data_dir) to freeze its partitions for an instant, take a
    /// snapshot of its metadata store and pin its segment files; then
    /// copies them into DIR, writes DIR/backup.json last, and lets the
    /// broker drop the pinned files. The broker keeps serving throughout.
    /// Every record acknowledged before the command started is in the
    /// backup.
    ///
    /// DIR holds the metadata store and the encrypted segments with their
    /// wrapped data keys, laid out as a data directory; never key material:
    /// restoring needs the same key provider. Run it as the broker's user.
    /// docs/OPERATIONS.md ("Backup and restore") gives the restore
    /// procedure.
    ///
    /// Exit status: 0 the backup is complete, 1 it is not (the reason on
    /// stderr; nothing is left in DIR).
    Backup(strongbox_broker::backup::cli::BackupArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask a broker's metrics endpoint whether it is ready (for container
    /// health checks).
    ///
    /// GETs /readyz (or /healthz with --live) on metrics.listen of FILE
    /// (an unspecified address is asked on loopback) and prints the
    /// answer.
    ///
    /// Exit status: 0 on HTTP 200, 1 otherwise (not ready, unreachable,
    /// metrics disabled).
    Health(strongbox_broker::health::HealthArgs),
}

/// `strongbox-broker config ...`.
#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and print what the broker would do.
    ///
    /// Parses and validates FILE as `serve` does, then opens what it points
    /// to: the certificate and key (they match, are valid now, expire
    /// when), the client CA bundle and CRLs, the identity and ACL rules,
    /// the data directory (usable, or in use by a running broker), the key
    /// provider (the key directory, or the PKCS#11 module, token and PIN:
    /// a login proves the HSM reachable) and the listen addresses (free or
    /// taken). It changes nothing. Each check prints a line: ok, warning
    /// or error; then what a start would do.
    ///
    /// Exit status: 0 no errors (warnings allowed), 1 errors.
    Check(strongbox_broker::config_check::CheckArgs),
}

/// `strongbox-broker checkpoint ...`.
#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// Print the checkpoint signing key's public key (PEM).
    ///
    /// The broker signs its checkpoints (at checkpoints.interval and at
    /// shutdown) with an ECDSA P-256 key held by its key provider: made
    /// in the HSM and never extractable with pkcs11, a 0600 file next to
    /// the key-encryption keys with the file provider. This prints the
    /// public half as a PEM SubjectPublicKeyInfo, so that anyone can check
    /// checkpoints offline (`strongbox audit verify --checkpoint FILE
    /// --checkpoint-key KEY.pem`, `strongbox-broker verify --checkpoint
    /// FILE --checkpoint-key KEY.pem`, or any ECDSA tool); the key id goes
    /// to stderr. The key pair is made at the broker's first start, or
    /// here with --create.
    ///
    /// Exit status: 0, or 1 with the reason.
    #[command(after_help = "\
Example:
  strongbox-broker checkpoint public-key --config /etc/strongbox/broker.toml --out checkpoint-key.pem")]
    PublicKey(strongbox_broker::checkpoint::cli::PublicKeyArgs),
}

/// `strongbox-broker pki ...`.
#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Revoke a certificate of the development CA.
    ///
    /// Signs the next CRL of DIR's development CA (DIR/ca/crl.pem): every
    /// certificate it already revokes, plus this one, under a higher CRL
    /// number. A running `strongbox-broker dev` on DIR loads it within
    /// tls.crl_reload (5 s) or at once on SIGHUP: from then on the
    /// certificate is refused, and connections that use it are closed.
    /// A certificate already revoked changes nothing. For a real CA, use
    /// its own tools (see docs/OPERATIONS.md, "Revocation").
    ///
    /// Exit status: 0 revoked (or already revoked), 1 failure.
    #[command(after_help = "\
Examples:
  strongbox-broker pki revoke alice
  strongbox-broker pki revoke --data-dir ./strongbox-dev ./strongbox-dev/profiles/bob.pem")]
    Revoke {
        /// The development directory.
        #[arg(long, value_name = "DIR", default_value = "strongbox-dev")]
        data_dir: PathBuf,
        /// A profile name (`alice` is DIR/profiles/alice.pem) or a PEM
        /// certificate file issued by DIR's CA.
        #[arg(value_name = "NAME|CERT")]
        who: String,
    },
    /// Make one more node for a development cluster, to add it to the
    /// running cluster.
    ///
    /// Creates DIR/node-ID/ like the nodes of `dev --cluster N`: a node
    /// certificate from DIR's development CA (URI SAN
    /// spiffe://strongbox.dev/strongbox/node/ID), a key store, a data
    /// directory and a broker.toml whose [cluster] section joins through
    /// the existing nodes' peer addresses (seeds) rather than forming a
    /// cluster. Its ports follow the cluster's numbering from node 1's
    /// config (node ID on client port P+ID-1 when node 1 has P; peer and
    /// metrics likewise). `dev` neither starts it nor rewrites its ports.
    /// Prints the node's serve command and the `strongbox cluster add-node`
    /// command that adds it: until a member adds it, the node serves no
    /// cluster metadata.
    ///
    /// Exit status: 0 created, 1 failure (nothing is left behind).
    #[command(after_help = "\
Examples:
  strongbox-broker pki new-node 4
  strongbox-broker pki new-node --data-dir ./strongbox-dev 4")]
    NewNode {
        /// The development cluster's directory.
        #[arg(long, value_name = "DIR", default_value = "strongbox-dev")]
        data_dir: PathBuf,
        /// The new node's id: one no node of this cluster ever had.
        #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Pki(PkiCommand::Revoke { data_dir, who }) = &cli.command {
        return revoke(data_dir, who);
    }
    if let Command::Pki(PkiCommand::NewNode { data_dir, id }) = &cli.command {
        return new_node(data_dir, *id);
    }
    if let Command::Checkpoint(CheckpointCommand::PublicKey(args)) = &cli.command {
        return strongbox_broker::checkpoint::cli::run_public_key(args);
    }
    if let Command::Verify(args) = &cli.command {
        // Offline and synchronous: no runtime.
        return strongbox_broker::verify::run_cli(args);
    }
    if let Command::Backup(args) = &cli.command {
        // Synchronous: it talks to the broker over a Unix socket and copies.
        return strongbox_broker::backup::cli::run_cli(args);
    }
    if let Command::Config(ConfigCommand::Check(args)) = &cli.command {
        return strongbox_broker::config_check::run_cli(args);
    }
    if let Command::Health(args) = &cli.command {
        return strongbox_broker::health::run_cli(args);
    }
    if let Command::Inspect(args) = &cli.command {
        // Offline and synchronous: no runtime.
        return match strongbox_broker::inspect::run_cli(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose text
/// its parent already includes (thiserror messages often end with their
/// source) is not repeated.
fn one_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace(['\r', '\n'], " ")
}

fn revoke(dir: &Path, who: &str) -> ExitCode {
    match dev::revoke(dir, who) {
        Ok(r) if r.already_revoked => {
            println!(
                "{} ({}, serial {}) is already revoked by {} (CRL number {}); nothing changed",
                r.cert.display(),
                r.principal,
                r.serial,
                r.crl.display(),
                r.crl_number
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "revoked {} ({}, serial {}): {} is now CRL number {}, revoking {} certificate(s)",
                r.cert.display(),
                r.principal,
                r.serial,
                r.crl.display(),
                r.crl_number,
                r.revoked
            );
            println!(
                "a running `strongbox-broker dev` on {} loads it within 5 s (tls.crl_reload), \
                 or at once on SIGHUP, and closes the connections that use the certificate",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", one_message(&anyhow::Error::new(e)));
            ExitCode::FAILURE
        }
    }
}

fn new_node(dir: &Path, id: u64) -> ExitCode {
    match dev::new_node(dir, id) {
        Ok(made) => {
            let n = &made.node;
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("strongbox-broker"));
            println!(
                "created node {} in {}: client {}, peer {}, metrics {}",
                n.id,
                n.dir.display(),
                n.listen,
                n.peer,
                n.metrics
            );
            println!("start it:\n  {}", n.serve_command(&exe));
            println!(
                "then add it through any running node (it catches up as a learner, then votes):\n  \
                 strongbox --profile {} cluster add-node {} {} {}",
                dir.join("profiles/admin.toml").display(),
                n.id,
                n.peer,
                n.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", one_message(&anyhow::Error::new(e)));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Installed before anything else, so a SIGTERM that arrives while
    // the broker is still starting is queued and answered with a
    // graceful stop once it is up, rather than killing it half-open.
    let signals = Signals::install()?;
    match cli.command {
        Command::Serve { config } => {
            let config = BrokerConfig::load(&config)
                .and_then(BrokerConfig::validate)
                .with_context(|| format!("config {}", config.display()))?;
            strongbox_broker::logging::init(&config.log);
            let broker = server::run(config).await?;
            println!("strongbox-broker listening on {} (QUIC)", broker.addr);
            if let Some(m) = broker.metrics_addr {
                println!("metrics on http://{m}/metrics");
            }
            signals.serve_until_stopped(broker).await
        }
        Command::Dev {
            data_dir,
            listen,
            metrics_listen,
            cluster,
            no_start,
        } if cluster > 1 => {
            let metrics = metrics_listen.unwrap_or_else(|| dev::default_metrics_listen(listen));
            if no_start {
                return dev_cluster::prepare(&data_dir, cluster, listen, metrics);
            }
            dev_cluster::run(
                &data_dir,
                cluster,
                listen,
                metrics,
                signals.term,
                signals.int,
            )
            .await
        }
        Command::Dev { no_start: true, .. } => anyhow::bail!(
            "--no-start prepares a development cluster: give --cluster N with N of 2 or more"
        ),
        Command::Dev {
            data_dir,
            listen,
            metrics_listen,
            cluster: _,
            no_start: false,
        } => run_dev(&data_dir, listen, metrics_listen, signals).await,
        // Handled in `main`, before a runtime starts.
        Command::Verify(_)
        | Command::Inspect(_)
        | Command::Pki(_)
        | Command::Backup(_)
        | Command::Config(_)
        | Command::Health(_)
        | Command::Checkpoint(_) => Ok(()),
    }
}

async fn run_dev(
    dir: &Path,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    signals: Signals,
) -> anyhow::Result<()> {
    let layout = dev::ensure_dev_dir(dir, listen)
        .with_context(|| format!("development directory {}", dir.display()))?;
    // The file says what this run listens on, so that it describes the
    // running broker (and a SIGHUP finds nothing to restart for).
    let metrics_listen = metrics_listen.unwrap_or_else(|| dev::default_metrics_listen(listen));
    layout
        .set_listen_addresses(listen, metrics_listen)
        .with_context(|| format!("updating {}", layout.config.display()))?;
    let config = BrokerConfig::load(&layout.config)
        .and_then(BrokerConfig::validate)
        .with_context(|| format!("config {}", layout.config.display()))?;
    strongbox_broker::logging::init(&config.log);
    tracing::warn!(
        "development mode: keys are stored in files next to the data; use an HSM in production"
    );
    let broker = server::run(config).await?;
    layout
        .set_broker_addr(broker.addr)
        .context("writing the profiles")?;
    ensure_demo_topic(&broker).await;
    if layout.created {
        println!("created development directory {}", layout.dir.display());
    }
    println!(
        "strongbox-broker (dev) listening on {} (QUIC, mutual TLS)",
        broker.addr
    );
    if let Some(m) = broker.metrics_addr {
        println!("metrics on http://{m}/metrics");
    }
    println!("try, with the strongbox CLI (cargo run --release --bin strongbox -- ...):");
    print!("{}", layout.quickstart());
    signals.serve_until_stopped(broker).await
}

/// The dev broker serves `demo.greetings` from the start, so the
/// quick-start commands work as printed.
async fn ensure_demo_topic(broker: &RunningBroker) {
    let config = TopicConfig {
        partitions: 1,
        durability: Durability::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    };
    if let Err(e) = transport::admin::ensure_topic(&broker.state, "demo.greetings", config).await {
        tracing::warn!(error = %e.message, "cannot create demo.greetings");
    }
}

/// The signals the broker answers: SIGTERM and SIGINT stop it
/// gracefully, SIGHUP reloads what can change without a restart.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP, and tells the
    /// service manager (systemd `Type=notify`) each change of state.
    async fn serve_until_stopped(mut self, broker: RunningBroker) -> anyhow::Result<()> {
        let notifier = Notifier::from_env();
        let status = format!("serving on {} (QUIC)", broker.addr);
        notifier.ready(&status);
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    notifier.reloading();
                    broker.reload().await;
                    notifier.reloaded(&status);
                }
            }
        }
        notifier.stopping();
        broker.shutdown().await;
        Ok(())
    }
}
