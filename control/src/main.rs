//! The `nodus-control` binary: parses flags, sets up logging and signals, builds the API
//! client and runs the scheduler and the controllers until SIGTERM or SIGINT. Errors are
//! printed here once, as one line with their causes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use nodus_control::{controllers, scheduler};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

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
    // kube's error already names the file.
    let ipam = if flags.allocate_node_cidrs {
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
    // Upstream's reporting instance is `<scheduler>-<hostname>`.
    let instance = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|host| format!("{}-{}", flags.scheduler_name, host.trim()));
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "nodus-control starting"
    );
    let taints = tokio::spawn(controllers::node_taints::run(
        client.clone(),
        shutdown.child_token(),
    ));
    let endpoints = tokio::spawn(controllers::endpointslice::run(
        client.clone(),
        shutdown.child_token(),
    ));
    let accounts = tokio::spawn(controllers::service_account::run(
        client.clone(),
        shutdown.child_token(),
    ));
    let namespaces = tokio::spawn(controllers::namespace::run(
        client.clone(),
        shutdown.child_token(),
    ));
    let replicasets = tokio::spawn(controllers::replicaset::run(
        client.clone(),
        shutdown.child_token(),
    ));
    let deployments = tokio::spawn(controllers::deployment::run(
        client.clone(),
        shutdown.child_token(),
    ));
    let collector = flags.enable_garbage_collector.then(|| {
        tokio::spawn(controllers::garbage_collector::run(
            client.clone(),
            shutdown.child_token(),
        ))
    });
    let ipam = ipam.map(|config| {
        tokio::spawn(controllers::node_ipam::run(
            client.clone(),
            config,
            shutdown.child_token(),
        ))
    });
    let publisher = match root_ca {
        Some(ca) => Some(tokio::spawn(controllers::root_ca::run(
            client.clone(),
            ca,
            shutdown.child_token(),
        ))),
        None => {
            warn!(
                "no --root-ca-file and no CA in the kubeconfig: kube-root-ca.crt is not published"
            );
            None
        }
    };
    scheduler::run(
        client,
        scheduler::Config {
            scheduler_name: flags.scheduler_name,
            instance,
        },
        shutdown.clone(),
    )
    .await?;
    shutdown.cancel();
    let _ = taints.await;
    let _ = endpoints.await;
    let _ = accounts.await;
    let _ = namespaces.await;
    let _ = replicasets.await;
    let _ = deployments.await;
    for task in [collector, ipam].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    info!("nodus-control stopped");
    Ok(())
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
