//! The packet tracer: walks a synthetic packet through a [`Ruleset`]'s IR, hook by hook, and says
//! where it ends (DNAT to which endpoint, masqueraded or not, rejected, dropped, or untouched).
//!
//! Invariants: it interprets the same IR that [`Ruleset::render`] prints, so what it proves about the
//! IR holds for the text the kernel gets; every packet is the first of a new connection (nat chains
//! only see those); `numgen` forks the walk so a trace returns every possible outcome, unless a
//! branch is picked. It models only what nodus's own table can do: other tables, routing beyond
//! "is the destination a local address", and set timeouts are out of scope.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::model::Protocol;
use super::ruleset::{Family, HookPoint, MapKey, Match, Pick, Ruleset, SetKind, Stmt, Verdict};

/// Where a packet comes from, which decides the hooks it traverses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A process on the node (hostNetwork): output, postrouting, and input if local.
    Host,
    /// A pod on this node (through the bridge): prerouting, then forward or input.
    Pod,
    /// Another machine: prerouting, then forward or input.
    External,
}

/// A synthetic packet: the first packet of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub origin: Origin,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub dport: u16,
}

/// Where a packet ends up as far as nodus's table is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Dnat {
        to: SocketAddr,
        masquerade: bool,
    },
    /// Not translated (not a service, or a port no rule matched); maybe masqueraded.
    Accept {
        masquerade: bool,
    },
    Reject,
    Drop,
}

/// A tracer over one ruleset, with the node's local addresses and the affinity sets' contents.
#[derive(Debug)]
pub struct Tracer<'a> {
    ruleset: &'a Ruleset,
    local: BTreeSet<IpAddr>,
    affinity: BTreeMap<String, BTreeSet<IpAddr>>,
}

#[derive(Debug, Clone)]
struct State {
    daddr: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    masquerade: bool,
    updates: Vec<(String, IpAddr)>,
}

/// How a chain walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Fell off the end or `return`: the caller continues.
    Return,
    /// Accepted for this hook (a NAT statement ends its chain with accept).
    Accept,
    Reject,
    Drop,
}

const MAX_DEPTH: usize = 32;

impl<'a> Tracer<'a> {
    /// `local` are the node's addresses (what `fib daddr type local` matches, besides loopback).
    pub fn new(ruleset: &'a Ruleset, local: impl IntoIterator<Item = IpAddr>) -> Self {
        Tracer {
            ruleset,
            local: local.into_iter().collect(),
            affinity: BTreeMap::new(),
        }
    }

    /// Every possible outcome for `packet` (one per `numgen` branch taken), without changing the
    /// affinity sets.
    pub fn trace(&self, packet: &Packet) -> BTreeSet<Outcome> {
        self.walk(packet, None)
            .into_iter()
            .map(|(_, outcome)| outcome)
            .collect()
    }

    /// The endpoints `packet` may be DNAT'd to, when every outcome is a DNAT.
    pub fn endpoints(&self, packet: &Packet) -> BTreeSet<SocketAddr> {
        self.trace(packet)
            .into_iter()
            .map(|o| match o {
                Outcome::Dnat { to, .. } => to,
                other => panic!("expected only DNAT outcomes for {packet:?}, got {other:?}"),
            })
            .collect()
    }

    /// One connection: at each `numgen` the branch `pick % N` is taken, and the affinity updates
    /// on the way are recorded, as the kernel would.
    pub fn connect(&mut self, packet: &Packet, pick: usize) -> Outcome {
        let mut paths = self.walk(packet, Some(pick));
        assert_eq!(paths.len(), 1, "a picked walk has one path");
        let (state, outcome) = paths.remove(0);
        for (set, addr) in state.updates {
            self.affinity.entry(set).or_default().insert(addr);
        }
        outcome
    }

    fn walk(&self, p: &Packet, pick: Option<usize>) -> Vec<(State, Outcome)> {
        let start = State {
            daddr: p.dst,
            dport: p.dport,
            mark: 0,
            dnat: None,
            masquerade: false,
            updates: Vec::new(),
        };
        let mut done = Vec::new();
        // (state, hooks still to run); routing after prerouting/output decides the rest.
        let mut paths = vec![(start, 0usize)];
        while let Some((state, step)) = paths.pop() {
            let hook = match (p.origin, step) {
                (Origin::Host, 0) => Some(HookPoint::Output),
                (Origin::Host, 1) => Some(HookPoint::Postrouting),
                (Origin::Host, 2) if self.is_local(state.daddr) => Some(HookPoint::Input),
                (Origin::Pod | Origin::External, 0) => Some(HookPoint::Prerouting),
                (Origin::Pod | Origin::External, 1) if self.is_local(state.daddr) => {
                    Some(HookPoint::Input)
                }
                (Origin::Pod | Origin::External, 1) => Some(HookPoint::Forward),
                (Origin::Pod | Origin::External, 2) if !self.is_local(state.daddr) => {
                    Some(HookPoint::Postrouting)
                }
                _ => None,
            };
            let Some(hook) = hook else {
                let outcome = match state.dnat {
                    Some(to) => Outcome::Dnat {
                        to,
                        masquerade: state.masquerade,
                    },
                    None => Outcome::Accept {
                        masquerade: state.masquerade,
                    },
                };
                done.push((state, outcome));
                continue;
            };
            for (state, flow) in self.run_hook(hook, p, state, pick) {
                match flow {
                    Flow::Reject => done.push((state, Outcome::Reject)),
                    Flow::Drop => done.push((state, Outcome::Drop)),
                    Flow::Accept | Flow::Return => paths.push((state, step + 1)),
                }
            }
        }
        done
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(&ip)
    }

    /// Runs the base chains of `hook` in priority order; a path that is rejected or dropped
    /// stops, the others go on to the next chain.
    fn run_hook(
        &self,
        hook: HookPoint,
        p: &Packet,
        state: State,
        pick: Option<usize>,
    ) -> Vec<(State, Flow)> {
        let mut base: Vec<(i32, &String)> = self
            .ruleset
            .chains
            .iter()
            .filter_map(|(name, c)| {
                c.hook
                    .filter(|h| h.hook == hook)
                    .map(|h| (h.priority, name))
            })
            .collect();
        base.sort();
        let mut paths = vec![(state, Flow::Accept)];
        for (_, chain) in base {
            let mut next = Vec::new();
            for (state, flow) in paths {
                if flow != Flow::Accept {
                    next.push((state, flow));
                    continue;
                }
                for (s, f) in self.run_chain(chain, 0, p, state, pick, 0) {
                    next.push((s, if f == Flow::Return { Flow::Accept } else { f }));
                }
            }
            paths = next;
        }
        paths
    }

    fn run_chain(
        &self,
        chain: &str,
        from: usize,
        p: &Packet,
        mut state: State,
        pick: Option<usize>,
        depth: usize,
    ) -> Vec<(State, Flow)> {
        assert!(depth < MAX_DEPTH, "chain loop through {chain}");
        let rules = &self
            .ruleset
            .chain(chain)
            .unwrap_or_else(|| panic!("rule refers to a missing chain {chain}"))
            .rules;
        for (i, rule) in rules.iter().enumerate().skip(from) {
            if !rule.matches.iter().all(|m| self.matches(m, p, &state)) {
                continue;
            }
            for stmt in &rule.stmts {
                let verdict = match stmt {
                    Stmt::Verdict(v) => Some(v.clone()),
                    Stmt::VmapAddrProtoPort(family, map) => {
                        if Family::of(state.daddr) != *family {
                            None
                        } else {
                            self.lookup(map, Some(state.daddr), p.protocol, state.dport)
                        }
                    }
                    Stmt::VmapProtoPort(map) => self.lookup(map, None, p.protocol, state.dport),
                    Stmt::NumgenDnat(_, picks) => {
                        assert!(!picks.is_empty(), "numgen with no picks in {chain}");
                        let chosen: Vec<&Pick> = match pick {
                            Some(i) => vec![&picks[i % picks.len()]],
                            None => picks.iter().collect(),
                        };
                        return chosen
                            .into_iter()
                            .map(|chosen| {
                                let mut state = state.clone();
                                if let Some(set) = &chosen.affinity {
                                    state.updates.push((set.clone(), p.src));
                                }
                                state.dnat = Some(chosen.to);
                                state.daddr = chosen.to.ip();
                                state.dport = chosen.to.port();
                                (state, Flow::Accept)
                            })
                            .collect();
                    }
                    Stmt::MarkOr(m) => {
                        state.mark |= m;
                        None
                    }
                    Stmt::MarkXor(m) => {
                        state.mark ^= m;
                        None
                    }
                    Stmt::UpdateSaddr(_, set) => {
                        state.updates.push((set.clone(), p.src));
                        None
                    }
                    Stmt::Dnat(to) => {
                        state.dnat = Some(*to);
                        state.daddr = to.ip();
                        state.dport = to.port();
                        return vec![(state, Flow::Accept)];
                    }
                    Stmt::Masquerade => {
                        state.masquerade = true;
                        return vec![(state, Flow::Accept)];
                    }
                    Stmt::RejectTcpReset | Stmt::RejectPortUnreachable => {
                        return vec![(state, Flow::Reject)];
                    }
                };
                match verdict {
                    None => {}
                    Some(Verdict::Return) => return vec![(state, Flow::Return)],
                    Some(Verdict::Drop) => return vec![(state, Flow::Drop)],
                    Some(Verdict::Goto(target)) => {
                        return self.run_chain(&target, 0, p, state, pick, depth + 1);
                    }
                    Some(Verdict::Jump(target)) => {
                        let mut out = Vec::new();
                        for (s, flow) in self.run_chain(&target, 0, p, state, pick, depth + 1) {
                            if flow == Flow::Return {
                                out.extend(self.run_chain(chain, i + 1, p, s, pick, depth));
                            } else {
                                out.push((s, flow));
                            }
                        }
                        return out;
                    }
                }
            }
        }
        vec![(state, Flow::Return)]
    }

    fn lookup(
        &self,
        map: &str,
        addr: Option<IpAddr>,
        protocol: Protocol,
        port: u16,
    ) -> Option<Verdict> {
        let set = self
            .ruleset
            .set(map)
            .unwrap_or_else(|| panic!("rule refers to a missing map {map}"));
        set.map
            .get(&MapKey {
                addr,
                protocol,
                port,
            })
            .cloned()
    }

    fn in_set(&self, name: &str, ip: IpAddr) -> bool {
        let set = self
            .ruleset
            .set(name)
            .unwrap_or_else(|| panic!("rule refers to a missing set {name}"));
        match set.kind {
            SetKind::Affinity { .. } => self.affinity.get(name).is_some_and(|s| s.contains(&ip)),
            _ => set.addrs.contains(&ip),
        }
    }

    fn matches(&self, m: &Match, p: &Packet, s: &State) -> bool {
        let fam = |ip: IpAddr, f: &Family| Family::of(ip) == *f;
        match m {
            Match::CtStateNew => true,
            Match::Daddr(ip) => s.daddr == *ip,
            Match::DaddrNotIn(net) => {
                Family::of(s.daddr) == Family::of(net.addr()) && !net.contains(&s.daddr)
            }
            Match::DaddrInSet(f, set) => fam(s.daddr, f) && self.in_set(set, s.daddr),
            Match::Saddr(ip) => p.src == *ip,
            Match::SaddrNotIn(f, nets) => fam(p.src, f) && !nets.iter().any(|n| n.contains(&p.src)),
            Match::SaddrInNet(net) => net.contains(&p.src),
            Match::SaddrInSet(f, set) => fam(p.src, f) && self.in_set(set, p.src),
            Match::FibDaddrLocal => self.is_local(s.daddr),
            Match::FibSaddrLocal => p.origin == Origin::Host || self.is_local(p.src),
            Match::L4Proto(proto) => p.protocol == *proto,
            Match::Dport(port) => s.dport == *port,
            Match::MarkClear(m) => s.mark & m == 0,
            // Only DNAT'd packets get this far with a source equal to their destination.
            Match::SaddrDaddrInSet(f, set) => {
                fam(p.src, f) && p.src == s.daddr && self.in_set(set, p.src)
            }
            Match::CtStatusDnat => s.dnat.is_some(),
            Match::DaddrProtoPortInSet(f, name) => {
                let key = MapKey {
                    addr: Some(s.daddr),
                    protocol: p.protocol,
                    port: s.dport,
                };
                fam(s.daddr, f)
                    && self
                        .ruleset
                        .set(name)
                        .is_some_and(|set| set.keys.contains(&key))
            }
            Match::Numgen(_) => unreachable!("a cascade is expanded only when rendered"),
        }
    }
}
