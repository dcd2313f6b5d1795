//! The ruleset: a pure function from the proxy model to the complete contents of nodus's one nftables
//! table, `table inet nodus`, as a structured IR that renders to `nft -f -` text and that the test
//! tracer walks.
//!
//! Invariants: the output depends only on the input (services are sorted, chains and sets live in
//! ordered maps, endpoints are sorted), so two builds of the same state render byte-identical text;
//! names are bounded (at most [`MAX_NAME_LEN`] bytes) and deterministic (`kind-HASH-readable`); every
//! key of the dispatch maps belongs to at most one service (the later of two claimants is skipped
//! with [`ServiceError::Conflict`]); an invalid service is skipped whole and never reaches the IR.
//!
//! The design follows upstream kube-proxy's nftables mode (KEP-3866, `pkg/proxy/nftables/README.md`):
//!
//! - Dispatch is O(1) in the number of services: `services` looks `ip daddr . meta l4proto . th dport`
//!   up in the verdict map `service-ips` (cluster, external and load-balancer IPs) and
//!   `meta l4proto . th dport` in `service-nodeports` for the node's NodePort addresses.
//! - Per service port: `svc-*` picks among all usable endpoints (cluster policy), `local-*` among this
//!   node's (Local policy), `ext-*` handles traffic to external destinations (NodePort, externalIPs,
//!   load-balancer IPs) before handing it to one of those. The pick is a cascade of rules that DNAT
//!   straight to an endpoint (`numgen random mod (N-i) 0 ... dnat to ep_i`), so there are no
//!   per-endpoint chains: upstream has one per endpoint, but every chain is a node the kernel walks
//!   when it validates the table at commit, and a rule change (any endpoint count change) pays for
//!   the whole walk — one chain per service port makes that walk a third as long.
//! - ClientIP affinity: one timed set per endpoint (`aff-*`, `flags dynamic,timeout`). The service
//!   chain first tries `ip saddr @aff ... dnat to ep`, and whichever rule picks an endpoint does
//!   `update @aff { ip saddr }` (refreshing the timeout on every new connection, as the iptables
//!   mode's `recent --set` does).
//! - Masquerade is decided in the nat chains by setting mark bit [`MASQ_MARK`] and done once, in
//!   postrouting: ClusterIP traffic from outside the cluster CIDRs, all external traffic with
//!   externalTrafficPolicy Cluster, host-originated external traffic, and hairpin (an endpoint
//!   reaching itself through its service, whose reply would otherwise bypass the node). Hairpin is
//!   found in postrouting, where a DNAT'd packet's source equals its new destination: the set
//!   `hairpin` holds `ep . ep` for every endpoint address, so an endpoint change is a set element
//!   change, not a rule change.
//! - Services without usable endpoints are in `no-endpoint-services` / `no-endpoint-nodeports`,
//!   checked in filter chains at priority -110 (before DNAT) on input, forward and output: `reject`
//!   (TCP reset, else ICMP port unreachable) so clients fail at once; `drop` when endpoints exist but
//!   none is local under a Local policy (as upstream: a load balancer's health check moves traffic).
//!   Packets to a ClusterIP on a port no service uses are rejected after DNAT (`cluster-ips-check`).
//!
//! Why one `inet` table rather than upstream's `ip` + `ip6` pair: one name to own and clean up, and
//! both families change in the same atomic transaction. Lookups are typed (`ip daddr` only matches
//! IPv4), so the cost for a packet is one implicit family check; v6 objects carry a `6` suffix.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::model::{
    Endpoint, Node, NodePortAddresses, Protocol, ProxyState, Service, ServiceError, ServicePort,
    SessionAffinity, TrafficPolicy,
};
use super::transaction::Transaction;

/// The table nodus owns. Nothing else is ever touched.
pub const TABLE: &str = "nodus";
/// The table's family.
pub const FAMILY: &str = "inet";
/// The comment nodus gives its table, so that `nft list ruleset` says whose it is.
pub const TABLE_COMMENT: &str = "nodus service proxy";
/// The mark bit meaning "masquerade this connection in postrouting" (the same bit kube-proxy uses).
pub const MASQ_MARK: u32 = 0x4000;
/// The longest chain or set name we generate; the kernel allows 255.
pub const MAX_NAME_LEN: usize = 200;

/// An address family; v6 objects carry a `6` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn of_net(net: &IpNet) -> Family {
        Family::of(net.addr())
    }

    /// The nft payload protocol (`ip` / `ip6`).
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    pub(crate) fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => "6",
        }
    }

    fn loopback(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.0/8".parse().expect("a valid loopback net"),
            Family::V6 => "::1/128".parse().expect("a valid loopback net"),
        }
    }

    /// The name of a per-family object: `service-ips` / `service-ips6`.
    pub fn object(self, base: &str) -> String {
        format!("{base}{}", self.suffix())
    }
}

/// Netfilter hooks used by the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl HookPoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Input => "input",
            HookPoint::Forward => "forward",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    pub chain_type: ChainType,
    pub hook: HookPoint,
    /// Numeric always: nft 1.0.6 refuses `priority dstnat` on the output hook.
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// A rule: all matches must hold, then the statements run in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub stmts: Vec<Stmt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    CtStateNew,
    Daddr(IpAddr),
    DaddrNotIn(IpNet),
    DaddrInSet(Family, String),
    Saddr(IpAddr),
    /// Outside all of these (rendered as one `!=` per net: no anonymous set, see [`Ruleset::render`]).
    SaddrNotIn(Family, Vec<IpNet>),
    SaddrInSet(Family, String),
    SaddrInNet(IpNet),
    /// `ip saddr . ip daddr @set`
    SaddrDaddrInSet(Family, String),
    /// `ip daddr . meta l4proto . th dport @set`
    DaddrProtoPortInSet(Family, String),
    /// `ct status dnat`
    CtStatusDnat,
    /// `numgen random mod M 0`: only in the rules a [`Stmt::NumgenDnat`] cascade renders to.
    Numgen(usize),
    FibDaddrLocal,
    FibSaddrLocal,
    L4Proto(Protocol),
    Dport(u16),
    /// `meta mark & M == 0`
    MarkClear(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    Verdict(Verdict),
    /// `ip daddr . meta l4proto . th dport vmap @map`
    VmapAddrProtoPort(Family, String),
    /// `meta l4proto . th dport vmap @map`
    VmapProtoPort(String),
    /// DNAT to one of the picks at random (each with probability 1/N), rendered as a cascade of
    /// rules (see [`numgen_cascade`]); the rule holding it has nothing after it.
    NumgenDnat(Protocol, Vec<Pick>),
    MarkOr(u32),
    MarkXor(u32),
    /// `update @set { ip saddr }`
    UpdateSaddr(Family, String),
    /// `dnat ip to A:P` (the rule must match the l4 protocol: nft needs it for a port).
    Dnat(SocketAddr),
    Masquerade,
    RejectTcpReset,
    RejectPortUnreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Chain names are shared: the dispatch maps hold one verdict per service and are copied on
    /// every build.
    Jump(Arc<str>),
    Goto(Arc<str>),
    Return,
    Drop,
}

/// One endpoint of a random choice: DNAT to `to`, first refreshing its affinity set if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub to: SocketAddr,
    pub affinity: Option<String>,
}

/// A key of a dispatch map: `addr . proto . port`, or `proto . port` for node ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MapKey {
    pub addr: Option<IpAddr>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKind {
    /// A plain address set.
    Addrs(Family),
    /// `addr . addr`, each element an address paired with itself (rendered `a . a`).
    AddrPairs(Family),
    /// `addr . inet_proto . inet_service`, without verdicts.
    AddrProtoPortSet(Family),
    /// ClientIP affinity: dynamic, entries expire `timeout` seconds after their last update.
    Affinity { family: Family, timeout: u32 },
    /// `addr . inet_proto . inet_service : verdict`
    AddrProtoPortMap(Family),
    /// `inet_proto . inet_service : verdict`
    ProtoPortMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    pub addrs: BTreeSet<IpAddr>,
    pub keys: BTreeSet<MapKey>,
    pub map: BTreeMap<MapKey, Verdict>,
}

impl Set {
    fn new(kind: SetKind) -> Set {
        Set {
            kind,
            addrs: BTreeSet::new(),
            keys: BTreeSet::new(),
            map: BTreeMap::new(),
        }
    }

    /// Whether the set's elements are state the kernel keeps (affinity), not desired state.
    pub fn is_dynamic(&self) -> bool {
        matches!(self.kind, SetKind::Affinity { .. })
    }
}

/// The complete contents of the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// The fixed chains.
    pub chains: BTreeMap<String, Chain>,
    /// The shared sets and dispatch maps, holding every service's elements.
    pub sets: BTreeMap<String, Set>,
    /// Each service's own chains and affinity sets, by service id (`namespace/name`). Shared
    /// between builds while the service is unchanged, so a diff can skip it without looking in.
    pub services: BTreeMap<Arc<str>, Arc<ServiceObjects>>,
}

/// The chains and sets that belong to one service (their names embed its id, so they never
/// collide with another service's).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceObjects {
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
}

/// A build: the ruleset and the services left out of it, each with its reason.
#[derive(Debug, Clone)]
pub struct Build {
    pub ruleset: Ruleset,
    pub skipped: Vec<ServiceError>,
}

// Fixed chain names.
const FILTER_INPUT: &str = "filter-input";
const FILTER_FORWARD: &str = "filter-forward";
const FILTER_OUTPUT: &str = "filter-output";
const FILTER_OUTPUT_POST_DNAT: &str = "filter-output-post-dnat";
const NAT_PREROUTING: &str = "nat-prerouting";
const NAT_OUTPUT: &str = "nat-output";
const NAT_POSTROUTING: &str = "nat-postrouting";
const SERVICES: &str = "services";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const REJECT_CHAIN: &str = "reject-chain";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";

// Per-family object bases (see [`Family::object`]).
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const CLUSTER_IPS: &str = "cluster-ips";
const NODEPORT_IPS: &str = "nodeport-ips";
const HAIRPIN: &str = "hairpin";
const MASQUERADE_FROM_OUTSIDE: &str = "cluster-ips-masquerade";

/// Filter chains run before DNAT (-100), so they still see the service address.
const FILTER_PRIORITY: i32 = -110;
const DSTNAT_PRIORITY: i32 = -100;
const SRCNAT_PRIORITY: i32 = 100;

fn rule(matches: Vec<Match>, stmts: Vec<Stmt>) -> Rule {
    Rule { matches, stmts }
}

fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.into()))
}

fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.into()))
}

/// Builds the ruleset for `state`. Never fails: bad services are skipped and reported.
pub fn build(state: &ProxyState) -> Build {
    Builder::default().build(state)
}

/// Builds rulesets like [`build`], remembering each service's part so that the next build reuses
/// it while the service (and the node) are unchanged, and remembering the last ruleset so that a
/// build that changes a few services patches it: at 10k services one endpoint change then costs
/// one service's work and a copy of the result, not a pass that merges every service again. The
/// result is always equal to what [`build`] returns for the same state.
#[derive(Debug, Default)]
pub struct Builder {
    node: Option<Node>,
    parts: HashMap<Arc<str>, (Arc<Service>, Arc<Fragment>)>,
    last: Option<Patchable>,
}

/// Whether `known` (remembered) and `now` are the same Service: the same allocation when the
/// mapper reused it, else compared field by field.
fn unchanged(known: &Arc<Service>, now: &Arc<Service>) -> bool {
    Arc::ptr_eq(known, now) || known == now
}

/// A build kept for patching: the ruleset, who owns each dispatch key, and how many services put
/// each address into the shared address sets (an address stays while one of them is left).
#[derive(Debug)]
struct Patchable {
    ruleset: Ruleset,
    owners: Owners,
    refs: HashMap<(String, IpAddr), u32>,
}

/// Above this many changed services a build starts from scratch: patching saves nothing there.
const MAX_PATCHED: usize = 64;

impl Builder {
    pub fn build(&mut self, state: &ProxyState) -> Build {
        if self.node.as_ref() == Some(&state.node)
            && let Some(build) = self.patch(state)
        {
            return build;
        }
        self.rebuild(state)
    }

    fn rebuild(&mut self, state: &ProxyState) -> Build {
        if self.node.as_ref() != Some(&state.node) {
            self.parts.clear();
            self.node = Some(state.node.clone());
        }
        let mut last = Patchable {
            ruleset: skeleton(&state.node),
            owners: Owners::new(),
            refs: HashMap::new(),
        };
        let mut skipped = Vec::new();
        let mut conflicts = false;
        let mut parts = HashMap::with_capacity(state.services.len());

        let mut services: Vec<&Arc<Service>> = state.services.iter().collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for service in services {
            let id: Arc<str> = service.id().into();
            let (known, fragment) = match self.parts.remove(&id) {
                // Moved, not cloned: at 10k services the clones would dominate a sync.
                Some((known, fragment)) if unchanged(&known, service) => (known, fragment),
                _ => {
                    if let Err(err) = service.validate() {
                        skipped.push(err);
                        continue;
                    }
                    let fragment = Arc::new(service_fragment(service, &state.node));
                    (Arc::clone(service), fragment)
                }
            };
            if let Some(err) = fragment.conflict(&last.owners, &id) {
                skipped.push(err);
                conflicts = true;
                continue;
            }
            fragment.merge_into(&mut last, &id);
            parts.insert(id, (known, fragment));
        }
        // Only what this state holds is remembered: a deleted service's part is dropped.
        self.parts = parts;
        let ruleset = last.ruleset.clone();
        // Who wins a conflict depends on every claimant, so a build with one is never patched.
        self.last = (!conflicts).then_some(last);
        Build { ruleset, skipped }
    }

    /// The build of `state` as a patch of the last one, or `None` when that is not possible or
    /// not worth it (then nothing that matters was changed: the caller rebuilds).
    fn patch(&mut self, state: &ProxyState) -> Option<Build> {
        let last = self.last.as_mut()?;
        let ids: Vec<String> = state.services.iter().map(|s| s.id()).collect();
        let present: HashSet<&str> = ids.iter().map(String::as_str).collect();
        if present.len() != ids.len() {
            return None;
        }
        let mut changed: Vec<(&str, &Arc<Service>)> = Vec::new();
        for (id, service) in ids.iter().zip(&state.services) {
            match self.parts.get(id.as_str()) {
                Some((known, _)) if unchanged(known, service) => {}
                _ => changed.push((id, service)),
            }
            if changed.len() > MAX_PATCHED {
                return None;
            }
        }
        // The remembered parts to take out: those of edited services, and of services gone.
        let mut gone: Vec<Arc<str>> = changed
            .iter()
            .filter_map(|(id, _)| self.parts.get_key_value(*id).map(|(k, _)| k.clone()))
            .collect();
        let unchanged = ids.len() - changed.len();
        if self.parts.len() > unchanged + gone.len() {
            gone.extend(
                self.parts
                    .keys()
                    .filter(|id| !present.contains(id.as_ref()))
                    .cloned(),
            );
        }
        if gone.len() > MAX_PATCHED {
            return None;
        }
        for id in &gone {
            if let Some((_, fragment)) = self.parts.remove(id) {
                fragment.unmerge_from(last, id);
            }
        }
        // In name order, as a full build reports them.
        changed.sort_by(|a, b| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name)));
        let mut skipped = Vec::new();
        for (id, service) in changed {
            if let Err(err) = service.validate() {
                skipped.push(err);
                continue;
            }
            let id: Arc<str> = id.into();
            let fragment = Arc::new(service_fragment(service, &state.node));
            if fragment.conflict(&last.owners, &id).is_some() {
                // Whether this one or the owner is skipped depends on their names: a full build
                // decides. The parts merged so far stay valid for it.
                self.last = None;
                return None;
            }
            fragment.merge_into(last, &id);
            self.parts.insert(id, (Arc::clone(service), fragment));
        }
        Some(Build {
            ruleset: last.ruleset.clone(),
            skipped,
        })
    }
}

/// The fixed part: base chains, dispatch chains and the (possibly empty) maps and sets.
fn skeleton(node: &Node) -> Ruleset {
    let mut rs = Ruleset::default();
    let base = |chain_type, hook, priority| Chain {
        hook: Some(Hook {
            chain_type,
            hook,
            priority,
        }),
        rules: Vec::new(),
    };
    let new = || vec![Match::CtStateNew];
    let mut add = |name: &str, chain: Chain, rules: Vec<Rule>| {
        rs.chains.insert(name.to_owned(), Chain { rules, ..chain });
    };

    add(
        FILTER_INPUT,
        base(ChainType::Filter, HookPoint::Input, FILTER_PRIORITY),
        vec![
            rule(new(), vec![jump(NODEPORT_ENDPOINTS_CHECK)]),
            rule(new(), vec![jump(SERVICE_ENDPOINTS_CHECK)]),
        ],
    );
    add(
        FILTER_FORWARD,
        base(ChainType::Filter, HookPoint::Forward, FILTER_PRIORITY),
        vec![
            rule(new(), vec![jump(SERVICE_ENDPOINTS_CHECK)]),
            rule(new(), vec![jump(CLUSTER_IPS_CHECK)]),
        ],
    );
    add(
        FILTER_OUTPUT,
        base(ChainType::Filter, HookPoint::Output, FILTER_PRIORITY),
        vec![rule(new(), vec![jump(SERVICE_ENDPOINTS_CHECK)])],
    );
    // After DNAT: a packet still addressed to a ClusterIP here matched no service port.
    add(
        FILTER_OUTPUT_POST_DNAT,
        base(ChainType::Filter, HookPoint::Output, DSTNAT_PRIORITY + 10),
        vec![rule(new(), vec![jump(CLUSTER_IPS_CHECK)])],
    );
    add(
        NAT_PREROUTING,
        base(ChainType::Nat, HookPoint::Prerouting, DSTNAT_PRIORITY),
        vec![rule(vec![], vec![jump(SERVICES)])],
    );
    add(
        NAT_OUTPUT,
        base(ChainType::Nat, HookPoint::Output, DSTNAT_PRIORITY),
        vec![rule(vec![], vec![jump(SERVICES)])],
    );
    add(
        NAT_POSTROUTING,
        base(ChainType::Nat, HookPoint::Postrouting, SRCNAT_PRIORITY),
        vec![rule(vec![], vec![jump(MASQUERADING)])],
    );

    let nodeport_match = |family: Family| match &node.node_port_addresses {
        NodePortAddresses::AllLocal => {
            vec![Match::FibDaddrLocal, Match::DaddrNotIn(family.loopback())]
        }
        NodePortAddresses::Only(_) => vec![Match::DaddrInSet(family, family.object(NODEPORT_IPS))],
    };
    let mut services = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut nodeports_check = Vec::new();
    let mut cluster_ips_check = Vec::new();
    for family in Family::ALL {
        // ClusterIP traffic from outside the cluster is masqueraded, so that the reply comes
        // back through this node (one rule and a set of service ports, not a rule per service:
        // every rule is validated again on each commit).
        let cidrs = cluster_cidrs(node, family);
        if !cidrs.is_empty() {
            services.push(rule(
                vec![
                    Match::DaddrProtoPortInSet(family, family.object(MASQUERADE_FROM_OUTSIDE)),
                    Match::SaddrNotIn(family, cidrs),
                ],
                vec![jump(MARK_FOR_MASQUERADE)],
            ));
        }
    }
    for family in Family::ALL {
        services.push(rule(
            vec![],
            vec![Stmt::VmapAddrProtoPort(family, family.object(SERVICE_IPS))],
        ));
        endpoints_check.push(rule(
            vec![],
            vec![Stmt::VmapAddrProtoPort(
                family,
                family.object(NO_ENDPOINT_SERVICES),
            )],
        ));
        cluster_ips_check.push(rule(
            vec![Match::DaddrInSet(family, family.object(CLUSTER_IPS))],
            vec![goto(REJECT_CHAIN)],
        ));
    }
    for family in Family::ALL {
        services.push(rule(
            nodeport_match(family),
            vec![Stmt::VmapProtoPort(family.object(SERVICE_NODEPORTS))],
        ));
        nodeports_check.push(rule(
            nodeport_match(family),
            vec![Stmt::VmapProtoPort(family.object(NO_ENDPOINT_NODEPORTS))],
        ));
    }
    let plain = Chain::default;
    add(SERVICES, plain(), services);
    add(SERVICE_ENDPOINTS_CHECK, plain(), endpoints_check);
    add(NODEPORT_ENDPOINTS_CHECK, plain(), nodeports_check);
    add(CLUSTER_IPS_CHECK, plain(), cluster_ips_check);
    add(
        REJECT_CHAIN,
        plain(),
        vec![
            rule(
                vec![Match::L4Proto(Protocol::Tcp)],
                vec![Stmt::RejectTcpReset],
            ),
            rule(vec![], vec![Stmt::RejectPortUnreachable]),
        ],
    );
    add(
        MARK_FOR_MASQUERADE,
        plain(),
        vec![rule(vec![], vec![Stmt::MarkOr(MASQ_MARK)])],
    );
    // Hairpin: a DNAT'd connection whose source is its (new) destination.
    let mut masquerading: Vec<Rule> = Family::ALL
        .into_iter()
        .map(|family| {
            rule(
                vec![
                    Match::CtStatusDnat,
                    Match::SaddrDaddrInSet(family, family.object(HAIRPIN)),
                ],
                vec![Stmt::MarkOr(MASQ_MARK)],
            )
        })
        .collect();
    // Pod traffic leaving the cluster's pod network goes out with the node's address (the
    // bridge network does not masquerade, and other nodes route only pod CIDRs back).
    for family in Family::ALL {
        let cidrs = cluster_cidrs(node, family);
        for source in &cidrs {
            let mut matches = vec![Match::SaddrInNet(*source)];
            matches.extend(cidrs.iter().map(|c| Match::DaddrNotIn(*c)));
            masquerading.push(rule(matches, vec![Stmt::Masquerade]));
        }
    }
    masquerading.extend([
        rule(
            vec![Match::MarkClear(MASQ_MARK)],
            vec![Stmt::Verdict(Verdict::Return)],
        ),
        // Clear the bit so a packet that is routed again (e.g. encapsulated) is not
        // masqueraded twice.
        rule(vec![], vec![Stmt::MarkXor(MASQ_MARK)]),
        rule(vec![], vec![Stmt::Masquerade]),
    ]);
    add(MASQUERADING, plain(), masquerading);

    for family in Family::ALL {
        rs.sets.insert(
            family.object(SERVICE_IPS),
            Set::new(SetKind::AddrProtoPortMap(family)),
        );
        rs.sets.insert(
            family.object(NO_ENDPOINT_SERVICES),
            Set::new(SetKind::AddrProtoPortMap(family)),
        );
        rs.sets.insert(
            family.object(SERVICE_NODEPORTS),
            Set::new(SetKind::ProtoPortMap),
        );
        rs.sets.insert(
            family.object(NO_ENDPOINT_NODEPORTS),
            Set::new(SetKind::ProtoPortMap),
        );
        rs.sets
            .insert(family.object(CLUSTER_IPS), Set::new(SetKind::Addrs(family)));
        rs.sets
            .insert(family.object(HAIRPIN), Set::new(SetKind::AddrPairs(family)));
        rs.sets.insert(
            family.object(MASQUERADE_FROM_OUTSIDE),
            Set::new(SetKind::AddrProtoPortSet(family)),
        );
        if let NodePortAddresses::Only(ips) = &node.node_port_addresses {
            let mut set = Set::new(SetKind::Addrs(family));
            set.addrs = ips
                .iter()
                .copied()
                .filter(|ip| Family::of(*ip) == family)
                .collect();
            rs.sets.insert(family.object(NODEPORT_IPS), set);
        }
    }
    rs
}

/// The node's cluster CIDRs of one family.
fn cluster_cidrs(node: &Node, family: Family) -> Vec<IpNet> {
    node.cluster_cidrs
        .iter()
        .filter(|n| Family::of_net(n) == family)
        .copied()
        .collect()
}

/// Everything one service contributes, checked for conflicts before it is merged.
#[derive(Debug, Default)]
pub struct Fragment {
    objects: Arc<ServiceObjects>,
    /// (map name, key, verdict) for the four dispatch maps.
    entries: Vec<(String, Family, MapKey, Verdict)>,
    cluster_ips: Vec<IpAddr>,
    /// Every endpoint address, for the `hairpin` sets.
    hairpin: Vec<IpAddr>,
    /// ClusterIP ports whose traffic from outside the cluster is masqueraded.
    masquerade: Vec<(Family, MapKey)>,
}

type Owners = HashMap<(Option<IpAddr>, Family, Protocol, u16), Arc<str>>;

impl Fragment {
    fn owner_key(family: Family, key: &MapKey) -> (Option<IpAddr>, Family, Protocol, u16) {
        (key.addr, family, key.protocol, key.port)
    }

    fn conflict(&self, owners: &Owners, service: &Arc<str>) -> Option<ServiceError> {
        let mut mine = BTreeSet::new();
        for (_, family, key, _) in &self.entries {
            let k = Self::owner_key(*family, key);
            let owner = owners
                .get(&k)
                .cloned()
                .or_else(|| (!mine.insert(k)).then(|| service.clone()));
            if let Some(owner) = owner {
                return Some(ServiceError::Conflict {
                    service: service.to_string(),
                    ip: key
                        .addr
                        .map_or("node ports".to_owned(), |ip| ip.to_string()),
                    protocol: key.protocol,
                    port: key.port,
                    owner: owner.to_string(),
                });
            }
        }
        None
    }

    fn merge_into(&self, last: &mut Patchable, service: &Arc<str>) {
        let rs = &mut last.ruleset;
        rs.services.insert(service.clone(), self.objects.clone());
        for (map, family, key, verdict) in &self.entries {
            last.owners
                .insert(Self::owner_key(*family, key), service.clone());
            rs.sets
                .get_mut(map)
                .expect("the skeleton declares every dispatch map")
                .map
                .insert(*key, verdict.clone());
        }
        for (family, key) in &self.masquerade {
            rs.sets
                .get_mut(&family.object(MASQUERADE_FROM_OUTSIDE))
                .expect("the skeleton declares both masquerade sets")
                .keys
                .insert(*key);
        }
        for (base, ip) in self.addresses() {
            let set = Family::of(ip).object(base);
            let count = last.refs.entry((set.clone(), ip)).or_insert(0);
            *count += 1;
            if *count == 1 {
                rs.sets
                    .get_mut(&set)
                    .expect("the skeleton declares every address set")
                    .addrs
                    .insert(ip);
            }
        }
    }

    /// Takes back what [`Fragment::merge_into`] put in.
    fn unmerge_from(&self, last: &mut Patchable, service: &str) {
        let rs = &mut last.ruleset;
        rs.services.remove(service);
        for (map, family, key, _) in &self.entries {
            last.owners.remove(&Self::owner_key(*family, key));
            if let Some(set) = rs.sets.get_mut(map) {
                set.map.remove(key);
            }
        }
        // Each key has one owner (see `conflict`), so it is this fragment's alone.
        for (family, key) in &self.masquerade {
            if let Some(set) = rs.sets.get_mut(&family.object(MASQUERADE_FROM_OUTSIDE)) {
                set.keys.remove(key);
            }
        }
        for (base, ip) in self.addresses() {
            let set = Family::of(ip).object(base);
            let key = (set, ip);
            let Some(count) = last.refs.get_mut(&key) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                last.refs.remove(&key);
                if let Some(set) = rs.sets.get_mut(&key.0) {
                    set.addrs.remove(&ip);
                }
            }
        }
    }

    /// The addresses this service puts into shared sets: (set base name, address).
    fn addresses(&self) -> impl Iterator<Item = (&'static str, IpAddr)> + '_ {
        let cluster = self.cluster_ips.iter().map(|&ip| (CLUSTER_IPS, ip));
        cluster.chain(self.hairpin.iter().map(|&ip| (HAIRPIN, ip)))
    }
}

/// The readable part of a service port's names: `namespace/name/proto/port`.
fn readable(service: &Service, port: &ServicePort) -> String {
    let port_name = if port.name.is_empty() {
        format!("p{}", port.port)
    } else {
        port.name.clone()
    };
    format!(
        "{}/{}/{}/{}",
        service.namespace, service.name, port.protocol, port_name
    )
}

/// A bounded, deterministic name: `kind[6]-HASH-readable`. The hash covers the whole untruncated
/// name, so truncation never makes two names equal; ':' (IPv6) is not allowed in nft identifiers.
pub fn object_name(kind: &str, family: Family, readable: &str) -> String {
    let prefix = format!("{kind}{}", family.suffix());
    let readable = readable.replace(':', ".");
    let hash = short_hash(&format!("{prefix}|{readable}"));
    let mut name = format!("{prefix}-{hash}-{readable}");
    // Names are ASCII (validated DNS labels, numbers, IPs), so any byte index is a char boundary.
    name.truncate(MAX_NAME_LEN);
    name
}

/// 40 bits of FNV-1a 64 in RFC 4648 base32: stable across Rust versions, unlike `DefaultHasher`.
fn short_hash(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..8)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Upstream's `CategorizeEndpoints`: ready endpoints, or when there are none, the serving
/// terminating ones (so a rolling update of the last pod does not blackhole traffic).
fn usable<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<_> = endpoints.clone().filter(|e| e.ready).collect();
    let mut chosen = if ready.is_empty() {
        endpoints.filter(|e| e.is_serving_terminating()).collect()
    } else {
        ready
    };
    chosen.sort_by_key(|e| (e.ip, e.port));
    chosen.dedup_by_key(|e| (e.ip, e.port));
    chosen
}

fn service_fragment(service: &Service, node: &Node) -> Fragment {
    let mut fragment = Fragment::default();
    let mut objects = ServiceObjects::default();
    for port in &service.ports {
        for family in Family::ALL {
            let Some(&cluster_ip) = service
                .cluster_ips
                .iter()
                .find(|ip| Family::of(**ip) == family)
            else {
                continue;
            };
            port_fragment(
                &mut fragment,
                &mut objects,
                service,
                port,
                family,
                cluster_ip,
                node,
            );
        }
    }
    fragment.objects = Arc::new(objects);
    fragment
}

fn port_fragment(
    fragment: &mut Fragment,
    objects: &mut ServiceObjects,
    service: &Service,
    port: &ServicePort,
    family: Family,
    cluster_ip: IpAddr,
    node: &Node,
) {
    let readable = readable(service, port);
    let of_family = port.endpoints.iter().filter(|e| Family::of(e.ip) == family);
    let cluster_eps = usable(of_family.clone());
    let local_eps = usable(of_family.filter(|e| e.local));

    let external_ips: Vec<IpAddr> = service
        .external_ips
        .iter()
        .chain(&service.load_balancer_ips)
        .copied()
        .filter(|ip| Family::of(*ip) == family)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let has_external_destinations = port.node_port.is_some() || !external_ips.is_empty();

    let policy_eps = |policy| match policy {
        TrafficPolicy::Cluster => &cluster_eps,
        TrafficPolicy::Local => &local_eps,
    };
    let internal_eps = policy_eps(service.internal_traffic_policy);
    let external_eps = policy_eps(service.external_traffic_policy);
    // Upstream: no endpoints at all → reject; endpoints elsewhere but none here under a Local
    // policy → drop.
    let no_endpoints_verdict = if cluster_eps.is_empty() {
        Verdict::Goto(REJECT_CHAIN.into())
    } else {
        Verdict::Drop
    };

    let svc_chain = object_name("svc", family, &readable);
    let local_chain = object_name("local", family, &readable);
    let ext_chain = object_name("ext", family, &readable);
    let policy_chain = |policy| match policy {
        TrafficPolicy::Cluster => svc_chain.clone(),
        TrafficPolicy::Local => local_chain.clone(),
    };
    let affinity = match service.session_affinity {
        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        SessionAffinity::None => None,
    };

    let mut uses_cluster = false;
    let mut uses_local = false;
    let mut note_use = |policy| match policy {
        TrafficPolicy::Cluster => uses_cluster = true,
        TrafficPolicy::Local => uses_local = true,
    };

    // Internal traffic: the ClusterIP.
    let cluster_key = MapKey {
        addr: Some(cluster_ip),
        protocol: port.protocol,
        port: port.port,
    };
    fragment.cluster_ips.push(cluster_ip);
    if internal_eps.is_empty() {
        fragment.entries.push((
            family.object(NO_ENDPOINT_SERVICES),
            family,
            cluster_key,
            no_endpoints_verdict.clone(),
        ));
    } else {
        note_use(service.internal_traffic_policy);
        fragment.entries.push((
            family.object(SERVICE_IPS),
            family,
            cluster_key,
            Verdict::Goto(policy_chain(service.internal_traffic_policy).into()),
        ));
    }

    // External traffic: NodePort, externalIPs, load-balancer IPs.
    if has_external_destinations {
        let mut entries: Vec<(String, MapKey)> = external_ips
            .iter()
            .map(|&ip| {
                (
                    SERVICE_IPS,
                    MapKey {
                        addr: Some(ip),
                        protocol: port.protocol,
                        port: port.port,
                    },
                )
            })
            .chain(port.node_port.map(|np| {
                (
                    SERVICE_NODEPORTS,
                    MapKey {
                        addr: None,
                        protocol: port.protocol,
                        port: np,
                    },
                )
            }))
            .map(|(map, key)| (map.to_owned(), key))
            .collect();
        if external_eps.is_empty() {
            for (map, key) in entries.drain(..) {
                let map = if map == SERVICE_IPS {
                    NO_ENDPOINT_SERVICES
                } else {
                    NO_ENDPOINT_NODEPORTS
                };
                fragment.entries.push((
                    family.object(map),
                    family,
                    key,
                    no_endpoints_verdict.clone(),
                ));
            }
        } else {
            for (map, key) in entries.drain(..) {
                fragment.entries.push((
                    family.object(&map),
                    family,
                    key,
                    Verdict::Goto(ext_chain.as_str().into()),
                ));
            }
            let mut rules = Vec::new();
            match service.external_traffic_policy {
                // The endpoint may be on another node: masquerade so the reply comes back here.
                TrafficPolicy::Cluster => {
                    note_use(TrafficPolicy::Cluster);
                    rules.push(rule(vec![], vec![jump(MARK_FOR_MASQUERADE)]));
                    rules.push(rule(vec![], vec![goto(&svc_chain)]));
                }
                TrafficPolicy::Local => {
                    // Pods reaching an external address of the service are treated as internal
                    // traffic ("up and out to the load balancer and back"), as upstream does.
                    let cidrs = cluster_cidrs(node, family);
                    if !cluster_eps.is_empty() {
                        note_use(TrafficPolicy::Cluster);
                        for cidr in cidrs {
                            rules.push(rule(vec![Match::SaddrInNet(cidr)], vec![goto(&svc_chain)]));
                        }
                        // The host's own traffic has a node address as source, which the
                        // endpoint could not answer directly.
                        rules.push(rule(
                            vec![Match::FibSaddrLocal],
                            vec![jump(MARK_FOR_MASQUERADE)],
                        ));
                        rules.push(rule(vec![Match::FibSaddrLocal], vec![goto(&svc_chain)]));
                    }
                    note_use(TrafficPolicy::Local);
                    rules.push(rule(vec![], vec![goto(&local_chain)]));
                }
            }
            objects
                .chains
                .insert(ext_chain.clone(), Chain { hook: None, rules });
        }
    }

    // The policy chains. An endpoint's affinity set is named by service port and endpoint, so the
    // cluster and local chains share it.
    let aff_set = |ep: &Endpoint| {
        affinity.map(|_| object_name("aff", family, &format!("{readable}__{}/{}", ep.ip, ep.port)))
    };
    let policy = |eps: &[&Endpoint]| {
        let mut rules = Vec::new();
        let picks: Vec<Pick> = eps
            .iter()
            .map(|ep| Pick {
                to: SocketAddr::new(ep.ip, ep.port),
                affinity: aff_set(ep),
            })
            .collect();
        for pick in &picks {
            if let Some(set) = &pick.affinity {
                rules.push(rule(
                    vec![
                        Match::SaddrInSet(family, set.clone()),
                        Match::L4Proto(port.protocol),
                    ],
                    vec![Stmt::UpdateSaddr(family, set.clone()), Stmt::Dnat(pick.to)],
                ));
            }
        }
        rules.push(rule(vec![], vec![Stmt::NumgenDnat(port.protocol, picks)]));
        Chain { hook: None, rules }
    };
    if uses_cluster && !cluster_eps.is_empty() {
        objects
            .chains
            .insert(svc_chain.clone(), policy(&cluster_eps));
        // Only for the ClusterIP itself: external traffic was already marked in `ext-*`.
        if service.internal_traffic_policy == TrafficPolicy::Cluster {
            fragment.masquerade.push((family, cluster_key));
        }
    }
    if uses_local && !local_eps.is_empty() {
        objects
            .chains
            .insert(local_chain.clone(), policy(&local_eps));
    }
    let mut used: Vec<&Endpoint> = Vec::new();
    if uses_cluster {
        used.extend(&cluster_eps);
    }
    if uses_local {
        used.extend(&local_eps);
    }
    used.sort_by_key(|e| (e.ip, e.port));
    used.dedup_by_key(|e| (e.ip, e.port));
    for ep in used {
        fragment.hairpin.push(ep.ip);
        if let (Some(timeout), Some(set)) = (affinity, aff_set(ep)) {
            objects
                .sets
                .insert(set, Set::new(SetKind::Affinity { family, timeout }));
        }
    }
}

impl Ruleset {
    /// The number of rules in the kernel (a cascade counts its rules), for metrics.
    pub fn rule_count(&self) -> usize {
        self.all_chains()
            .flat_map(|(_, c)| &c.rules)
            .map(|r| match r.stmts.as_slice() {
                [Stmt::NumgenDnat(_, picks)] => picks.len(),
                _ => 1,
            })
            .sum()
    }

    /// Every chain, the fixed ones first, then each service's.
    pub fn all_chains(&self) -> impl Iterator<Item = (&String, &Chain)> {
        self.chains
            .iter()
            .chain(self.services.values().flat_map(|s| s.chains.iter()))
    }

    /// Every set and map, the shared ones first, then each service's.
    pub fn all_sets(&self) -> impl Iterator<Item = (&String, &Set)> {
        self.sets
            .iter()
            .chain(self.services.values().flat_map(|s| s.sets.iter()))
    }

    /// The chain called `name`. Linear in the number of services: for tests and diagnostics.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains
            .get(name)
            .or_else(|| self.services.values().find_map(|s| s.chains.get(name)))
    }

    /// The set or map called `name`. Linear in the number of services, as [`Ruleset::chain`].
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets
            .get(name)
            .or_else(|| self.services.values().find_map(|s| s.sets.get(name)))
    }

    /// The text of one atomic transaction that replaces the whole table (see
    /// [`Transaction::full`]).
    pub fn render(&self) -> String {
        Transaction::full(self).render()
    }
}

/// The rules a `NumgenDnat` renders to, each with `matches` first: rule i is
/// `numgen random mod (N-i) 0 meta l4proto P [update @aff_i { ip saddr }] dnat to ep_i`, the last one
/// without `numgen`. Endpoint i is taken with probability (1 - 1/N - ...) * 1/(N-i) = 1/N, as the
/// iptables mode's `statistic` cascade. Rules, not an anonymous `numgen ... map { }`: on 6.18 every
/// anonymous set in a transaction costs a walk of the whole transaction when it is bound
/// (`__nft_set_trans_bind`) and a scan of the table's sets when it is named, which made a
/// 10k-service commit take ~50 s of kernel time. The cascade costs O(endpoints) rules, for the
/// first packet of a connection only.
pub fn numgen_cascade(matches: &[Match], protocol: Protocol, picks: &[Pick]) -> Vec<Rule> {
    let n = picks.len();
    picks
        .iter()
        .enumerate()
        .map(|(i, pick)| {
            let mut m = matches.to_vec();
            if i + 1 < n {
                m.push(Match::Numgen(n - i));
            }
            m.push(Match::L4Proto(protocol));
            let mut stmts = Vec::with_capacity(2);
            if let Some(set) = &pick.affinity {
                stmts.push(Stmt::UpdateSaddr(Family::of(pick.to.ip()), set.clone()));
            }
            stmts.push(Stmt::Dnat(pick.to));
            rule(m, stmts)
        })
        .collect()
}

/// The rules `rule` stands for in the kernel: itself, or the cascade of a `NumgenDnat`.
pub fn expand(rule: &Rule) -> Vec<Rule> {
    match rule.stmts.as_slice() {
        [Stmt::NumgenDnat(protocol, picks)] => numgen_cascade(&rule.matches, *protocol, picks),
        _ => vec![rule.clone()],
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Return => f.write_str("return"),
            Verdict::Drop => f.write_str("drop"),
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::CtStateNew => f.write_str("ct state new"),
            Match::Daddr(ip) => write!(f, "{} daddr {ip}", Family::of(*ip).nft()),
            Match::DaddrNotIn(net) => {
                write!(f, "{} daddr != {}", Family::of_net(net).nft(), net.trunc())
            }
            Match::DaddrInSet(fam, set) => write!(f, "{} daddr @{set}", fam.nft()),
            Match::Saddr(ip) => write!(f, "{} saddr {ip}", Family::of(*ip).nft()),
            Match::SaddrNotIn(fam, list) => {
                let parts: Vec<String> = list
                    .iter()
                    .map(|n| format!("{} saddr != {}", fam.nft(), n.trunc()))
                    .collect();
                f.write_str(&parts.join(" "))
            }
            Match::SaddrInNet(net) => {
                write!(f, "{} saddr {}", Family::of_net(net).nft(), net.trunc())
            }
            Match::SaddrInSet(fam, set) => write!(f, "{} saddr @{set}", fam.nft()),
            Match::FibDaddrLocal => f.write_str("fib daddr type local"),
            Match::FibSaddrLocal => f.write_str("fib saddr type local"),
            Match::L4Proto(p) => write!(f, "meta l4proto {p}"),
            Match::Dport(p) => write!(f, "th dport {p}"),
            Match::MarkClear(m) => write!(f, "meta mark & {m:#010x} == 0"),
            Match::SaddrDaddrInSet(fam, set) => {
                write!(f, "{0} saddr . {0} daddr @{set}", fam.nft())
            }
            Match::DaddrProtoPortInSet(fam, set) => {
                write!(f, "{} daddr . meta l4proto . th dport @{set}", fam.nft())
            }
            Match::CtStatusDnat => f.write_str("ct status dnat"),
            Match::Numgen(m) => write!(f, "numgen random mod {m} 0"),
        }
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Verdict(v) => write!(f, "{v}"),
            Stmt::VmapAddrProtoPort(fam, map) => write!(
                f,
                "{} daddr . meta l4proto . th dport vmap @{map}",
                fam.nft()
            ),
            Stmt::VmapProtoPort(map) => write!(f, "meta l4proto . th dport vmap @{map}"),
            Stmt::NumgenDnat(protocol, picks) => {
                let rules: Vec<String> = numgen_cascade(&[], *protocol, picks)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                write!(f, "{}", rules.join(" ; "))
            }
            Stmt::MarkOr(m) => write!(f, "meta mark set meta mark | {m:#010x}"),
            Stmt::MarkXor(m) => write!(f, "meta mark set meta mark ^ {m:#010x}"),
            Stmt::UpdateSaddr(fam, set) => write!(f, "update @{set} {{ {} saddr }}", fam.nft()),
            Stmt::Dnat(SocketAddr::V4(a)) => write!(f, "dnat ip to {a}"),
            Stmt::Dnat(SocketAddr::V6(a)) => write!(f, "dnat ip6 to [{}]:{}", a.ip(), a.port()),
            Stmt::Masquerade => f.write_str("masquerade fully-random"),
            Stmt::RejectTcpReset => f.write_str("reject with tcp reset"),
            Stmt::RejectPortUnreachable => f.write_str("reject with icmpx port-unreachable"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .matches
            .iter()
            .map(ToString::to_string)
            .chain(self.stmts.iter().map(ToString::to_string))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
