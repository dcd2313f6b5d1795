//! Container logs for `/containerLogs/{namespace}/{pod}/{container}` (what `kubectl logs`
//! reaches through the API server): reading the CRI log files the runtime writes, with the
//! kubelet's options (`tailLines`, `limitBytes`, `sinceSeconds`/`sinceTime`, `timestamps`,
//! `previous`, `follow`).
//!
//! CRI log format, one record per line: `<RFC 3339 nano time> <stdout|stderr> <P|F> <content>`;
//! a `P` (partial) record continues in the next one, an `F` record ends a line.

use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: Timestamp,
    pub stream: &'a str,
    /// Whether the record ends a line.
    pub full: bool,
    pub content: &'a str,
}

pub fn parse(line: &str) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.parse().ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        full: !tag.split(':').any(|t| t == "P"),
        content,
    })
}

/// The request's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since: Option<Timestamp>,
}

impl Options {
    /// From the query string (`?follow=true&tailLines=10...`); bad values are errors, as the
    /// kubelet refuses them.
    pub fn from_query(query: &str, now: Timestamp) -> Result<Options, String> {
        let mut options = Options::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = || value.is_empty() || value == "true" || value == "1";
            let number = |what: &str| {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("invalid {what} {value:?}"))
            };
            match key {
                "follow" => options.follow = flag(),
                "previous" => options.previous = flag(),
                "timestamps" => options.timestamps = flag(),
                "tailLines" => options.tail_lines = Some(number("tailLines")? as usize),
                "limitBytes" => options.limit_bytes = Some(number("limitBytes")?.max(1) as usize),
                "sinceSeconds" => {
                    let seconds = number("sinceSeconds")?;
                    options.since = now
                        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
                        .ok();
                }
                "sinceTime" => {
                    let decoded = value.replace("%3A", ":").replace("%2B", "+");
                    options.since = Some(
                        decoded
                            .parse()
                            .map_err(|_| format!("invalid sinceTime {value:?}"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// Renders the records of `text` as `kubectl logs` shows them: contents, partial records
/// joined to their line, optionally stamped, after `since`, the last `tail` lines.
pub fn render(text: &str, options: &Options) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut open: Option<String> = None;
    for record in text.lines().filter_map(parse) {
        if options.since.is_some_and(|since| record.time < since) {
            continue;
        }
        let line = open.get_or_insert_with(|| {
            if options.timestamps {
                // The kubelet's fixed-width RFC 3339 with nanoseconds.
                format!(
                    "{}.{:09}Z ",
                    record.time.strftime("%Y-%m-%dT%H:%M:%S"),
                    record.time.subsec_nanosecond()
                )
            } else {
                String::new()
            }
        });
        line.push_str(record.content);
        if record.full
            && let Some(mut done) = open.take()
        {
            done.push('\n');
            lines.push(done);
        }
    }
    if let Some(partial) = open {
        lines.push(partial);
    }
    let skip = options
        .tail_lines
        .map_or(0, |tail| lines.len().saturating_sub(tail));
    let mut out: String = lines.into_iter().skip(skip).collect();
    if let Some(limit) = options.limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// The log files of a container, oldest attempt first (`<dir>/<container>/<attempt>.log`).
pub fn attempts(pod_dir: &Path, container: &str) -> Vec<PathBuf> {
    let dir = pod_dir.join(container);
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let attempt = name.strip_suffix(".log")?.parse().ok()?;
            Some((attempt, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-26T10:00:00.000000001Z stdout F one
2026-11-26T10:00:01.000000000Z stderr P tw
2026-11-26T10:00:01.500000000Z stderr F o
2026-11-26T10:00:02.000000000Z stdout F three
";

    fn opts(query: &str) -> Options {
        Options::from_query(query, "2026-11-26T10:00:03Z".parse().expect("time")).expect("valid")
    }

    #[test]
    fn records_join_partials_and_honour_tail_since_and_limit() {
        assert_eq!(render(LOG, &opts("")), "one\ntwo\nthree\n");
        assert_eq!(render(LOG, &opts("tailLines=2")), "two\nthree\n");
        assert_eq!(render(LOG, &opts("tailLines=0")), "");
        assert_eq!(
            render(LOG, &opts("sinceSeconds=2")),
            "two\nthree\n",
            "the partial at 10:00:01 is older"
        );
        assert_eq!(render(LOG, &opts("limitBytes=6")), "one\ntw");
        assert_eq!(
            render(LOG, &opts("timestamps=true&tailLines=1")),
            "2026-11-26T10:00:02.000000000Z three\n"
        );
        assert_eq!(
            render(LOG, &opts("sinceTime=2026-11-26T10%3A00%3A02Z")),
            "three\n"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let now = Timestamp::now();
        assert!(Options::from_query("tailLines=-1", now).is_err());
        assert!(Options::from_query("limitBytes=x", now).is_err());
        assert!(Options::from_query("sinceTime=yesterday", now).is_err());
        assert!(
            Options::from_query("follow=true&previous", now).is_ok_and(|o| o.follow && o.previous)
        );
    }

    #[test]
    fn attempts_sort_numerically() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("app")).expect("dir");
        for n in [10, 2, 1] {
            std::fs::write(tmp.path().join(format!("app/{n}.log")), "").expect("file");
        }
        let names: Vec<String> = attempts(tmp.path(), "app")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["1.log", "2.log", "10.log"]);
    }
}
