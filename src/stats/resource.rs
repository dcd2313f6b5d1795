//! `/metrics/resource`: the Summary's CPU and memory figures in the Prometheus text format,
//! with upstream's stable names (`pkg/kubelet/metrics/collectors/resource_metrics.go`);
//! metrics-server reads this endpoint.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use super::summary::Summary;
use crate::metrics::{escape, header};

const W: &str = "writing to a String";

/// The text for `summary`, every sample stamped with `at` (as upstream stamps them with
/// the time of the reading).
pub fn render(summary: &Summary, at: Timestamp) -> String {
    let ms = at.as_millisecond();
    let mut out = String::with_capacity(4096);
    let pods = &summary.pods;
    let container_labels = |namespace: &str, pod: &str, container: &str| {
        format!(
            "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
            escape(container),
            escape(namespace),
            escape(pod)
        )
    };
    let each_container =
        |out: &mut String, value: &dyn Fn(&super::summary::ContainerStats) -> Option<String>| {
            for pod in pods {
                for c in &pod.containers {
                    if let Some(v) = value(c) {
                        let labels =
                            container_labels(&pod.pod_ref.namespace, &pod.pod_ref.name, &c.name);
                        writeln!(out, "{{{labels}}} {v} {ms}").expect(W);
                    }
                }
            }
        };
    // Each sample line is written as name + the labelled rest.
    let family =
        |out: &mut String, name: &str, help: &str, kind: &str, body: &dyn Fn(&mut String)| {
            header(out, name, help, kind);
            let mut lines = String::new();
            body(&mut lines);
            for line in lines.lines() {
                writeln!(out, "{name}{line}").expect(W);
            }
        };
    let seconds = |nanos: u64| nanos as f64 / 1e9;
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
        &|out| {
            each_container(out, &|c| {
                c.cpu
                    .as_ref()
                    .map(|cpu| seconds(cpu.usage_core_nano_seconds).to_string())
            })
        },
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
        &|out| {
            each_container(out, &|c| {
                c.memory.as_ref().map(|m| m.working_set_bytes.to_string())
            })
        },
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
        &|out| {
            each_container(out, &|c| {
                c.start_time
                    .parse::<Timestamp>()
                    .ok()
                    .map(|t| (t.as_millisecond() as f64 / 1e3).to_string())
            })
        },
    );
    let node = &summary.node;
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
        &|out| {
            if let Some(cpu) = &node.cpu {
                writeln!(out, " {} {ms}", seconds(cpu.usage_core_nano_seconds)).expect(W);
            }
        },
    );
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        "gauge",
        &|out| {
            if let Some(memory) = &node.memory {
                writeln!(out, " {} {ms}", memory.working_set_bytes).expect(W);
            }
        },
    );
    let pod_labels = |namespace: &str, pod: &str| {
        format!(
            "namespace=\"{}\",pod=\"{}\"",
            escape(namespace),
            escape(pod)
        )
    };
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
        &|out| {
            for pod in pods {
                if let Some(cpu) = &pod.cpu {
                    let labels = pod_labels(&pod.pod_ref.namespace, &pod.pod_ref.name);
                    writeln!(
                        out,
                        "{{{labels}}} {} {ms}",
                        seconds(cpu.usage_core_nano_seconds)
                    )
                    .expect(W);
                }
            }
        },
    );
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        "gauge",
        &|out| {
            for pod in pods {
                if let Some(memory) = &pod.memory {
                    let labels = pod_labels(&pod.pod_ref.namespace, &pod.pod_ref.name);
                    writeln!(out, "{{{labels}}} {} {ms}", memory.working_set_bytes).expect(W);
                }
            }
        },
    );
    family(
        &mut out,
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        &|out| {
            let missing = node.cpu.is_none() || node.memory.is_none();
            writeln!(out, " {}", u8::from(missing)).expect(W);
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::summary::*;
    use super::*;

    #[test]
    fn containers_pods_and_the_node_get_upstreams_series() {
        let summary = Summary {
            node: NodeStats {
                cpu: Some(CpuStats {
                    usage_core_nano_seconds: 2_500_000_000,
                    ..CpuStats::default()
                }),
                memory: Some(MemoryStats {
                    working_set_bytes: 1024,
                    ..MemoryStats::default()
                }),
                ..NodeStats::default()
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "shop".into(),
                    uid: "u".into(),
                },
                containers: vec![ContainerStats {
                    name: "app".into(),
                    start_time: "2026-11-26T10:00:00Z".into(),
                    cpu: Some(CpuStats {
                        usage_core_nano_seconds: 500_000_000,
                        ..CpuStats::default()
                    }),
                    memory: Some(MemoryStats {
                        working_set_bytes: 77,
                        ..MemoryStats::default()
                    }),
                    ..ContainerStats::default()
                }],
                memory: Some(MemoryStats {
                    working_set_bytes: 99,
                    ..MemoryStats::default()
                }),
                ..PodStats::default()
            }],
        };
        let at: Timestamp = "2026-11-26T12:00:00Z".parse().expect("a time");
        let text = render(&summary, at);
        let ms = at.as_millisecond();
        let labels = "{container=\"app\",namespace=\"shop\",pod=\"web\"}";
        for line in [
            format!("container_cpu_usage_seconds_total{labels} 0.5 {ms}"),
            format!("container_memory_working_set_bytes{labels} 77 {ms}"),
            format!("container_start_time_seconds{labels} 1795687200 {ms}"),
            format!("node_cpu_usage_seconds_total 2.5 {ms}"),
            format!("node_memory_working_set_bytes 1024 {ms}"),
            format!("pod_memory_working_set_bytes{{namespace=\"shop\",pod=\"web\"}} 99 {ms}"),
            "resource_scrape_error 0".to_owned(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("pod_cpu_usage_seconds_total{"),
            "no pod CPU was read"
        );
    }
}
