//! Pod network routes between nodes (host-gateway mode): a route to each other node's pod
//! CIDR through that node's address, kept in the main routing table over rtnetlink.
//!
//! Every route nodus adds carries its own protocol number ([`PROTOCOL`], `proto 110` in
//! `ip route`), so a sync touches only routes it made: it lists them, removes those no
//! longer wanted and adds or replaces the rest. One route that cannot be added (its
//! gateway not on a directly connected network) fails alone; the others are still made.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use ipnet::IpNet;
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// The routing protocol number on nodus's routes (unassigned in iproute2's rt_protos).
pub const PROTOCOL: u8 = 110;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A route to `destination` through `gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: IpAddr,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.destination, self.gateway)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a NETLINK_ROUTE socket")]
    Open(#[source] Errno),
    #[error("talking to the kernel over netlink")]
    Io(#[source] Errno),
    #[error("the kernel refused to {action} route {route}")]
    Refused {
        action: &'static str,
        route: Route,
        #[source]
        source: Errno,
    },
    #[error("route {0}: destination and gateway are of different address families")]
    Mixed(Route),
}

/// What a sync did, and the routes it could not make.
#[derive(Debug, Default)]
pub struct Synced {
    pub added: Vec<Route>,
    pub removed: Vec<Route>,
    pub failed: Vec<Error>,
}

/// A NETLINK_ROUTE socket in the namespace of the thread that opened it.
#[derive(Debug)]
pub struct Routes {
    fd: OwnedFd,
    seq: Mutex<u32>,
}

impl Routes {
    pub fn open() -> Result<Routes, Error> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(Error::Open)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(Error::Open)?;
        Ok(Routes {
            fd,
            seq: Mutex::new(1),
        })
    }

    fn next_seq(&self) -> u32 {
        let mut seq = self
            .seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seq = seq.wrapping_add(1);
        *seq
    }

    /// nodus's routes in the main table.
    pub fn list(&self) -> Result<Vec<Route>, Error> {
        let mut routes = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let seq = self.next_seq();
            let message = encode(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, family, None);
            socket::send(self.fd.as_raw_fd(), &message, MsgFlags::empty()).map_err(Error::Io)?;
            let mut buf = vec![0u8; 64 * 1024];
            'dump: loop {
                let n = recv(&self.fd, &mut buf)?;
                for (ty, body) in messages(&buf[..n]) {
                    match ty {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => {
                            let code = error_code(body);
                            if code != 0 {
                                return Err(Error::Io(Errno::from_raw(-code)));
                            }
                            break 'dump;
                        }
                        RTM_NEWROUTE => routes.extend(decode(body)),
                        _ => {}
                    }
                }
            }
        }
        routes.sort();
        Ok(routes)
    }

    fn change(&self, ty: u16, flags: u16, route: Route) -> Result<(), Error> {
        let family = match (route.destination, route.gateway) {
            (IpNet::V4(_), IpAddr::V4(_)) => AF_INET,
            (IpNet::V6(_), IpAddr::V6(_)) => AF_INET6,
            _ => return Err(Error::Mixed(route)),
        };
        let action = if ty == RTM_DELROUTE { "remove" } else { "add" };
        let seq = self.next_seq();
        let message = encode(
            ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family,
            Some(route),
        );
        socket::send(self.fd.as_raw_fd(), &message, MsgFlags::empty()).map_err(Error::Io)?;
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            let n = recv(&self.fd, &mut buf)?;
            for (answer, body) in messages(&buf[..n]) {
                if answer == NLMSG_ERROR {
                    let code = error_code(body);
                    if code == 0 {
                        return Ok(());
                    }
                    return Err(Error::Refused {
                        action,
                        route,
                        source: Errno::from_raw(-code),
                    });
                }
            }
        }
    }

    /// Adds `route`, replacing one to the same destination.
    pub fn add(&self, route: Route) -> Result<(), Error> {
        self.change(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, route)
    }

    pub fn remove(&self, route: Route) -> Result<(), Error> {
        match self.change(RTM_DELROUTE, 0, route) {
            // Already gone.
            Err(Error::Refused {
                source: Errno::ESRCH,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Makes nodus's routes exactly `wanted` (later entries for a destination lose).
    pub fn sync(&self, wanted: &[Route]) -> Result<Synced, Error> {
        let mut want: Vec<Route> = Vec::new();
        for route in wanted {
            if !want.iter().any(|w| w.destination == route.destination) {
                want.push(*route);
            }
        }
        let have = self.list()?;
        let mut synced = Synced::default();
        for route in have.iter().filter(|r| !want.contains(r)) {
            match self.remove(*route) {
                Ok(()) => synced.removed.push(*route),
                Err(err) => synced.failed.push(err),
            }
        }
        for route in want.iter().filter(|r| !have.contains(r)) {
            match self.add(*route) {
                Ok(()) => synced.added.push(*route),
                Err(err) => synced.failed.push(err),
            }
        }
        Ok(synced)
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Error> {
    loop {
        match socket::recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(Error::Io(err)),
        }
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align(buf.len()), 0);
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// One route message: nlmsghdr, rtmsg, and for a route its table, destination and gateway.
fn encode(ty: u16, flags: u16, seq: u32, family: u8, route: Option<Route>) -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let dst_len = route.map_or(0, |r| r.destination.prefix_len());
    let (protocol, scope, kind) = match route {
        Some(_) => (PROTOCOL, RT_SCOPE_UNIVERSE, RTN_UNICAST),
        None => (0, 0, 0),
    };
    buf.extend_from_slice(&[family, dst_len, 0, 0, RT_TABLE_MAIN, protocol, scope, kind]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    if let Some(route) = route {
        attr(&mut buf, RTA_TABLE, &u32::from(RT_TABLE_MAIN).to_ne_bytes());
        attr(&mut buf, RTA_DST, &octets(route.destination.trunc().addr()));
        attr(&mut buf, RTA_GATEWAY, &octets(route.gateway));
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&ty.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf
}

/// The (type, body) of each netlink message in a datagram.
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        out.push((ty, &buf[16..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

fn error_code(body: &[u8]) -> i32 {
    body.get(..4).map_or(-(Errno::EIO as i32), |b| {
        i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    })
}

fn ip_from(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(data).ok().map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(data).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A route of nodus's from an RTM_NEWROUTE body; `None` for anyone else's.
fn decode(body: &[u8]) -> Option<Route> {
    let header = body.get(..12)?;
    let (family, dst_len, table, protocol) = (header[0], header[1], header[4], header[5]);
    if protocol != PROTOCOL {
        return None;
    }
    let mut table = u32::from(table);
    let (mut dst, mut gateway) = (None, None);
    let mut attrs = &body[12..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match ty {
            RTA_DST => dst = ip_from(family, data),
            RTA_GATEWAY => gateway = ip_from(family, data),
            RTA_TABLE => {
                table = data
                    .get(..4)
                    .map_or(table, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => {}
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    if table != u32::from(RT_TABLE_MAIN) {
        return None;
    }
    Some(Route {
        destination: IpNet::new(dst?, dst_len).ok()?,
        gateway: gateway?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_message_decodes_to_the_route_it_encodes() {
        let route = Route {
            destination: "10.244.3.0/24".parse().expect("net"),
            gateway: "10.250.0.3".parse().expect("ip"),
        };
        let message = encode(RTM_NEWROUTE, NLM_F_REQUEST, 7, AF_INET, Some(route));
        let parsed = messages(&message);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, RTM_NEWROUTE);
        assert_eq!(decode(parsed[0].1), Some(route));
        let v6 = Route {
            destination: "fd00:10:244:3::/64".parse().expect("net"),
            gateway: "fd00::3".parse().expect("ip"),
        };
        let message = encode(RTM_NEWROUTE, NLM_F_REQUEST, 8, AF_INET6, Some(v6));
        assert_eq!(decode(messages(&message)[0].1), Some(v6));
    }

    #[test]
    fn routes_of_other_protocols_are_not_ours() {
        let route = Route {
            destination: "10.244.3.0/24".parse().expect("net"),
            gateway: "10.250.0.3".parse().expect("ip"),
        };
        let mut message = encode(RTM_NEWROUTE, NLM_F_REQUEST, 7, AF_INET, Some(route));
        message[16 + 5] = 4; // RTPROT_STATIC: `ip route add` by hand
        assert_eq!(decode(messages(&message)[0].1), None);
    }
}
