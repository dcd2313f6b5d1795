//! Certificate rotation, as the kubelet does it: at a random point between 70% and 90% of
//! the current certificate's lifetime, ask for a new one with the node's own identity,
//! install it as the `-current.pem` file and go on with it. A failed attempt is retried with
//! backoff until it works; the old certificate serves meanwhile.
//!
//! - Client (`rotateCertificates`): a `selfnodeclient` request the approver recognises;
//!   every open API connection is ended after it, so all requests use the new certificate.
//! - Serving (`serverTLSBootstrap`): a `kubernetes.io/kubelet-serving` request for the
//!   node's names and addresses, also made at once when there is no certificate yet; an
//!   admin approves it. The kubelet API reads the file at each handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use ring::rand::SecureRandom;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::bootstrap;
use super::client::Connections;
use super::runtime::error_chain;

/// How long one renewal waits for its request to be approved and issued.
const ISSUE_WAIT: Duration = Duration::from_secs(15 * 60);

/// What rotation needs: the client that asks, which certificate, and (for the client
/// certificate) the connections to end after a renewal.
pub struct Rotation {
    pub client: Client,
    pub purpose: bootstrap::Purpose,
    pub connections: Option<Arc<Connections>>,
    pub node_name: String,
    pub cert_dir: PathBuf,
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("node_name", &self.node_name)
            .field("cert_dir", &self.cert_dir)
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

/// When to renew a certificate valid over `[not_before, not_after]`: at `fraction` (0.7 to
/// 0.9, random per certificate so that a fleet does not renew at once) of its lifetime.
pub fn deadline(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    not_before + (lifetime * fraction.clamp(0.7, 0.9)) as i64
}

fn jitter() -> f64 {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    0.7 + 0.2 * f64::from(byte[0]) / 255.0
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Renews the certificate whenever it is due, until cancelled.
pub async fn run(rotation: Rotation, cancel: CancellationToken) {
    let purpose = &rotation.purpose;
    let current = rotation.cert_dir.join(purpose.current());
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
    loop {
        let valid = std::fs::read(&current)
            .ok()
            .and_then(|pem| bootstrap::validity(&pem));
        let wait = match (valid, purpose) {
            (Some((not_before, not_after)), _) => {
                let due = deadline(not_before, not_after, jitter());
                let wait = Duration::from_secs(u64::try_from(due - now()).unwrap_or(0));
                info!(certificate = purpose.current(), expires = not_after, renew_in = ?wait, "certificate rotation scheduled");
                wait
            }
            // No serving certificate yet: ask for the first one now.
            (None, bootstrap::Purpose::Serving { .. }) => Duration::ZERO,
            (None, bootstrap::Purpose::Client) => {
                warn!(path = %current.display(), "no readable client certificate to rotate; rotation stops");
                return;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        loop {
            let renewed = tokio::select! {
                _ = cancel.cancelled() => return,
                renewed = bootstrap::request_certificate(&rotation.client, &rotation.node_name, purpose, ISSUE_WAIT) => renewed,
            };
            match renewed.and_then(|pem| bootstrap::install(&rotation.cert_dir, purpose, &pem)) {
                Ok((file, _)) => {
                    info!(certificate = %file.display(), "certificate issued and installed");
                    if let Some(connections) = &rotation.connections {
                        connections.close_all();
                    }
                    backoff.reset();
                    break;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    warn!(certificate = purpose.current(), error = %error_chain(&err), retry_in = ?delay, "getting a new certificate failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        assert_eq!(deadline(1000, 2000, 0.7), 1700);
        assert_eq!(deadline(1000, 2000, 0.9), 1900);
        assert_eq!(deadline(1000, 2000, 0.0), 1700, "clamped");
        assert_eq!(deadline(1000, 2000, 1.0), 1900, "clamped");
        for _ in 0..100 {
            let j = jitter();
            assert!((0.7..=0.9).contains(&j), "{j}");
        }
    }
}
