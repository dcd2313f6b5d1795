//! Service environment variables: the `{NAME}_SERVICE_HOST`/`_PORT` and Docker-link style
//! `{NAME}_PORT_*` variables the kubelet gives every container for the Services of its namespace
//! (`enableServiceLinks`, on by default) and always for the `kubernetes` Service of `default`.
//!
//! Semantics (upstream `pkg/kubelet/envvars` and `getServiceEnvVarMap`): Services without a
//! cluster IP (headless) give nothing; a Service of the pod's namespace wins over the `default`
//! namespace's `kubernetes` of the same name; the container's own variables win over all of
//! these, which also serve `$(VAR)` expansion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// The Services the kubelet always exposes, from the `default` namespace.
const MASTER_SERVICES: &[&str] = &["kubernetes"];

fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// The variables for one Service (which must have a cluster IP and at least one port).
fn service_vars(service: &Service, out: &mut Vec<(String, String)>) {
    let spec = service.spec.clone().unwrap_or_default();
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let Some(first) = ports.first() else {
        return;
    };
    let name = env_name(service.metadata.name.as_deref().unwrap_or_default());
    out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
    out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    for port in &ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{name}_SERVICE_PORT_{}", env_name(port_name)),
                port.port.to_string(),
            ));
        }
    }
    // Docker links: the first port as the service's URL, then every port in detail.
    let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())
    };
    let url = |p: &k8s_openapi::api::core::v1::ServicePort| {
        format!("{}://{ip}:{}", protocol(p).to_lowercase(), p.port)
    };
    out.push((format!("{name}_PORT"), url(first)));
    for port in &ports {
        let prefix = format!(
            "{name}_PORT_{}_{}",
            port.port,
            protocol(port).to_uppercase()
        );
        out.push((prefix.clone(), url(port)));
        out.push((format!("{prefix}_PROTO"), protocol(port).to_lowercase()));
        out.push((format!("{prefix}_PORT"), port.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.clone()));
    }
}

fn has_cluster_ip(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The service variables for a container of a pod in `namespace`, in a stable order.
pub fn variables<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    let mut masters = Vec::new();
    for service in services {
        if !has_cluster_ip(service) {
            continue;
        }
        let name = service.metadata.name.clone().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && MASTER_SERVICES.contains(&name.as_str()) {
            masters.push((name, service));
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, service);
        }
    }
    for (name, service) in masters {
        chosen.entry(name).or_insert(service);
    }
    let mut out = Vec::new();
    for service in chosen.values() {
        service_vars(service, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": ns, "name": name },
            "spec": { "clusterIP": ip, "ports": ports },
        }))
        .expect("a test service")
    }

    fn get<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
        vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn namespace_services_and_the_master_service_become_variables() {
        let services = [
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{ "name": "https", "port": 443 }]),
            ),
            service(
                "shop",
                "redis-primary",
                "10.96.0.20",
                serde_json::json!([
                    { "name": "redis", "port": 6379 },
                    { "name": "metrics", "port": 9121, "protocol": "UDP" },
                ]),
            ),
            service(
                "shop",
                "headless",
                "None",
                serde_json::json!([{ "port": 80 }]),
            ),
            service(
                "other",
                "elsewhere",
                "10.96.0.30",
                serde_json::json!([{ "port": 80 }]),
            ),
        ];
        let vars = variables(&services, "shop", true);
        assert_eq!(get(&vars, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&vars, "KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get(&vars, "KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get(&vars, "KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get(&vars, "REDIS_PRIMARY_SERVICE_HOST"), Some("10.96.0.20"));
        assert_eq!(get(&vars, "REDIS_PRIMARY_SERVICE_PORT"), Some("6379"));
        assert_eq!(
            get(&vars, "REDIS_PRIMARY_SERVICE_PORT_METRICS"),
            Some("9121")
        );
        assert_eq!(
            get(&vars, "REDIS_PRIMARY_PORT_9121_UDP"),
            Some("udp://10.96.0.20:9121")
        );
        assert_eq!(get(&vars, "REDIS_PRIMARY_PORT_9121_UDP_PROTO"), Some("udp"));
        assert_eq!(
            get(&vars, "REDIS_PRIMARY_PORT_6379_TCP_ADDR"),
            Some("10.96.0.20")
        );
        assert_eq!(get(&vars, "HEADLESS_SERVICE_HOST"), None);
        assert_eq!(get(&vars, "ELSEWHERE_SERVICE_HOST"), None);

        // Without service links only the master service remains.
        let vars = variables(&services, "shop", false);
        assert_eq!(get(&vars, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&vars, "REDIS_PRIMARY_SERVICE_HOST"), None);
    }

    #[test]
    fn a_namespace_service_shadows_the_master_service_of_the_same_name() {
        let services = [
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{ "port": 443 }]),
            ),
            service(
                "shop",
                "kubernetes",
                "10.96.0.99",
                serde_json::json!([{ "port": 8443 }]),
            ),
        ];
        let vars = variables(&services, "shop", true);
        assert_eq!(get(&vars, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.99"));
        assert_eq!(
            vars.iter()
                .filter(|(k, _)| k == "KUBERNETES_SERVICE_HOST")
                .count(),
            1
        );
    }
}
