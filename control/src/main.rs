//! The `nodus-control` binary: parses flags, sets up logging and signals, builds the API
//! client and runs the scheduler and the controllers until SIGTERM or SIGINT. Errors are
//! printed here once, as one line with their causes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::ReplicationController;
use kube::config::{KubeConfigOptions, Kubeconfig};
use nodus_control::components::Selection;
use nodus_control::{controllers, leader, scheduler, serve};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// How long components get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The nodus control plane: scheduler and controllers.
#[derive(Debug, Parser)]
#[command(name = "nodus-control", version)]
struct Flags {
    /// Path to a kubeconfig file with the scheduler's credentials.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Schedule the pods whose spec.schedulerName is this.
    #[arg(long, default_value = "default-scheduler")]
    scheduler_name: String,
    /// The cluster CA bundle (PEM) to publish as `kube-root-ca.crt` in every namespace;
    /// without it, the kubeconfig's CA.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// Allocate and set pod CIDRs on nodes, from --cluster-cidr (node IPAM).
    #[arg(long, default_value_t = false)]
    allocate_node_cidrs: bool,
    /// The pod address range of the cluster, e.g. 10.244.0.0/16.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = controllers::node_ipam::DEFAULT_NODE_MASK)]
    node_cidr_mask_size: u8,
    /// Run the garbage collector (cascading deletion through ownerReferences).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enable_garbage_collector: bool,
    /// Controllers to run: `*` for all, `name` to enable, `-name` to disable (upstream's
    /// names, e.g. `*,-job-controller`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Run the scheduler.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scheduler: bool,
    /// Compete for a Lease so that only one replica works at a time.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The leader Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// The leader Lease's name.
    #[arg(long, default_value = "nodus-control")]
    leader_elect_resource_name: String,
    /// Where `/healthz` and `/metrics` are served (plain HTTP; keep it local).
    #[arg(long, default_value = "127.0.0.1:10257")]
    healthz_bind_address: std::net::SocketAddr,
    /// How long a node may go without a heartbeat before it counts as unreachable.
    #[arg(long, default_value = "50s", value_parser = controllers::node_lifecycle::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = controllers::node_lifecycle::parse_duration)]
    node_monitor_period: std::time::Duration,
    /// How often every ResourceQuota's usage is recomputed, changes seen or not.
    #[arg(long, default_value = "5m", value_parser = controllers::node_lifecycle::parse_duration)]
    resource_quota_sync_period: std::time::Duration,
    /// The CA certificate (PEM) that signs kubelet certificates from CSRs.
    #[arg(long)]
    cluster_signing_cert_file: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[arg(long)]
    cluster_signing_key_file: Option<PathBuf>,
    /// The longest validity of a signed certificate.
    #[arg(long, default_value = "8760h", value_parser = controllers::node_lifecycle::parse_duration)]
    cluster_signing_duration: std::time::Duration,
    /// Log verbosity, as the Kubernetes components count it (-v 4 for debug).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    verbosity: u8,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    init_logging(flags.verbosity);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("starting the async runtime")),
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let selection = Selection::parse(&flags.controllers)?;
    let ipam = if flags.allocate_node_cidrs && selection.runs("node-ipam-controller") {
        let cidr = flags
            .cluster_cidr
            .as_deref()
            .context("--allocate-node-cidrs needs --cluster-cidr")?;
        Some(controllers::node_ipam::Config::parse(
            cidr,
            flags.node_cidr_mask_size,
        )?)
    } else {
        None
    };
    let signer = match (
        &flags.cluster_signing_cert_file,
        &flags.cluster_signing_key_file,
    ) {
        (Some(cert), Some(key)) => {
            let mut signer = controllers::csr::Signer::from_files(cert, key)?;
            signer.duration = flags.cluster_signing_duration;
            Some(signer)
        }
        (None, None) => None,
        _ => {
            anyhow::bail!("--cluster-signing-cert-file and --cluster-signing-key-file go together")
        }
    };
    // kube's error already names the file.
    let kubeconfig = Kubeconfig::read_from(&flags.kubeconfig).context("reading the kubeconfig")?;
    // Upstream's order: the flag, else the CA the controller manager itself trusts.
    let root_ca = match &flags.root_ca_file {
        Some(path) => Some(controllers::root_ca::from_file(path)?),
        None => controllers::root_ca::from_kubeconfig(&kubeconfig)?,
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", flags.kubeconfig.display()))?;
    let client = kube::Client::try_from(config).context("building the API client")?;

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signals.cancel();
    });
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "nodus-control starting"
    );
    let (status, status_rx) = watch::channel(serve::Status {
        leading: !flags.leader_elect,
        lease_name: flags.leader_elect_resource_name.clone(),
    });
    tokio::spawn(serve::run(
        flags.healthz_bind_address,
        status_rx,
        shutdown.child_token(),
    ));
    let election = flags.leader_elect.then(|| {
        // Upstream's identity: the hostname and a unique suffix, so replicas on one
        // machine differ too.
        let unique = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map(|u| u.trim().to_owned())
            .unwrap_or_else(|_| std::process::id().to_string());
        leader::Config::new(
            &flags.leader_elect_resource_namespace,
            &flags.leader_elect_resource_name,
            format!("{hostname}_{unique}"),
        )
    });
    if let Some(election) = &election {
        if !leader::acquire(&client, election, &shutdown).await {
            info!("nodus-control stopped before leading");
            return Ok(());
        }
        status.send_modify(|s| s.leading = true);
    }

    let work = shutdown.child_token();
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let mut start = |name: &'static str, task: BoxFuture<'static, anyhow::Result<()>>| {
        if name == "scheduler" || selection.runs(name) {
            tasks.spawn(async move { (name, task.await) });
        }
    };
    let quiet = |task: BoxFuture<'static, ()>| -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            task.await;
            Ok(())
        })
    };
    let c = || client.clone();
    start(
        "node-lifecycle-controller",
        quiet(Box::pin(controllers::node_taints::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "bootstrap-signer-controller",
        quiet(Box::pin(controllers::bootstrap_signer::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "token-cleaner-controller",
        quiet(Box::pin(controllers::token_cleaner::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "endpointslice-controller",
        quiet(Box::pin(controllers::endpointslice::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "endpointslice-mirroring-controller",
        quiet(Box::pin(controllers::endpointslice_mirroring::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "serviceaccount-controller",
        quiet(Box::pin(controllers::service_account::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "namespace-controller",
        quiet(Box::pin(controllers::namespace::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "replicaset-controller",
        quiet(Box::pin(controllers::replicaset::run::<ReplicaSet>(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "replicationcontroller-controller",
        quiet(Box::pin(controllers::replicaset::run::<
            ReplicationController,
        >(c(), work.child_token()))),
    );
    start(
        "deployment-controller",
        quiet(Box::pin(controllers::deployment::run(
            c(),
            work.child_token(),
        ))),
    );
    if flags.enable_garbage_collector {
        start(
            "garbage-collector-controller",
            quiet(Box::pin(controllers::garbage_collector::run(
                c(),
                work.child_token(),
            ))),
        );
    }
    if let Some(config) = ipam {
        start(
            "node-ipam-controller",
            quiet(Box::pin(controllers::node_ipam::run(
                c(),
                config,
                work.child_token(),
            ))),
        );
    }
    start(
        "endpoints-controller",
        quiet(Box::pin(controllers::endpoints::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "statefulset-controller",
        quiet(Box::pin(controllers::statefulset::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "disruption-controller",
        quiet(Box::pin(controllers::disruption::run(
            c(),
            work.child_token(),
        ))),
    );
    start(
        "cronjob-controller",
        quiet(Box::pin(controllers::cronjob::run(c(), work.child_token()))),
    );
    start(
        "job-controller",
        quiet(Box::pin(controllers::job::run(c(), work.child_token()))),
    );
    start(
        "daemonset-controller",
        quiet(Box::pin(controllers::daemonset::run(
            c(),
            work.child_token(),
        ))),
    );
    let quota = controllers::resource_quota::Config {
        sync_period: flags.resource_quota_sync_period,
    };
    start(
        "resourcequota-controller",
        quiet(Box::pin(controllers::resource_quota::run(
            c(),
            quota,
            work.child_token(),
        ))),
    );
    let protection = controllers::volume_protection::Config {
        claims: selection.runs("persistentvolumeclaim-protection-controller"),
        volumes: selection.runs("persistentvolume-protection-controller"),
        classes: selection.runs("volumeattributesclass-protection-controller"),
    };
    // One task for the three: started under whichever name is selected.
    let name = if protection.claims {
        "persistentvolumeclaim-protection-controller"
    } else if protection.volumes {
        "persistentvolume-protection-controller"
    } else {
        "volumeattributesclass-protection-controller"
    };
    start(
        name,
        quiet(Box::pin(controllers::volume_protection::run(
            c(),
            protection,
            work.child_token(),
        ))),
    );
    let lifecycle = controllers::node_lifecycle::Config {
        grace_period: flags.node_monitor_grace_period,
        monitor_period: flags.node_monitor_period,
        ..Default::default()
    };
    start(
        "node-lifecycle-controller",
        quiet(Box::pin(controllers::node_lifecycle::run(
            c(),
            lifecycle,
            work.child_token(),
        ))),
    );
    match signer {
        Some(signer) => start(
            "certificatesigningrequest-signing-controller",
            quiet(Box::pin(controllers::csr::run(
                c(),
                signer,
                work.child_token(),
            ))),
        ),
        None => info!(
            "no --cluster-signing-cert-file: certificate signing requests are neither approved nor signed"
        ),
    }
    match root_ca {
        Some(ca) => start(
            "root-ca-certificate-publisher-controller",
            quiet(Box::pin(controllers::root_ca::run(
                c(),
                ca,
                work.child_token(),
            ))),
        ),
        None => warn!(
            "no --root-ca-file and no CA in the kubeconfig: kube-root-ca.crt is not published"
        ),
    }
    if flags.scheduler {
        let config = scheduler::Config {
            // Upstream's reporting instance is `<scheduler>-<hostname>`.
            instance: Some(format!("{}-{hostname}", flags.scheduler_name)),
            scheduler_name: flags.scheduler_name.clone(),
        };
        let token = work.child_token();
        let client = c();
        start(
            "scheduler",
            Box::pin(async move { Ok(scheduler::run(client, config, token).await?) }),
        );
    }

    let lost = async {
        match &election {
            Some(election) => leader::hold(&client, election, &shutdown).await,
            None => shutdown.cancelled().await,
        }
    };
    let outcome = tokio::select! {
        _ = lost => {
            if shutdown.is_cancelled() {
                Ok(())
            } else {
                status.send_modify(|s| s.leading = false);
                // Another replica may lead already: stop at once rather than act beside it.
                Err(anyhow::anyhow!("lost the leader lease"))
            }
        }
        Some(ended) = tasks.join_next() => match ended {
            Ok((name, Err(err))) => Err(err.context(format!("{name} failed"))),
            Ok((name, Ok(()))) => Err(anyhow::anyhow!("{name} stopped on its own")),
            Err(err) => Err(anyhow::Error::new(err).context("a component panicked")),
        },
    };
    work.cancel();
    shutdown.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(grace = ?SHUTDOWN_GRACE, "components still running after the grace period; stopping anyway");
    }
    if let Some(election) = &election
        && outcome.is_ok()
    {
        leader::release(&client, election).await;
    }
    info!("nodus-control stopped");
    outcome
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        }
        // Without signal handlers the process still ends on SIGTERM by default.
        _ => std::future::pending().await,
    }
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    // kube's client logs every failed request at ERROR; the scheduler logs each failure
    // once itself, with what it was doing and whether it retries.
    let default = format!("info,nodus_control={level},kube_client::client::builder=off");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints the error and its causes as one line, each cause said once.
fn fail(err: &anyhow::Error) -> ExitCode {
    let mut line = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        let first = message.lines().next().unwrap_or_default();
        if !line.contains(first) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(first);
        }
    }
    eprintln!("nodus-control: error: {line}");
    ExitCode::FAILURE
}
