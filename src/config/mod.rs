//! Configuration: the kubelet-compatible command line, validated into one [`Config`].
//!
//! Flag names follow the kubelet's wherever the kubelet has one, so that an existing
//! kubelet command line carries over. Everything is validated here, before any client is
//! built, so bad input ends the program with one clear line instead of a later failure.

mod configz;
mod eviction;
pub mod file;
mod flags;
pub(crate) mod labels;
mod reserved;
mod taints;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Taint;
use nodus_cri::Endpoint;

pub use eviction::{Quantity, Signal, Thresholds};
pub use flags::Flags;
pub use reserved::Reserved;

/// The validated configuration of the agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub cert_dir: PathBuf,
    pub rotate_certificates: bool,
    /// Routes to other nodes' pod CIDRs (host-gateway mode).
    pub host_gateway_routes: bool,
    /// serverTLSBootstrap: the serving certificate comes from a CSR (without --tls-cert-file).
    pub rotate_server_certificates: bool,
    pub node_name: String,
    pub hostname: String,
    pub node_ips: Vec<IpAddr>,
    pub runtime_endpoint: Endpoint,
    pub node_labels: BTreeMap<String, String>,
    pub register_with_taints: Vec<Taint>,
    pub max_pods: u32,
    pub root_dir: PathBuf,
    pub pod_cidr: Option<IpNet>,
    pub cni_conf_dir: PathBuf,
    pub port: u16,
    /// The kubelet API server's address, TLS files, client CA and anonymous access.
    pub address: std::net::IpAddr,
    pub client_ca_file: Option<PathBuf>,
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub anonymous_auth: bool,
    pub eviction_hard: Thresholds,
    /// `--kube-reserved` plus `--system-reserved`.
    pub reserved: Reserved,
    /// `--container-log-max-size` and `--container-log-max-files`.
    pub log_limits: crate::pods::log_rotation::Limits,
    pub cluster_dns: Vec<IpAddr>,
    pub sysctls: crate::pods::sysctls::Allowlist,
    pub cluster_domain: String,
    pub resolv_conf: PathBuf,
    pub pod_logs_dir: PathBuf,
    /// The static pod directory and how often it is read besides inotify.
    pub static_pods: Option<(PathBuf, std::time::Duration)>,
    /// The proxy role's settings; `None` with `--proxy-mode=none`.
    pub proxy: Option<ProxyConfig>,
    pub cleanup: bool,
    pub verbosity: u8,
    /// What `/configz` serves: the effective configuration in KubeletConfiguration terms.
    pub configz: serde_json::Value,
}

/// The proxy role's flags, validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub cluster_cidrs: Vec<IpNet>,
    pub nodeport_addresses: Vec<IpNet>,
    pub healthz_bind: std::net::SocketAddr,
    /// `None` when the port is 0.
    pub metrics_bind: Option<std::net::SocketAddr>,
    pub min_sync_period: std::time::Duration,
    pub sync_period: std::time::Duration,
}

/// A flag whose value cannot be used, named as on the command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot determine the hostname (set --hostname-override)")]
    Hostname(#[source] std::io::Error),
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl Config {
    /// Validates the parsed flags. `os_hostname` is the machine's hostname, used when
    /// `--hostname-override` is absent.
    pub fn from_flags(
        flags: Flags,
        os_hostname: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<Self, Error> {
        let hostname = match flags.hostname_override.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => os_hostname().map_err(Error::Hostname)?.trim().to_owned(),
        };
        // The kubelet lower-cases the node name: Node names must be DNS subdomains.
        let node_name = hostname.to_lowercase();
        labels::validate_dns_subdomain(&node_name)
            .map_err(|reason| invalid("hostname-override", &hostname, reason))?;

        let node_ips = match flags.node_ip.as_deref() {
            None | Some("") => Vec::new(),
            Some(raw) => parse_node_ips(raw)?,
        };
        let runtime_endpoint =
            Endpoint::parse(&flags.container_runtime_endpoint).map_err(|err| {
                invalid(
                    "container-runtime-endpoint",
                    &flags.container_runtime_endpoint,
                    err.to_string(),
                )
            })?;
        let node_labels = match flags.node_labels.as_deref() {
            None => BTreeMap::new(),
            Some(raw) => labels::parse_node_labels(raw)
                .map_err(|reason| invalid("node-labels", raw, reason))?,
        };
        let register_with_taints = match flags.register_with_taints.as_deref() {
            None => Vec::new(),
            Some(raw) => taints::parse_taints(raw)
                .map_err(|reason| invalid("register-with-taints", raw, reason))?,
        };
        if flags.max_pods == 0 {
            return Err(invalid("max-pods", "0", "must be at least 1"));
        }
        let pod_cidr = match flags.pod_cidr.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(
                raw.parse::<IpNet>()
                    .map_err(|err| invalid("pod-cidr", raw, err.to_string()))?,
            ),
        };
        let eviction_hard = match flags.eviction_hard.as_deref() {
            None => Thresholds::kubelet_defaults(),
            Some(raw) => {
                Thresholds::parse(raw).map_err(|reason| invalid("eviction-hard", raw, reason))?
            }
        };
        let reserved = |flag: &'static str, raw: Option<&str>| {
            raw.map_or(Ok(Reserved::default()), |raw| {
                Reserved::parse(raw).map_err(|reason| invalid(flag, raw, reason))
            })
        };
        let reserved = reserved("kube-reserved", flags.kube_reserved.as_deref())?.plus(reserved(
            "system-reserved",
            flags.system_reserved.as_deref(),
        )?);
        let max_bytes = crate::quantity::parse(&flags.container_log_max_size)
            .map(|m| m.0 / 1000)
            .filter(|b| *b > 0)
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| {
                invalid(
                    "container-log-max-size",
                    &flags.container_log_max_size,
                    "must be a positive quantity",
                )
            })?;
        if flags.container_log_max_files < 2 {
            return Err(invalid(
                "container-log-max-files",
                &flags.container_log_max_files.to_string(),
                "must be at least 2",
            ));
        }
        let log_limits = crate::pods::log_rotation::Limits {
            max_bytes,
            max_files: flags.container_log_max_files,
        };
        let unsafe_sysctls: Vec<String> = flags
            .allowed_unsafe_sysctls
            .iter()
            .flat_map(|raw| raw.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let sysctls = crate::pods::sysctls::Allowlist::new(&unsafe_sysctls).map_err(|err| {
            invalid(
                "allowed-unsafe-sysctls",
                flags.allowed_unsafe_sysctls.as_deref().unwrap_or_default(),
                err.to_string(),
            )
        })?;
        let cluster_dns = match flags.cluster_dns.as_deref() {
            None | Some("") => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(|ip| {
                    ip.trim()
                        .parse::<IpAddr>()
                        .map_err(|err| invalid("cluster-dns", raw, err.to_string()))
                })
                .collect::<Result<_, _>>()?,
        };
        labels::validate_dns_subdomain(&flags.cluster_domain)
            .map_err(|reason| invalid("cluster-domain", &flags.cluster_domain, reason))?;
        let cidrs = |flag: &'static str, raw: Option<&str>| -> Result<Vec<IpNet>, Error> {
            raw.unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<IpNet>()
                        .map_err(|err| invalid(flag, c, err.to_string()))
                })
                .collect()
        };
        let seconds = |flag: &'static str, value: f64| -> Result<std::time::Duration, Error> {
            std::time::Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        flag,
                        &value.to_string(),
                        "must be a positive number of seconds",
                    )
                })
        };
        let proxy = match flags.proxy_mode.as_str() {
            "none" => None,
            "nftables" => Some(ProxyConfig {
                cluster_cidrs: cidrs("cluster-cidr", flags.cluster_cidr.as_deref())?,
                nodeport_addresses: cidrs(
                    "nodeport-addresses",
                    flags.nodeport_addresses.as_deref(),
                )?,
                healthz_bind: flags.healthz_bind_address.parse().map_err(
                    |err: std::net::AddrParseError| {
                        invalid(
                            "healthz-bind-address",
                            &flags.healthz_bind_address,
                            err.to_string(),
                        )
                    },
                )?,
                metrics_bind: flags
                    .metrics_bind_address
                    .parse()
                    .map(|addr: std::net::SocketAddr| (addr.port() != 0).then_some(addr))
                    .map_err(|err: std::net::AddrParseError| {
                        invalid(
                            "metrics-bind-address",
                            &flags.metrics_bind_address,
                            err.to_string(),
                        )
                    })?,
                min_sync_period: seconds("min-sync-period", flags.min_sync_period)?,
                sync_period: seconds("sync-period", flags.sync_period)?,
            }),
            other => return Err(invalid("proxy-mode", other, "must be nftables or none")),
        };
        let file_check_frequency = nodus_api::duration::parse(&flags.file_check_frequency)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    "file-check-frequency",
                    &flags.file_check_frequency,
                    "must be a positive duration such as 20s",
                )
            })?;
        let static_pods = flags
            .pod_manifest_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|dir| (dir, file_check_frequency));
        let configz = configz::render(&flags, &eviction_hard);
        Ok(Self {
            configz,
            kubeconfig: flags.kubeconfig,
            bootstrap_kubeconfig: flags.bootstrap_kubeconfig,
            cert_dir: flags.cert_dir,
            rotate_certificates: flags.rotate_certificates,
            host_gateway_routes: flags.host_gateway_routes,
            rotate_server_certificates: flags.rotate_server_certificates,
            node_name,
            hostname,
            node_ips,
            runtime_endpoint,
            node_labels,
            register_with_taints,
            max_pods: flags.max_pods,
            root_dir: flags.root_dir,
            pod_cidr,
            cni_conf_dir: flags.cni_conf_dir,
            port: flags.port,
            address: flags.address,
            client_ca_file: flags.client_ca_file,
            tls_files: flags.tls_cert_file.zip(flags.tls_private_key_file),
            anonymous_auth: flags.anonymous_auth,
            eviction_hard,
            reserved,
            log_limits,
            cluster_dns,
            sysctls,
            cluster_domain: flags.cluster_domain,
            resolv_conf: flags.resolv_conf,
            pod_logs_dir: flags.pod_logs_dir,
            static_pods,
            proxy,
            cleanup: flags.cleanup,
            verbosity: flags.verbosity,
        })
    }
}

/// The command line with its `--config` file applied: the flags, and the settings (file fields
/// and accepted-but-unused flags) nodus does not implement, for one warning at start.
pub fn flags_with_file(
    matches: &clap::ArgMatches,
) -> Result<(Flags, Vec<String>), file::FileError> {
    use clap::FromArgMatches;
    use clap::parser::ValueSource;
    let mut flags = Flags::from_arg_matches(matches)?;
    let mut unsupported = match flags.config.clone() {
        Some(path) => file::apply_path(&path, &mut flags, &|id| {
            matches.value_source(id) == Some(ValueSource::CommandLine)
        })?,
        None => Vec::new(),
    };
    if flags.pod_infra_container_image.is_some() {
        unsupported
            .push("--pod-infra-container-image (the runtime's sandbox image is used)".into());
    }
    Ok((flags, unsupported))
}

/// `--node-ip` takes one address, or two of different families for a dual-stack node.
fn parse_node_ips(raw: &str) -> Result<Vec<IpAddr>, Error> {
    let ips = raw
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<IpAddr>()
                .map_err(|err| invalid("node-ip", raw, err.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match ips.as_slice() {
        [ip] if ip.is_unspecified() => Err(invalid("node-ip", raw, "must be a specific address")),
        [_] => Ok(ips),
        [a, b] if a.is_ipv4() != b.is_ipv4() => Ok(ips),
        [_, _] => Err(invalid(
            "node-ip",
            raw,
            "a dual-stack pair needs one IPv4 and one IPv6 address",
        )),
        _ => Err(invalid(
            "node-ip",
            raw,
            "expected one address, or one IPv4 and one IPv6",
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Result<Config, Error> {
        let flags = Flags::try_parse_from(std::iter::once("nodus").chain(args.iter().copied()))
            .expect("flags parse");
        Config::from_flags(flags, || Ok("Worker-1\n".to_owned()))
    }

    #[test]
    fn defaults_match_the_kubelet() {
        let config = config(&["--kubeconfig", "/etc/kubernetes/kubelet.conf"]).expect("valid");
        assert_eq!(config.node_name, "worker-1", "hostname lower-cased");
        assert_eq!(config.hostname, "Worker-1");
        assert_eq!(config.max_pods, 110);
        assert_eq!(config.port, 10250);
        assert_eq!(config.root_dir, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(
            config.runtime_endpoint.to_string(),
            "unix:///run/containerd/containerd.sock"
        );
        assert!(config.node_ips.is_empty());
        assert_eq!(config.eviction_hard, Thresholds::kubelet_defaults());
    }

    #[test]
    fn kubelet_flag_spellings_are_accepted() {
        let config = config(&[
            "--kubeconfig=/k",
            "--hostname-override=node-a",
            "--node-ip=192.0.2.10",
            "--node-labels=tier=edge,node.kubernetes.io/pool=a",
            "--register-with-taints=dedicated=infra:NoSchedule",
            "--max-pods=20",
            "--pod-cidr=10.244.1.0/24",
            "-v=4",
        ])
        .expect("valid");
        assert_eq!(config.node_name, "node-a");
        assert_eq!(
            config.node_ips,
            vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            config.node_labels.get("tier").map(String::as_str),
            Some("edge")
        );
        assert_eq!(config.register_with_taints[0].effect, "NoSchedule");
        assert_eq!(config.max_pods, 20);
        assert_eq!(
            config.pod_cidr,
            Some("10.244.1.0/24".parse().expect("cidr"))
        );
        assert_eq!(config.verbosity, 4);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--node-ip", "300.1.1.1"], "--node-ip"),
            (&["--node-ip", "0.0.0.0"], "--node-ip"),
            (&["--node-ip", "192.0.2.1,192.0.2.2"], "--node-ip"),
            (
                &["--container-runtime-endpoint", "tcp://x:1"],
                "--container-runtime-endpoint",
            ),
            (
                &["--node-labels", "kubernetes.io/role=master"],
                "--node-labels",
            ),
            (
                &["--register-with-taints", "a=b:Sometimes"],
                "--register-with-taints",
            ),
            (&["--max-pods", "0"], "--max-pods"),
            (&["--pod-cidr", "10.244.0.0/33"], "--pod-cidr"),
            (
                &["--hostname-override", "under_score"],
                "--hostname-override",
            ),
            (
                &["--eviction-hard", "memory.available>1Gi"],
                "--eviction-hard",
            ),
            (&["--cluster-dns", "10.96.0.10,nope"], "--cluster-dns"),
            (&["--cluster-domain", "Cluster_Local"], "--cluster-domain"),
            (&["--proxy-mode", "iptables"], "--proxy-mode"),
            (&["--cluster-cidr", "10.244.0.0/99"], "--cluster-cidr"),
            (
                &["--healthz-bind-address", "10256"],
                "--healthz-bind-address",
            ),
            (&["--min-sync-period", "0"], "--min-sync-period"),
        ];
        for (args, flag) in cases {
            let mut all = vec!["--kubeconfig", "/k"];
            all.extend_from_slice(args);
            let err = config(&all).expect_err(&format!("{args:?} must be rejected"));
            assert!(
                err.to_string().starts_with(&format!("invalid {flag} ")),
                "{args:?}: {err}"
            );
        }
    }
}
