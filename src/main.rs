//! The `nodus` binary: parses flags, sets up logging and signals, and runs the agent.
//! Errors are printed here once, as one line with their causes.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use nodus::agent;
use nodus::config::{self, Config, Flags};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "join") {
        args = match join(&args[2..]) {
            Ok(agent_args) => agent_args,
            Err(err) => return fail(&err),
        };
    }
    // Usage errors and --help end here, as clap prints them.
    let matches = Flags::command().get_matches_from(args);
    let (flags, unsupported) = match config::flags_with_file(&matches) {
        Ok(parsed) => parsed,
        Err(err) => return fail(&anyhow::Error::new(err)),
    };
    let config = match Config::from_flags(flags, read_hostname) {
        Ok(config) => config,
        Err(err) => return fail(&anyhow::Error::new(err)),
    };
    init_logging(config.verbosity);
    if !unsupported.is_empty() {
        warn!(
            fields = %unsupported.join(", "),
            "these settings are not implemented by nodus and are ignored"
        );
    }
    if config.cleanup {
        // As kube-proxy --cleanup: remove the rules and exit, touching nothing else.
        return match nodus::proxy::cleanup() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&anyhow::Error::new(err)),
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("starting the async runtime")),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

const JOIN_USAGE: &str = "usage: nodus join SERVER --token ID.SECRET \
--discovery-token-ca-cert-hash sha256:HASH [--discovery-token-unsafe-skip-ca-verification] [nodus flags]

Joins the cluster whose API server is SERVER (host:port or URL) as kubeadm join does: reads
cluster-info from kube-public, checks its signature with the bootstrap token and its CA against
the hash, writes the bootstrap kubeconfig (--bootstrap-kubeconfig, default
/etc/kubernetes/bootstrap-kubelet.conf) and, when the cluster publishes one (kubeadm's
kube-system/kubelet-config), its KubeletConfiguration as --config (default
/var/lib/kubelet/config.yaml; an existing file is kept), with the CA in pki/ca.crt beside the
bootstrap kubeconfig; then runs nodus with the other flags, which asks for its client
certificate (TLS bootstrap) and writes --kubeconfig (default /etc/kubernetes/kubelet.conf).";

/// `nodus join SERVER ...`: token discovery, then the agent's command line (with
/// `--bootstrap-kubeconfig` pointing at what discovery wrote) for the normal start.
fn join(args: &[OsString]) -> anyhow::Result<Vec<OsString>> {
    use anyhow::{Context, bail};
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_owned)
                .context("arguments must be UTF-8")
        })
        .collect::<anyhow::Result<_>>()?;
    if args.is_empty() || args[0].starts_with('-') {
        if args.first().is_some_and(|a| a == "-h" || a == "--help") {
            println!("{JOIN_USAGE}");
            std::process::exit(0);
        }
        bail!("{JOIN_USAGE}");
    }
    let mut request = nodus::join::Join {
        server: args[0].clone(),
        token: String::new(),
        ca_cert_hashes: Vec::new(),
        unsafe_skip_ca_verification: false,
    };
    // The agent's defaults come first, so that the user's flags (later) win.
    let mut agent: Vec<OsString> = ["nodus", "--kubeconfig", "/etc/kubernetes/kubelet.conf"]
        .map(OsString::from)
        .to_vec();
    let mut bootstrap = PathBuf::from("/etc/kubernetes/bootstrap-kubelet.conf");
    let mut kubeconfig = PathBuf::from("/etc/kubernetes/kubelet.conf");
    let mut kubelet_config: Option<PathBuf> = None;
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = |inline: Option<String>| -> anyhow::Result<String> {
            inline
                .or_else(|| rest.next().cloned())
                .with_context(|| format!("{name} needs a value"))
        };
        match name {
            "--token" => request.token = value(inline)?,
            "--discovery-token-ca-cert-hash" => request.ca_cert_hashes.push(value(inline)?),
            "--discovery-token-unsafe-skip-ca-verification" => {
                request.unsafe_skip_ca_verification = true
            }
            "--bootstrap-kubeconfig" => bootstrap = value(inline)?.into(),
            "--config" => {
                let path: PathBuf = value(inline)?.into();
                agent.extend(["--config".into(), path.clone().into()]);
                kubelet_config = Some(path);
            }
            "--kubeconfig" => {
                kubeconfig = value(inline)?.into();
                agent.extend(["--kubeconfig".into(), kubeconfig.clone().into()]);
            }
            _ => agent.push(arg.into()),
        }
    }
    if request.token.is_empty() {
        bail!("--token is required\n{JOIN_USAGE}");
    }
    if kubeconfig.exists() {
        bail!(
            "{} exists: this node has joined already (run nodus without `join`, or remove it to \
             join again)",
            kubeconfig.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let discovered = runtime.block_on(nodus::join::discover(&request))?;
    nodus::join::write_bootstrap_kubeconfig(&bootstrap, &discovered, &request.token)?;
    let config_path = kubelet_config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet/config.yaml"));
    if !config_path.exists() {
        match runtime.block_on(nodus::join::kubelet_config(&discovered, &request.token))? {
            Some(yaml) => {
                let ca_file = bootstrap
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("pki/ca.crt");
                let local = nodus::join::localize_kubelet_config(&yaml, &ca_file)?;
                if !ca_file.exists() {
                    write_file(&ca_file, &discovered.ca_pem)?;
                }
                write_file(&config_path, local.as_bytes())?;
                if kubelet_config.is_none() {
                    // Before the user's flags, which override the file anyway.
                    agent.splice(1..1, ["--config".into(), config_path.clone().into()]);
                }
                eprintln!(
                    "nodus join: the cluster's kubelet configuration is in {}",
                    config_path.display()
                );
            }
            None => eprintln!(
                "nodus join: the cluster publishes no kubelet-config; flags and defaults apply"
            ),
        }
    }
    eprintln!(
        "nodus join: cluster at {} verified; TLS bootstrap next",
        discovered.server
    );
    agent.extend(["--bootstrap-kubeconfig".into(), bootstrap.into()]);
    Ok(agent)
}

/// Writes a file nodus join fetched, creating its directory.
fn write_file(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signals.cancel();
    });
    info!(version = env!("CARGO_PKG_VERSION"), node = %config.node_name, "nodus starting");
    agent::run(config, shutdown).await?;
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

fn read_hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    // Dependencies stay at info unless RUST_LOG asks otherwise: their debug output is noise.
    // kube's client also logs every failed request at ERROR; nodus logs each failure
    // once itself, with what it was doing and whether it retries.
    let default = format!(
        "info,nodus={level},nodus_cri={level},nodus_net={level},kube_client::client::builder=off"
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints the error and its causes as one line. Some causes (YAML parse errors) carry a
/// multi-line excerpt of the input, whose first line already says what and where; some
/// dependencies repeat their source in their own message, which is said only once.
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
    eprintln!("nodus: error: {line}");
    ExitCode::FAILURE
}
