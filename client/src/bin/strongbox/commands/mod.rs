//! One module per command group; `run` dispatches.

pub(crate) mod access;
mod acl;
pub(crate) mod audit;
pub(crate) mod cluster;
pub(crate) mod e2e;
pub(crate) mod keyring;
pub(crate) mod keys;
mod publish;
pub(crate) mod recipients;
mod subscribe;
mod topic;
mod whoami;

use std::io::Write;

use crate::cli::{Cli, Command};

/// Runs the parsed command.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Whoami => whoami::run(global).await,
        Command::Publish(args) => publish::run(global, args).await,
        Command::Subscribe(args) => subscribe::run(global, args).await,
        Command::Topic(command) => topic::run(global, command).await,
        Command::Acl(command) => acl::run(global, command).await,
        Command::Audit(command) => audit::run(global, command).await,
        Command::Keys(command) => keys::run(global, command).await,
        Command::Keyring(command) => keyring::run(global, command),
        Command::E2e(command) => e2e::run(global, command),
        Command::Recipients(command) => recipients::run(global, command).await,
        Command::Access(command) => access::run(global, command).await,
        Command::Cluster(command) => cluster::run(global, command).await,
    }
}

/// Where results go. A closed pipe (`strongbox subscribe t | head`) ends
/// the command quietly instead of failing it.
#[derive(Debug)]
pub(crate) struct Out {
    closed: bool,
}

impl Out {
    pub(crate) fn new() -> Self {
        Self { closed: false }
    }

    /// Writes `text` as is; false once the reader has gone away.
    pub(crate) fn write(&mut self, text: &str) -> anyhow::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
        }
    }

    /// Writes one line.
    pub(crate) fn line(&mut self, line: &str) -> anyhow::Result<bool> {
        self.write(&format!("{line}\n"))
    }

    /// Writes a JSON value on one line.
    pub(crate) fn json(&mut self, value: &serde_json::Value) -> anyhow::Result<bool> {
        self.line(&value.to_string())
    }
}
