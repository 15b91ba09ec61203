//! Running the `strongbox` CLI (through [`cli`]) and insisting on how it
//! ends, and reading what it prints.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::cli;

/// Bytes a process printed, as text (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path as a command-line argument.
///
/// # Panics
///
/// The path is not UTF-8 (test directories always are).
pub fn path_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs the CLI as `profile` and insists on success; returns stdout.
///
/// # Errors
///
/// The CLI cannot be run or fails.
pub fn cli_ok(profile: &Path, args: &[&str]) -> Result<String> {
    let out = cli(profile, args)?;
    ensure!(
        out.status.success(),
        "strongbox {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Runs the CLI as `profile` and insists on exit status `code` with
/// `needle` on stderr.
///
/// # Errors
///
/// The CLI cannot be run, or ends otherwise.
pub fn cli_fails(profile: &Path, code: i32, args: &[&str], needle: &str) -> Result<Output> {
    let out = cli(profile, args)?;
    let err = text(&out.stderr);
    ensure!(
        out.status.code() == Some(code) && err.contains(needle),
        "strongbox {args:?}: expected exit {code} with {needle:?}, got {:?}: {}{err}",
        out.status.code(),
        text(&out.stdout)
    );
    Ok(out)
}

/// Runs the CLI as `profile` with `--json` before `args`, insisting on
/// success; what it printed.
///
/// # Errors
///
/// The CLI cannot be run or fails, or prints something else than one JSON
/// value.
pub fn cli_json(profile: &Path, args: &[&str]) -> Result<Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = cli_ok(profile, &full)?;
    serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))
}

/// The values `subscribe --json` printed, in order.
///
/// # Errors
///
/// A line is not JSON or has no text value.
pub fn json_values(stdout: &str) -> Result<Vec<String>> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
            v["value"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no text value: {l}"))
        })
        .collect()
}
