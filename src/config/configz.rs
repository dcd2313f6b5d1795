//! `/configz`: the effective configuration (file and flags merged), in the
//! KubeletConfiguration field names, as the kubelet API serves it under `kubeletconfig`.

use serde_json::{Map, Value, json};

use super::eviction::Thresholds;
use super::flags::Flags;

/// The fields nodus implements, with the values in force.
pub fn render(flags: &Flags, eviction_hard: &Thresholds) -> Value {
    let split = |raw: &Option<String>| -> Vec<String> {
        raw.as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let map = |raw: &Option<String>, sep: char| -> Map<String, Value> {
        split(raw)
            .iter()
            .filter_map(|item| item.split_once(sep))
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect()
    };
    let mut config = json!({
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "address": flags.address.to_string(),
        "port": flags.port,
        "maxPods": flags.max_pods,
        "clusterDNS": split(&flags.cluster_dns),
        "allowedUnsafeSysctls": split(&flags.allowed_unsafe_sysctls),
        "clusterDomain": flags.cluster_domain,
        "resolvConf": flags.resolv_conf,
        "podLogsDir": flags.pod_logs_dir,
        "fileCheckFrequency": flags.file_check_frequency,
        "rotateCertificates": flags.rotate_certificates,
        "serverTLSBootstrap": flags.rotate_server_certificates,
        "containerLogMaxSize": flags.container_log_max_size,
        "containerLogMaxFiles": flags.container_log_max_files,
        "containerRuntimeEndpoint": flags.container_runtime_endpoint,
        "evictionHard": eviction_hard.to_map(),
        "kubeReserved": map(&flags.kube_reserved, '='),
        "systemReserved": map(&flags.system_reserved, '='),
        "authentication": {
            "anonymous": { "enabled": flags.anonymous_auth },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": flags.client_ca_file.as_ref().map(|p| p.display().to_string()) },
        },
        "authorization": { "mode": "Webhook" },
        "logging": { "verbosity": flags.verbosity },
    });
    let object = config.as_object_mut().expect("a JSON object");
    let mut optional = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            object.insert(name.to_owned(), Value::String(value));
        }
    };
    optional("podCIDR", flags.pod_cidr.clone());
    optional(
        "staticPodPath",
        flags
            .pod_manifest_path
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    optional(
        "tlsCertFile",
        flags
            .tls_cert_file
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    optional(
        "tlsPrivateKeyFile",
        flags
            .tls_private_key_file
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    // Taints as the API spells them, not as the flag does.
    let taints: Vec<Value> = split(&flags.register_with_taints)
        .iter()
        .map(|t| {
            let (kv, effect) = t.rsplit_once(':').unwrap_or((t, ""));
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            json!({ "key": key, "value": value, "effect": effect })
        })
        .collect();
    object.insert("registerWithTaints".to_owned(), Value::Array(taints));
    json!({ "kubeletconfig": config })
}
