//! Proxy: the kube-proxy role. Services, EndpointSlices and this Node, watched as current state,
//! become one nftables table (`inet nodus`) applied atomically, plus the proxy's health servers.
//!
//! Invariants: only nodus's own table is ever touched; building is pure and apart from I/O; the
//! role never panics and never ends on its own: failures are logged and retried until `cancel`.
//!
//! ```text
//!   kube-apiserver ── watch, one task each ──> reflector stores (Services, EndpointSlices, Node)
//!                                    │ changes mark the schedule dirty
//!                                    ▼
//!   sync::Schedule ── due (min interval, max interval, backoff) ──> one sync:
//!     mapping::Mapper (unchanged Services shared) ─> nodus_net ruleset::Builder ─>
//!       Transaction::update against the applied ruleset (full replace at start, after failures,
//!       hourly) ─> nothing to do? skip; else one netlink batch (nft -f - text as the fallback)
//!     stale::stale_udp ─> conntrack -D (UDP only)        warnings ─> log + Warning event per Service
//!                                    │ watch channels
//!                                    ▼
//!   health: /healthz, /livez on :10256          one listener per healthCheckNodePort
//! ```
//!
//! Upstream references: `pkg/proxy/nftables/proxier.go` (the sync), `pkg/proxy/healthcheck/`,
//! `pkg/proxy/endpointslicecache.go`, `pkg/proxy/serviceport.go`.

pub mod health;
pub mod mapping;
pub mod metrics;
pub mod stale;
pub mod sync;
pub mod warnings;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use kube::Client;
use nodus_net::proxy::apply::{self, Nft};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::health::{ProxyHealth, ServiceChecks};
use self::metrics::ProxyMetrics;

/// The proxy's health server address when not configured (kube-proxy's `--healthz-bind-address`).
pub const DEFAULT_HEALTHZ_BIND: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 10256);

/// The proxy role's settings, from kube-proxy's flags of the same meaning.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// This node's name: endpoints whose `nodeName` equals it are local.
    pub node_name: String,
    /// The node's IPs (`--node-ip`); empty: taken from the Node's status.
    pub node_ips: Vec<IpAddr>,
    /// `--cluster-cidr`: ClusterIP traffic from outside these is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`; empty = all node IPs.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--healthz-bind-address` (0.0.0.0:10256).
    pub healthz_bind: SocketAddr,
    /// `--metrics-bind-address` (127.0.0.1:10249); `None` (port 0) serves no metrics.
    pub metrics_bind: Option<SocketAddr>,
    /// `--min-sync-period`: the least time between two syncs (changes in between are batched).
    pub min_sync_period: Duration,
    /// `--sync-period`: the most time between two syncs.
    pub sync_period: Duration,
}

/// An error of the proxy role's one-shot operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("removing the service proxy rules")]
    Cleanup(#[source] apply::Error),
}

/// Runs the proxy role until `cancel`: the sync loop and the health servers.
pub async fn run(client: Client, settings: ProxySettings, cancel: CancellationToken) {
    // Upstream's health timeout is twice the sync period: a change may wait one period for its
    // sync in the worst case, and a second one covers a slow apply.
    let timeout = settings.sync_period.max(settings.min_sync_period) * 2;
    let (health_tx, health_rx) = watch::channel(ProxyHealth::starting(Instant::now()));
    let (checks_tx, checks_rx) = watch::channel(ServiceChecks::new());
    let (metrics_tx, metrics_rx) = watch::channel(ProxyMetrics::default());
    info!(
        node = %settings.node_name,
        healthz = %settings.healthz_bind,
        metrics = ?settings.metrics_bind,
        min_sync_period = ?settings.min_sync_period,
        sync_period = ?settings.sync_period,
        "starting the service proxy"
    );

    // The servers get their own token so they also stop should the loop ever return early.
    let servers = cancel.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(health::serve_proxy_health(
        settings.healthz_bind,
        health_rx.clone(),
        timeout,
        servers.clone(),
    ));
    if let Some(addr) = settings.metrics_bind {
        tasks.spawn(metrics::serve(addr, metrics_rx, servers.clone()));
    }
    tasks.spawn(health::serve_service_checks(
        checks_rx,
        health_rx,
        timeout,
        servers.clone(),
    ));
    sync::run(
        client,
        settings,
        Arc::new(sync::System::new()),
        sync::Published {
            health: health_tx,
            checks: checks_tx,
            metrics: metrics_tx,
        },
        cancel.clone(),
    )
    .await;
    servers.cancel();
    while tasks.join_next().await.is_some() {}
    info!("service proxy stopped");
}

/// Removes nodus's nftables table (`--cleanup`). Idempotent; touches nothing else.
pub fn cleanup() -> Result<(), Error> {
    Nft::new().cleanup().map_err(Error::Cleanup)
}
