//! The seams where a layer that rewrites record values (such as end-to-end
//! encryption) plugs into producers and consumers: a [`ValueSealer`] on the
//! way out of a producer, a [`ValueOpener`] on the way into a consumer.
//! They are separate traits because no layer needs both on one object: a
//! producer holds a sealer and a consumer an opener, so neither has to
//! implement the other direction as an error.

use std::fmt::Debug;

use crate::consumer::ConsumedRecord;
use crate::error::ClientError;
use crate::producer::ProducerRecord;

/// What a [`ValueOpener`] decided about a consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Deliver the record (as rewritten).
    Deliver,
    /// Leave the record out on purpose (for example a policy that skips
    /// records it cannot read). The consumer's position still moves past it.
    Skip,
}

/// Rewrites record values on their way out of a producer.
///
/// A producer calls [`seal`](ValueSealer::seal) on every record before it
/// is partitioned and batched. It may change the value and the headers
/// (for example to add a header that names the key used).
pub trait ValueSealer: Send + Sync + Debug + 'static {
    /// Transforms an outgoing record in place.
    ///
    /// # Errors
    ///
    /// Any error fails this record's send; nothing is sent.
    fn seal(&self, record: &mut ProducerRecord) -> Result<(), ClientError>;
}

/// Rewrites record values on their way into a consumer.
///
/// A consumer calls [`open`](ValueOpener::open) on every record before it
/// is yielded. It may change the value and the headers. An error is
/// yielded by the consumer as that record's `Err` item; the stream goes on
/// with the next record, so one unreadable record never hangs or silently
/// ends a subscription.
pub trait ValueOpener: Send + Sync + Debug + 'static {
    /// Transforms a consumed record in place.
    ///
    /// # Errors
    ///
    /// Any error is yielded in place of this record.
    fn open(&self, record: &mut ConsumedRecord) -> Result<Opened, ClientError>;
}
