//! The key service: rotation, rewrap, retirement and destruction of key
//! encryption keys, and the key metrics.

pub mod key_lifecycle;
pub mod rewrap;

use std::sync::Arc;

use strongbox_storage::keys::KeyManager;

use key_lifecycle::KeyMetrics;
use rewrap::RewrapJobs;

/// The key service's state: the key manager, its metrics and the
/// background rewrap job.
#[derive(Debug)]
pub struct Keys {
    /// Data keys and the key registry.
    manager: Arc<KeyManager>,
    /// Key provider, key operation, AEAD and fsync metrics fed by storage.
    metrics: Arc<KeyMetrics>,
    /// The background rewrap job.
    rewrap: RewrapJobs,
}

impl Keys {
    /// The service over `manager`, rewrapping at most `rewrap_rate`
    /// envelopes a second.
    pub fn new(manager: Arc<KeyManager>, metrics: Arc<KeyMetrics>, rewrap_rate: u32) -> Self {
        Self {
            manager,
            metrics,
            rewrap: RewrapJobs::new(rewrap_rate),
        }
    }

    /// Data keys and the key registry.
    pub fn manager(&self) -> &Arc<KeyManager> {
        &self.manager
    }

    /// Key provider, key operation, AEAD and fsync metrics.
    pub fn metrics(&self) -> &Arc<KeyMetrics> {
        &self.metrics
    }

    /// The background rewrap job.
    pub fn rewrap(&self) -> &RewrapJobs {
        &self.rewrap
    }
}
