//! Eviction: which pod the node gives up when it runs short (the kubelet's eviction manager),
//! and the words it uses. Pure: the dispatcher measures, this decides.
//!
//! Semantics (upstream `pkg/kubelet/eviction`): every housekeeping round (10 s) each hard
//! threshold (`--eviction-hard`) is compared with what the node has left; for the first signal
//! under its threshold one pod is evicted, ranked as the kubelet ranks:
//! - memory: pods using more than they request first (so BestEffort, requesting nothing, goes
//!   before any pod within its requests), then lower priority, then larger use over request;
//! - nodefs: the same with ephemeral-storage use (logs and emptyDirs);
//! - pids: lower priority, then more processes.
//!
//! Independently, a pod whose disk emptyDir holds more than its `sizeLimit` is evicted (memory
//! emptyDirs are held to it by their tmpfs size). Evicted pods fail with reason `Evicted` after
//! their containers are killed with a 1 s grace, and stay in the API for their owners to see.

use std::cmp::Reverse;

use crate::config::Signal;

/// The grace period of an eviction for a hard threshold (upstream: 1 s).
pub const GRACE_SECONDS: u64 = 1;

/// What one running pod uses and asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub uid: String,
    pub priority: i32,
    pub memory_bytes: u64,
    pub memory_request: u64,
    pub disk_bytes: u64,
    pub disk_request: u64,
    pub pids: u64,
    /// Per container: (name, memory working set) for the message.
    pub containers: Vec<(String, u64)>,
}

/// A node signal under its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    pub signal: Signal,
    pub threshold_bytes: u64,
    pub available_bytes: u64,
}

/// The pod to evict for `pressure`, if any pod is running.
pub fn pick<'a>(pressure: &Pressure, pods: &'a [PodUsage]) -> Option<&'a PodUsage> {
    let over = |use_: u64, request: u64| use_ > request;
    let excess = |use_: u64, request: u64| use_ as i128 - request as i128;
    match pressure.signal {
        Signal::MemoryAvailable => pods.iter().min_by_key(|p| {
            (
                !over(p.memory_bytes, p.memory_request),
                p.priority,
                Reverse(excess(p.memory_bytes, p.memory_request)),
            )
        }),
        Signal::NodefsAvailable | Signal::NodefsInodesFree => pods.iter().min_by_key(|p| {
            (
                !over(p.disk_bytes, p.disk_request),
                p.priority,
                Reverse(excess(p.disk_bytes, p.disk_request)),
            )
        }),
        Signal::PidAvailable => pods.iter().min_by_key(|p| (p.priority, Reverse(p.pids))),
        // imagefs is nodefs here: images live on the same filesystem.
        Signal::ImagefsAvailable | Signal::ImagefsInodesFree => pick(
            &Pressure {
                signal: Signal::NodefsAvailable,
                ..*pressure
            },
            pods,
        ),
    }
}

/// Bytes in the kubelet's message style (`100Mi`, else `12345Ki`).
fn bytes(value: u64) -> String {
    if value == 0 {
        "0".to_owned()
    } else if value.is_multiple_of(1 << 20) {
        format!("{}Mi", value >> 20)
    } else {
        format!("{}Ki", value.div_ceil(1024))
    }
}

fn resource(signal: Signal) -> &'static str {
    match signal {
        Signal::MemoryAvailable => "memory",
        Signal::NodefsAvailable | Signal::ImagefsAvailable => "ephemeral-storage",
        Signal::NodefsInodesFree | Signal::ImagefsInodesFree => "inodes",
        Signal::PidAvailable => "pids",
    }
}

/// The pod's status message for an eviction under `pressure`.
pub fn node_message(pressure: &Pressure, pod: &PodUsage) -> String {
    let resource = resource(pressure.signal);
    let mut message = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        bytes(pressure.threshold_bytes),
        bytes(pressure.available_bytes)
    );
    if pressure.signal == Signal::MemoryAvailable {
        let request = if pod.containers.is_empty() {
            0
        } else {
            pod.memory_request / pod.containers.len() as u64
        };
        for (name, used) in &pod.containers {
            message.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                bytes(*used),
                bytes(request)
            ));
        }
    }
    message
}

/// The status message for an emptyDir over its `sizeLimit`.
pub fn empty_dir_message(volume: &str, limit: &str) -> String {
    format!("Usage of EmptyDir volume \"{volume}\" exceeds the limit \"{limit}\". ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, priority: i32, memory: u64, request: u64) -> PodUsage {
        PodUsage {
            uid: uid.into(),
            priority,
            memory_bytes: memory,
            memory_request: request,
            disk_bytes: 0,
            disk_request: 0,
            pids: 0,
            containers: vec![("app".into(), memory)],
        }
    }

    fn pressure(signal: Signal) -> Pressure {
        Pressure {
            signal,
            threshold_bytes: 100 << 20,
            available_bytes: 80 << 20,
        }
    }

    #[test]
    fn memory_pressure_takes_pods_over_their_requests_first() {
        let pods = [
            pod("guaranteed-big", 0, 900 << 20, 1 << 30),
            pod("besteffort-small", 0, 5 << 20, 0),
            pod("burstable-over", 0, 300 << 20, 100 << 20),
        ];
        // Both the BestEffort and the over-request pod exceed; the larger excess goes first.
        assert_eq!(
            pick(&pressure(Signal::MemoryAvailable), &pods).map(|p| p.uid.as_str()),
            Some("burstable-over")
        );
        // Priority outranks excess among those over their requests.
        let pods = [pod("low", -10, 5 << 20, 0), pod("high", 1000, 500 << 20, 0)];
        assert_eq!(
            pick(&pressure(Signal::MemoryAvailable), &pods).map(|p| p.uid.as_str()),
            Some("low")
        );
        // Within requests, a big user is safe from a small BestEffort one.
        let pods = [
            pod("within", 0, 900 << 20, 1 << 30),
            pod("be", 0, 1 << 20, 0),
        ];
        assert_eq!(
            pick(&pressure(Signal::MemoryAvailable), &pods).map(|p| p.uid.as_str()),
            Some("be")
        );
        assert!(pick(&pressure(Signal::MemoryAvailable), &[]).is_none());
    }

    #[test]
    fn pid_pressure_takes_the_lowest_priority_then_the_most_processes() {
        let mut a = pod("a", 0, 0, 0);
        a.pids = 10;
        let mut b = pod("b", 0, 0, 0);
        b.pids = 500;
        let mut c = pod("c", 100, 0, 0);
        c.pids = 5000;
        assert_eq!(
            pick(&pressure(Signal::PidAvailable), &[a, b, c]).map(|p| p.uid.clone()),
            Some("b".to_owned())
        );
    }

    #[test]
    fn messages_say_what_ran_short() {
        let p = pod("x", 0, 10 << 20, 0);
        assert_eq!(
            node_message(&pressure(Signal::MemoryAvailable), &p),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. \
             Container app was using 10Mi, request is 0, has larger consumption of memory. "
        );
        assert_eq!(
            empty_dir_message("data", "8Mi"),
            "Usage of EmptyDir volume \"data\" exceeds the limit \"8Mi\". "
        );
    }
}
