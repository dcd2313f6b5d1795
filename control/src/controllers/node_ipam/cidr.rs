//! CIDR: an IPv4 network and its prefix length, parsed from `10.244.0.0/16` the way Go's
//! `net.ParseCIDR` reads it (host bits after the prefix are dropped: `10.244.1.7/16` is
//! `10.244.0.0/16`), which is how kube-controller-manager reads `--cluster-cidr` and how the
//! API server accepts `spec.podCIDRs`.
//!
//! Invariant: the address has no bit set after the prefix, and the prefix is at most 32.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// An IPv4 network. IPv6 (for dual-stack) would be a second type beside it, or this one
/// made generic over the address width; the allocator only needs `index`/`block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{input:?} is not a CIDR: it has no /prefix")]
    NoPrefix { input: String },
    #[error("{input:?} is not a CIDR: {address:?} is not an IP address")]
    Address { input: String, address: String },
    #[error("{input:?} is an IPv6 range; only IPv4 is supported")]
    Ipv6 { input: String },
    #[error("{input:?} is not a CIDR: the prefix length must be a number from 0 to 32")]
    Prefix { input: String },
}

impl Ipv4Cidr {
    /// The network of `address` with `prefix` bits; None when the prefix is longer than 32.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether every address of `other` is in this network.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && u32::from(other.network) & mask(self.prefix) == self.bits()
    }

    pub(crate) fn bits(&self) -> u32 {
        u32::from(self.network)
    }
}

/// The netmask of a prefix length as an integer (`/0` is all zeroes; a shift by 32 would
/// overflow).
pub(crate) fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, CidrError> {
        let (address, prefix) = input.split_once('/').ok_or_else(|| CidrError::NoPrefix {
            input: input.to_owned(),
        })?;
        let address = match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4,
            Ok(IpAddr::V6(_)) => {
                return Err(CidrError::Ipv6 {
                    input: input.to_owned(),
                });
            }
            Err(_) => {
                return Err(CidrError::Address {
                    input: input.to_owned(),
                    address: address.to_owned(),
                });
            }
        };
        // Only digits: `u8::from_str` would also take a leading `+`, which Go refuses.
        let prefix = prefix
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| prefix.parse::<u8>().ok())
            .flatten()
            .and_then(|p| Ipv4Cidr::new(address, p));
        prefix.ok_or_else(|| CidrError::Prefix {
            input: input.to_owned(),
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("a valid CIDR")
    }

    #[test]
    fn parses_and_drops_host_bits_as_go_does() {
        assert_eq!(cidr("10.244.0.0/16").to_string(), "10.244.0.0/16");
        assert_eq!(cidr("10.244.1.7/16").to_string(), "10.244.0.0/16");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("192.168.1.1/32").to_string(), "192.168.1.1/32");
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        type Expected = fn(&CidrError) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("10.244.0.0", |e| matches!(e, CidrError::NoPrefix { .. })),
            ("10.244.0/16", |e| matches!(e, CidrError::Address { .. })),
            ("fd00::/64", |e| matches!(e, CidrError::Ipv6 { .. })),
            ("10.244.0.0/33", |e| matches!(e, CidrError::Prefix { .. })),
            ("10.244.0.0/+8", |e| matches!(e, CidrError::Prefix { .. })),
            ("10.244.0.0/", |e| matches!(e, CidrError::Prefix { .. })),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Ipv4Cidr>().expect_err(input);
            assert!(expected(&err), "{input}: {err:?}");
        }
        assert_eq!(
            "10.244.0.0".parse::<Ipv4Cidr>().map_err(|e| e.to_string()),
            Err("\"10.244.0.0\" is not a CIDR: it has no /prefix".to_owned())
        );
    }

    #[test]
    fn containment_needs_a_longer_or_equal_prefix_inside_the_network() {
        let cluster = cidr("10.244.0.0/16");
        assert!(cluster.contains(&cidr("10.244.3.0/24")));
        assert!(cluster.contains(&cluster));
        assert!(!cluster.contains(&cidr("10.245.0.0/24")));
        assert!(!cluster.contains(&cidr("10.0.0.0/8")));
        assert!(cidr("0.0.0.0/0").contains(&cluster));
    }
}
