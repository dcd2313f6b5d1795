//! Network interface counters from `/proc/<pid>/net/dev`: the figures of the network
//! namespace that process is in, which is how a pod's traffic is measured from the node.

use std::fs;

/// One interface's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interfaces of `pid`'s network namespace, loopback left out (as the kubelet does).
pub fn of_process(pid: &str) -> Vec<Interface> {
    fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// The interfaces in a `net/dev` text, loopback left out.
pub fn parse(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
            Some(Interface {
                name: name.to_owned(),
                rx_bytes: *n.first()?,
                rx_errors: *n.get(2)?,
                tx_bytes: *n.get(8)?,
                tx_errors: *n.get(10)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_come_from_their_columns_and_loopback_is_skipped() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
eth0: 5000      50    3    0    0     0          0         0     7000      70    4    0    0     0       0          0\n";
        assert_eq!(
            parse(text),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 3,
                tx_bytes: 7000,
                tx_errors: 4,
            }]
        );
    }
}
