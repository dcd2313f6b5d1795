//! Address: the node's InternalIP when `--node-ip` is not given.
//!
//! As the kubelet does, take the IPv4 address of the interface that carries the default
//! route; without a default route, the first global unicast IPv4 address of any interface.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};

/// An error finding the node's address.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no usable IPv4 address found on any interface (set --node-ip)")]
    NoAddress,
    #[error("listing interface addresses")]
    Interfaces(#[source] nix::Error),
}

/// Discovers the node's IP.
pub fn discover() -> Result<IpAddr, Error> {
    let default_interface = fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|table| default_route_interface(&table));
    let addresses: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map_err(Error::Interfaces)?
        .filter_map(|ifaddr| {
            let ip = ifaddr.address?.as_sockaddr_in()?.ip();
            Some((ifaddr.interface_name, ip))
        })
        .collect();
    choose(default_interface.as_deref(), &addresses)
        .map(IpAddr::V4)
        .ok_or(Error::NoAddress)
}

/// The interface of the IPv4 default route in /proc/net/route, lowest metric first.
pub fn default_route_interface(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, destination, mask, metric) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(7)?,
                fields.get(6)?,
            );
            (*destination == "00000000" && *mask == "00000000").then(|| {
                (
                    metric.parse::<u32>().unwrap_or(u32::MAX),
                    (*iface).to_owned(),
                )
            })
        })
        .min()
        .map(|(_, iface)| iface)
}

fn usable(ip: &Ipv4Addr) -> bool {
    !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() && !ip.is_multicast()
}

/// Picks the default route interface's address, else any usable address.
pub fn choose(
    default_interface: Option<&str>,
    addresses: &[(String, Ipv4Addr)],
) -> Option<Ipv4Addr> {
    let on_default = default_interface.and_then(|iface| {
        addresses
            .iter()
            .find(|(name, ip)| name == iface && usable(ip))
            .map(|(_, ip)| *ip)
    });
    on_default.or_else(|| addresses.iter().map(|(_, ip)| *ip).find(usable))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t0002000C\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        wlan0\t00000000\t0102000C\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
        eth0\t00000000\t0100000C\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";

    #[test]
    fn default_route_with_lowest_metric() {
        assert_eq!(default_route_interface(ROUTES).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn prefers_the_default_interface_then_any_usable_address() {
        let addrs = vec![
            ("lo".to_owned(), Ipv4Addr::LOCALHOST),
            ("cni0".to_owned(), Ipv4Addr::new(10, 244, 0, 1)),
            ("eth0".to_owned(), Ipv4Addr::new(192, 0, 2, 2)),
        ];
        assert_eq!(
            choose(Some("eth0"), &addrs),
            Some(Ipv4Addr::new(192, 0, 2, 2))
        );
        assert_eq!(choose(None, &addrs), Some(Ipv4Addr::new(10, 244, 0, 1)));
        assert_eq!(choose(Some("eth9"), &addrs[..1]), None);
    }
}
