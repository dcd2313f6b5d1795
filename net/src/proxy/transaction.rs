//! Transaction: the list of nftables operations that brings the kernel from one [`Ruleset`] to
//! another, either from scratch (a full replace) or as the difference against what was applied
//! last (an update), and its rendering as the text of one `nft -f -` run.
//!
//! Invariants: an update touches only what differs: chains whose rules changed are flushed and
//! refilled, vanished chains and sets are deleted, map and set elements are added and deleted one
//! by one, and the elements of dynamic sets (ClientIP affinity) are never touched, so affinity
//! survives syncs. Operations are ordered so that every object exists before anything refers to
//! it and nothing is deleted while still referred to:
//!
//! ```text
//!   add chains, add sets ─> flush changed chains, add their rules ─> delete elements, add elements
//!     ─> flush vanished chains ─> delete vanished chains ─> delete vanished sets
//! ```
//!
//! Changes an update cannot express in place (a base chain's hook, a set's type or timeout) make
//! [`Transaction::update`] ask for a full replace instead; they come only with node changes or a
//! Service's affinity timeout, so they are rare.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use super::ruleset::{
    Chain, ChainType, FAMILY, Hook, MapKey, Rule, Ruleset, ServiceObjects, Set, SetKind, TABLE,
    TABLE_COMMENT, Verdict, expand,
};

/// What a fresh table holds.
static NO_CHAINS: BTreeMap<String, Chain> = BTreeMap::new();
static NO_SETS: BTreeMap<String, Set> = BTreeMap::new();

/// One element of a set: an address, an address paired with itself, or a map key with its
/// verdict (deletes need only the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element<'a> {
    Addr(&'a IpAddr),
    Pair(&'a IpAddr),
    Key(&'a MapKey),
    Map(&'a MapKey, &'a Verdict),
}

/// One nftables operation on nodus's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    AddChain {
        name: &'a str,
        hook: Option<&'a Hook>,
    },
    AddSet {
        name: &'a str,
        kind: &'a SetKind,
    },
    FlushChain(&'a str),
    AddRule {
        chain: &'a str,
        rule: &'a Rule,
    },
    DeleteElements {
        set: &'a str,
        elements: Vec<Element<'a>>,
    },
    AddElements {
        set: &'a str,
        elements: Vec<Element<'a>>,
    },
    DeleteChain(&'a str),
    DeleteSet {
        name: &'a str,
        kind: &'a SetKind,
    },
}

/// The operations of one atomic transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction<'a> {
    /// Whether the table is replaced as a whole (the text then starts by deleting it).
    pub full: bool,
    pub ops: Vec<Op<'a>>,
}

/// What it takes to go from the applied ruleset to the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<'a> {
    /// The kernel already has the desired ruleset.
    Unchanged,
    /// These operations, in one transaction.
    Apply(Transaction<'a>),
    /// Something changed that only a full replace can express.
    NeedsFull,
}

impl<'a> Transaction<'a> {
    /// Replaces the whole table with `desired`. Objects go in name order, so the text of two
    /// builds of the same state is byte-identical.
    pub fn full(desired: &'a Ruleset) -> Transaction<'a> {
        let mut chains: Vec<(&String, &Chain)> = desired.all_chains().collect();
        chains.sort_unstable_by_key(|(name, _)| *name);
        let mut sets: Vec<(&String, &Set)> = desired.all_sets().collect();
        sets.sort_unstable_by_key(|(name, _)| *name);
        let mut ops = Vec::with_capacity(chains.len() * 2 + desired.rule_count());
        ops.extend(chains.iter().map(|(name, chain)| Op::AddChain {
            name,
            hook: chain.hook.as_ref(),
        }));
        ops.extend(sets.iter().map(|(name, set)| Op::AddSet {
            name,
            kind: &set.kind,
        }));
        for (name, chain) in &chains {
            ops.extend(
                chain
                    .rules
                    .iter()
                    .map(|rule| Op::AddRule { chain: name, rule }),
            );
        }
        for (name, set) in &sets {
            let elements: Vec<Element<'a>> = elements(set).collect();
            if !elements.is_empty() {
                ops.push(Op::AddElements {
                    set: name,
                    elements,
                });
            }
        }
        Transaction { full: true, ops }
    }

    /// The difference from `applied` (what the kernel holds) to `desired`. Services whose
    /// objects are shared between the two (an unchanged service, see `ruleset::Builder`) are
    /// skipped without a look inside.
    pub fn update(applied: &'a Ruleset, desired: &'a Ruleset) -> Update<'a> {
        let groups = groups(applied, desired);
        for g in &groups {
            for (name, chain) in g.new_chains {
                if g.old_chains
                    .get(name)
                    .is_some_and(|old| old.hook != chain.hook)
                {
                    return Update::NeedsFull;
                }
            }
            for (name, set) in g.new_sets {
                if g.old_sets.get(name).is_some_and(|old| old.kind != set.kind) {
                    return Update::NeedsFull;
                }
            }
        }
        let mut ops = Vec::new();
        for g in &groups {
            for (name, chain) in g.new_chains {
                if !g.old_chains.contains_key(name) {
                    ops.push(Op::AddChain {
                        name,
                        hook: chain.hook.as_ref(),
                    });
                }
            }
        }
        for g in &groups {
            for (name, set) in g.new_sets {
                if !g.old_sets.contains_key(name) {
                    ops.push(Op::AddSet {
                        name,
                        kind: &set.kind,
                    });
                }
            }
        }
        for g in &groups {
            for (name, chain) in g.new_chains {
                match g.old_chains.get(name) {
                    Some(old) if old.rules == chain.rules => continue,
                    Some(_) => ops.push(Op::FlushChain(name)),
                    None => {}
                }
                ops.extend(
                    chain
                        .rules
                        .iter()
                        .map(|rule| Op::AddRule { chain: name, rule }),
                );
            }
        }
        // All deletions of elements before any addition: a key may move between maps.
        let mut added = Vec::new();
        for g in &groups {
            for (name, set) in g.new_sets {
                if set.is_dynamic() {
                    continue;
                }
                let (deleted, new) = match g.old_sets.get(name) {
                    Some(old) => {
                        let (addrs_deleted, addrs_new) = merge_diff(
                            old.addrs.iter().map(|a| (a, &())),
                            set.addrs.iter().map(|a| (a, &())),
                        );
                        let (keys_deleted, keys_new) = merge_diff(
                            old.keys.iter().map(|k| (k, &())),
                            set.keys.iter().map(|k| (k, &())),
                        );
                        let key = |(k, _): (&'a MapKey, &())| Element::Key(k);
                        let (map_deleted, map_new) = merge_diff(old.map.iter(), set.map.iter());
                        let addr = |(a, _): (&'a IpAddr, &())| addr_element(set, a);
                        let entry = |(k, v)| Element::Map(k, v);
                        let deleted: Vec<Element<'a>> = addrs_deleted
                            .into_iter()
                            .map(addr)
                            .chain(keys_deleted.into_iter().map(key))
                            .chain(map_deleted.into_iter().map(entry))
                            .collect();
                        let new: Vec<Element<'a>> = addrs_new
                            .into_iter()
                            .map(addr)
                            .chain(keys_new.into_iter().map(key))
                            .chain(map_new.into_iter().map(entry))
                            .collect();
                        (deleted, new)
                    }
                    None => (Vec::new(), elements(set).collect()),
                };
                if !deleted.is_empty() {
                    ops.push(Op::DeleteElements {
                        set: name,
                        elements: deleted,
                    });
                }
                if !new.is_empty() {
                    added.push(Op::AddElements {
                        set: name,
                        elements: new,
                    });
                }
            }
        }
        ops.append(&mut added);
        let vanished_chains: Vec<&str> = groups
            .iter()
            .flat_map(|g| {
                g.old_chains
                    .keys()
                    .filter(|name| !g.new_chains.contains_key(*name))
            })
            .map(String::as_str)
            .collect();
        ops.extend(vanished_chains.iter().map(|name| Op::FlushChain(name)));
        ops.extend(vanished_chains.iter().map(|name| Op::DeleteChain(name)));
        for g in &groups {
            ops.extend(
                g.old_sets
                    .iter()
                    .filter(|(name, _)| !g.new_sets.contains_key(*name))
                    .map(|(name, set)| Op::DeleteSet {
                        name,
                        kind: &set.kind,
                    }),
            );
        }
        if ops.is_empty() {
            Update::Unchanged
        } else {
            Update::Apply(Transaction { full: false, ops })
        }
    }

    /// The number of operations, for metrics and logs.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The text for `nft -f -`. A full replace starts with `add table` + `delete table`, which
    /// makes the delete succeed whether or not the table exists; nothing outside the table is
    /// named.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + self.ops.len() * 96);
        let t = format!("{FAMILY} {TABLE}");
        let w = "writing to a String";
        if self.full {
            writeln!(out, "add table {t}").expect(w);
            writeln!(out, "delete table {t}").expect(w);
            writeln!(out, "add table {t} {{ comment \"{TABLE_COMMENT}\" ; }}").expect(w);
        }
        for op in &self.ops {
            render_op(&mut out, &t, op);
        }
        out
    }
}

/// The objects of one owner (the fixed part, or one service) before and after.
struct Group<'a> {
    old_chains: &'a BTreeMap<String, Chain>,
    new_chains: &'a BTreeMap<String, Chain>,
    old_sets: &'a BTreeMap<String, Set>,
    new_sets: &'a BTreeMap<String, Set>,
}

/// The fixed part, then every service that was added, removed or changed.
fn groups<'a>(applied: &'a Ruleset, desired: &'a Ruleset) -> Vec<Group<'a>> {
    let mut groups = vec![Group {
        old_chains: &applied.chains,
        new_chains: &desired.chains,
        old_sets: &applied.sets,
        new_sets: &desired.sets,
    }];
    let pick = |objects: Option<&'a std::sync::Arc<ServiceObjects>>| match objects {
        Some(o) => (&o.chains, &o.sets),
        None => (&NO_CHAINS, &NO_SETS),
    };
    // Both maps are sorted by id: walk them in step instead of looking every id up.
    let mut old = applied.services.iter().peekable();
    let mut new = desired.services.iter().peekable();
    loop {
        let (o, n) = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((a, _)), Some((b, _))) if a == b => (old.next(), new.next()),
            (Some((a, _)), Some((b, _))) if a < b => (old.next(), None),
            (Some(_), None) => (old.next(), None),
            _ => (None, new.next()),
        };
        let (o, n) = (o.map(|(_, v)| v), n.map(|(_, v)| v));
        if let (Some(o), Some(n)) = (o, n)
            && (std::sync::Arc::ptr_eq(o, n) || o == n)
        {
            continue;
        }
        let (old_chains, old_sets) = pick(o);
        let (new_chains, new_sets) = pick(n);
        groups.push(Group {
            old_chains,
            new_chains,
            old_sets,
            new_sets,
        });
    }
    groups
}

/// Borrowed entries of a sorted map or set.
type Entries<'a, K, V> = Vec<(&'a K, &'a V)>;

/// What differs between two sequences sorted by key, as `(removed, added)`: an entry whose value
/// changed is in both. One pass, no lookups.
fn merge_diff<'a, K: Ord + 'a, V: PartialEq + 'a>(
    old: impl Iterator<Item = (&'a K, &'a V)>,
    new: impl Iterator<Item = (&'a K, &'a V)>,
) -> (Entries<'a, K, V>, Entries<'a, K, V>) {
    let (mut old, mut new) = (old.peekable(), new.peekable());
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(&(ok, ov)), Some(&(nk, nv))) if ok == nk => {
                if ov != nv {
                    removed.push((ok, ov));
                    added.push((nk, nv));
                }
                old.next();
                new.next();
            }
            (Some(&(ok, _)), Some(&(nk, _))) if ok < nk => removed.extend(old.next()),
            (Some(_), None) => removed.extend(old.next()),
            _ => added.extend(new.next()),
        }
    }
    (removed, added)
}

/// An address of `set` as its element: paired with itself in a pair set.
fn addr_element<'a>(set: &Set, a: &'a IpAddr) -> Element<'a> {
    if matches!(set.kind, SetKind::AddrPairs(_)) {
        Element::Pair(a)
    } else {
        Element::Addr(a)
    }
}

fn elements(set: &Set) -> impl Iterator<Item = Element<'_>> {
    set.addrs
        .iter()
        .map(move |a| addr_element(set, a))
        .chain(set.keys.iter().map(Element::Key))
        .chain(set.map.iter().map(|(k, v)| Element::Map(k, v)))
}

fn render_op(out: &mut String, t: &str, op: &Op<'_>) {
    let w = "writing to a String";
    match op {
        Op::AddChain {
            name,
            hook: Some(h),
        } => writeln!(
            out,
            "add chain {t} {name} {{ type {} hook {} priority {} ; policy accept ; }}",
            match h.chain_type {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            },
            h.hook.as_str(),
            h.priority
        ),
        Op::AddChain { name, hook: None } => writeln!(out, "add chain {t} {name}"),
        Op::AddSet { name, kind } => {
            let decl = match kind {
                SetKind::Addrs(f) => format!("set {t} {name} {{ type {} ; }}", f.addr_type()),
                SetKind::AddrPairs(f) => {
                    format!("set {t} {name} {{ type {0} . {0} ; }}", f.addr_type())
                }
                SetKind::AddrProtoPortSet(f) => format!(
                    "set {t} {name} {{ type {} . inet_proto . inet_service ; }}",
                    f.addr_type()
                ),
                SetKind::Affinity { family, timeout } => format!(
                    "set {t} {name} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                    family.addr_type()
                ),
                SetKind::AddrProtoPortMap(f) => format!(
                    "map {t} {name} {{ type {} . inet_proto . inet_service : verdict ; }}",
                    f.addr_type()
                ),
                SetKind::ProtoPortMap => {
                    format!("map {t} {name} {{ type inet_proto . inet_service : verdict ; }}")
                }
            };
            writeln!(out, "add {decl}")
        }
        Op::FlushChain(name) => writeln!(out, "flush chain {t} {name}"),
        Op::AddRule { chain, rule } => {
            for rule in expand(rule) {
                writeln!(out, "add rule {t} {chain} {rule}").expect(w);
            }
            Ok(())
        }
        Op::DeleteElements { set, elements } => {
            render_elements(out, &format!("delete element {t} {set}"), elements, false);
            Ok(())
        }
        Op::AddElements { set, elements } => {
            render_elements(out, &format!("add element {t} {set}"), elements, true);
            Ok(())
        }
        Op::DeleteChain(name) => writeln!(out, "delete chain {t} {name}"),
        Op::DeleteSet { name, kind } => {
            let keyword = match kind {
                SetKind::AddrProtoPortMap(_) | SetKind::ProtoPortMap => "map",
                SetKind::Addrs(_)
                | SetKind::AddrPairs(_)
                | SetKind::AddrProtoPortSet(_)
                | SetKind::Affinity { .. } => "set",
            };
            writeln!(out, "delete {keyword} {t} {name}")
        }
    }
    .expect(w);
}

fn render_elements(out: &mut String, head: &str, elements: &[Element<'_>], with_verdicts: bool) {
    let w = "writing to a String";
    writeln!(out, "{head} {{").expect(w);
    let last = elements.len().saturating_sub(1);
    for (i, e) in elements.iter().enumerate() {
        let sep = if i == last { "" } else { "," };
        match e {
            Element::Addr(a) => writeln!(out, "\t{a}{sep}"),
            Element::Pair(a) => writeln!(out, "\t{a} . {a}{sep}"),
            Element::Key(k) => match k.addr {
                Some(a) => writeln!(out, "\t{a} . {} . {}{sep}", k.protocol, k.port),
                None => writeln!(out, "\t{} . {}{sep}", k.protocol, k.port),
            },
            Element::Map(k, v) => {
                let key = match k.addr {
                    Some(a) => format!("{a} . {} . {}", k.protocol, k.port),
                    None => format!("{} . {}", k.protocol, k.port),
                };
                if with_verdicts {
                    writeln!(out, "\t{key} : {v}{sep}")
                } else {
                    writeln!(out, "\t{key}{sep}")
                }
            }
        }
        .expect(w);
    }
    writeln!(out, "}}").expect(w);
}

#[cfg(test)]
#[path = "transaction_tests.rs"]
mod tests;
