//! Conntrack cleanup: deletes stale UDP conntrack entries so that a UDP flow follows its service
//! to a new endpoint instead of being DNAT'd to a gone one until the entry times out.
//!
//! Invariants: only UDP entries are deleted (TCP and SCTP notice a dead peer by themselves), and
//! only entries matching the given service address or endpoint; deleting nothing is success.
//!
//! As the stock kube-proxy does: when a UDP endpoint goes away, delete the entries NAT'd to it
//! ([`Conntrack::delete_udp_nat`], [`Conntrack::delete_udp_node_port_nat`]); when a UDP service gains
//! its first endpoint, delete the entries to the service address that were created while it had none
//! ([`Conntrack::delete_udp_to`], [`Conntrack::delete_udp_node_port`]).
//!
//! This first version shells out to the `conntrack` tool (conntrack-tools), which returns 1 with
//! "0 flow entries have been deleted" when nothing matched; netlink (NFNL_SUBSYS_CTNETLINK) would
//! save a process per call and is the planned replacement.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

/// The `conntrack` command, optionally behind a prefix such as `ip netns exec NAME`.
#[derive(Debug, Clone)]
pub struct Conntrack {
    program: PathBuf,
    leading_args: Vec<OsString>,
}

/// An error deleting conntrack entries, naming the filter it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting {program} to delete UDP entries {filter}")]
    Spawn {
        program: PathBuf,
        filter: String,
        #[source]
        source: std::io::Error,
    },
    #[error("conntrack failed to delete UDP entries {filter} ({status}): {stderr}")]
    Failed {
        filter: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack::new()
    }
}

impl Conntrack {
    /// `conntrack` from `PATH`, in the caller's network namespace.
    pub fn new() -> Self {
        Conntrack {
            program: PathBuf::from("conntrack"),
            leading_args: Vec::new(),
        }
    }

    /// Runs `program leading_args... -D ...` instead, e.g. `ip netns exec NAME conntrack`.
    pub fn with_command(
        program: impl Into<PathBuf>,
        leading_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Conntrack {
            program: program.into(),
            leading_args: leading_args.into_iter().map(Into::into).collect(),
        }
    }

    /// Entries whose original destination is `ip:port` (a service address that just gained
    /// endpoints). Returns how many were deleted.
    pub fn delete_udp_to(&self, ip: IpAddr, port: u16) -> Result<u64, Error> {
        self.delete(
            ip,
            &[
                "--orig-dst".into(),
                ip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
            ],
        )
    }

    /// Entries for service address `service` that were DNAT'd to `endpoint` (which went away).
    pub fn delete_udp_nat(&self, service: IpAddr, endpoint: IpAddr) -> Result<u64, Error> {
        self.delete(
            service,
            &[
                "--orig-dst".into(),
                service.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ],
        )
    }

    /// Entries to node port `port` on any address of `family_of`'s family (a NodePort that just
    /// gained endpoints).
    pub fn delete_udp_node_port(&self, family_of: IpAddr, port: u16) -> Result<u64, Error> {
        self.delete(family_of, &["--orig-port-dst".into(), port.to_string()])
    }

    /// Entries to node port `port` that were DNAT'd to `endpoint` (which went away).
    pub fn delete_udp_node_port_nat(&self, port: u16, endpoint: IpAddr) -> Result<u64, Error> {
        self.delete(
            endpoint,
            &[
                "--orig-port-dst".into(),
                port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ],
        )
    }

    fn delete(&self, family_of: IpAddr, filter: &[String]) -> Result<u64, Error> {
        let family = if family_of.is_ipv4() { "ipv4" } else { "ipv6" };
        let filter_text = filter.join(" ");
        let output = Command::new(&self.program)
            .args(&self.leading_args)
            .args(["-D", "-f", family, "-p", "udp"])
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| Error::Spawn {
                program: self.program.clone(),
                filter: filter_text.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The count line is the success signal; the exit status is 1 when it is 0.
        match deleted_count(&stderr) {
            Some(n) => Ok(n),
            None => Err(Error::Failed {
                filter: filter_text,
                status: output.status,
                stderr: stderr.trim().to_owned(),
            }),
        }
    }
}

/// Parses "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."
fn deleted_count(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let before = line.strip_suffix("flow entries have been deleted.")?;
        before.split_whitespace().last()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_parsed_and_errors_are_not() {
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"
            ),
            Some(0)
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): 12 flow entries have been deleted."),
            Some(12)
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): Operation not permitted"),
            None
        );
    }
}
