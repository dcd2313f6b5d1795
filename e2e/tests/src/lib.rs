//! Helpers for the end-to-end tests: the local cluster that `e2e/test` brings up, its
//! clients and scripts, and polling with a deadline.
//!
//! The tests themselves are `#[ignore]`d so that a plain `cargo test` (no cluster) skips
//! them; `e2e/test` runs them with `--ignored` once the cluster is up.

pub mod fake;
pub mod measure;
pub mod pods;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The local cluster under test.
#[derive(Debug, Clone)]
pub struct Cluster {
    e2e_dir: PathBuf,
}

impl Cluster {
    /// The cluster named by `NODUS_E2E_DIR` (set by e2e/test).
    pub fn from_env() -> Result<Self> {
        let dir = std::env::var_os("NODUS_E2E_DIR")
            .context("NODUS_E2E_DIR is not set: run these tests through e2e/test")?;
        Ok(Self {
            e2e_dir: dir.into(),
        })
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.e2e_dir.join(".cluster/admin.kubeconfig")
    }

    /// The cluster CA's certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.e2e_dir.join(".cluster/pki/ca.crt")
    }

    /// A file of the cluster's PKI, e.g. `apiserver-kubelet-client.crt`.
    pub fn pki(&self, file: &str) -> PathBuf {
        self.e2e_dir.join(".cluster/pki").join(file)
    }

    /// The log file of a cluster component (`nodus`, `kube-apiserver`, ...), appended to by
    /// every start.
    pub fn log(&self, component: &str) -> PathBuf {
        self.e2e_dir
            .join(".cluster/logs")
            .join(format!("{component}.log"))
    }

    /// The node's static pod manifest directory (nodus's --pod-manifest-path).
    pub fn manifests_dir(&self) -> PathBuf {
        self.e2e_dir.join(".cluster/manifests")
    }

    pub fn node_kubeconfig(&self) -> PathBuf {
        self.e2e_dir.join(".cluster/node.kubeconfig")
    }

    /// A client with cluster-admin rights.
    pub async fn admin(&self) -> Result<Client> {
        client(&self.admin_kubeconfig()).await
    }

    /// A client that authenticates with a bearer `token` (e.g. a ServiceAccount's).
    pub async fn token_client(&self, token: &str) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(self.admin_kubeconfig())?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..kube::config::AuthInfo::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// A client with the node's own credentials, as nodus has.
    pub async fn node_client(&self) -> Result<Client> {
        client(&self.node_kubeconfig()).await
    }

    /// The node's name: the hostname, lower-cased, as nodus derives it.
    pub fn node_name(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_default()
    }

    /// Runs `e2e/cluster ARGS` (e.g. `stop containerd`), failing on a non-zero exit.
    pub fn script(&self, args: &[&str]) -> Result<()> {
        self.script_with_nodus_args(args, "")
    }

    /// Runs `e2e/cluster ARGS` with `NODUS_EXTRA_ARGS` set, so a (re)started nodus gets
    /// `nodus_args` (space-separated) on top of the harness's flags.
    pub fn script_with_nodus_args(&self, args: &[&str], nodus_args: &str) -> Result<()> {
        let output = Command::new(self.e2e_dir.join("cluster"))
            .args(args)
            .env("NODUS_EXTRA_ARGS", nodus_args)
            .output()?;
        ensure!(
            output.status.success(),
            "e2e/cluster {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Runs kubectl with the admin kubeconfig and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.admin_kubeconfig(), args)
    }

    /// The PID of a cluster component, from the harness's PID file.
    pub fn pid(&self, component: &str) -> Result<i32> {
        let file = Path::new("/run/nodus-e2e/pids").join(format!("{component}.pid"));
        let pid = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(pid.trim().parse()?)
    }
}

/// `curl -sS ARGS` from this machine: what it printed, or why it failed.
pub fn curl<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs kubectl with `kubeconfig` and returns its stdout, failing on a non-zero exit.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let output: Output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

async fn client(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout` with the
/// last state described by `what`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(err) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {err:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace of its own for one test, with the `default` ServiceAccount that pod
/// admission requires (made here if nodus-control's controller has not made it yet). Its
/// pods are deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    pub async fn create(client: Client, prefix: &str) -> Result<Self> {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        use kube::Api;
        use kube::api::{ObjectMeta, PostParams};
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("{prefix}-{suffix:x}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &ns).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        // nodus-control's ServiceAccount controller usually makes it first; either will do.
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(err) => return Err(err.into()),
        }
        Ok(Self { name, client })
    }

    pub fn pods(&self) -> kube::Api<k8s_openapi::api::core::v1::Pod> {
        kube::Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates a pod from JSON, bound to `node`; without a service-account token volume unless
    /// the JSON asks for one (most tests do not need the API from inside the pod).
    pub async fn create_pod(
        &self,
        node: &str,
        mut pod: serde_json::Value,
    ) -> Result<k8s_openapi::api::core::v1::Pod> {
        pod["apiVersion"] = "v1".into();
        pod["kind"] = "Pod".into();
        pod["spec"]["nodeName"] = node.into();
        if pod["spec"]["automountServiceAccountToken"].is_null() {
            pod["spec"]["automountServiceAccountToken"] = false.into();
        }
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod)?;
        Ok(self.pods().create(&Default::default(), &pod).await?)
    }

    /// Deletes every pod of the namespace and waits until they are gone.
    pub async fn delete_pods(&self) -> Result<()> {
        use kube::api::{DeleteParams, ListParams};
        let pods = self.pods();
        pods.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        poll(
            Duration::from_secs(90),
            "the namespace's pods to be gone",
            || async {
                Ok(pods
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            },
        )
        .await
    }
}

/// Waits until `ip` (a Service's ClusterIP) is in nodus's nft table. Tests send nothing to a
/// Service address before: an unprogrammed ClusterIP would be routed off the machine, while
/// a programmed one (even without endpoints) stays local.
pub async fn wait_programmed(ip: &str) -> Result<()> {
    poll(
        Duration::from_secs(60),
        &format!("{ip} to be in nodus's nft table"),
        || async {
            let table = Command::new("nft")
                .args(["list", "table", "inet", "nodus"])
                .output()?;
            let text = String::from_utf8_lossy(&table.stdout).into_owned();
            Ok(text
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .any(|word| word == ip)
                .then_some(()))
        },
    )
    .await
}
