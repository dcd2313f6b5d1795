//! Sysctl admission: a pod may set only sysctls known to be namespaced — the kubelet's safe
//! set, plus the node's `--allowed-unsafe-sysctls` — and none of a namespace it shares
//! with the host. Anything else rejects the pod (`SysctlForbidden`), as upstream.

use k8s_openapi::api::core::v1::PodSpec;

/// The sysctls upstream calls safe: namespaced, and unable to affect other pods. Each is
/// available from a kernel version older than any this project runs on.
const SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

/// The kernel namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Ipc,
    Net,
}

impl Namespace {
    fn of(name: &str) -> Option<Namespace> {
        if name.starts_with("net.") {
            return Some(Namespace::Net);
        }
        let ipc = ["kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue."];
        ipc.iter()
            .any(|p| name.starts_with(p))
            .then_some(Namespace::Ipc)
    }

    fn name(self) -> &'static str {
        match self {
            Namespace::Ipc => "IPC",
            Namespace::Net => "Network",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the sysctls {0:?} are not known to be namespaced")]
    NotNamespaced(String),
}

/// Which sysctls pods on this node may set.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    /// Exact names and prefixes (a pattern ending in `*`), with their namespace.
    exact: Vec<(String, Namespace)>,
    prefixes: Vec<(String, Namespace)>,
}

/// `kernel/shm_rmid_forced` and `kernel.shm_rmid_forced` are the same sysctl.
fn normalize(name: &str) -> String {
    // With a slash first, slashes are the separators and dots belong to names: swap them.
    let slash_first = name
        .find('/')
        .is_some_and(|slash| name.find('.').is_none_or(|dot| slash < dot));
    if slash_first {
        name.chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect()
    } else {
        name.to_owned()
    }
}

impl Allowlist {
    /// The safe set plus `unsafe_patterns` (names, or prefixes ending in `*`), each of
    /// which must be namespaced.
    pub fn new(unsafe_patterns: &[String]) -> Result<Allowlist, Error> {
        let mut list = Allowlist::default();
        for pattern in SAFE
            .iter()
            .map(|s| (*s).to_owned())
            .chain(unsafe_patterns.iter().cloned())
        {
            let pattern = normalize(pattern.trim());
            let (name, prefix) = match pattern.split_once('*') {
                Some((name, _)) => (name.to_owned(), true),
                None => (pattern.clone(), false),
            };
            let namespace =
                Namespace::of(&name).ok_or_else(|| Error::NotNamespaced(pattern.clone()))?;
            if prefix {
                list.prefixes.push((name, namespace));
            } else {
                list.exact.push((name, namespace));
            }
        }
        Ok(list)
    }

    /// Why the pod may not run here, if it may not (the message of its `SysctlForbidden`).
    pub fn check(&self, spec: &PodSpec) -> Result<(), String> {
        let sysctls = spec
            .security_context
            .iter()
            .flat_map(|s| s.sysctls.iter().flatten());
        for sysctl in sysctls {
            let name = normalize(&sysctl.name);
            let namespace = self
                .exact
                .iter()
                .find(|(n, _)| *n == name)
                .or_else(|| {
                    self.prefixes
                        .iter()
                        .find(|(p, _)| name.starts_with(p.as_str()))
                })
                .map(|(_, ns)| *ns);
            let shared = match namespace {
                None => return Err(format!("forbidden sysctl: \"{name}\" not allowlisted")),
                Some(Namespace::Net) => spec.host_network == Some(true),
                Some(Namespace::Ipc) => spec.host_ipc == Some(true),
            };
            if shared {
                let ns = namespace.map_or("", Namespace::name);
                return Err(format!(
                    "forbidden sysctl: \"{name}\" not allowed with host {ns} enabled"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sysctls: &[&str], host_network: bool) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "containers": [],
            "hostNetwork": host_network,
            "securityContext": {
                "sysctls": sysctls.iter().map(|n| serde_json::json!({ "name": n, "value": "1" })).collect::<Vec<_>>(),
            },
        }))
        .expect("spec")
    }

    #[test]
    fn safe_sysctls_pass_and_unsafe_ones_need_the_node_to_allow_them() {
        let default = Allowlist::new(&[]).expect("allowlist");
        assert_eq!(
            default.check(&spec(&["kernel.shm_rmid_forced"], false)),
            Ok(())
        );
        assert_eq!(
            default.check(&spec(&["kernel/shm_rmid_forced"], false)),
            Ok(())
        );
        assert_eq!(
            default.check(&spec(&["kernel.msgmax"], false)),
            Err("forbidden sysctl: \"kernel.msgmax\" not allowlisted".into())
        );
        let allowing = Allowlist::new(&["kernel.msg*".into(), "net.core.somaxconn".into()])
            .expect("allowlist");
        assert_eq!(
            allowing.check(&spec(&["kernel.msgmax", "net.core.somaxconn"], false)),
            Ok(())
        );
    }

    #[test]
    fn a_namespace_shared_with_the_host_forbids_its_sysctls() {
        let list = Allowlist::new(&[]).expect("allowlist");
        assert_eq!(
            list.check(&spec(&["net.ipv4.tcp_syncookies"], true)),
            Err("forbidden sysctl: \"net.ipv4.tcp_syncookies\" not allowed with host Network enabled".into())
        );
    }

    #[test]
    fn only_namespaced_sysctls_may_be_allowed() {
        assert_eq!(
            Allowlist::new(&["vm.swappiness".into()]).err(),
            Some(Error::NotNamespaced("vm.swappiness".into()))
        );
    }
}
