//! Controllers: the level-triggered reconcilers nodus-control runs beside the scheduler,
//! one module each. Today: ReplicaSets (and ReplicationControllers), Deployments,
//! StatefulSets, DaemonSets, Jobs (with the TTL of finished ones) and CronJobs, the garbage collector,
//! node IPAM, node lifecycle (health, NoExecute taints and taint-based eviction), CSR
//! approval and signing, the node taints that follow node conditions, the EndpointSlices
//! and legacy Endpoints of Services with selectors, the EndpointSlices mirroring the custom
//! Endpoints of Services without one, the usage in ResourceQuota statuses, the
//! PodDisruptionBudget counts, the protection of claims and volumes in use, the
//! `kube-root-ca.crt` ConfigMap and `default` ServiceAccount
//! of every namespace, the emptying of namespaces being deleted, and (off by default, as
//! upstream) the bootstrap signer and token cleaner.

pub mod bootstrap_signer;
pub mod cronjob;
pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod endpointslice_mirroring;
pub mod garbage_collector;
pub mod history;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod node_taints;
pub mod owner;
pub mod per_namespace;
pub mod queue;
pub mod replicaset;
pub mod resource_quota;
pub mod root_ca;
pub mod service_account;
pub mod statefulset;
pub mod token_cleaner;
pub mod volume_protection;

/// How long a controller's writes in flight get to finish at shutdown.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits, up to [`DRAIN_GRACE`], for the tasks still in flight when a controller stops;
/// `what` names them in the warning if they are abandoned.
pub(crate) async fn drain<T: 'static>(tasks: &mut tokio::task::JoinSet<T>, what: &str) {
    if tasks.is_empty() {
        return;
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_GRACE, all).await.is_err() {
        tracing::warn!("{what} still in flight at shutdown were abandoned");
    }
}

/// Runs `pass` every `period` until `cancel`, for controllers that look at a few objects by
/// polling; a failed pass is logged (`what` failed) and the next one retries.
pub(crate) async fn periodically<F, Fut>(
    period: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
    what: &str,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(err) = pass().await {
                    tracing::warn!(error = %chain(&err), "{what} failed; retrying");
                }
            }
        }
    }
}

/// The error and its causes as one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The API server refused new content because the namespace is being deleted (the
/// `NamespaceLifecycle` admission plugin's cause): not a failure for a controller that
/// fills namespaces, since the content would go with the namespace anyway.
pub(crate) fn namespace_terminating(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}
