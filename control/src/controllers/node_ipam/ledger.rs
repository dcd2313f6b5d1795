//! Ledger: which node holds which blocks, over the cluster ranges — pure, fed with the
//! nodes as the watch shows them and with this controller's own reservations.
//!
//! Invariants: `ranges[i]` serves a node's `spec.podCIDRs[i]` (one range today; dual-stack
//! adds the second family's range as `ranges[1]`, the API's order); a block is marked used
//! while some node holds it — written on the node, or reserved by this controller and not
//! yet seen written — and freed only when no node holds it any more; a reservation is kept
//! until the node shows CIDRs (then what it shows wins) or the node goes.

use std::collections::BTreeMap;

use super::blocks::Blocks;
use super::cidr::Ipv4Cidr;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Holding {
    cidrs: Vec<Ipv4Cidr>,
    /// False while this controller's patch has not been seen on the node.
    written: bool,
}

#[derive(Clone, Debug)]
pub struct Ledger {
    ranges: Vec<Blocks>,
    held: BTreeMap<String, Holding>,
}

/// What a node's state means for the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The node has no CIDRs and none reserved: it needs some.
    pub needs_cidrs: bool,
    /// Blocks were freed (a reservation the node's own CIDRs replaced): nodes waiting for a
    /// free block can try again.
    pub freed: bool,
    /// Why some of the node's CIDRs are not accounted for, one line each.
    pub ignored: Vec<String>,
}

/// Some range has no free block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free /{node_prefix} block is left in the cluster CIDR {cluster}")]
pub struct Exhausted {
    pub cluster: Ipv4Cidr,
    pub node_prefix: u8,
}

impl Ledger {
    pub fn new(ranges: Vec<Blocks>) -> Self {
        Ledger {
            ranges,
            held: BTreeMap::new(),
        }
    }

    pub fn ranges(&self) -> &[Blocks] {
        &self.ranges
    }

    /// Starts over from a full listing of the nodes, `(name, spec.podCIDRs)` each: the
    /// blocks they show are used, and the reservations of listed nodes that show none yet
    /// are kept (a patch may be in flight). Returns what each node's state means, by name.
    pub fn rebuild<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> BTreeMap<String, Seen> {
        let nodes: BTreeMap<&str, &[String]> = nodes.into_iter().collect();
        let pending: Vec<(String, Holding)> = self
            .held
            .iter()
            .filter(|(name, h)| {
                !h.written && nodes.get(name.as_str()).is_some_and(|c| c.is_empty())
            })
            .map(|(name, h)| (name.clone(), h.clone()))
            .collect();
        self.ranges = self.ranges.iter().map(Blocks::emptied).collect();
        self.held.clear();
        for (name, holding) in pending {
            for (range, cidr) in self.ranges.iter_mut().zip(&holding.cidrs) {
                // Reserved from these same ranges: always one of their blocks.
                let _ = range.occupy(*cidr);
            }
            self.held.insert(name, holding);
        }
        nodes
            .into_iter()
            .map(|(name, cidrs)| (name.to_owned(), self.observe(name, cidrs)))
            .collect()
    }

    /// A node as the watch shows it, with its `spec.podCIDRs` (or `[spec.podCIDR]`).
    pub fn observe(&mut self, node: &str, pod_cidrs: &[String]) -> Seen {
        let mut seen = Seen::default();
        if pod_cidrs.is_empty() {
            match self.held.get(node) {
                // Our patch is on its way.
                Some(h) if !h.written => {}
                // It showed CIDRs before and none now: the name is a new node (its deletion
                // was missed), so the old node's blocks go.
                Some(_) => {
                    seen.freed = self.release(node);
                    seen.needs_cidrs = true;
                }
                None => seen.needs_cidrs = true,
            }
            return seen;
        }
        let mut cidrs = Vec::with_capacity(pod_cidrs.len());
        for (index, text) in pod_cidrs.iter().enumerate() {
            let Some(range) = self.ranges.get_mut(index) else {
                seen.ignored.push(format!(
                    "{text} (podCIDRs[{index}]) has no cluster CIDR to come from"
                ));
                continue;
            };
            let cidr = match text.parse::<Ipv4Cidr>() {
                Ok(cidr) => cidr,
                Err(err) => {
                    seen.ignored.push(err.to_string());
                    continue;
                }
            };
            match range.occupy(cidr) {
                Ok(_) => cidrs.push(cidr),
                Err(err) => seen.ignored.push(err.to_string()),
            }
        }
        let before = self.held.insert(
            node.to_owned(),
            Holding {
                cidrs: cidrs.clone(),
                written: true,
            },
        );
        // What the node shows wins over what was reserved for it (another writer was
        // first, or the API refused ours): blocks it does not show are freed.
        if let Some(before) = before {
            for cidr in before.cidrs.iter().filter(|c| !cidrs.contains(c)) {
                seen.freed |= self.free(*cidr);
            }
        }
        seen
    }

    /// Reserves the lowest free block of each range for a node; nothing when one is full.
    pub fn reserve(&mut self, node: &str) -> Result<Vec<Ipv4Cidr>, Exhausted> {
        let mut cidrs = Vec::with_capacity(self.ranges.len());
        for index in 0..self.ranges.len() {
            match self.ranges[index].allocate() {
                Some(cidr) => cidrs.push(cidr),
                None => {
                    // All or nothing: give back what the earlier ranges gave.
                    for (range, cidr) in self.ranges.iter_mut().zip(&cidrs) {
                        let _ = range.release(*cidr);
                    }
                    let full = &self.ranges[index];
                    return Err(Exhausted {
                        cluster: full.cluster(),
                        node_prefix: full.node_prefix(),
                    });
                }
            }
        }
        self.held.insert(
            node.to_owned(),
            Holding {
                cidrs: cidrs.clone(),
                written: false,
            },
        );
        Ok(cidrs)
    }

    /// The blocks reserved for a node and not yet seen written on it.
    pub fn reserved(&self, node: &str) -> Option<&[Ipv4Cidr]> {
        self.held
            .get(node)
            .filter(|h| !h.written)
            .map(|h| h.cidrs.as_slice())
    }

    /// The node is gone (or its reservation abandoned): frees its blocks. True if any was.
    pub fn release(&mut self, node: &str) -> bool {
        let Some(holding) = self.held.remove(node) else {
            return false;
        };
        let mut freed = false;
        for cidr in holding.cidrs {
            freed |= self.free(cidr);
        }
        freed
    }

    /// Frees a block unless another node still holds it (two nodes showing the same CIDR
    /// is a misconfiguration, but freeing it under the second would hand it out a third
    /// time).
    fn free(&mut self, cidr: Ipv4Cidr) -> bool {
        if self.held.values().any(|h| h.cidrs.contains(&cidr)) {
            return false;
        }
        self.ranges
            .iter_mut()
            .any(|range| range.release(cidr).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(cluster: &str, node_prefix: u8) -> Ledger {
        let cluster = cluster.parse().expect("a valid CIDR");
        Ledger::new(vec![
            Blocks::new(cluster, node_prefix).expect("a valid range"),
        ])
    }

    fn strings(cidrs: &[&str]) -> Vec<String> {
        cidrs.iter().map(|c| (*c).to_owned()).collect()
    }

    fn reserve(l: &mut Ledger, node: &str) -> String {
        l.reserve(node)
            .map(|c| {
                c.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn listed_nodes_occupy_their_blocks_and_the_others_need_one() {
        let mut l = ledger("10.244.0.0/16", 24);
        let a = strings(&["10.244.0.0/24"]);
        let c = strings(&["10.244.2.0/24"]);
        let seen = l.rebuild([("a", a.as_slice()), ("b", &[][..]), ("c", c.as_slice())]);
        let needs: Vec<&str> = seen
            .iter()
            .filter(|(_, s)| s.needs_cidrs)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(needs, vec!["b"]);
        assert_eq!(reserve(&mut l, "b"), "10.244.1.0/24");
        assert_eq!(reserve(&mut l, "d"), "10.244.3.0/24");
    }

    #[test]
    fn cidrs_the_ranges_cannot_account_for_are_ignored_with_a_reason() {
        let mut l = ledger("10.244.0.0/16", 24);
        let cases = [
            (
                vec!["10.99.0.0/24"],
                "10.99.0.0/24 is outside the cluster CIDR 10.244.0.0/16",
            ),
            (
                vec!["10.244.0.0/25"],
                "10.244.0.0/25 is not a /24 node block",
            ),
            (
                vec!["garbage"],
                "\"garbage\" is not a CIDR: it has no /prefix",
            ),
            (
                vec!["10.244.5.0/24", "fd00::/64"],
                "fd00::/64 (podCIDRs[1]) has no cluster CIDR to come from",
            ),
        ];
        for (cidrs, reason) in cases {
            let seen = l.observe("n", &strings(&cidrs));
            assert_eq!(seen.ignored, vec![reason.to_owned()]);
            assert!(!seen.needs_cidrs, "a node with CIDRs is never given more");
        }
        // Only the valid one of the last node is used.
        assert_eq!(l.ranges()[0].used(), 1);
    }

    #[test]
    fn a_reservation_holds_until_written_and_yields_to_what_the_node_shows() {
        let mut l = ledger("10.244.0.0/16", 24);
        assert_eq!(reserve(&mut l, "a"), "10.244.0.0/24");
        assert_eq!(
            l.observe("a", &[]),
            Seen::default(),
            "in flight: not needed again"
        );
        assert!(l.reserved("a").is_some());
        // Someone else wrote another block first: ours goes back.
        let seen = l.observe("a", &strings(&["10.244.7.0/24"]));
        assert!(seen.freed);
        assert_eq!(l.reserved("a"), None);
        assert_eq!(reserve(&mut l, "b"), "10.244.0.0/24");
    }

    #[test]
    fn a_deleted_node_frees_its_block_unless_another_node_shows_it_too() {
        let mut l = ledger("10.244.0.0/16", 24);
        let block = strings(&["10.244.0.0/24"]);
        l.observe("a", &block);
        l.observe("twin", &block);
        assert!(!l.release("a"), "twin still shows it");
        assert_eq!(reserve(&mut l, "b"), "10.244.1.0/24");
        assert!(l.release("twin"));
        assert!(!l.release("twin"), "already gone");
        assert_eq!(reserve(&mut l, "c"), "10.244.0.0/24");
    }

    #[test]
    fn a_full_range_reserves_nothing_and_a_release_makes_room() {
        let mut l = ledger("10.0.0.0/23", 24);
        assert_eq!(reserve(&mut l, "a"), "10.0.0.0/24");
        assert_eq!(reserve(&mut l, "b"), "10.0.1.0/24");
        assert_eq!(
            reserve(&mut l, "c"),
            "no free /24 block is left in the cluster CIDR 10.0.0.0/23"
        );
        assert_eq!(l.reserved("c"), None);
        assert!(l.release("a"));
        assert_eq!(reserve(&mut l, "c"), "10.0.0.0/24");
    }

    #[test]
    fn a_relist_keeps_reservations_in_flight_and_forgets_nodes_gone_meanwhile() {
        let mut l = ledger("10.244.0.0/16", 24);
        let gone = strings(&["10.244.0.0/24"]);
        l.observe("gone", &gone);
        assert_eq!(reserve(&mut l, "new"), "10.244.1.0/24");
        let seen = l.rebuild([("new", &[][..])]);
        assert!(!seen["new"].needs_cidrs, "its patch may be in flight");
        assert_eq!(l.ranges()[0].used(), 1);
        assert_eq!(
            reserve(&mut l, "next"),
            "10.244.0.0/24",
            "gone's block is free"
        );
    }

    #[test]
    fn a_node_showing_no_cidrs_after_showing_some_is_a_new_node() {
        let mut l = ledger("10.244.0.0/16", 24);
        l.observe("a", &strings(&["10.244.0.0/24"]));
        let seen = l.observe("a", &[]);
        assert!(seen.needs_cidrs && seen.freed);
        assert_eq!(reserve(&mut l, "a"), "10.244.0.0/24");
    }
}
