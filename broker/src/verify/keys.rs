//! The data keys the offline commands (`verify`, `inspect`) use: unwrapped
//! by the configured provider after the same registry check the broker
//! makes, and nothing else. It never creates, forgets or caches a key, and
//! never writes to the registry (the broker's key manager may, to follow an
//! interrupted rewrap).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use strongbox_protocol::model::KeyState;
use strongbox_storage::keys::registry::can_unwrap;
use strongbox_storage::keys::{
    Dek, KekId, KeyError, KeyProvider, SegmentKeyContext, SegmentKeys, WrappedDek,
};

/// Unwraps data keys for a read-only look at a stopped broker's data.
#[derive(Debug)]
pub(crate) struct ReadOnlyKeys {
    /// The command, named in the refusal to create or forget a key.
    command: &'static str,
    provider: Arc<dyn KeyProvider>,
    /// Registry states, read once before the command reads the log.
    states: HashMap<KekId, KeyState>,
    unwraps: AtomicU64,
}

impl ReadOnlyKeys {
    pub(crate) fn new(
        command: &'static str,
        provider: Arc<dyn KeyProvider>,
        states: HashMap<KekId, KeyState>,
    ) -> Self {
        Self {
            command,
            provider,
            states,
            unwraps: AtomicU64::new(0),
        }
    }

    /// Data keys unwrapped so far.
    pub(crate) fn unwraps(&self) -> u64 {
        self.unwraps.load(Ordering::Relaxed)
    }
}

impl SegmentKeys for ReadOnlyKeys {
    fn create(&self, _: &SegmentKeyContext) -> Result<(Dek, WrappedDek), KeyError> {
        Err(KeyError::Config(format!(
            "{} is read-only and never creates a data key",
            self.command
        )))
    }

    fn open(&self, ctx: &SegmentKeyContext, wrapped: &WrappedDek) -> Result<Dek, KeyError> {
        // As the broker's key manager: a key under another scope does not
        // belong to this segment, and a version the registry says is
        // destroyed is not asked for.
        if wrapped.kek.scope != ctx.scope {
            return Err(KeyError::UnwrapRejected {
                kek: wrapped.kek.label(),
            });
        }
        if let Some(state) = self.states.get(&wrapped.kek)
            && !can_unwrap(*state)
        {
            return Err(KeyError::Destroyed(wrapped.kek.label()));
        }
        let dek = self.provider.unwrap(&wrapped.kek, &wrapped.wrapped)?;
        self.unwraps.fetch_add(1, Ordering::Relaxed);
        Ok(dek)
    }

    fn forget(&self, _: &SegmentKeyContext) -> Result<(), KeyError> {
        Err(KeyError::Config(format!(
            "{} is read-only and never forgets a data key",
            self.command
        )))
    }
}
