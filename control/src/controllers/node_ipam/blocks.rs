//! Blocks: the cluster CIDR cut into equal node blocks (`/node_prefix` each), with a bitmap
//! of which are used — upstream's `cidrset.CidrSet` (`pkg/controller/nodeipam/ipam/cidrset`).
//!
//! Invariants: block `i` is the cluster network plus `i << (32 - node_prefix)`; a bit is set
//! exactly when its block is used, and `used` counts the set bits; only blocks of exactly
//! the node prefix inside the cluster network are ever occupied or released. Allocation
//! takes the lowest free block, so addresses are handed out in order and a freed block is
//! the next one reused (upstream starts each search after the last block it allocated
//! instead; either way no two nodes get the same block).

use super::cidr::Ipv4Cidr;

/// At most 2^24 blocks (a 2 MiB bitmap): a `/8` cluster cut into `/32`s. Upstream limits
/// IPv6 the same way (to 2^16) for the same reason, an uncompressed bitmap.
pub const MAX_BLOCK_BITS: u8 = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    cluster: Ipv4Cidr,
    node_prefix: u8,
    bitmap: Vec<u64>,
    count: u32,
    used: u32,
}

/// A cluster CIDR and node mask that cannot make blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(
        "the node CIDR mask /{node_prefix} is shorter than the cluster CIDR {cluster}: a node block would not fit"
    )]
    MaskTooShort { cluster: Ipv4Cidr, node_prefix: u8 },
    #[error("the node CIDR mask /{node_prefix} is longer than /32")]
    MaskTooLong { node_prefix: u8 },
    #[error(
        "the cluster CIDR {cluster} holds 2^{} /{node_prefix} blocks; at most 2^{MAX_BLOCK_BITS} are supported",
        .node_prefix - .cluster.prefix()
    )]
    TooManyBlocks { cluster: Ipv4Cidr, node_prefix: u8 },
}

/// A CIDR that is not one of this range's blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("{cidr} is outside the cluster CIDR {cluster}")]
    OutOfRange { cidr: Ipv4Cidr, cluster: Ipv4Cidr },
    #[error("{cidr} is not a /{node_prefix} node block")]
    WrongSize { cidr: Ipv4Cidr, node_prefix: u8 },
}

impl Blocks {
    pub fn new(cluster: Ipv4Cidr, node_prefix: u8) -> Result<Self, RangeError> {
        if node_prefix > 32 {
            return Err(RangeError::MaskTooLong { node_prefix });
        }
        if node_prefix < cluster.prefix() {
            return Err(RangeError::MaskTooShort {
                cluster,
                node_prefix,
            });
        }
        let bits = node_prefix - cluster.prefix();
        if bits > MAX_BLOCK_BITS {
            return Err(RangeError::TooManyBlocks {
                cluster,
                node_prefix,
            });
        }
        let count = 1u32 << bits;
        Ok(Blocks {
            cluster,
            node_prefix,
            bitmap: vec![0; count.div_ceil(64) as usize],
            count,
            used: 0,
        })
    }

    pub fn cluster(&self) -> Ipv4Cidr {
        self.cluster
    }

    pub fn node_prefix(&self) -> u8 {
        self.node_prefix
    }

    /// The same range with every block free.
    pub fn emptied(&self) -> Self {
        Blocks {
            bitmap: vec![0; self.bitmap.len()],
            used: 0,
            ..self.clone()
        }
    }

    pub fn capacity(&self) -> u32 {
        self.count
    }

    pub fn used(&self) -> u32 {
        self.used
    }

    pub fn is_full(&self) -> bool {
        self.used == self.count
    }

    /// Takes the lowest free block; None when every block is used.
    pub fn allocate(&mut self) -> Option<Ipv4Cidr> {
        let (word, bits) = self
            .bitmap
            .iter()
            .enumerate()
            .find(|(_, bits)| **bits != u64::MAX)?;
        let index = word * 64 + bits.trailing_ones() as usize;
        // The last word's bits past `count` are never set, so a range that is not a
        // multiple of 64 blocks can find an index past its end only when it is full.
        if index >= self.count as usize {
            return None;
        }
        self.set(index, true);
        Some(self.block(index))
    }

    /// Marks a block used (one a node already has); true if it was free.
    pub fn occupy(&mut self, cidr: Ipv4Cidr) -> Result<bool, BlockError> {
        let index = self.index(cidr)?;
        Ok(self.set(index, true))
    }

    /// Marks a block free again; true if it was used.
    pub fn release(&mut self, cidr: Ipv4Cidr) -> Result<bool, BlockError> {
        let index = self.index(cidr)?;
        Ok(self.set(index, false))
    }

    pub fn is_used(&self, cidr: Ipv4Cidr) -> bool {
        self.index(cidr)
            .is_ok_and(|i| self.bitmap[i / 64] & (1 << (i % 64)) != 0)
    }

    fn index(&self, cidr: Ipv4Cidr) -> Result<usize, BlockError> {
        if !self.cluster.contains(&cidr) {
            return Err(BlockError::OutOfRange {
                cidr,
                cluster: self.cluster,
            });
        }
        if cidr.prefix() != self.node_prefix {
            return Err(BlockError::WrongSize {
                cidr,
                node_prefix: self.node_prefix,
            });
        }
        // Inside the cluster network: the bits between the two prefixes are the index. A
        // /32 block is shifted by 0; a /0 cluster (every bit an index) is refused by `new`.
        let offset = cidr.bits() - self.cluster.bits();
        Ok((u64::from(offset) >> (32 - u32::from(self.node_prefix))) as usize)
    }

    fn block(&self, index: usize) -> Ipv4Cidr {
        let offset = (index as u64) << (32 - u32::from(self.node_prefix));
        // `index < count` keeps the offset within the cluster network, below 2^32.
        let address = u64::from(self.cluster.bits()) + offset;
        Ipv4Cidr::new(std::net::Ipv4Addr::from(address as u32), self.node_prefix)
            .expect("the node prefix is at most 32, checked by Blocks::new")
    }

    /// Sets or clears one bit; true if it changed.
    fn set(&mut self, index: usize, used: bool) -> bool {
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let was = self.bitmap[word] & bit != 0;
        if was == used {
            return false;
        }
        if used {
            self.bitmap[word] |= bit;
            self.used += 1;
        } else {
            self.bitmap[word] &= !bit;
            self.used -= 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("a valid CIDR")
    }

    fn blocks(cluster: &str, node_prefix: u8) -> Blocks {
        Blocks::new(cidr(cluster), node_prefix).expect("a valid range")
    }

    fn allocations(b: &mut Blocks, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| b.allocate().map(|c| c.to_string()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn blocks_are_handed_out_lowest_first() {
        let mut b = blocks("10.244.0.0/16", 24);
        assert_eq!(b.capacity(), 256);
        assert_eq!(
            allocations(&mut b, 3),
            vec!["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
        );
        let mut b = blocks("192.168.0.0/24", 26);
        assert_eq!(
            allocations(&mut b, 4),
            vec![
                "192.168.0.0/26",
                "192.168.0.64/26",
                "192.168.0.128/26",
                "192.168.0.192/26"
            ]
        );
    }

    #[test]
    fn a_released_block_is_the_next_one_reused() {
        let mut b = blocks("10.244.0.0/16", 24);
        allocations(&mut b, 3);
        assert_eq!(b.release(cidr("10.244.1.0/24")), Ok(true));
        assert_eq!(b.release(cidr("10.244.1.0/24")), Ok(false), "already free");
        assert_eq!(b.used(), 2);
        assert_eq!(
            allocations(&mut b, 2),
            vec!["10.244.1.0/24", "10.244.3.0/24"]
        );
    }

    #[test]
    fn pre_existing_blocks_are_skipped() {
        let mut b = blocks("10.244.0.0/16", 24);
        assert_eq!(b.occupy(cidr("10.244.0.0/24")), Ok(true));
        assert_eq!(b.occupy(cidr("10.244.2.0/24")), Ok(true));
        assert_eq!(b.occupy(cidr("10.244.2.0/24")), Ok(false), "idempotent");
        assert!(b.is_used(cidr("10.244.2.0/24")));
        assert_eq!(
            allocations(&mut b, 3),
            vec!["10.244.1.0/24", "10.244.3.0/24", "10.244.4.0/24"]
        );
    }

    #[test]
    fn a_full_range_allocates_nothing_until_a_block_is_freed() {
        // 4 blocks: fewer than one bitmap word, so the unused bits must not be handed out.
        let mut b = blocks("10.0.0.0/22", 24);
        assert_eq!(allocations(&mut b, 4).len(), 4);
        assert!(b.is_full());
        assert_eq!(b.allocate(), None);
        b.release(cidr("10.0.2.0/24")).expect("in range");
        assert_eq!(b.allocate(), Some(cidr("10.0.2.0/24")));
        assert_eq!(b.allocate(), None);

        // Exactly one word, and more than one.
        for (cluster, count) in [("10.0.0.0/18", 64usize), ("10.0.0.0/17", 128)] {
            let mut b = blocks(cluster, 24);
            let got = allocations(&mut b, count);
            assert!(got.iter().all(|c| !c.is_empty()), "{cluster}");
            assert_eq!(b.allocate(), None, "{cluster}");
        }
    }

    #[test]
    fn cidrs_that_are_not_blocks_of_the_range_are_refused() {
        let mut b = blocks("10.244.0.0/16", 24);
        let outside = cidr("10.245.0.0/24");
        assert_eq!(
            b.occupy(outside),
            Err(BlockError::OutOfRange {
                cidr: outside,
                cluster: cidr("10.244.0.0/16")
            })
        );
        assert!(matches!(
            b.occupy(cidr("10.0.0.0/8")),
            Err(BlockError::OutOfRange { .. })
        ));
        for wrong in ["10.244.0.0/23", "10.244.1.0/25", "10.244.0.0/16"] {
            assert!(
                matches!(b.occupy(cidr(wrong)), Err(BlockError::WrongSize { .. })),
                "{wrong}"
            );
            assert!(matches!(
                b.release(cidr(wrong)),
                Err(BlockError::WrongSize { .. })
            ));
        }
        assert_eq!(b.used(), 0, "nothing refused was marked");
        assert_eq!(
            b.occupy(cidr("10.244.1.0/25")).map_err(|e| e.to_string()),
            Err("10.244.1.0/25 is not a /24 node block".to_owned())
        );
    }

    #[test]
    fn a_node_mask_shorter_than_the_cluster_prefix_is_rejected() {
        assert_eq!(
            Blocks::new(cidr("10.244.0.0/16"), 15),
            Err(RangeError::MaskTooShort {
                cluster: cidr("10.244.0.0/16"),
                node_prefix: 15
            })
        );
        assert_eq!(
            Blocks::new(cidr("10.244.0.0/16"), 33),
            Err(RangeError::MaskTooLong { node_prefix: 33 })
        );
        assert_eq!(
            Blocks::new(cidr("10.0.0.0/8"), 33).map_err(|e| e.to_string()),
            Err("the node CIDR mask /33 is longer than /32".to_owned())
        );
        assert!(matches!(
            Blocks::new(cidr("0.0.0.0/0"), 32),
            Err(RangeError::TooManyBlocks { .. })
        ));
    }

    #[test]
    fn edge_ranges_work() {
        // One block, the whole cluster.
        let mut b = blocks("10.244.0.0/24", 24);
        assert_eq!(allocations(&mut b, 2), vec!["10.244.0.0/24", ""]);
        // /32 blocks, the widest allowed.
        let mut b = blocks("10.0.0.0/8", 32);
        assert_eq!(b.capacity(), 1 << 24);
        assert_eq!(allocations(&mut b, 2), vec!["10.0.0.0/32", "10.0.0.1/32"]);
        assert_eq!(b.occupy(cidr("10.255.255.255/32")), Ok(true));
        // The top of the address space.
        let mut b = blocks("255.255.255.0/24", 25);
        assert_eq!(
            allocations(&mut b, 3),
            vec!["255.255.255.0/25", "255.255.255.128/25", ""]
        );
    }
}
