//! Stats: the node's, each pod's and each container's CPU, memory, filesystem and network
//! usage, for the kubelet API's `/stats/summary` and `/metrics/resource` (what
//! metrics-server scrapes for `kubectl top`).
//!
//! Sources: cgroups for the node, the pods and the agent itself; CRI `ListContainerStats`
//! for containers (the runtime knows their writable layers); `/proc/<pid>/net/dev` of a
//! process inside each pod for its network; statvfs and directory walks for filesystems.
//! CPU rates (`usageNanoCores`) are the slope between the current reading and one taken at
//! least a second before, so a sampler primes them every [`SAMPLE_PERIOD`] as cAdvisor's
//! housekeeping does.
//!
//! Invariants: reads only; a pod or container that vanishes while being read is left out,
//! never an error; one failing source (the runtime down) leaves its figures out and the rest
//! still answers.

pub mod cgroup;
pub mod netdev;
pub mod resource;
pub mod summary;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use nodus_cri::Runtime;
use nodus_cri::api::{ContainerState, PodSandboxState};

use self::summary::*;
use crate::node::machine;
use crate::pods::cgroups;
use crate::pods::housekeeping::{Paths, disk_usage};
use crate::pods::metadata::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};

/// How often the sampler reads CPU counters (cAdvisor's housekeeping interval).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);
/// A rate is taken over at least this much time.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);
/// Samples of cgroups not seen for this long are dropped.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Earlier CPU readings, for rates.
#[derive(Debug, Default)]
struct Rates {
    /// Per cgroup or container: up to two (when, cumulative ns), oldest first.
    samples: HashMap<String, Vec<(Instant, u64)>>,
}

impl Rates {
    /// The rate in nanocores against the newest sample at least [`MIN_RATE_WINDOW`] old;
    /// records `now` as a sample when the newest is older than half a period.
    fn rate(&mut self, key: &str, now: Instant, nanos: u64) -> Option<u64> {
        let samples = self.samples.entry(key.to_owned()).or_default();
        let rate = samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= MIN_RATE_WINDOW)
            .and_then(|(at, before)| {
                let window = now.duration_since(*at).as_secs_f64();
                Some((nanos.checked_sub(*before)? as f64 / window) as u64)
            });
        if samples
            .last()
            .is_none_or(|(at, _)| now.duration_since(*at) >= SAMPLE_PERIOD / 2)
        {
            samples.push((now, nanos));
            if samples.len() > 2 {
                samples.remove(0);
            }
        }
        rate
    }

    fn forget_stale(&mut self, now: Instant) {
        self.samples.retain(|_, s| {
            s.last()
                .is_some_and(|(at, _)| now.duration_since(*at) < FORGET_AFTER)
        });
    }
}

/// Gathers the summary; shared by the endpoints and the sampler.
#[derive(Debug)]
pub struct Collector {
    runtime: Runtime,
    node_name: String,
    paths: Paths,
    started: Timestamp,
    rates: Mutex<Rates>,
}

/// One running container as the runtime lists it.
#[derive(Debug, Clone)]
struct Running {
    id: String,
    name: String,
    pod_uid: String,
    created: Timestamp,
    cpu_nanos: Option<u64>,
    memory: Option<cgroup::Memory>,
    rootfs_used: Option<u64>,
}

/// One ready sandbox: the pod it holds.
#[derive(Debug, Clone)]
struct Sandbox {
    pod: PodReference,
    created: Timestamp,
}

fn nanos_to_time(nanos: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Collector {
    pub fn new(runtime: Runtime, node_name: String, paths: Paths) -> Self {
        Collector {
            runtime,
            node_name,
            paths,
            started: Timestamp::now(),
            rates: Mutex::new(Rates::default()),
        }
    }

    fn rates(&self) -> std::sync::MutexGuard<'_, Rates> {
        self.rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the CPU counters every [`SAMPLE_PERIOD`] until `cancel`, so that a summary
    /// asked for at any time has a rate.
    pub async fn sample(&self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            self.sample_cpu().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_PERIOD) => {}
            }
        }
    }

    /// Only what the rates need: no filesystem walks, no statvfs, no network counters.
    async fn sample_cpu(&self) {
        let sandboxes = self.sandboxes().await;
        let containers = self
            .runtime
            .list_container_stats(None)
            .await
            .unwrap_or_default();
        let now = Instant::now();
        // The same keys the summary reads under: cgroup paths, and container IDs.
        let mut counted: Vec<String> = vec!["/".into(), cgroups::ROOT.into()];
        counted.extend(cgroup::of_process("self", "memory"));
        counted.extend(sandboxes.iter().filter_map(|s| pod_cgroup(&s.pod.uid)));
        let readings: Vec<(String, u64)> = counted
            .into_iter()
            .filter_map(|cg| Some((cgroup::cpu_nanos(&cg)?, cg)))
            .map(|(nanos, cg)| (cg, nanos))
            .chain(containers.into_iter().filter_map(|s| {
                let nanos = s.cpu.as_ref()?.usage_core_nano_seconds.as_ref()?.value;
                Some((s.attributes?.id, nanos))
            }))
            .collect();
        let mut rates = self.rates();
        for (key, nanos) in readings {
            rates.rate(&key, now, nanos);
        }
        rates.forget_stale(now);
    }

    /// The node's summary now.
    pub async fn summary(&self) -> Summary {
        let sandboxes = self.sandboxes().await;
        let containers = self.containers().await;
        let image_fs = self.image_fs().await;
        let now = Timestamp::now();
        let instant = Instant::now();
        let time = now.to_string();
        let mut node = self.node(&time, instant);
        node.runtime = Some(RuntimeStats { image_fs });
        let mut pods = Vec::with_capacity(sandboxes.len());
        for sandbox in sandboxes {
            let mine: Vec<&Running> = containers
                .iter()
                .filter(|c| c.pod_uid == sandbox.pod.uid)
                .collect();
            pods.push(self.pod(&sandbox, &mine, &time, instant));
        }
        self.rates().forget_stale(instant);
        Summary { node, pods }
    }

    async fn sandboxes(&self) -> Vec<Sandbox> {
        let Ok(list) = self.runtime.list_pod_sandboxes(None).await else {
            return Vec::new();
        };
        list.into_iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
            .filter_map(|s| {
                let label = |k: &str| s.labels.get(k).cloned();
                Some(Sandbox {
                    pod: PodReference {
                        name: label(POD_NAME)?,
                        namespace: label(POD_NAMESPACE)?,
                        uid: label(POD_UID)?,
                    },
                    created: nanos_to_time(s.created_at),
                })
            })
            .collect()
    }

    async fn containers(&self) -> Vec<Running> {
        let Ok(list) = self.runtime.list_containers(None).await else {
            return Vec::new();
        };
        let stats: HashMap<String, nodus_cri::api::ContainerStats> = self
            .runtime
            .list_container_stats(None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
            .collect();
        list.into_iter()
            .filter(|c| c.state == ContainerState::ContainerRunning as i32)
            .filter_map(|c| {
                let stat = stats.get(&c.id);
                let memory = stat
                    .and_then(|s| s.memory.as_ref())
                    .map(|m| cgroup::Memory {
                        usage_bytes: m.usage_bytes.as_ref().map_or(0, |v| v.value),
                        working_set_bytes: m.working_set_bytes.as_ref().map_or(0, |v| v.value),
                        rss_bytes: m.rss_bytes.as_ref().map_or(0, |v| v.value),
                        page_faults: m.page_faults.as_ref().map_or(0, |v| v.value),
                        major_page_faults: m.major_page_faults.as_ref().map_or(0, |v| v.value),
                    });
                Some(Running {
                    name: c.labels.get(CONTAINER_NAME)?.clone(),
                    pod_uid: c.labels.get(POD_UID)?.clone(),
                    created: nanos_to_time(c.created_at),
                    cpu_nanos: stat
                        .and_then(|s| s.cpu.as_ref()?.usage_core_nano_seconds.as_ref())
                        .map(|v| v.value),
                    memory,
                    rootfs_used: stat
                        .and_then(|s| s.writable_layer.as_ref()?.used_bytes.as_ref())
                        .map(|v| v.value),
                    id: c.id,
                })
            })
            .collect()
    }

    async fn image_fs(&self) -> Option<FsStats> {
        let filesystems = self.runtime.image_fs_info().await.ok()?;
        let first = filesystems.first()?;
        let mountpoint = first.fs_id.as_ref().map(|f| f.mountpoint.clone())?;
        let mut stats = fs_stats(Path::new(&mountpoint), &Timestamp::now().to_string())?;
        stats.used_bytes = first.used_bytes.as_ref().map_or(0, |v| v.value);
        stats.inodes_used = first.inodes_used.as_ref().map(|v| v.value);
        Some(stats)
    }

    fn cpu(&self, key: &str, nanos: u64, time: &str, instant: Instant) -> CpuStats {
        CpuStats {
            time: time.to_owned(),
            usage_nano_cores: self.rates().rate(key, instant, nanos),
            usage_core_nano_seconds: nanos,
        }
    }

    fn cgroup_stats(
        &self,
        cgroup: &str,
        time: &str,
        instant: Instant,
    ) -> (Option<CpuStats>, Option<MemoryStats>) {
        let cpu = cgroup::cpu_nanos(cgroup).map(|n| self.cpu(cgroup, n, time, instant));
        let memory = cgroup::memory(cgroup).map(|m| memory_stats(&m, time));
        (cpu, memory)
    }

    fn node(&self, time: &str, instant: Instant) -> NodeStats {
        let (cpu, mut memory) = self.cgroup_stats("/", time, instant);
        if let (Some(memory), Some(total)) = (memory.as_mut(), machine::memory_usage()) {
            memory.available_bytes =
                Some(total.total_bytes.saturating_sub(memory.working_set_bytes));
        }
        let mut system_containers = Vec::new();
        for (name, cgroup) in [
            ("pods", Some(cgroups::ROOT.to_owned())),
            ("kubelet", cgroup::of_process("self", "memory")),
        ] {
            if let Some(cgroup) = cgroup {
                let (cpu, memory) = self.cgroup_stats(&cgroup, time, instant);
                system_containers.push(ContainerStats {
                    name: name.into(),
                    start_time: self.started.to_string(),
                    cpu,
                    memory,
                    ..ContainerStats::default()
                });
            }
        }
        let nodefs = machine::existing_ancestor(&self.paths.root_dir);
        let mut fs = fs_stats(&nodefs, time);
        if let Some(fs) = fs.as_mut() {
            fs.used_bytes = fs
                .capacity_bytes
                .unwrap_or(0)
                .saturating_sub(fs.available_bytes.unwrap_or(0));
        }
        let pids = machine::pid_usage();
        NodeStats {
            node_name: self.node_name.clone(),
            system_containers,
            start_time: boot_time().map_or_else(String::new, |t| t.to_string()),
            cpu,
            memory,
            network: network_stats(&netdev::of_process("self"), time),
            fs,
            runtime: None,
            rlimit: pids.map(|p| RlimitStats {
                time: time.to_owned(),
                maxpid: p.max,
                curproc: p.in_use,
            }),
        }
    }

    fn pod(
        &self,
        sandbox: &Sandbox,
        containers: &[&Running],
        time: &str,
        instant: Instant,
    ) -> PodStats {
        let uid = &sandbox.pod.uid;
        let cgroup = pod_cgroup(uid);
        let (cpu, memory) = cgroup
            .as_deref()
            .map_or((None, None), |c| self.cgroup_stats(c, time, instant));
        let network = cgroup
            .as_deref()
            .and_then(|c| cgroup::first_process("memory", c))
            .and_then(|pid| network_stats(&netdev::of_process(&pid.to_string()), time));
        let log_dir = self.paths.pod_logs_dir.join(format!(
            "{}_{}_{}",
            sandbox.pod.namespace, sandbox.pod.name, uid
        ));
        let logs_fs = fs_stats(&machine::existing_ancestor(&self.paths.pod_logs_dir), time);
        let root_fs = fs_stats(&machine::existing_ancestor(&self.paths.root_dir), time);
        let with_used = |base: &Option<FsStats>, used: u64| {
            base.clone().map(|fs| FsStats {
                used_bytes: used,
                inodes_used: None,
                ..fs
            })
        };
        let stats: Vec<ContainerStats> = containers
            .iter()
            .map(|c| ContainerStats {
                name: c.name.clone(),
                start_time: c.created.to_string(),
                cpu: c.cpu_nanos.map(|n| self.cpu(&c.id, n, time, instant)),
                memory: c.memory.map(|m| memory_stats(&m, time)),
                rootfs: c.rootfs_used.map(|used| FsStats {
                    time: time.to_owned(),
                    used_bytes: used,
                    ..FsStats::default()
                }),
                logs: with_used(&logs_fs, disk_usage(&log_dir.join(&c.name))),
            })
            .collect();
        let empty_dirs = self
            .paths
            .root_dir
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir");
        let volume: Vec<VolumeStats> = std::fs::read_dir(&empty_dirs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let fs = fs_stats(&path, time).map(|fs| FsStats {
                    used_bytes: disk_usage(&path),
                    ..fs
                })?;
                Some(VolumeStats {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    fs,
                })
            })
            .collect();
        let ephemeral = stats
            .iter()
            .map(|c| {
                c.rootfs.as_ref().map_or(0, |f| f.used_bytes)
                    + c.logs.as_ref().map_or(0, |f| f.used_bytes)
            })
            .sum::<u64>()
            + disk_usage(&empty_dirs);
        PodStats {
            pod_ref: sandbox.pod.clone(),
            start_time: sandbox.created.to_string(),
            containers: stats,
            cpu,
            memory,
            network,
            volume,
            ephemeral_storage: with_used(&root_fs, ephemeral),
            process_stats: cgroup
                .as_deref()
                .and_then(|c| cgroup::number("pids", c, "pids.current"))
                .map(|n| ProcessStats { process_count: n }),
        }
    }
}

/// The pod's cgroup, wherever its QoS class put it.
fn pod_cgroup(uid: &str) -> Option<String> {
    ["Guaranteed", "Burstable", "BestEffort"]
        .iter()
        .map(|class| cgroups::pod_cgroup(class, uid))
        .find(|cg| {
            Path::new("/sys/fs/cgroup/memory")
                .join(cg.trim_start_matches('/'))
                .is_dir()
        })
}

fn memory_stats(m: &cgroup::Memory, time: &str) -> MemoryStats {
    MemoryStats {
        time: time.to_owned(),
        available_bytes: None,
        usage_bytes: m.usage_bytes,
        working_set_bytes: m.working_set_bytes,
        rss_bytes: m.rss_bytes,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    }
}

fn fs_stats(path: &Path, time: &str) -> Option<FsStats> {
    let fs = machine::fs_usage(path)?;
    Some(FsStats {
        time: time.to_owned(),
        available_bytes: Some(fs.available_bytes),
        capacity_bytes: Some(fs.capacity_bytes),
        used_bytes: 0,
        inodes_free: Some(fs.inodes_free),
        inodes: Some(fs.inodes),
        inodes_used: Some(fs.inodes.saturating_sub(fs.inodes_free)),
    })
}

/// The interfaces' figures with the first (`eth0` if present) as the default, as upstream.
fn network_stats(interfaces: &[netdev::Interface], time: &str) -> Option<NetworkStats> {
    let all: Vec<InterfaceStats> = interfaces
        .iter()
        .map(|i| InterfaceStats {
            name: i.name.clone(),
            rx_bytes: i.rx_bytes,
            rx_errors: i.rx_errors,
            tx_bytes: i.tx_bytes,
            tx_errors: i.tx_errors,
        })
        .collect();
    let default = all
        .iter()
        .find(|i| i.name == "eth0")
        .or(all.first())?
        .clone();
    Some(NetworkStats {
        time: time.to_owned(),
        default,
        interfaces: all,
    })
}

/// When the machine booted, from `/proc/stat`'s `btime`.
fn boot_time() -> Option<Timestamp> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let seconds = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<i64>()
        .ok()?;
    Timestamp::from_second(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_needs_a_second_of_history_and_keeps_two_samples() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        assert_eq!(rates.rate("c", t0, 0), None, "no history yet");
        assert_eq!(
            rates.rate("c", t0 + Duration::from_millis(500), 250_000_000),
            None,
            "half a second is too short a window"
        );
        // Half a core for two seconds.
        assert_eq!(
            rates.rate("c", t0 + Duration::from_secs(2), 1_000_000_000),
            Some(500_000_000)
        );
        // A sample 5 s (half a period) after the first was kept; the next rate uses it.
        rates.rate("c", t0 + Duration::from_secs(5), 2_500_000_000);
        assert_eq!(
            rates.rate("c", t0 + Duration::from_secs(7), 4_500_000_000),
            Some(1_000_000_000)
        );
        assert_eq!(rates.samples["c"].len(), 2);
        // A counter that went backwards (a restarted container) gives no rate, not a wrap.
        assert_eq!(rates.rate("c", t0 + Duration::from_secs(20), 10), None);
        rates.forget_stale(t0 + Duration::from_secs(100));
        assert!(rates.samples.is_empty());
    }

    #[test]
    fn the_default_interface_is_eth0_else_the_first() {
        let iface = |name: &str| netdev::Interface {
            name: name.into(),
            ..netdev::Interface::default()
        };
        let stats = network_stats(&[iface("cni0"), iface("eth0")], "t").expect("stats");
        assert_eq!(stats.default.name, "eth0");
        let stats = network_stats(&[iface("ens3")], "t").expect("stats");
        assert_eq!(stats.default.name, "ens3");
        assert_eq!(network_stats(&[], "t"), None);
    }
}
