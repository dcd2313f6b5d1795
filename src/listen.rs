//! Listening: binding a server's address, retried with backoff while the port is taken (by a
//! stock component still running, or a previous instance not yet gone) rather than giving up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;

/// A listener on `addr` for `what` (for the logs), or `None` once cancelled.
pub async fn bind(addr: SocketAddr, what: &str, cancel: &CancellationToken) -> Option<TcpListener> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                info!(%addr, "{what} listening");
                return Some(listener);
            }
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(%addr, error = %err, retry_in = ?delay, "cannot listen for the {what}");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
