//! The `nodus` binary: parses flags, sets up logging and signals, and runs the agent.
//! Errors are printed here once, as one line with their causes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::CommandFactory;
use nodus::agent;
use nodus::config::{self, Config, Flags};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors and --help end here, as clap prints them.
    let matches = Flags::command().get_matches();
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
