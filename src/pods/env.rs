//! Env: a container's environment as the kubelet builds it — `envFrom` first, then `env`
//! in order, with `$(VAR)` references expanded against what came before — and the same
//! expansion applied to command and args.
//!
//! Resolution is pure: the worker first reads the ConfigMaps and Secrets the container
//! names (see [`references`]) and passes them in as [`Sources`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

use crate::quantity;

/// The ConfigMaps and Secrets the pod's namespace holds, as far as the container names
/// them; a name absent from the map does not exist.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
    /// The service variables (see `super::service_env`): usable in `$(VAR)`, and added after
    /// the container's own unless it sets the same name.
    pub services: Vec<(String, String)>,
}

/// Facts about the node and pod needed by `fieldRef` and `resourceFieldRef`.
#[derive(Debug, Clone, Default)]
pub struct Downward {
    pub node_name: String,
    pub host_ips: Vec<String>,
    pub pod_ips: Vec<String>,
    /// Node allocatable cpu (milli) and memory (bytes), the default for unset limits.
    pub allocatable_milli_cpu: i128,
    pub allocatable_memory: i128,
}

/// Why a container's environment cannot be built (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath {0:?}")]
    FieldPath(String),
    #[error("unsupported resource {0:?} in resourceFieldRef")]
    Resource(String),
    #[error("env var {0:?} has an invalid value source")]
    InvalidSource(String),
}

/// The ConfigMaps and Secrets a container's environment refers to.
pub fn references(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(source) = &var.value_from else {
            continue;
        };
        if let Some(r) = &source.config_map_key_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &source.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (config_maps, secrets)
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&bytes.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

fn config_map_value(config_map: &ConfigMap, key: &str) -> Option<String> {
    config_map
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .or_else(|| {
            config_map
                .binary_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
}

/// The container's environment, in the order the runtime gets it.
pub fn resolve(
    container: &Container,
    pod: &Pod,
    sources: &Sources,
    downward: &Downward,
) -> Result<Vec<(String, String)>, Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        if let Some(existing) = env.iter_mut().find(|(k, _)| *k == key) {
            existing.1 = value;
        } else {
            env.push((key, value));
        }
    };

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(cm) => {
                    let data: BTreeMap<_, _> = cm.data.clone().unwrap_or_default();
                    for (k, v) in data {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(Error::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(secret) => {
                    for (k, v) in secret.data.clone().unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(Error::SecretNotFound(r.name.clone())),
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let lookup: HashMap<&str, &str> = sources
                    .services
                    .iter()
                    .chain(env.iter())
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                expand(var.value.as_deref().unwrap_or_default(), &lookup)
            }
            Some(source) => {
                if let Some(r) = &source.config_map_key_ref {
                    match sources.config_maps.get(&r.name) {
                        Some(cm) => match config_map_value(cm, &r.key) {
                            Some(v) => v,
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(Error::ConfigMapKey {
                                    namespace: namespace.clone(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(Error::ConfigMapNotFound(r.name.clone())),
                    }
                } else if let Some(r) = &source.secret_key_ref {
                    match sources.secrets.get(&r.name) {
                        Some(secret) => match secret_value(secret, &r.key) {
                            Some(v) => v,
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(Error::SecretKey {
                                    namespace: namespace.clone(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(Error::SecretNotFound(r.name.clone())),
                    }
                } else if let Some(r) = &source.field_ref {
                    field_value(pod, &r.field_path, downward)?
                } else if let Some(r) = &source.resource_field_ref {
                    resource_value(
                        container,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        downward,
                    )?
                } else {
                    return Err(Error::InvalidSource(var.name.clone()));
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    for (key, value) in &sources.services {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.clone(), value.clone()));
        }
    }
    Ok(env)
}

/// `command` and `args` with `$(VAR)` expanded against the final environment.
pub fn expand_command(
    container: &Container,
    env: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all =
        |list: &Option<Vec<String>>| list.iter().flatten().map(|s| expand(s, &lookup)).collect();
    (expand_all(&container.command), expand_all(&container.args))
}

/// Expands `$(VAR)`; `$$` is a literal `$`; unknown references are left as written.
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A `fieldRef` value.
pub fn field_value(pod: &Pod, path: &str, downward: &Downward) -> Result<String, Error> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(key.to_owned())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => downward.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => downward.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => downward.host_ips.join(","),
        "status.podIP" => downward.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => downward.pod_ips.join(","),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(Error::FieldPath(path.to_owned()));
            }
        }
    };
    Ok(value)
}

/// A `resourceFieldRef` value: the container's limit or request divided by the divisor,
/// rounded up; an unset limit is the node's allocatable, as upstream.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    downward: &Downward,
) -> Result<String, Error> {
    let resources = container.resources.clone().unwrap_or_default();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", name)) => (resources.limits.unwrap_or_default(), name),
        Some(("requests", name)) => (resources.requests.unwrap_or_default(), name),
        _ => return Err(Error::Resource(resource.to_owned())),
    };
    let set = map
        .get(name)
        .and_then(|q| quantity::parse(&q.0))
        .map(|m| m.0);
    let milli = match (set, name, resource.starts_with("limits")) {
        (Some(v), _, _) => v,
        (None, "cpu", true) => downward.allocatable_milli_cpu,
        (None, "memory", true) => downward.allocatable_memory * 1000,
        (None, "cpu" | "memory" | "ephemeral-storage", _) => 0,
        (None, _, true) if name == "ephemeral-storage" => 0,
        _ => return Err(Error::Resource(resource.to_owned())),
    };
    // An unset or zero divisor is 1, as upstream (the API server's defaulting can send "0").
    let divisor = divisor
        .and_then(quantity::parse)
        .map(|m| m.0)
        .filter(|&m| m > 0)
        .unwrap_or(1000);
    // ceil(milli / divisor_milli)
    let value = (milli + divisor - 1).div_euclid(divisor);
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("u1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn expansion_follows_the_api_rules() {
        let vars = HashMap::from([("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$$(A)", &vars), "$(A)", "$$ escapes");
        assert_eq!(expand("$(MISSING) $A $", &vars), "$(MISSING) $A $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn env_from_then_env_in_order_with_references() {
        let container = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "settings".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                secret_ref: None,
            }]),
            env: Some(vec![
                literal("GREETING", "hello"),
                literal("MESSAGE", "$(GREETING) from $(CFG_color) $(POD)"),
                from(
                    "POD",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                literal("GREETING", "overridden"),
            ]),
            command: Some(vec!["echo".into(), "$(MESSAGE)".into()]),
            ..Container::default()
        };
        let sources = Sources {
            config_maps: HashMap::from([(
                "settings".into(),
                config_map("settings", &[("color", "blue")]),
            )]),
            ..Sources::default()
        };
        let env = resolve(&container, &pod(), &sources, &Downward::default()).expect("resolves");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_color"), Some("blue"));
        assert_eq!(
            get("MESSAGE"),
            Some("hello from blue $(POD)"),
            "POD is defined later"
        );
        assert_eq!(get("POD"), Some("web"));
        assert_eq!(get("GREETING"), Some("overridden"));
        assert_eq!(env.iter().filter(|(n, _)| n == "GREETING").count(), 1);
        let (command, _) = expand_command(&container, &env);
        assert_eq!(command, vec!["echo", "hello from blue $(POD)"]);
    }

    #[test]
    fn missing_sources_are_errors_unless_optional() {
        let key_ref = |name: &str, key: &str, optional| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..EnvVarSource::default()
        };
        let container = |source| Container {
            name: "c".into(),
            env: Some(vec![from("X", source)]),
            ..Container::default()
        };
        let sources = Sources {
            config_maps: HashMap::from([("present".into(), config_map("present", &[("k", "v")]))]),
            ..Sources::default()
        };
        let resolve = |c: &Container| resolve(c, &pod(), &sources, &Downward::default());
        assert_eq!(
            resolve(&container(key_ref("absent", "k", None)))
                .expect_err("missing")
                .to_string(),
            "configmap \"absent\" not found"
        );
        assert_eq!(
            resolve(&container(key_ref("present", "nokey", None)))
                .expect_err("missing key")
                .to_string(),
            "couldn't find key nokey in ConfigMap prod/present"
        );
        assert_eq!(
            resolve(&container(key_ref("absent", "k", Some(true)))).expect("optional"),
            vec![]
        );
        let (cms, secrets) = references(&container(key_ref("absent", "k", None)));
        assert_eq!(
            (cms.into_iter().collect::<Vec<_>>(), secrets.len()),
            (vec!["absent".to_owned()], 0)
        );
    }

    #[test]
    fn resource_values_round_up_and_default_to_allocatable() {
        let container = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        let downward = Downward {
            allocatable_milli_cpu: 2000,
            allocatable_memory: 8 << 30,
            ..Downward::default()
        };
        let value = |resource: &str, divisor: Option<&str>| {
            resource_value(&container, resource, divisor, &downward).expect("value")
        };
        assert_eq!(value("requests.cpu", None), "1", "250m rounds up to 1 core");
        assert_eq!(value("requests.cpu", Some("1m")), "250");
        assert_eq!(value("limits.memory", Some("1Mi")), "64");
        // What the API server's defaulting leaves in a volume's resourceFieldRef.
        assert_eq!(value("limits.memory", Some("0")), (64u64 << 20).to_string());
        assert_eq!(
            value("limits.cpu", None),
            "2",
            "unset limit: node allocatable"
        );
        assert!(resource_value(&container, "limits.gpu", None, &downward).is_err());
    }
}
