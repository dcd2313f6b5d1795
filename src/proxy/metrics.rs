//! Metrics: the proxy role's Prometheus figures, served on kube-proxy's metrics address
//! (`--metrics-bind-address`, 127.0.0.1:10249) at `/metrics`, with `/proxyMode` beside it.
//!
//! Invariants: the sync loop is the only writer (through a `watch` channel, as for health), the
//! server only renders a snapshot, and rendering is pure. Names are upstream kube-proxy's where
//! the figure exists there (`pkg/proxy/metrics/metrics.go`: same names, help texts and bucket
//! layout, without the `ip_family` label since one `inet` table serves both families); figures
//! only nodus has are called `nodus_proxy_*`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::health::{self, Reply};
use super::sync::Report;
use crate::metrics::Histogram;

/// The mode `/proxyMode` reports, as kube-proxy does.
pub const PROXY_MODE: &str = "nftables";

/// Everything `/metrics` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyMetrics {
    pub sync: Histogram,
    pub full_sync: Histogram,
    pub partial_sync: Histogram,
    pub last_sync: Option<SystemTime>,
    pub last_queued: Option<SystemTime>,
    pub sync_failures: u64,
    /// From the last successful sync.
    pub rules: usize,
    pub services: usize,
    pub skipped_services: usize,
    pub transaction_operations: usize,
}

/// Upstream's `ExponentialBuckets(0.001, 2, 15)`: 1 ms to 16.4 s.
fn sync_latency() -> Histogram {
    Histogram::exponential(0.001, 2.0, 15)
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            sync: sync_latency(),
            full_sync: sync_latency(),
            partial_sync: sync_latency(),
            last_sync: None,
            last_queued: None,
            sync_failures: 0,
            rules: 0,
            services: 0,
            skipped_services: 0,
            transaction_operations: 0,
        }
    }
}

impl ProxyMetrics {
    /// A sync succeeded after `took`, ending at `wall`.
    pub fn synced(&mut self, report: &Report, took: Duration, wall: SystemTime) {
        self.sync.observe(took);
        // Upstream counts a sync as partial or full by what it wrote; one that wrote nothing
        // counts as partial there too.
        if report.full {
            self.full_sync.observe(took);
        } else {
            self.partial_sync.observe(took);
        }
        self.last_sync = Some(wall);
        self.rules = report.rules;
        self.services = report.services;
        self.skipped_services = report.skipped.len();
        if report.applied {
            self.transaction_operations = report.operations;
        }
    }

    pub fn failed(&mut self) {
        self.sync_failures += 1;
    }

    pub fn queued(&mut self, wall: SystemTime) {
        self.last_queued = Some(wall);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let w = "writing to a String";
        self.sync.render(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        self.full_sync.render(
            &mut out,
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        );
        self.partial_sync.render(
            &mut out,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        );
        let seconds = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            writeln!(out, "# HELP {name} {help}").expect(w);
            writeln!(out, "# TYPE {name} {kind}").expect(w);
            writeln!(out, "{name} {value}").expect(w);
        };
        gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            "gauge",
            seconds(self.last_sync).to_string(),
        );
        gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            "gauge",
            seconds(self.last_queued).to_string(),
        );
        gauge(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "Cumulative proxy nftables sync failures",
            "counter",
            self.sync_failures.to_string(),
        );
        gauge(
            "nodus_proxy_rules",
            "Rules in nodus's nftables table after the last successful sync",
            "gauge",
            self.rules.to_string(),
        );
        gauge(
            "nodus_proxy_services",
            "Services programmed by the last successful sync",
            "gauge",
            self.services.to_string(),
        );
        gauge(
            "nodus_proxy_skipped_services",
            "Services left out of the last successful sync because they are invalid or conflict",
            "gauge",
            self.skipped_services.to_string(),
        );
        gauge(
            "nodus_proxy_last_transaction_operations",
            "nftables operations in the last transaction sent to the kernel",
            "gauge",
            self.transaction_operations.to_string(),
        );
        out
    }
}

/// The answer to `path` on the metrics server.
pub fn reply(path: &str, metrics: &ProxyMetrics) -> Reply {
    match path {
        "/metrics" => Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
        },
        "/proxyMode" => Reply {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: PROXY_MODE.to_owned(),
        },
        _ => Reply::not_found(),
    }
}

/// Serves `/metrics` and `/proxyMode` on `addr` until cancelled; a bind failure is retried
/// with backoff, as for the health server.
pub async fn serve(
    addr: SocketAddr,
    metrics: watch::Receiver<ProxyMetrics>,
    cancel: CancellationToken,
) {
    let Some(listener) = crate::listen::bind(addr, "proxy metrics server", &cancel).await else {
        return;
    };
    health::serve(
        listener,
        move |path: &str| reply(path, &metrics.borrow()),
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::health::ServiceChecks;

    fn report(full: bool) -> Report {
        Report {
            applied: true,
            full,
            via: "netlink",
            services: 3,
            rules: 42,
            operations: 7,
            apply_time: Duration::from_millis(2),
            skipped: vec![],
            checks: ServiceChecks::new(),
            cleanups: 0,
            cleanup_failures: 0,
        }
    }

    fn value<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn syncs_show_up_as_upstream_names_with_cumulative_buckets() {
        let mut m = ProxyMetrics::default();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        m.synced(&report(true), Duration::from_millis(300), wall);
        m.synced(&report(false), Duration::from_micros(1500), wall);
        m.failed();
        let text = m.render();
        let sync = "kubeproxy_sync_proxy_rules_duration_seconds";
        assert_eq!(value(&text, &format!("{sync}_count")), "2");
        // 1.5 ms is above the 1 ms bucket, so only the +Inf and larger buckets hold both.
        assert_eq!(value(&text, &format!("{sync}_bucket{{le=\"0.001\"}}")), "0");
        assert_eq!(value(&text, &format!("{sync}_bucket{{le=\"0.002\"}}")), "1");
        assert_eq!(value(&text, &format!("{sync}_bucket{{le=\"0.512\"}}")), "2");
        assert_eq!(value(&text, &format!("{sync}_bucket{{le=\"+Inf\"}}")), "2");
        assert_eq!(
            value(
                &text,
                "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
            ),
            "1"
        );
        assert_eq!(
            value(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            "1700000000"
        );
        assert_eq!(
            value(
                &text,
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total"
            ),
            "1"
        );
        assert_eq!(value(&text, "nodus_proxy_rules"), "42");
        assert_eq!(value(&text, "nodus_proxy_last_transaction_operations"), "7");
    }

    #[test]
    fn the_server_answers_metrics_and_proxy_mode_only() {
        let m = ProxyMetrics::default();
        let metrics = reply("/metrics", &m);
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(
            metrics
                .content_type
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(metrics.body.contains("# TYPE nodus_proxy_rules gauge"));
        assert_eq!(reply("/proxyMode", &m).body, "nftables");
        assert_eq!(reply("/other", &m).status, StatusCode::NOT_FOUND);
    }
}
