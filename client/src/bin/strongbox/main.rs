//! `strongbox`: the command-line client of a Strongbox broker.
//!
//! Exit status: 0 on success, 1 with a one-line reason on stderr on
//! failure, 2 on usage errors (clap's own code, kept for ours).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

mod args;
mod cli;
mod commands;
mod connect;
mod output;

/// A usage problem found after parsing (for example no connection
/// settings); reported like clap's own, with exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // Background tasks (a reconnect in progress) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<UsageError>() {
            Some(usage) => cli::Cli::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, usage)
                .exit(),
            None => {
                eprintln!("error: {}", one_line(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        },
    }
}

/// The reason on a single line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}
