//! Host files: what the agent keeps on the host for a pod's containers — the managed
//! /etc/hosts and the files behind `terminationMessagePath` — and reading a container's
//! termination message back, from that file or from the end of its log.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use k8s_openapi::api::core::v1::PodSpec;

/// The kubelet reads at most this much of a termination message file.
const MESSAGE_LIMIT: u64 = 4096;
/// FallbackToLogsOnError takes at most this many lines and bytes from the log's end.
const LOG_LINES: usize = 80;
const LOG_BYTES: usize = 2048;

/// Writes a file (creating its directory), replacing it atomically.
pub fn write(path: &Path, contents: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(contents.as_bytes())?;
    fs::rename(tmp, path)
}

/// The pod's /etc/hosts, as the kubelet writes it: with a subdomain (and a cluster domain),
/// the pod's own line names it `hostname.subdomain.namespace.svc.domain` first.
pub fn etc_hosts(
    hostname: &str,
    pod_ip: &str,
    spec: &PodSpec,
    namespace: &str,
    cluster_domain: &str,
) -> String {
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !pod_ip.is_empty() {
        let overridden = spec
            .hostname_override
            .as_ref()
            .is_some_and(|n| !n.is_empty());
        let fqdn = spec
            .subdomain
            .as_ref()
            .filter(|sub| !overridden && !sub.is_empty() && !cluster_domain.is_empty())
            .map(|sub| format!("{hostname}.{sub}.{namespace}.svc.{cluster_domain}\t"))
            .unwrap_or_default();
        hosts.push_str(&format!("{pod_ip}\t{fqdn}{hostname}\n"));
    }
    push_host_aliases(&mut hosts, spec);
    hosts
}

/// `/etc/hosts` for a pod on the node's network: the node's own file, then the pod's
/// hostAliases, as the kubelet writes it.
pub fn node_etc_hosts(node_hosts: &str, spec: &PodSpec) -> String {
    let mut hosts = node_hosts.to_owned();
    if !hosts.is_empty() && !hosts.ends_with('\n') {
        hosts.push('\n');
    }
    push_host_aliases(&mut hosts, spec);
    hosts
}

fn push_host_aliases(hosts: &mut String, spec: &PodSpec) {
    let aliases = spec.host_aliases.iter().flatten().collect::<Vec<_>>();
    if !aliases.is_empty() {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.clone().unwrap_or_default().join("\t");
            hosts.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
}

/// The termination message a container left, at most 4 KiB.
pub fn read_termination_message(path: &Path) -> String {
    let Ok(file) = fs::File::open(path) else {
        return String::new();
    };
    let mut message = Vec::new();
    let _ = file.take(MESSAGE_LIMIT).read_to_end(&mut message);
    String::from_utf8_lossy(&message).into_owned()
}

/// The last lines a container logged (CRI log format: `time stream tag content`).
pub fn tail_log(path: &Path) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    // Reading the end is enough: only the last lines matter.
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut raw = String::new();
    let _ = file.read_to_string(&mut raw);
    log_tail(&raw)
}

/// The content of the last lines of a CRI-format log, joined; partial lines (`P`) are
/// joined with their continuation.
pub fn log_tail(raw: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for line in raw.lines() {
        let mut fields = line.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag), content) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        partial.push_str(content.unwrap_or_default());
        if tag != "P" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    // Output that did not end in a newline stays partial for good (`echo -n`).
    if !partial.is_empty() {
        lines.push(partial);
    }
    let start = lines.len().saturating_sub(LOG_LINES);
    let mut text = lines[start..].join("\n");
    if text.len() > LOG_BYTES {
        let mut cut = text.len() - LOG_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = text[cut..].to_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::HostAlias;

    use super::*;

    #[test]
    fn etc_hosts_has_the_pod_and_aliases() {
        let spec = PodSpec {
            host_aliases: Some(vec![HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: Some(vec!["foo.local".into(), "bar.local".into()]),
            }]),
            ..PodSpec::default()
        };
        let hosts = etc_hosts("web", "10.244.0.9", &spec, "ns", "cluster.local");
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        // An overridden hostname stands alone, without the subdomain's name.
        let overridden = PodSpec {
            subdomain: Some("sub".into()),
            hostname_override: Some("override.example.host".into()),
            ..PodSpec::default()
        };
        assert!(
            etc_hosts(
                "override.example.host",
                "10.244.0.9",
                &overridden,
                "ns",
                "cluster.local"
            )
            .contains("\n10.244.0.9\toverride.example.host\n")
        );
        // A subdomain: the full name the cluster DNS gives the pod, then the short one; without
        // a cluster domain there is no full name.
        let named = PodSpec {
            subdomain: Some("sub".into()),
            ..PodSpec::default()
        };
        assert!(
            etc_hosts("db-0", "10.244.0.9", &named, "ns", "cluster.local")
                .contains("\n10.244.0.9\tdb-0.sub.ns.svc.cluster.local\tdb-0\n")
        );
        assert!(etc_hosts("db-0", "10.244.0.9", &named, "ns", "").contains("\n10.244.0.9\tdb-0\n"));
        assert!(hosts.contains("10.244.0.9\tweb\n"));
        assert!(hosts.contains("10.1.2.3\tfoo.local\tbar.local\n"));

        // On the node's network: the node's file, then the aliases.
        let node = node_etc_hosts("127.0.0.1 localhost\n192.0.2.2 vm", &spec);
        assert_eq!(
            node,
            "127.0.0.1 localhost\n192.0.2.2 vm\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"
        );
    }

    #[test]
    fn log_tail_joins_partial_lines_and_keeps_the_end() {
        let raw = "2026-01-01T00:00:00Z stdout P hello \n2026-01-01T00:00:00Z stdout F world\n2026-01-01T00:00:01Z stderr F boom\n";
        assert_eq!(log_tail(raw), "hello world\nboom");
        // What `echo -n DONE` leaves: a partial line with no end.
        assert_eq!(log_tail("2026-01-01T00:00:00Z stdout P DONE\n"), "DONE");
        let many: String = (0..100).map(|i| format!("t stdout F line{i}\n")).collect();
        let tail = log_tail(&many);
        assert!(
            tail.starts_with("line20\n") && tail.ends_with("line99"),
            "{tail}"
        );
    }

    #[test]
    fn termination_message_is_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("msg");
        write(&path, &"x".repeat(10_000)).expect("write");
        assert_eq!(read_termination_message(&path).len(), 4096);
        assert_eq!(read_termination_message(&dir.path().join("absent")), "");
    }
}
