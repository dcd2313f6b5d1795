//! NoExecute tainting: which of the `not-ready` and `unreachable` NoExecute taints a node
//! must carry, and how fast nodes are given them.
//!
//! Invariants: the two taints follow the Ready condition and exclude each other (False:
//! not-ready, Unknown: unreachable, True: neither, none reported: left alone); a swap
//! between them and a removal happen at once, a new taint waits its turn in its zone,
//! first come first served, at the zone's rate: `--node-eviction-rate` (0.1/s) in a
//! healthy zone or one wholly down, none in a partially disrupted small zone
//! (`--secondary-node-eviction-rate` 0.01/s in a large one); when every zone is wholly
//! down — most likely the control plane lost the nodes, not the nodes died — nothing is
//! tainted and the taints there are come off, until a node is Ready again. Only the
//! NoExecute variants of the two keys are ever written; the NoSchedule ones are
//! `node_taints`'s. Upstream: `pkg/controller/nodelifecycle/node_lifecycle_controller.go`
//! (`processTaintBaseEviction`, `doNoExecuteTaintingPass`, `handleDisruption`,
//! `ComputeZoneState`) with the zone tainters of `scheduler/rate_limited_queue.go`.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Nodes with this label do not count towards their zone's state.
pub const EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";
/// `--node-eviction-rate`: nodes tainted per second in a zone.
pub const EVICTION_QPS: f64 = 0.1;
/// `--secondary-node-eviction-rate`: the rate in a partially disrupted large zone.
pub const SECONDARY_EVICTION_QPS: f64 = 0.01;
/// `--large-cluster-size-threshold`: a zone larger than this is large.
pub const LARGE_CLUSTER: usize = 50;
/// `--unhealthy-zone-threshold`: the share of not-ready nodes that disrupts a zone.
pub const UNHEALTHY_ZONE: f64 = 0.55;

/// Upstream's zone states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// Upstream's `ComputeZoneState`: wholly down when no node is ready, partially when more
/// than two are not and they are at least [`UNHEALTHY_ZONE`] of it.
pub fn zone_state(ready: usize, not_ready: usize) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready + not_ready) as f64 >= UNHEALTHY_ZONE {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// The tainting rate of a zone of `size` nodes in `state` (`setLimiterInZone`).
pub fn zone_qps(state: ZoneState, size: usize, qps: f64) -> f64 {
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => qps,
        ZoneState::PartialDisruption if size > LARGE_CLUSTER => SECONDARY_EVICTION_QPS,
        ZoneState::PartialDisruption => 0.0,
    }
}

/// Upstream's zone key: region and zone labels (the GA ones, else the beta ones).
pub fn zone_of(node: &Node) -> String {
    let label = |ga: &str, beta: &str| {
        let labels = node.metadata.labels.as_ref();
        labels
            .and_then(|l| l.get(ga).or_else(|| l.get(beta)))
            .cloned()
            .unwrap_or_default()
    };
    let region = label(
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/region",
    );
    let zone = label(
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/zone",
    );
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\x00:{zone}")
    }
}

/// The NoExecute taint a Ready status calls for (None: neither).
pub fn wanted(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        None | Some("True") => None,
        Some("False") => Some(NOT_READY),
        Some(_) => Some(UNREACHABLE),
    }
}

fn managed(taint: &Taint) -> bool {
    taint.effect == "NoExecute" && (taint.key == NOT_READY || taint.key == UNREACHABLE)
}

/// The node's taints with `want` as its only managed NoExecute taint, added at `now`
/// unless it is there already; every other taint kept as it is.
pub fn with_taint(current: &[Taint], want: Option<&str>, now: Timestamp) -> Vec<Taint> {
    let mut taints: Vec<Taint> = current.iter().filter(|t| !managed(t)).cloned().collect();
    if let Some(key) = want {
        let kept = current.iter().find(|t| managed(t) && t.key == key).cloned();
        taints.push(kept.unwrap_or_else(|| Taint {
            key: key.to_owned(),
            value: None,
            effect: "NoExecute".into(),
            time_added: Some(Time(now)),
        }));
    }
    taints
}

/// What the tainter needs of a node.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub name: &'a str,
    /// The Ready status after this pass's health update: what the zone counts.
    pub ready: Option<&'a str>,
    /// The Ready status the node shows (before this pass's update lands): what its taint
    /// follows, so that a node is tainted only once its Unknown is written.
    pub observed: Option<&'a str>,
    pub taints: &'a [Taint],
    pub zone: String,
    /// Labelled out of its zone's state.
    pub excluded: bool,
}

impl View<'_> {
    fn has(&self, key: &str) -> bool {
        self.taints.iter().any(|t| managed(t) && t.key == key)
    }

    fn managed_keys(&self) -> usize {
        [NOT_READY, UNREACHABLE]
            .iter()
            .filter(|k| self.has(k))
            .count()
    }
}

/// A node whose managed NoExecute taint must become `taint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub node: String,
    pub taint: Option<&'static str>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Every zone went wholly down in this pass.
    pub entered_disruption: bool,
    /// A node is Ready again after every zone was down: upstream gives every node a fresh
    /// grace period.
    pub left_disruption: bool,
}

/// Upstream's token bucket with a burst of one: a new bucket holds a token (none at rate
/// zero), and it refills at its rate.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    qps: f64,
    tokens: f64,
    at: Timestamp,
}

impl Bucket {
    fn new(qps: f64, now: Timestamp) -> Self {
        Bucket {
            qps,
            tokens: if qps > 0.0 { 1.0 } else { 0.0 },
            at: now,
        }
    }

    fn take(&mut self, now: Timestamp) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        let elapsed = now.duration_since(self.at).as_secs_f64().max(0.0);
        self.tokens = (self.tokens + elapsed * self.qps).min(1.0);
        self.at = now;
        // A float sum of rate steps may fall a hair short of a whole token.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Zone {
    state: ZoneState,
    bucket: Bucket,
}

/// The tainting state across passes: zone states and rates, and the nodes waiting for
/// their taint.
#[derive(Debug)]
pub struct Tainter {
    qps: f64,
    zones: HashMap<String, Zone>,
    /// Nodes waiting for a taint, with when they began to.
    waiting: BTreeMap<String, Timestamp>,
    /// Every zone is wholly down.
    disrupted: bool,
}

impl Tainter {
    /// A tainter at `qps` nodes per second per zone.
    pub fn new(qps: f64) -> Self {
        Tainter {
            qps,
            zones: HashMap::new(),
            waiting: BTreeMap::new(),
            disrupted: false,
        }
    }

    /// One pass over every node: the taint changes due now.
    pub fn step(&mut self, nodes: &[View<'_>], now: Timestamp) -> Outcome {
        let mut outcome = Outcome::default();
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for node in nodes.iter().filter(|n| !n.excluded) {
            let count = counts.entry(node.zone.as_str()).or_default();
            if node.ready == Some("True") {
                count.0 += 1;
            } else {
                count.1 += 1;
            }
        }
        let states: HashMap<&str, (ZoneState, usize)> = counts
            .iter()
            .map(|(zone, (ready, not_ready))| {
                (*zone, (zone_state(*ready, *not_ready), ready + not_ready))
            })
            .collect();
        let all_down = !states.is_empty()
            && states
                .values()
                .all(|(s, _)| *s == ZoneState::FullDisruption);

        if all_down && !self.disrupted {
            self.disrupted = true;
            outcome.entered_disruption = true;
            self.waiting.clear();
            self.zones = states
                .keys()
                .map(|zone| {
                    let zone_state = Zone {
                        state: ZoneState::FullDisruption,
                        bucket: Bucket::new(0.0, now),
                    };
                    ((*zone).to_owned(), zone_state)
                })
                .collect();
            outcome.changes = nodes
                .iter()
                .filter(|n| n.managed_keys() > 0)
                .map(|n| Change {
                    node: n.name.to_owned(),
                    taint: None,
                })
                .collect();
            return outcome;
        }
        if !all_down && self.disrupted {
            self.disrupted = false;
            outcome.left_disruption = true;
            self.zones.clear();
        }
        if !self.disrupted {
            self.zones
                .retain(|zone, _| states.contains_key(zone.as_str()));
            for (zone, (state, size)) in &states {
                let changed = self.zones.get(*zone).is_none_or(|z| z.state != *state);
                if changed {
                    let bucket = Bucket::new(zone_qps(*state, *size, self.qps), now);
                    self.zones.insert(
                        (*zone).to_owned(),
                        Zone {
                            state: *state,
                            bucket,
                        },
                    );
                }
            }
        }

        // At once: removals and swaps; the rest wait their turn.
        let present: HashSet<&str> = nodes.iter().map(|n| n.name).collect();
        self.waiting
            .retain(|name, _| present.contains(name.as_str()));
        for node in nodes {
            let want = wanted(node.observed);
            match want {
                None if node.observed.is_some() && node.managed_keys() > 0 => {
                    outcome.changes.push(Change {
                        node: node.name.to_owned(),
                        taint: None,
                    });
                    self.waiting.remove(node.name);
                }
                None => {
                    self.waiting.remove(node.name);
                }
                Some(key) if node.managed_keys() > 0 => {
                    if !node.has(key) || node.managed_keys() > 1 {
                        outcome.changes.push(Change {
                            node: node.name.to_owned(),
                            taint: Some(key),
                        });
                    }
                    self.waiting.remove(node.name);
                }
                Some(_) => {
                    self.waiting.entry(node.name.to_owned()).or_insert(now);
                }
            }
        }

        let mut queue: Vec<(Timestamp, String)> = self
            .waiting
            .iter()
            .map(|(name, since)| (*since, name.clone()))
            .collect();
        queue.sort();
        let views: HashMap<&str, &View<'_>> = nodes.iter().map(|n| (n.name, n)).collect();
        let mut refused: HashSet<String> = HashSet::new();
        for (_, name) in queue {
            let Some(node) = views.get(name.as_str()) else {
                continue;
            };
            if refused.contains(&node.zone) {
                continue;
            }
            let qps = if self.disrupted { 0.0 } else { self.qps };
            // A zone of excluded nodes only has no state: it taints at the base rate.
            let zone = self.zones.entry(node.zone.clone()).or_insert_with(|| Zone {
                state: ZoneState::Normal,
                bucket: Bucket::new(qps, now),
            });
            if zone.bucket.take(now) {
                outcome.changes.push(Change {
                    node: name.clone(),
                    taint: wanted(node.observed),
                });
                self.waiting.remove(&name);
            } else {
                refused.insert(node.zone.clone());
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::super::health::tests::at;
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: Some(Time(at(1))),
        }
    }

    #[test]
    fn zone_states_and_rates_are_upstreams() {
        let cases = [
            ((3, 0), ZoneState::Normal),
            ((0, 1), ZoneState::FullDisruption),
            ((0, 0), ZoneState::Normal),
            ((1, 2), ZoneState::Normal),
            ((2, 3), ZoneState::PartialDisruption),
            ((3, 3), ZoneState::Normal),
        ];
        for ((ready, not_ready), want) in cases {
            assert_eq!(
                zone_state(ready, not_ready),
                want,
                "{ready} ready, {not_ready} not"
            );
        }
        assert_eq!(zone_qps(ZoneState::Normal, 3, EVICTION_QPS), 0.1);
        assert_eq!(zone_qps(ZoneState::FullDisruption, 3, EVICTION_QPS), 0.1);
        assert_eq!(
            zone_qps(ZoneState::PartialDisruption, 50, EVICTION_QPS),
            0.0
        );
        assert_eq!(
            zone_qps(ZoneState::PartialDisruption, 51, EVICTION_QPS),
            0.01
        );
    }

    #[test]
    fn zones_come_from_the_topology_labels() {
        let mut node = Node::default();
        assert_eq!(zone_of(&node), "");
        node.metadata = ObjectMeta {
            labels: Some(BTreeMap::from([
                ("topology.kubernetes.io/zone".to_owned(), "a".to_owned()),
                (
                    "failure-domain.beta.kubernetes.io/region".to_owned(),
                    "eu".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        };
        assert_eq!(zone_of(&node), "eu:\u{0}:a");
    }

    #[test]
    fn the_taint_follows_ready_and_others_are_kept() {
        let own = taint("dedicated", "NoExecute");
        let schedule = taint(UNREACHABLE, "NoSchedule");
        let current = vec![own.clone(), schedule.clone(), taint(NOT_READY, "NoExecute")];
        let swapped = with_taint(&current, Some(UNREACHABLE), at(50));
        assert_eq!(
            swapped,
            vec![
                own.clone(),
                schedule.clone(),
                Taint {
                    time_added: Some(Time(at(50))),
                    ..taint(UNREACHABLE, "NoExecute")
                }
            ]
        );
        assert_eq!(
            with_taint(&current, Some(NOT_READY), at(50))[2].time_added,
            Some(Time(at(1))),
            "a taint that stays keeps its time"
        );
        assert_eq!(with_taint(&current, None, at(50)), vec![own, schedule]);
        assert_eq!(wanted(Some("False")), Some(NOT_READY));
        assert_eq!(wanted(Some("Unknown")), Some(UNREACHABLE));
        assert_eq!(wanted(Some("True")), None);
        assert_eq!(wanted(None), None);
    }

    fn view<'a>(name: &'a str, ready: Option<&'a str>, taints: &'a [Taint]) -> View<'a> {
        View {
            name,
            ready,
            observed: ready,
            taints,
            zone: String::new(),
            excluded: false,
        }
    }

    fn changes(outcome: &Outcome) -> Vec<(&str, Option<&str>)> {
        outcome
            .changes
            .iter()
            .map(|c| (c.node.as_str(), c.taint))
            .collect()
    }

    #[test]
    fn new_taints_are_rate_limited_swaps_and_removals_are_not() {
        let none: Vec<Taint> = vec![];
        let nr = vec![taint(NOT_READY, "NoExecute")];
        let ur = vec![taint(UNREACHABLE, "NoExecute")];
        let mut tainter = Tainter::new(EVICTION_QPS);

        // Ten ready nodes, three down: a normal zone, one taint now, the next in 10 s.
        let mut nodes: Vec<View<'_>> = (0..10)
            .map(|i| {
                view(
                    ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"][i],
                    Some("True"),
                    &none,
                )
            })
            .collect();
        nodes.push(view("a", Some("Unknown"), &none));
        nodes.push(view("b", Some("False"), &none));
        nodes.push(view("c", Some("Unknown"), &none));
        let first = tainter.step(&nodes, at(0));
        assert_eq!(changes(&first), vec![("a", Some(UNREACHABLE))]);
        nodes[10] = view("a", Some("Unknown"), &ur);
        assert_eq!(changes(&tainter.step(&nodes, at(5))), vec![]);
        assert_eq!(
            changes(&tainter.step(&nodes, at(10))),
            vec![("b", Some(NOT_READY))]
        );
        nodes[11] = view("b", Some("False"), &nr);

        // a turns False: swapped at once. A Ready node loses a stray taint at once.
        nodes[10] = view("a", Some("False"), &ur);
        nodes[0] = view("r0", Some("True"), &nr);
        assert_eq!(
            changes(&tainter.step(&nodes, at(11))),
            vec![("r0", None), ("a", Some(NOT_READY))]
        );
        nodes[10] = view("a", Some("False"), &nr);
        nodes[0] = view("r0", Some("True"), &none);
        assert_eq!(
            changes(&tainter.step(&nodes, at(15))),
            vec![],
            "c waits for a token"
        );
        assert_eq!(
            changes(&tainter.step(&nodes, at(20))),
            vec![("c", Some(UNREACHABLE))]
        );
    }

    #[test]
    fn a_small_zone_partly_down_is_not_tainted() {
        let none: Vec<Taint> = vec![];
        let mut tainter = Tainter::new(EVICTION_QPS);
        let nodes = vec![
            view("r", Some("True"), &none),
            view("a", Some("Unknown"), &none),
            view("b", Some("Unknown"), &none),
            view("c", Some("Unknown"), &none),
        ];
        assert_eq!(changes(&tainter.step(&nodes, at(0))), vec![]);
        assert_eq!(changes(&tainter.step(&nodes, at(100))), vec![]);
    }

    #[test]
    fn when_every_node_is_down_taints_come_off_until_one_is_back() {
        let none: Vec<Taint> = vec![];
        let ur = vec![taint(UNREACHABLE, "NoExecute")];
        let mut tainter = Tainter::new(EVICTION_QPS);
        let both = vec![
            view("a", Some("Unknown"), &ur),
            view("b", Some("Unknown"), &none),
        ];
        let entered = tainter.step(&both, at(0));
        assert!(entered.entered_disruption);
        assert_eq!(changes(&entered), vec![("a", None)]);
        let untainted = vec![
            view("a", Some("Unknown"), &none),
            view("b", Some("Unknown"), &none),
        ];
        assert_eq!(changes(&tainter.step(&untainted, at(100))), vec![]);

        let back = vec![
            view("a", Some("True"), &none),
            view("b", Some("Unknown"), &none),
        ];
        let left = tainter.step(&back, at(200));
        assert!(left.left_disruption);
        assert_eq!(changes(&left), vec![("b", Some(UNREACHABLE))]);
    }

    #[test]
    fn a_node_without_ready_or_excluded_from_zones_is_handled_as_upstream() {
        let none: Vec<Taint> = vec![];
        let mut tainter = Tainter::new(EVICTION_QPS);
        let mut excluded = view("x", Some("Unknown"), &none);
        excluded.excluded = true;
        excluded.zone = "z".into();
        let nodes = vec![
            view("r", Some("True"), &none),
            view("new", None, &none),
            excluded,
        ];
        assert_eq!(
            changes(&tainter.step(&nodes, at(0))),
            vec![("x", Some(UNREACHABLE))],
            "an excluded node is still tainted; one that never reported is not"
        );
    }
}
