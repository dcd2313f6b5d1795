//! Agent: builds the clients, registers the node, and runs each role as a task under one
//! cancellation token; on shutdown it cancels them and waits, with a deadline.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nodus_cri::Runtime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::node::machine::Machine;
use crate::node::runtime::{self, RuntimeState};
use crate::node::status::NodeFacts;
use crate::node::{address, bootstrap, lease, pod_cidr, register, status};
use crate::pods::sandbox::NodeDns;
use crate::{pods, quantity};

/// How long tasks get to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// How long registration waits for the runtime's first answer, so that a healthy node
/// is created Ready with its runtime version instead of being corrected a moment later.
const FIRST_RUNTIME_CHECK_WAIT: Duration = Duration::from_secs(3);
/// How long TLS bootstrap waits for its certificate request to be approved and issued.
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(600);

/// An error that stops the agent before it runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] crate::node::client::ClientError),
    #[error("finding the node's IP")]
    NodeIp(#[from] address::Error),
    #[error(transparent)]
    Cni(#[from] nodus_net::cni::Error),
    #[error("TLS bootstrap")]
    Bootstrap(#[from] crate::node::bootstrap::Error),
}

/// Runs the agent until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if let Some(bootstrap_kubeconfig) = &config.bootstrap_kubeconfig
        && !bootstrap::usable(&config.kubeconfig)
    {
        let bootstrap = bootstrap::Bootstrap {
            node_name: config.node_name.clone(),
            kubeconfig: config.kubeconfig.clone(),
            bootstrap_kubeconfig: bootstrap_kubeconfig.clone(),
            cert_dir: config.cert_dir.clone(),
            wait: BOOTSTRAP_WAIT,
        };
        tokio::select! {
            done = bootstrap::run(&bootstrap) => { done?; }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    let (client, file_backed) = crate::node::client::build(&config.kubeconfig).await?;
    let node_ips = if config.node_ips.is_empty() {
        vec![address::discover()?]
    } else {
        config.node_ips.clone()
    };
    let network = pod_cidr::Network {
        cni_conf_dir: config.cni_conf_dir.clone(),
        root_dir: config.root_dir.clone(),
    };
    // With --pod-cidr the range is known now; otherwise it comes with the Node (below).
    if let Some(subnet) = config.pod_cidr {
        network.configure(subnet)?;
    }

    let machine = Machine::read();
    let facts = NodeFacts {
        machine: machine.clone(),
        hostname: config.hostname.clone(),
        node_ips: node_ips.clone(),
        max_pods: config.max_pods,
        port: config.port,
        thresholds: config.eviction_hard.clone(),
        reserved: config.reserved,
        nodefs_path: crate::node::machine::existing_ancestor(&config.root_dir),
    };

    let mut tasks = JoinSet::new();
    if config.rotate_certificates {
        let current = config.cert_dir.join(bootstrap::CURRENT);
        match file_backed {
            // Rotation renews what TLS bootstrap wrote: the kubeconfig must use it.
            Some(backed) if backed.cert == current => {
                tasks.spawn(crate::node::rotation::run(
                    crate::node::rotation::Rotation {
                        client: client.clone(),
                        purpose: bootstrap::Purpose::Client,
                        connections: Some(backed.connections),
                        node_name: config.node_name.clone(),
                        cert_dir: config.cert_dir.clone(),
                    },
                    shutdown.child_token(),
                ));
            }
            _ => warn!(
                expected = %current.display(),
                "rotateCertificates needs a kubeconfig whose client certificate and key are \
                 --cert-dir's kubelet-client-current.pem (as TLS bootstrap writes it); not rotating"
            ),
        }
    }
    let (runtime_tx, mut runtime_rx) = watch::channel(RuntimeState::default());
    tasks.spawn(runtime::monitor(
        Runtime::connect(config.runtime_endpoint.clone()),
        runtime_tx,
        shutdown.child_token(),
    ));
    let _ = tokio::time::timeout(FIRST_RUNTIME_CHECK_WAIT, runtime_rx.changed()).await;

    info!(node = %config.node_name, ips = ?node_ips, kubelet_version = %status::kubelet_version(), "registering node");
    let nodes: Api<Node> = Api::all(client.clone());
    let report = facts.observe(&runtime_rx.borrow_and_update());
    let desired = register::initial_node(
        &config.node_name,
        &register::default_labels(&config.node_name, "linux", &machine.architecture),
        &config.node_labels,
        &config.register_with_taints,
        report.to_status(&[], k8s_openapi::jiff::Timestamp::now()),
    );
    // The pod role and the kubelet API start before the node is registered: static pods
    // must run while there is no API server yet (a control plane's own pods).
    let allocatable = report.allocatable.clone();
    let milli = |name: &str| {
        allocatable
            .get(name)
            .and_then(|q| quantity::parse(&q.0))
            .map_or(0, |m| m.0)
    };
    let metrics = Arc::new(crate::metrics::Kubelet::default());
    let observer: Arc<dyn nodus_cri::Observer> = metrics.clone();
    let runtime = Runtime::connect_observed(config.runtime_endpoint.clone(), Some(observer));
    let (services, writer) = kube::runtime::reflector::store();
    tasks.spawn(reflect_services(
        client.clone(),
        writer,
        shutdown.child_token(),
    ));
    let pods = Arc::new(pods::worker::Shared {
        client: client.clone(),
        images: pods::images::Images::new(runtime.clone()),
        runtime,
        events: pods::events::Events::start(
            client.clone(),
            "kubelet",
            &config.node_name,
            shutdown.child_token(),
        ),
        runtime_state: runtime_rx.clone(),
        node_name: config.node_name.clone(),
        node_hostname: config.hostname.clone(),
        host_ips: node_ips.iter().map(ToString::to_string).collect(),
        dns: NodeDns {
            cluster_dns: config.cluster_dns.iter().map(ToString::to_string).collect(),
            cluster_domain: config.cluster_domain.clone(),
            host: std::fs::read_to_string(&config.resolv_conf)
                .map(|text| pods::sandbox::parse_resolv_conf(&text))
                .unwrap_or_default(),
        },
        root_dir: config.root_dir.clone(),
        pod_logs_dir: config.pod_logs_dir.clone(),
        allocatable_milli_cpu: milli("cpu"),
        allocatable_memory: milli("memory") / 1000,
        services,
        thresholds: config.eviction_hard.clone(),
        log_limits: config.log_limits,
        metrics: metrics.clone(),
        static_pods: config.static_pods.clone(),
        sysctls: config.sysctls.clone(),
        holdings: pods::resize::Holdings::default(),
    });
    let runtime = pods.runtime.clone();
    tasks.spawn(pods::dispatch::run(pods, shutdown.child_token()));
    if config.host_gateway_routes {
        tasks.spawn(crate::node::pod_routes::follow(
            client.clone(),
            config.node_name.clone(),
            shutdown.child_token(),
        ));
    }
    if config.pod_cidr.is_none() {
        tasks.spawn(pod_cidr::follow(
            client.clone(),
            config.node_name.clone(),
            network,
            runtime.clone(),
            shutdown.child_token(),
        ));
    }
    let serving = match &config.tls_files {
        Some((cert, key)) => crate::server::tls::Serving::Files {
            cert: cert.to_string_lossy().into_owned(),
            key: key.to_string_lossy().into_owned(),
        },
        None if config.rotate_server_certificates => {
            let mut names = vec![config.hostname.clone()];
            names.extend(node_ips.iter().map(ToString::to_string));
            let purpose = bootstrap::Purpose::Serving { names };
            let path = config.cert_dir.join(purpose.current());
            tasks.spawn(crate::node::rotation::run(
                crate::node::rotation::Rotation {
                    client: client.clone(),
                    purpose,
                    connections: None,
                    node_name: config.node_name.clone(),
                    cert_dir: config.cert_dir.clone(),
                },
                shutdown.child_token(),
            ));
            crate::server::tls::Serving::Issued(path)
        }
        None => crate::server::tls::Serving::SelfSigned {
            hostname: config.hostname.clone(),
            ips: node_ips.clone(),
        },
    };
    tasks.spawn(crate::server::run(
        client.clone(),
        runtime,
        metrics,
        crate::server::Settings {
            address: std::net::SocketAddr::new(config.address, config.port),
            tls: serving,
            client_ca: config.client_ca_file.clone(),
            anonymous_auth: config.anonymous_auth,
            node_name: config.node_name.clone(),
            root_dir: config.root_dir.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            configz: config.configz.clone(),
        },
        shutdown.child_token(),
    ));
    let registered = register::register(&nodes, &desired, &shutdown).await;
    if let Some(node) = registered {
        crate::node::notify::ready();
        tasks.spawn(lease::renew(
            client.clone(),
            node.clone(),
            shutdown.child_token(),
        ));
        if let Some(proxy) = &config.proxy {
            let settings = crate::proxy::ProxySettings {
                node_name: config.node_name.clone(),
                node_ips: node_ips.clone(),
                cluster_cidrs: proxy.cluster_cidrs.clone(),
                nodeport_addresses: proxy.nodeport_addresses.clone(),
                healthz_bind: proxy.healthz_bind,
                metrics_bind: proxy.metrics_bind,
                min_sync_period: proxy.min_sync_period,
                sync_period: proxy.sync_period,
            };
            tasks.spawn(crate::proxy::run(
                client.clone(),
                settings,
                shutdown.child_token(),
            ));
        }
        tasks.spawn(status::report(
            nodes,
            node,
            facts,
            runtime_rx,
            shutdown.child_token(),
        ));
    }

    shutdown.cancelled().await;
    info!("shutting down");
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?SHUTDOWN_GRACE, "tasks still running after the grace period; stopping anyway");
    }
    Ok(())
}

/// Keeps `writer`'s store of every Service current, for the containers' service variables
/// (the kubelet's service informer; nodes may list and watch Services).
async fn reflect_services(
    client: kube::Client,
    writer: kube::runtime::reflector::store::Writer<k8s_openapi::api::core::v1::Service>,
    cancel: CancellationToken,
) {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let api: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::all(client);
    let stream = kube::runtime::watcher(api, kube::runtime::watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|event| async move {
            if let Err(err) = event {
                tracing::warn!(error = %crate::node::runtime::error_chain(&err), "watching Services failed; retrying");
            }
        });
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = stream => {}
    }
}
