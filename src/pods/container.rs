//! Container: the CRI `ContainerConfig` for one container of a pod — command, environment,
//! mounts, log path, resources and security context.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use nodus_cri::api::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, Mount,
    NamespaceMode, SecurityProfile, security_profile::ProfileType,
};

use super::metadata::{
    CONTAINER_NAME, CONTAINER_RESOURCES, CONTAINER_RESTART_COUNT, PodKey, TERMINATION_GRACE_PERIOD,
    TERMINATION_MESSAGE_PATH, TERMINATION_MESSAGE_POLICY,
};
use super::sandbox::namespace_options;
use crate::quantity;

/// The CFS period the kubelet uses for cpu limits.
const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;

/// Paths the runtime masks in unprivileged containers (the kubelet's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the worker prepared on the host for this container.
#[derive(Debug, Clone, Default)]
pub struct HostFiles {
    /// The file mounted at `terminationMessagePath`.
    pub termination_log: Option<String>,
    /// The pod's managed /etc/hosts.
    pub etc_hosts: Option<String>,
    /// The container's volumes (see `crate::volumes`).
    pub volume_mounts: Vec<Mount>,
}

/// cpu shares for a request in milli-cpu (the kubelet's `MilliCPUToShares`).
pub fn cpu_shares(milli: Option<i128>) -> i64 {
    match milli {
        None | Some(0) => MIN_SHARES,
        Some(m) => ((m * 1024 / 1000) as i64).clamp(MIN_SHARES, MAX_SHARES),
    }
}

/// The CFS quota for a limit in milli-cpu (the kubelet's `MilliCPUToQuota`).
pub fn cpu_quota(milli: i128) -> i64 {
    ((milli * i128::from(CPU_PERIOD) / 1000) as i64).max(1000)
}

/// The cgroup values of a container's requests and limits (zero: none set).
pub fn linux_resources(container: &Container) -> LinuxContainerResources {
    let (requests, limits) = super::qos::requirements(container);
    let milli = |map: &std::collections::BTreeMap<
        String,
        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    >,
                 name: &str| {
        map.get(name)
            .and_then(|q| quantity::parse(&q.0))
            .map(|m| m.0)
    };
    let mut linux = LinuxContainerResources {
        cpu_shares: cpu_shares(milli(&requests, "cpu")),
        ..LinuxContainerResources::default()
    };
    if let Some(limit) = milli(&limits, "cpu").filter(|m| *m > 0) {
        linux.cpu_period = CPU_PERIOD;
        linux.cpu_quota = cpu_quota(limit);
    }
    if let Some(limit) = milli(&limits, "memory").filter(|m| *m > 0) {
        linux.memory_limit_in_bytes = (limit / 1000) as i64;
    }
    linux
}

fn security_context(pod_spec: &PodSpec, container: &Container) -> LinuxContainerSecurityContext {
    let pod = pod_spec.security_context.clone().unwrap_or_default();
    let own = container.security_context.clone().unwrap_or_default();
    let privileged = own.privileged == Some(true);
    let seccomp = own
        .seccomp_profile
        .clone()
        .or(pod.seccomp_profile.clone())
        .map(|p| SecurityProfile {
            profile_type: match p.type_.as_str() {
                "RuntimeDefault" => ProfileType::RuntimeDefault as i32,
                "Localhost" => ProfileType::Localhost as i32,
                _ => ProfileType::Unconfined as i32,
            },
            localhost_ref: p.localhost_profile.unwrap_or_default(),
        });
    let capabilities = own.capabilities.clone().map(|c| Capability {
        add_capabilities: c.add.unwrap_or_default(),
        drop_capabilities: c.drop.unwrap_or_default(),
        ..Capability::default()
    });
    let unmasked = own.proc_mount.as_deref() == Some("Unmasked");
    let paths = |list: &[&str]| {
        if privileged || unmasked {
            Vec::new()
        } else {
            list.iter().map(|p| (*p).to_owned()).collect()
        }
    };
    LinuxContainerSecurityContext {
        capabilities,
        privileged,
        namespace_options: Some(namespace_options(pod_spec)),
        run_as_user: own
            .run_as_user
            .or(pod.run_as_user)
            .map(|value| Int64Value { value }),
        run_as_group: own
            .run_as_group
            .or(pod.run_as_group)
            .map(|value| Int64Value { value }),
        readonly_rootfs: own.read_only_root_filesystem == Some(true),
        supplemental_groups: super::sandbox::supplemental_groups(&pod),
        no_new_privs: own.allow_privilege_escalation == Some(false),
        masked_paths: paths(MASKED_PATHS),
        readonly_paths: paths(READONLY_PATHS),
        seccomp,
        ..LinuxContainerSecurityContext::default()
    }
}

/// Makes the container join another container's process namespace (an ephemeral
/// container's `targetContainerName`).
pub fn share_pid_with(config: &mut ContainerConfig, target_id: String) {
    let security = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    let namespaces = security
        .namespace_options
        .get_or_insert_with(Default::default);
    namespaces.pid = NamespaceMode::Target as i32;
    namespaces.target_id = target_id;
}

/// The container's configuration. `env` and the expanded command/args come from
/// [`super::env`]; `attempt` is its restart count.
#[allow(clippy::too_many_arguments)]
pub fn config(
    pod: &Pod,
    spec: &PodSpec,
    container: &Container,
    attempt: u32,
    env: Vec<(String, String)>,
    command: Vec<String>,
    args: Vec<String>,
    host: &HostFiles,
) -> ContainerConfig {
    let key = PodKey::of(pod);
    let mut labels = key.labels();
    labels.insert(CONTAINER_NAME.to_owned(), container.name.clone());
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_owned());
    let created_with =
        serde_json::to_string(&super::resize::requirements(container)).unwrap_or_default();
    let annotations = HashMap::from([
        (CONTAINER_RESOURCES.to_owned(), created_with),
        (CONTAINER_RESTART_COUNT.to_owned(), attempt.to_string()),
        (TERMINATION_MESSAGE_PATH.to_owned(), message_path.clone()),
        (
            TERMINATION_MESSAGE_POLICY.to_owned(),
            container
                .termination_message_policy
                .clone()
                .unwrap_or_else(|| "File".to_owned()),
        ),
        (
            TERMINATION_GRACE_PERIOD.to_owned(),
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .to_string(),
        ),
    ]);
    let mut mounts = host.volume_mounts.clone();
    // A volume mounted at /etc/hosts wins over the managed file, as with the kubelet.
    let own_hosts = mounts.iter().any(|m| m.container_path == "/etc/hosts");
    if let Some(etc_hosts) = host.etc_hosts.as_ref().filter(|_| !own_hosts) {
        mounts.push(Mount {
            container_path: "/etc/hosts".into(),
            host_path: etc_hosts.clone(),
            ..Mount::default()
        });
    }
    if let Some(log) = &host.termination_log {
        mounts.push(Mount {
            container_path: message_path,
            host_path: log.clone(),
            ..Mount::default()
        });
    }
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..ImageSpec::default()
        }),
        command,
        args,
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin == Some(true),
        stdin_once: container.stdin_once == Some(true),
        tty: container.tty == Some(true),
        linux: Some(LinuxContainerConfig {
            resources: Some(linux_resources(container)),
            security_context: Some(security_context(spec, container)),
        }),
        ..ContainerConfig::default()
    }
}

/// The `runAsNonRoot` check: an error message when the container would run as root.
/// `image_uid` is the image's configured user, when numeric.
pub fn verify_non_root(
    spec: &PodSpec,
    container: &Container,
    image_uid: Option<i64>,
    image_user: &str,
) -> Result<(), String> {
    let pod = spec.security_context.clone().unwrap_or_default();
    let own = container.security_context.clone().unwrap_or_default();
    if own.run_as_non_root.or(pod.run_as_non_root) != Some(true) {
        return Ok(());
    }
    match own.run_as_user.or(pod.run_as_user) {
        Some(0) => Err("container's runAsUser breaks non-root policy".into()),
        Some(_) => Ok(()),
        None => match image_uid {
            Some(0) => Err("container has runAsNonRoot and image will run as root".into()),
            Some(_) => Ok(()),
            None if image_user.is_empty() => {
                Err("container has runAsNonRoot and image will run as root".into())
            }
            None => Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ResourceRequirements, SecurityContext};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use super::*;

    fn container() -> Container {
        Container {
            name: "app".into(),
            image: Some("busybox".into()),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                limits: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("500m".into())),
                    ("memory".into(), Quantity("64Mi".into())),
                ])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn resources_map_to_shares_quota_and_memory_limit() {
        let r = linux_resources(&container());
        assert_eq!(r.cpu_shares, 256);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 50_000));
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        let none = linux_resources(&Container::default());
        assert_eq!(
            (none.cpu_shares, none.cpu_quota, none.memory_limit_in_bytes),
            (2, 0, 0)
        );
    }

    #[test]
    fn config_carries_identity_log_path_and_mounts() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let host = HostFiles {
            volume_mounts: Vec::new(),
            termination_log: Some("/var/lib/nodus/pods/u/containers/app/abc".into()),
            etc_hosts: Some("/var/lib/nodus/pods/u/etc-hosts".into()),
        };
        let c = config(
            &pod,
            &PodSpec::default(),
            &container(),
            3,
            vec![("A".into(), "1".into())],
            vec!["sh".into()],
            vec![],
            &host,
        );
        assert_eq!(c.log_path, "app/3.log");
        assert_eq!(c.metadata.map(|m| m.attempt), Some(3));
        assert_eq!(
            c.labels.get(CONTAINER_NAME).map(String::as_str),
            Some("app")
        );
        let paths: Vec<_> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(paths, vec!["/etc/hosts", "/dev/termination-log"]);
        let security = c.linux.and_then(|l| l.security_context).expect("security");
        assert!(!security.masked_paths.is_empty());
    }

    #[test]
    fn run_as_non_root() {
        let spec = PodSpec::default();
        let mut c = container();
        assert!(
            verify_non_root(&spec, &c, Some(0), "").is_ok(),
            "no policy, no check"
        );
        c.security_context = Some(SecurityContext {
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        });
        assert!(verify_non_root(&spec, &c, Some(0), "").is_err());
        assert!(verify_non_root(&spec, &c, Some(1000), "").is_ok());
        assert!(
            verify_non_root(&spec, &c, None, "nobody").is_err(),
            "a name cannot be verified"
        );
        c.security_context.as_mut().expect("set").run_as_user = Some(0);
        assert_eq!(
            verify_non_root(&spec, &c, Some(1000), "").expect_err("root"),
            "container's runAsUser breaks non-root policy"
        );
    }
}
