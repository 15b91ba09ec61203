//! The seam where a layer that rewrites record values (such as end-to-end
//! encryption) plugs into producers and consumers.

use std::fmt::Debug;

use crate::consumer::ConsumedRecord;
use crate::error::ClientError;
use crate::producer::ProducerRecord;

/// What a [`ValueTransformer`] decided about a consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Deliver the record (as rewritten).
    Deliver,
    /// Leave the record out on purpose (for example a policy that skips
    /// records it cannot read). The consumer's position still moves past it.
    Skip,
}

/// Rewrites record values on their way out of a producer and back into a
/// consumer.
///
/// A producer calls [`seal`](ValueTransformer::seal) on every record before
/// it is partitioned and batched; a consumer calls
/// [`open`](ValueTransformer::open) on every record before it is yielded.
/// Both may change the value and the headers (for example to add or read a
/// header that names the key used). An error from `open` is yielded by the
/// consumer as that record's `Err` item; the stream goes on with the next
/// record, so one unreadable record never hangs or silently ends a
/// subscription.
pub trait ValueTransformer: Send + Sync + Debug + 'static {
    /// Transforms an outgoing record in place.
    ///
    /// # Errors
    ///
    /// Any error fails this record's send; nothing is sent.
    fn seal(&self, record: &mut ProducerRecord) -> Result<(), ClientError>;

    /// Transforms a consumed record in place.
    ///
    /// # Errors
    ///
    /// Any error is yielded in place of this record.
    fn open(&self, record: &mut ConsumedRecord) -> Result<Opened, ClientError>;
}
