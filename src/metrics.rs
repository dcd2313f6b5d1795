//! Metrics: Prometheus text exposition (format 0.0.4) for the agent's two metrics endpoints,
//! the proxy role's (`--metrics-bind-address`) and the kubelet API's `/metrics`, plus the
//! kubelet role's figures that the pod workers, the eviction manager and the CRI client
//! record while they work.
//!
//! Invariants: writers only add to counters and histograms under a short lock, never across
//! an await; rendering reads a snapshot. Names, help texts and buckets are upstream's
//! (`pkg/kubelet/metrics/metrics.go`) where the figure exists there; figures only nodus has
//! are called `nodus_*`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const W: &str = "writing to a String";

/// A Prometheus histogram with fixed upper bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations at or below each bound (not cumulative; summed when rendered).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// `count` bounds from `start`, each `factor` times the previous (client_golang's
    /// `ExponentialBuckets`).
    pub fn exponential(start: f64, factor: f64, count: usize) -> Self {
        let mut bounds = Vec::with_capacity(count);
        let mut bound = start;
        for _ in 0..count {
            bounds.push(bound);
            bound *= factor;
        }
        Self::with_bounds(bounds)
    }

    pub fn with_bounds(bounds: Vec<f64>) -> Self {
        Histogram {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: Duration) {
        let v = value.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The series of one histogram, `labels` being `key="value",...` or empty.
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            )
            .expect(W);
        }
        writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        )
        .expect(W);
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        writeln!(out, "{name}_sum{} {}", braces(labels), self.sum).expect(W);
        writeln!(out, "{name}_count{} {}", braces(labels), self.count).expect(W);
    }

    /// The whole family of one unlabelled histogram.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        self.render_series(out, name, "");
    }
}

/// `# HELP` and `# TYPE` of a family.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    writeln!(out, "# HELP {name} {help}").expect(W);
    writeln!(out, "# TYPE {name} {kind}").expect(W);
}

/// A family with one unlabelled sample.
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    header(out, name, help, kind);
    writeln!(out, "{name} {value}").expect(W);
}

/// A label value escaped as the text format requires.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One CRI operation's tally.
#[derive(Debug, Clone, PartialEq)]
struct Operation {
    count: u64,
    errors: u64,
    duration: Histogram,
}

#[derive(Debug, Clone, PartialEq)]
struct Figures {
    operations: BTreeMap<String, Operation>,
    pod_start: Histogram,
    started_pods: u64,
    started_containers: BTreeMap<&'static str, u64>,
    evictions: BTreeMap<&'static str, u64>,
}

/// What the kubelet role records as it works; shown on the kubelet API's `/metrics`.
#[derive(Debug)]
pub struct Kubelet {
    figures: Mutex<Figures>,
}

impl Default for Kubelet {
    fn default() -> Self {
        Kubelet {
            figures: Mutex::new(Figures {
                operations: BTreeMap::new(),
                // Upstream's `PodStartDuration` buckets.
                pod_start: Histogram::with_bounds(vec![
                    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0,
                    180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0,
                    3600.0,
                ]),
                started_pods: 0,
                started_containers: BTreeMap::new(),
                evictions: BTreeMap::new(),
            }),
        }
    }
}

/// What the runtime says at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeCounts {
    /// Pods with a ready sandbox.
    pub running_pods: usize,
    /// Containers by upstream's `container_state` label (`running`, `exited`, `created`, `unknown`).
    pub containers: BTreeMap<&'static str, usize>,
}

impl Kubelet {
    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        // A panic while holding the lock leaves only counters behind: keep using them.
        self.figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A pod was seen running for the first time, `took` after this agent first saw it.
    pub fn pod_started(&self, took: Duration) {
        let mut figures = self.figures();
        figures.pod_start.observe(took);
    }

    /// A pod's sandbox was started.
    pub fn sandbox_started(&self) {
        self.figures().started_pods += 1;
    }

    /// A container was started: `kind` is `container`, `init_container` or `ephemeral_container`.
    pub fn container_started(&self, kind: &'static str) {
        *self.figures().started_containers.entry(kind).or_default() += 1;
    }

    /// A pod was evicted because of `signal` (an eviction signal's name).
    pub fn evicted(&self, signal: &'static str) {
        *self.figures().evictions.entry(signal).or_default() += 1;
    }

    /// The Prometheus text of everything recorded plus `runtime`'s current counts.
    pub fn render(&self, node_name: &str, runtime: &RuntimeCounts) -> String {
        let figures = self.figures().clone();
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "kubelet_node_name",
            "The node's name. The count is always 1.",
            "gauge",
        );
        writeln!(out, "kubelet_node_name{{node=\"{}\"}} 1", escape(node_name)).expect(W);
        single(
            &mut out,
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
            "gauge",
            runtime.running_pods,
        );
        header(
            &mut out,
            "kubelet_running_containers",
            "Number of containers currently running",
            "gauge",
        );
        for (state, count) in &runtime.containers {
            writeln!(
                out,
                "kubelet_running_containers{{container_state=\"{state}\"}} {count}"
            )
            .expect(W);
        }
        figures.pod_start.render(
            &mut out,
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
        );
        single(
            &mut out,
            "kubelet_started_pods_total",
            "Cumulative number of pods started",
            "counter",
            figures.started_pods,
        );
        header(
            &mut out,
            "kubelet_started_containers_total",
            "Cumulative number of containers started",
            "counter",
        );
        for (kind, count) in &figures.started_containers {
            writeln!(
                out,
                "kubelet_started_containers_total{{container_type=\"{kind}\"}} {count}"
            )
            .expect(W);
        }
        header(
            &mut out,
            "kubelet_evictions",
            "Cumulative number of pod evictions by eviction signal",
            "counter",
        );
        for (signal, count) in &figures.evictions {
            writeln!(
                out,
                "kubelet_evictions{{eviction_signal=\"{signal}\"}} {count}"
            )
            .expect(W);
        }
        header(
            &mut out,
            "kubelet_runtime_operations_total",
            "Cumulative number of runtime operations by operation type.",
            "counter",
        );
        for (operation, tally) in &figures.operations {
            writeln!(
                out,
                "kubelet_runtime_operations_total{{operation_type=\"{operation}\"}} {}",
                tally.count
            )
            .expect(W);
        }
        header(
            &mut out,
            "kubelet_runtime_operations_errors_total",
            "Cumulative number of runtime operation errors by operation type.",
            "counter",
        );
        for (operation, tally) in &figures.operations {
            writeln!(
                out,
                "kubelet_runtime_operations_errors_total{{operation_type=\"{operation}\"}} {}",
                tally.errors
            )
            .expect(W);
        }
        header(
            &mut out,
            "kubelet_runtime_operations_duration_seconds",
            "Duration in seconds of runtime operations. Broken down by operation type.",
            "histogram",
        );
        for (operation, tally) in &figures.operations {
            tally.duration.render_series(
                &mut out,
                "kubelet_runtime_operations_duration_seconds",
                &format!("operation_type=\"{operation}\""),
            );
        }
        out
    }
}

impl nodus_cri::Observer for Kubelet {
    fn observe(&self, operation: &str, took: Duration, failed: bool) {
        let mut figures = self.figures();
        let tally = figures
            .operations
            .entry(operation.to_owned())
            .or_insert_with(|| Operation {
                count: 0,
                errors: 0,
                // Upstream's `ExponentialBuckets(.005, 2.5, 14)`.
                duration: Histogram::exponential(0.005, 2.5, 14),
            });
        tally.count += 1;
        tally.errors += u64::from(failed);
        tally.duration.observe(took);
    }
}

#[cfg(test)]
mod tests {
    use nodus_cri::Observer;

    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn runtime_operations_are_counted_by_type_with_errors_and_buckets() {
        let kubelet = Kubelet::default();
        kubelet.observe("run_podsandbox", Duration::from_millis(300), false);
        kubelet.observe("run_podsandbox", Duration::from_millis(3), true);
        kubelet.observe("list_containers", Duration::from_millis(1), false);
        kubelet.evicted("memory.available");
        kubelet.pod_started(Duration::from_millis(1500));
        let counts = RuntimeCounts {
            running_pods: 2,
            containers: [("running", 3), ("exited", 1)].into(),
        };
        let text = kubelet.render("node-a", &counts);
        let op = |name: &str| format!("{{operation_type=\"{name}\"}}");
        assert_eq!(
            sample(
                &text,
                &format!("kubelet_runtime_operations_total{}", op("run_podsandbox"))
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                &format!(
                    "kubelet_runtime_operations_errors_total{}",
                    op("run_podsandbox")
                )
            ),
            Some("1")
        );
        // 3 ms falls in the first bucket (5 ms); 300 ms only in the sixth (0.488 s) and on.
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("kubelet_runtime_operations_duration_seconds_bucket{operation_type=\"run_podsandbox\"")
            })
            .filter_map(|l| l.rsplit(' ').next())
            .collect();
        assert_eq!(buckets.len(), 15, "14 bounds and +Inf");
        assert_eq!(buckets[..7], ["1", "1", "1", "1", "1", "2", "2"]);
        assert_eq!(buckets[14], "2");
        assert_eq!(sample(&text, "kubelet_running_pods"), Some("2"));
        assert_eq!(
            sample(
                &text,
                "kubelet_running_containers{container_state=\"running\"}"
            ),
            Some("3")
        );
        assert_eq!(
            sample(
                &text,
                "kubelet_evictions{eviction_signal=\"memory.available\"}"
            ),
            Some("1")
        );
        assert_eq!(
            sample(&text, "kubelet_pod_start_duration_seconds_bucket{le=\"1\"}"),
            Some("0")
        );
        assert_eq!(
            sample(&text, "kubelet_pod_start_duration_seconds_bucket{le=\"2\"}"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "kubelet_node_name{node=\"node-a\"}"),
            Some("1")
        );
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let kubelet = Kubelet::default();
        kubelet.observe("exec_sync", Duration::from_millis(10), false);
        let text = kubelet.render("n", &RuntimeCounts::default());
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("a family name");
                assert!(declared.insert(name.to_owned()), "{name} declared twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("a series name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} before its TYPE line");
            }
        }
    }
}
