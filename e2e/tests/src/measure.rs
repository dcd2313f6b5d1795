//! Measuring for the benchmarks: percentiles and a process's CPU time and peak memory.

use std::time::Duration;

use anyhow::{Context, Result};

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is field 3 (the state).
pub fn stat_fields(pid: i32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, after_name) = stat.rsplit_once(')').context("stat")?;
    Ok(after_name.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system) of a process, from /proc.
pub fn cpu_time(pid: i32) -> Result<Duration> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

pub fn peak_rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// Resident memory of a process now, from /proc.
pub fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// One figure of a benchmark, printed as a JSON line for `e2e/bench_report.py`, which puts
/// the runs of both agents side by side.
pub fn record(bench: &str, subject: &str, scenario: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({
            "bench": bench, "subject": subject, "scenario": scenario,
            "metric": metric, "value": value, "unit": unit,
        })
    );
}
