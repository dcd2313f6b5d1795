//! `--config`: the kubelet's configuration file (`KubeletConfiguration`,
//! kubelet.config.k8s.io/v1beta1) and, as another YAML document in the same file, kube-proxy's
//! (`KubeProxyConfiguration`, kubeproxy.config.k8s.io/v1alpha1).
//!
//! A field nodus implements sets its flag unless that flag was given on the command line (flags
//! override the file, as upstream). Every other field with a non-default value is reported back
//! as unsupported, so nothing is dropped silently; zero values (`0s`, `""`, `0`, `{}`, `false`)
//! are what the file's defaulting fills in anyway, as in the files kubeadm writes, and are not.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::flags::Flags;

const KUBELET_API: &str = "kubelet.config.k8s.io/v1beta1";
const PROXY_API: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading --config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Flags(#[from] clap::Error),
}

/// Applies the file's documents to `flags`; `explicit(id)` says whether the flag with clap id
/// `id` came from the command line. Returns the unsupported fields, each as `Kind.field.path`.
pub fn apply(
    path: &Path,
    text: &str,
    flags: &mut Flags,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, FileError> {
    let invalid = |reason: String| FileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|err| invalid(format!("not YAML: {err}")))?;
    let mut unsupported = Vec::new();
    let mut seen = Vec::new();
    for document in documents.into_iter().filter(|d| !d.is_null()) {
        let Value::Object(fields) = document else {
            return Err(invalid("a document is not a mapping".to_owned()));
        };
        let api = fields.get("apiVersion").and_then(Value::as_str);
        let kind = fields.get("kind").and_then(Value::as_str);
        let mut setter = Setter {
            flags: &mut *flags,
            explicit,
            unsupported: &mut unsupported,
            kind: kind.unwrap_or_default().to_owned(),
        };
        match (api, kind) {
            (Some(KUBELET_API), Some("KubeletConfiguration")) => {
                setter.kubelet(&fields).map_err(invalid)?
            }
            (Some(PROXY_API), Some("KubeProxyConfiguration")) => {
                setter.proxy(&fields).map_err(invalid)?
            }
            _ => {
                return Err(invalid(format!(
                    "expected kind KubeletConfiguration ({KUBELET_API}) or KubeProxyConfiguration \
                     ({PROXY_API}), got kind {:?} apiVersion {:?}",
                    kind.unwrap_or_default(),
                    api.unwrap_or_default()
                )));
            }
        }
        let kind = kind.unwrap_or_default().to_owned();
        if seen.contains(&kind) {
            return Err(invalid(format!("two {kind} documents")));
        }
        seen.push(kind);
    }
    if seen.is_empty() {
        return Err(invalid("no configuration document".to_owned()));
    }
    Ok(unsupported)
}

/// Reads `path` and applies it (see [`apply`]).
pub fn apply_path(
    path: &Path,
    flags: &mut Flags,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    apply(path, &text, flags, explicit)
}

struct Setter<'a> {
    flags: &'a mut Flags,
    explicit: &'a dyn Fn(&str) -> bool,
    unsupported: &'a mut Vec<String>,
    kind: String,
}

/// What a field's value must be, for the error when it is not.
fn expected(field: &str, what: &str, value: &Value) -> String {
    format!("{field} must be {what}, got {value}")
}

fn string(field: &str, value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| expected(field, "a string", value))
}

fn number<T: TryFrom<u64>>(field: &str, value: &Value) -> Result<T, String> {
    value
        .as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| expected(field, "a non-negative integer in range", value))
}

fn boolean(field: &str, value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| expected(field, "true or false", value))
}

fn strings(field: &str, value: &Value) -> Result<Vec<String>, String> {
    value
        .as_array()
        .ok_or_else(|| expected(field, "a list of strings", value))?
        .iter()
        .map(|v| string(field, v))
        .collect()
}

/// `{a: x, b: y}` as `a{sep}x,b{sep}y`, the flags' spelling of a map.
fn pairs(field: &str, value: &Value, sep: &str) -> Result<String, String> {
    let map = value
        .as_object()
        .ok_or_else(|| expected(field, "a mapping", value))?;
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(expected(field, "a mapping of quantities", other)),
            };
            Ok(format!("{k}{sep}{v}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|parts| parts.join(","))
}

/// `[{key, value, effect}]` as `key=value:effect,...` (--register-with-taints).
fn taints(field: &str, value: &Value) -> Result<String, String> {
    let list = value
        .as_array()
        .ok_or_else(|| expected(field, "a list of taints", value))?;
    list.iter()
        .map(|taint| {
            let get = |name: &str| taint.get(name).and_then(Value::as_str);
            let key = get("key").ok_or_else(|| expected(field, "taints with a key", taint))?;
            let effect =
                get("effect").ok_or_else(|| expected(field, "taints with an effect", taint))?;
            Ok(match get("value") {
                Some(v) if !v.is_empty() => format!("{key}={v}:{effect}"),
                _ => format!("{key}:{effect}"),
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(|parts| parts.join(","))
}

/// A Go duration (`90s`, `1m30s`, `1.5h`, `250ms`) in seconds.
pub fn go_duration(text: &str) -> Option<f64> {
    if text.is_empty() {
        return Some(0.0);
    }
    nodus_api::duration::parse(text)
        .ok()
        .map(|d| d.as_secs_f64())
}

fn seconds(field: &str, value: &Value) -> Result<f64, String> {
    value
        .as_str()
        .and_then(go_duration)
        .ok_or_else(|| expected(field, "a duration such as 30s or 1m0s", value))
}

/// Whether `value` is what defaulting would fill in for an absent field.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || go_duration(s) == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

impl Setter<'_> {
    /// Sets a flag from the file unless the command line gave it.
    fn set(&mut self, id: &str, apply: impl FnOnce(&mut Flags)) {
        if !(self.explicit)(id) {
            apply(self.flags);
        }
    }

    /// Reports every non-zero leaf under `value` as unsupported.
    fn unsupported(&mut self, path: &str, value: &Value) {
        match value {
            Value::Object(fields) => {
                for (name, v) in fields {
                    self.unsupported(&format!("{path}.{name}"), v);
                }
            }
            v if !is_zero(v) => self.unsupported.push(format!("{}.{path}", self.kind)),
            _ => {}
        }
    }

    fn kubelet(&mut self, fields: &Map<String, Value>) -> Result<(), String> {
        for (name, value) in fields {
            let f = name.as_str();
            match f {
                "apiVersion" | "kind" => {}
                "address" => {
                    let ip = string(f, value)?
                        .parse()
                        .map_err(|_| expected(f, "an IP address", value))?;
                    self.set("address", |flags| flags.address = ip);
                }
                "port" => {
                    let port = number(f, value)?;
                    self.set("port", |flags| flags.port = port);
                }
                "maxPods" => {
                    let n = number(f, value)?;
                    self.set("max_pods", |flags| flags.max_pods = n);
                }
                "podCIDR" => {
                    let cidr = string(f, value)?;
                    self.set("pod_cidr", |flags| flags.pod_cidr = Some(cidr));
                }
                "clusterDNS" => {
                    let ips = strings(f, value)?.join(",");
                    self.set("cluster_dns", |flags| flags.cluster_dns = Some(ips));
                }
                "allowedUnsafeSysctls" => {
                    let list = strings(f, value)?.join(",");
                    self.set("allowed_unsafe_sysctls", |flags| {
                        flags.allowed_unsafe_sysctls = Some(list)
                    });
                }
                "clusterDomain" => {
                    let domain = string(f, value)?;
                    self.set("cluster_domain", |flags| flags.cluster_domain = domain);
                }
                "resolvConf" => {
                    let path = string(f, value)?;
                    self.set("resolv_conf", |flags| flags.resolv_conf = path.into());
                }
                "serverTLSBootstrap" => {
                    let on = boolean(f, value)?;
                    self.set("rotate_server_certificates", |flags| {
                        flags.rotate_server_certificates = on
                    });
                }
                "rotateCertificates" => {
                    let on = boolean(f, value)?;
                    self.set("rotate_certificates", |flags| {
                        flags.rotate_certificates = on
                    });
                }
                "staticPodPath" => {
                    let path = string(f, value)?;
                    if !path.is_empty() {
                        self.set("pod_manifest_path", |flags| {
                            flags.pod_manifest_path = Some(path.into())
                        });
                    }
                }
                "fileCheckFrequency" => {
                    let every = string(f, value)?;
                    // 0s is what defaulting leaves alone (kubeadm writes it).
                    if seconds(f, value)? > 0.0 {
                        self.set("file_check_frequency", |flags| {
                            flags.file_check_frequency = every
                        });
                    }
                }
                "podLogsDir" => {
                    let path = string(f, value)?;
                    self.set("pod_logs_dir", |flags| flags.pod_logs_dir = path.into());
                }
                "containerLogMaxSize" => {
                    let size = string(f, value)?;
                    self.set("container_log_max_size", |flags| {
                        flags.container_log_max_size = size
                    });
                }
                "containerLogMaxFiles" => {
                    let n = number(f, value)?;
                    self.set("container_log_max_files", |flags| {
                        flags.container_log_max_files = n
                    });
                }
                "evictionHard" => {
                    let thresholds = pairs(f, value, "<")?;
                    self.set("eviction_hard", |flags| {
                        flags.eviction_hard = Some(thresholds)
                    });
                }
                "kubeReserved" => {
                    let reserved = pairs(f, value, "=")?;
                    self.set("kube_reserved", |flags| {
                        flags.kube_reserved = Some(reserved)
                    });
                }
                "systemReserved" => {
                    let reserved = pairs(f, value, "=")?;
                    self.set("system_reserved", |flags| {
                        flags.system_reserved = Some(reserved)
                    });
                }
                "tlsCertFile" => {
                    let path = string(f, value)?;
                    self.set("tls_cert_file", |flags| {
                        flags.tls_cert_file = Some(path.into())
                    });
                }
                "tlsPrivateKeyFile" => {
                    let path = string(f, value)?;
                    self.set("tls_private_key_file", |flags| {
                        flags.tls_private_key_file = Some(path.into())
                    });
                }
                "registerWithTaints" => {
                    let list = taints(f, value)?;
                    self.set("register_with_taints", |flags| {
                        flags.register_with_taints = Some(list)
                    });
                }
                "containerRuntimeEndpoint" => {
                    let endpoint = string(f, value)?;
                    // Empty is the default (kubeadm writes it so).
                    if !endpoint.is_empty() {
                        self.set("container_runtime_endpoint", |flags| {
                            flags.container_runtime_endpoint = endpoint
                        });
                    }
                }
                "authentication" => self.authentication(value)?,
                "authorization" => {
                    // nodus always authorizes through SubjectAccessReview (mode Webhook).
                    for (name, v) in value.as_object().into_iter().flatten() {
                        match (name.as_str(), v.as_str()) {
                            ("mode", Some("Webhook")) => {}
                            _ => self.unsupported(&format!("authorization.{name}"), v),
                        }
                    }
                }
                "logging" => {
                    for (name, v) in value.as_object().into_iter().flatten() {
                        if name == "verbosity" {
                            let level = number(&format!("logging.{name}"), v)?;
                            self.set("verbosity", |flags| flags.verbosity = level);
                        } else {
                            self.unsupported(&format!("logging.{name}"), v);
                        }
                    }
                }
                _ => self.unsupported(f, value),
            }
        }
        Ok(())
    }

    fn authentication(&mut self, value: &Value) -> Result<(), String> {
        for (name, v) in value.as_object().into_iter().flatten() {
            match name.as_str() {
                "x509" => {
                    for (inner, v) in v.as_object().into_iter().flatten() {
                        if inner == "clientCAFile" {
                            let path = string("authentication.x509.clientCAFile", v)?;
                            self.set("client_ca_file", |flags| {
                                flags.client_ca_file = Some(path.into())
                            });
                        } else {
                            self.unsupported(&format!("authentication.x509.{inner}"), v);
                        }
                    }
                }
                "anonymous" => {
                    for (inner, v) in v.as_object().into_iter().flatten() {
                        if inner == "enabled" {
                            let on = boolean("authentication.anonymous.enabled", v)?;
                            self.set("anonymous_auth", |flags| flags.anonymous_auth = on);
                        } else {
                            self.unsupported(&format!("authentication.anonymous.{inner}"), v);
                        }
                    }
                }
                // nodus always authenticates bearer tokens through TokenReview.
                "webhook" => {
                    for (inner, v) in v.as_object().into_iter().flatten() {
                        if !(inner == "enabled" && v.as_bool() == Some(true)) {
                            self.unsupported(&format!("authentication.webhook.{inner}"), v);
                        }
                    }
                }
                _ => self.unsupported(&format!("authentication.{name}"), v),
            }
        }
        Ok(())
    }

    fn proxy(&mut self, fields: &Map<String, Value>) -> Result<(), String> {
        for (name, value) in fields {
            let f = name.as_str();
            match f {
                "apiVersion" | "kind" => {}
                "mode" => match string(f, value)?.as_str() {
                    // Empty is the platform default, which for nodus is nftables.
                    "" | "nftables" => self.set("proxy_mode", |flags| {
                        flags.proxy_mode = "nftables".to_owned()
                    }),
                    _ => self.unsupported(f, value),
                },
                "clusterCIDR" => {
                    let cidrs = string(f, value)?;
                    self.set("cluster_cidr", |flags| flags.cluster_cidr = Some(cidrs));
                }
                "nodePortAddresses" => {
                    let cidrs = strings(f, value)?.join(",");
                    self.set("nodeport_addresses", |flags| {
                        flags.nodeport_addresses = Some(cidrs)
                    });
                }
                "healthzBindAddress" => {
                    let addr = string(f, value)?;
                    self.set("healthz_bind_address", |flags| {
                        flags.healthz_bind_address = addr
                    });
                }
                "metricsBindAddress" => {
                    let addr = string(f, value)?;
                    self.set("metrics_bind_address", |flags| {
                        flags.metrics_bind_address = addr
                    });
                }
                "syncPeriod" => {
                    let s = seconds(f, value)?;
                    if s > 0.0 {
                        self.set("sync_period", |flags| flags.sync_period = s);
                    }
                }
                "minSyncPeriod" => {
                    let s = seconds(f, value)?;
                    if s > 0.0 {
                        self.set("min_sync_period", |flags| flags.min_sync_period = s);
                    }
                }
                "hostnameOverride" => {
                    let name = string(f, value)?;
                    if !name.is_empty() {
                        self.set("hostname_override", |flags| {
                            flags.hostname_override = Some(name)
                        });
                    }
                }
                _ => self.unsupported(f, value),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
