//! How much byte credit a subscription grants, and when.
//!
//! The client lends the broker a window of bytes. Every `Records` frame
//! costs its encoded size; the bytes come back to the window only when the
//! application has taken every record of that frame. So at any time
//!
//! ```text
//! broker's credit + bytes buffered in the client + consumed-not-yet-granted = window
//! ```
//!
//! and the client's buffer never holds more than the window plus one frame
//! (the broker may send one frame while its credit is positive, taking it
//! below zero). Consumed bytes are granted back in chunks of at least a
//! quarter window, to keep `Credit` frames rare; that can never stall the
//! subscription, because when the buffer is empty and the broker has no
//! credit left, the consumed bytes add up to a whole window.

/// The credit bookkeeping of one subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreditWindow {
    window: u64,
    buffered: u64,
    pending: u64,
}

impl CreditWindow {
    pub(crate) fn new(window: u64) -> Self {
        Self {
            window: window.max(1),
            buffered: 0,
            pending: 0,
        }
    }

    /// The credit for a new `Subscribe` (first, or after a reconnect):
    /// the window less what the application has not consumed yet.
    pub(crate) fn initial(&mut self) -> u64 {
        self.pending = 0;
        self.window.saturating_sub(self.buffered)
    }

    /// A `Records` frame costing `cost` was handed to the application.
    pub(crate) fn delivered(&mut self, cost: u64) {
        self.buffered = self.buffered.saturating_add(cost);
    }

    /// The application took every record of a frame costing `cost`.
    /// Returns the bytes to grant now, if any.
    pub(crate) fn consumed(&mut self, cost: u64) -> Option<u64> {
        self.buffered = self.buffered.saturating_sub(cost);
        self.pending = self.pending.saturating_add(cost);
        if self.pending >= self.threshold() {
            Some(std::mem::take(&mut self.pending))
        } else {
            None
        }
    }

    /// Bytes delivered but not yet consumed.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered
    }

    fn threshold(&self) -> u64 {
        (self.window / 4).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_back_in_quarter_window_chunks() {
        let mut w = CreditWindow::new(1000);
        assert_eq!(w.initial(), 1000);
        for _ in 0..4 {
            w.delivered(100);
        }
        assert_eq!(w.consumed(100), None);
        assert_eq!(w.consumed(100), None);
        assert_eq!(w.consumed(100), Some(300), "a quarter window reached");
        assert_eq!(w.buffered(), 100);
    }

    #[test]
    fn reconnect_grants_only_the_room_left() {
        let mut w = CreditWindow::new(1000);
        w.initial();
        w.delivered(600);
        assert_eq!(w.consumed(100), None);
        // Connection drops: 500 bytes still buffered.
        assert_eq!(w.initial(), 500);
        // Consuming the old buffer grants to the new stream.
        assert_eq!(w.consumed(500), Some(500));
    }

    /// A broker that sends whenever it has positive credit, against an
    /// application that consumes in bursts: the buffer stays within the
    /// window plus one frame and the stream never stalls.
    #[test]
    fn memory_stays_bounded_and_the_stream_never_stalls() {
        for (window, frame) in [(1000u64, 90u64), (1000, 1500), (4096, 1000), (10, 3)] {
            let mut w = CreditWindow::new(window);
            let mut broker_credit = i128::from(w.initial());
            let mut queue: std::collections::VecDeque<u64> = Default::default();
            let mut delivered_total = 0u64;
            for step in 0..2_000u32 {
                // The broker sends while it has credit.
                while broker_credit > 0 && queue.len() < 10_000 {
                    broker_credit -= i128::from(frame);
                    w.delivered(frame);
                    queue.push_back(frame);
                    delivered_total += frame;
                }
                assert!(w.buffered() <= window + frame, "bounded: {}", w.buffered());
                // The application consumes one to three frames.
                let n = 1 + step % 3;
                for _ in 0..n {
                    if let Some(cost) = queue.pop_front()
                        && let Some(grant) = w.consumed(cost)
                    {
                        broker_credit += i128::from(grant);
                    }
                }
                assert!(
                    !(queue.is_empty() && broker_credit <= 0),
                    "stalled at step {step} (window {window}, frame {frame})"
                );
            }
            assert!(delivered_total > 0);
        }
    }
}
