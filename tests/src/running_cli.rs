//! A `strongbox` CLI process that keeps running while the test acts: its
//! standard input is written as the test goes, its output lines are
//! collected as they come, and every wait on it is bounded.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::binary;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A running `strongbox` process.
#[derive(Debug)]
pub struct RunningCli {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<(Stream, String)>,
    /// Every stdout line received so far.
    pub stdout: Vec<String>,
    /// Every stderr line received so far.
    pub stderr: Vec<String>,
}

impl RunningCli {
    /// Starts `strongbox ARGS` with `STRONGBOX_PROFILE=profile`; its
    /// standard input is a pipe the test writes with [`RunningCli::write`].
    ///
    /// # Errors
    ///
    /// The binary cannot be started.
    pub fn start(profile: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary("strongbox"))
            .args(args)
            .env("STRONGBOX_PROFILE", profile)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning strongbox")?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let err = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        for (stream, reader) in [
            (
                Stream::Stdout,
                Box::new(out) as Box<dyn std::io::Read + Send>,
            ),
            (Stream::Stderr, Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Self {
            child: Some(child),
            stdin,
            lines,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes to the process's standard input.
    ///
    /// # Errors
    ///
    /// The process closed its input (it exited).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("standard input already closed"))?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the process's standard input (end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` to the process.
    ///
    /// # Errors
    ///
    /// The process is gone or the signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal).context("sending the signal")
    }

    /// Takes every output line that has arrived.
    pub fn drain(&mut self) {
        while let Ok((stream, line)) = self.lines.try_recv() {
            self.keep(stream, line);
        }
    }

    fn keep(&mut self, stream: Stream, line: String) {
        match stream {
            Stream::Stdout => self.stdout.push(line),
            Stream::Stderr => self.stderr.push(line),
        }
    }

    /// Waits until `done` holds for the lines received so far, for at most
    /// `limit`.
    ///
    /// # Errors
    ///
    /// It did not hold in time.
    pub fn wait_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.drain();
            if done(self) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "not done within {limit:?}; {} stdout lines, stderr:\n{}",
                    self.stdout.len(),
                    self.stderr.join("\n")
                );
            }
            if let Ok((stream, line)) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.keep(stream, line);
            }
        }
    }

    /// Waits for the process to exit, for at most `limit` (then kills it
    /// and fails), and collects the rest of its output. Returns the exit
    /// code.
    ///
    /// # Errors
    ///
    /// It did not exit in time, or was killed by a signal.
    pub fn wait(&mut self, limit: Duration) -> Result<i32> {
        self.stdin = None;
        let mut child = self.child.take().ok_or_else(|| anyhow!("already waited"))?;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.drain();
                bail!(
                    "strongbox did not exit within {limit:?}; stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            self.drain();
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end with the pipes; take what is left.
        while let Ok((stream, line)) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.keep(stream, line);
        }
        status
            .code()
            .ok_or_else(|| anyhow!("strongbox was killed by a signal: {status}"))
    }
}

impl Drop for RunningCli {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
