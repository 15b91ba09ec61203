//! Who is asking: what every request handler knows of the connection it
//! serves, and the way handlers run blocking work.

use std::sync::Arc;

use tokio::sync::watch;

use crate::acl::Acl;
use crate::error::BrokerError;
use crate::services::BrokerState;

/// What every stream handler of a connection knows.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// Shared broker state.
    pub state: Arc<BrokerState>,
    /// The client's principal.
    pub principal: String,
    /// The client presented a node certificate (a
    /// `spiffe://…/strongbox/node/<id>` URI SAN): only ACL rules naming
    /// its principal exactly grant it anything.
    pub node_certificate: bool,
    /// The largest frame the client accepts.
    pub peer_max_frame_size: u32,
    /// Turns true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl ConnCtx {
    /// The live ACL.
    pub fn acl(&self) -> &Arc<Acl> {
        &self.state.acl
    }
}

/// Runs a blocking closure (a metadata commit, a key provider call) off the
/// async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::internal("a background task", e))
}
