//! The broker's shutdown signal.

use tokio::sync::watch;

/// Resolves once `shutdown` turns true (or its sender is gone). Returns
/// nothing, so no borrow of the watch value is held across an await.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
