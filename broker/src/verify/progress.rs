//! Progress on stderr while `verify` runs: a live counter on a terminal,
//! one line per partition otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use strongbox_storage::log::CheckProgress;

use super::report::{PartitionReport, human_bytes};

/// How often the live counter is redrawn.
const REDRAW: Duration = Duration::from_millis(100);

/// Writes progress to stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    tty: bool,
    total: usize,
    index: usize,
    label: String,
    last_draw: Option<Instant>,
}

impl Progress {
    /// Progress over `total` partitions; live when stderr is a terminal.
    pub(crate) fn new(total: usize) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            total,
            index: 0,
            label: String::new(),
            last_draw: None,
        }
    }

    /// A partition starts.
    pub(crate) fn start(&mut self, label: String) {
        self.index = self.index.saturating_add(1);
        self.label = label;
        self.last_draw = None;
        if self.tty {
            self.draw(CheckProgress::default());
        }
    }

    /// Frames and segments done in the current partition.
    pub(crate) fn update(&mut self, p: CheckProgress) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.saturating_duration_since(t) < REDRAW)
        {
            return;
        }
        self.draw(p);
    }

    fn draw(&mut self, p: CheckProgress) {
        self.last_draw = Some(Instant::now());
        let detail = if p.segments == 0 {
            String::new()
        } else {
            format!(
                ": segment {}/{}, {} frames, {}",
                p.segments_done.saturating_add(1).min(p.segments),
                p.segments,
                p.frames,
                human_bytes(p.batch_bytes)
            )
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2Kverifying [{}/{}] {}{detail}",
            self.index, self.total, self.label
        );
        let _ = err.flush();
    }

    /// A partition is done.
    pub(crate) fn done(&mut self, report: &PartitionReport) {
        if self.tty {
            return;
        }
        let problems = report.findings.iter().filter(|i| i.is_problem()).count();
        let result = match problems {
            0 => "ok".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "verified [{}/{}] {}: {} segments, {} frames: {result}",
            self.index,
            self.total,
            report.label(),
            report.segments,
            report.frames
        );
    }

    /// Clears the live counter.
    pub(crate) fn finish(&mut self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
