//! Conditions: the node's Ready, MemoryPressure, DiskPressure and PIDPressure, computed
//! from what was last observed. Pure: the same observation always gives the same
//! conditions, so the status task can tell a real change from a repeat.
//!
//! Reasons and messages are the kubelet's, since users and tools match on them.

use nodus_cri::RuntimeStatus;

use super::machine::{FsUsage, MemoryUsage, PidUsage};
use crate::config::{Signal, Thresholds};

/// The runtime's health as last checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RuntimeHealth {
    /// Not checked yet.
    #[default]
    Unknown,
    /// The CRI endpoint did not answer; the error says why.
    Unreachable(String),
    /// The runtime answered with its conditions.
    Reported(RuntimeStatus),
}

/// Everything the conditions depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    pub runtime: RuntimeHealth,
    pub memory: Option<MemoryUsage>,
    pub nodefs: Option<FsUsage>,
    pub pids: Option<PidUsage>,
}

/// One node condition without its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    fn new(
        kind: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The four conditions, in the kubelet's order.
pub fn evaluate(observation: &Observation, thresholds: &Thresholds) -> Vec<Condition> {
    let below = |signal: Signal, available: u64, capacity: u64| {
        thresholds
            .get(signal)
            .is_some_and(|threshold| available < threshold.of(capacity))
    };
    let memory_pressure = observation
        .memory
        .is_some_and(|m| below(Signal::MemoryAvailable, m.available_bytes, m.total_bytes));
    let disk_pressure = observation.nodefs.is_some_and(|fs| {
        below(
            Signal::NodefsAvailable,
            fs.available_bytes,
            fs.capacity_bytes,
        ) || (fs.inodes > 0 && below(Signal::NodefsInodesFree, fs.inodes_free, fs.inodes))
    });
    let pid_pressure = observation
        .pids
        .is_some_and(|p| below(Signal::PidAvailable, p.max.saturating_sub(p.in_use), p.max));

    vec![
        if memory_pressure {
            Condition::new(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            Condition::new(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if disk_pressure {
            Condition::new(
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            Condition::new(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if pid_pressure {
            Condition::new(
                "PIDPressure",
                true,
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            Condition::new(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
        ready(&observation.runtime),
    ]
}

fn ready(runtime: &RuntimeHealth) -> Condition {
    let not_ready = |message: String| Condition::new("Ready", false, "KubeletNotReady", message);
    let status = match runtime {
        RuntimeHealth::Unknown => {
            return not_ready("container runtime status check may not have completed yet".into());
        }
        RuntimeHealth::Unreachable(error) => {
            return not_ready(format!("container runtime is down: {error}"));
        }
        RuntimeHealth::Reported(status) => status,
    };
    let mut problems = Vec::new();
    for (kind, what) in [
        (RuntimeStatus::RUNTIME_READY, "container runtime not ready"),
        (
            RuntimeStatus::NETWORK_READY,
            "container runtime network not ready",
        ),
    ] {
        match status.condition(kind) {
            Some(c) if c.status => {}
            Some(c) => problems.push(format!(
                "{what}: {kind}=false reason:{} message:{}",
                c.reason, c.message
            )),
            None => problems.push(format!("{what}: {kind} condition not reported")),
        }
    }
    if problems.is_empty() {
        Condition::new(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
        )
    } else {
        not_ready(problems.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use nodus_cri::RuntimeCondition;

    use super::*;

    fn healthy_runtime() -> RuntimeHealth {
        let ready = |kind: &str| RuntimeCondition {
            kind: kind.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        RuntimeHealth::Reported(RuntimeStatus {
            conditions: vec![
                ready(RuntimeStatus::RUNTIME_READY),
                ready(RuntimeStatus::NETWORK_READY),
            ],
        })
    }

    fn healthy() -> Observation {
        Observation {
            runtime: healthy_runtime(),
            memory: Some(MemoryUsage {
                total_bytes: 8 << 30,
                available_bytes: 4 << 30,
            }),
            nodefs: Some(FsUsage {
                capacity_bytes: 100 << 30,
                available_bytes: 50 << 30,
                inodes: 1_000_000,
                inodes_free: 900_000,
            }),
            pids: Some(PidUsage {
                max: 4_194_304,
                in_use: 300,
            }),
        }
    }

    fn find<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.kind == kind)
            .expect("condition present")
    }

    #[test]
    fn healthy_node_is_ready_without_pressure_in_kubelet_order() {
        let conditions = evaluate(&healthy(), &Thresholds::kubelet_defaults());
        let kinds: Vec<_> = conditions
            .iter()
            .map(|c| (c.kind, c.status, c.reason))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("MemoryPressure", false, "KubeletHasSufficientMemory"),
                ("DiskPressure", false, "KubeletHasNoDiskPressure"),
                ("PIDPressure", false, "KubeletHasSufficientPID"),
                ("Ready", true, "KubeletReady"),
            ]
        );
    }

    #[test]
    fn runtime_problems_make_the_node_not_ready_with_a_reason() {
        let thresholds = Thresholds::kubelet_defaults();
        let mut obs = healthy();

        obs.runtime = RuntimeHealth::Unknown;
        let ready = find(&evaluate(&obs, &thresholds), "Ready").clone();
        assert!(!ready.status);
        assert!(
            ready.message.contains("may not have completed yet"),
            "{}",
            ready.message
        );

        obs.runtime = RuntimeHealth::Unreachable("connection refused".into());
        let ready = find(&evaluate(&obs, &thresholds), "Ready").clone();
        assert_eq!((ready.status, ready.reason), (false, "KubeletNotReady"));
        assert_eq!(
            ready.message,
            "container runtime is down: connection refused"
        );

        obs.runtime = RuntimeHealth::Reported(RuntimeStatus {
            conditions: vec![
                RuntimeCondition {
                    kind: RuntimeStatus::RUNTIME_READY.into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                RuntimeCondition {
                    kind: RuntimeStatus::NETWORK_READY.into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: "cni plugin not initialized".into(),
                },
            ],
        });
        let ready = find(&evaluate(&obs, &thresholds), "Ready").clone();
        assert!(!ready.status);
        assert_eq!(
            ready.message,
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni plugin not initialized"
        );
    }

    #[test]
    fn pressure_follows_the_thresholds() {
        let mut obs = healthy();
        obs.memory = Some(MemoryUsage {
            total_bytes: 8 << 30,
            available_bytes: 50 << 20,
        });
        obs.nodefs = Some(FsUsage {
            capacity_bytes: 100 << 30,
            available_bytes: 5 << 30,
            inodes: 1_000_000,
            inodes_free: 900_000,
        });
        let defaults = evaluate(&obs, &Thresholds::kubelet_defaults());
        assert!(find(&defaults, "MemoryPressure").status, "50Mi < 100Mi");
        assert!(find(&defaults, "DiskPressure").status, "5% < 10%");
        assert!(
            !find(&defaults, "PIDPressure").status,
            "no pid threshold by default"
        );
        assert!(
            find(&defaults, "Ready").status,
            "pressure alone leaves the node Ready"
        );

        let pid = Thresholds::parse("pid.available<100%").expect("valid");
        let conditions = evaluate(&obs, &pid);
        assert!(find(&conditions, "PIDPressure").status);
        assert!(
            !find(&conditions, "MemoryPressure").status,
            "only the given signals count"
        );
    }

    #[test]
    fn inode_exhaustion_is_disk_pressure() {
        let mut obs = healthy();
        obs.nodefs = Some(FsUsage {
            capacity_bytes: 100 << 30,
            available_bytes: 50 << 30,
            inodes: 1_000_000,
            inodes_free: 10_000,
        });
        let conditions = evaluate(&obs, &Thresholds::kubelet_defaults());
        assert_eq!(
            find(&conditions, "DiskPressure").reason,
            "KubeletHasDiskPressure"
        );
    }
}
