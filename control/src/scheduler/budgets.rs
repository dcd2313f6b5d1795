//! Budgets: the PodDisruptionBudgets preemption respects where it can. Evicting a pod that a
//! budget covers spends one of the budget's `disruptionsAllowed`; a victim that would take a
//! budget below zero *violates* it. Preemption reprieves violating victims first and prefers
//! the node with the fewest violations, but, as upstream, a budget never blocks preemption
//! outright. Fed by the scheduler's PDB watcher; pure otherwise.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{Selector, SelectorExt};
use kube::runtime::watcher::Event;

use super::cache::Bound;
use crate::controllers::owner;

#[derive(Debug)]
struct Budget {
    namespace: String,
    /// None for a selector that selects nothing here: empty (upstream: a PDB with an empty
    /// selector matches no pod in preemption) or invalid.
    selector: Option<Selector>,
    allowed: i32,
    /// Pods the API server has already counted as disrupted (`status.disruptedPods`).
    disrupted: BTreeSet<String>,
}

impl Budget {
    fn of(pdb: &PodDisruptionBudget) -> Self {
        let selector = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|s| {
                s.match_labels.as_ref().is_some_and(|l| !l.is_empty())
                    || s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
            })
            .and_then(|s| owner::selector(s).ok());
        let status = pdb.status.as_ref();
        Self {
            namespace: pdb.metadata.namespace.clone().unwrap_or_default(),
            selector,
            allowed: status.and_then(|s| s.disruptions_allowed).unwrap_or(0),
            disrupted: status
                .and_then(|s| s.disrupted_pods.as_ref())
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Budgets {
    by_key: HashMap<String, Budget>,
    /// A relist in progress; replaces `by_key` when done.
    listing: Option<HashMap<String, Budget>>,
}

fn key(pdb: &PodDisruptionBudget) -> String {
    format!(
        "{}/{}",
        pdb.metadata.namespace.as_deref().unwrap_or_default(),
        pdb.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Budgets {
    pub fn on_event(&mut self, event: Event<PodDisruptionBudget>) {
        match event {
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(pdb) => {
                let target = self.listing.as_mut().unwrap_or(&mut self.by_key);
                target.insert(key(&pdb), Budget::of(&pdb));
            }
            Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.by_key = listed;
                }
            }
            Event::Apply(pdb) => {
                self.by_key.insert(key(&pdb), Budget::of(&pdb));
            }
            Event::Delete(pdb) => {
                self.by_key.remove(&key(&pdb));
            }
        }
    }

    /// Upstream's `FilterVictimsWithPDBViolation`: splits `victims` (in their order) into
    /// those whose eviction would take a budget below zero and the rest, spending the
    /// budgets in that order.
    pub fn split<'a>(&self, victims: Vec<Bound<'a>>) -> (Vec<Bound<'a>>, Vec<Bound<'a>>) {
        if self.by_key.is_empty() {
            return (Vec::new(), victims);
        }
        let mut allowed: HashMap<&str, i32> = HashMap::new();
        let mut violating = Vec::new();
        let mut fine = Vec::new();
        for victim in victims {
            let (namespace, name) = victim.key.split_once('/').unwrap_or(("", victim.key));
            let mut violates = false;
            // A pod without labels matches no budget.
            if !victim.resident.labels.is_empty() {
                for (budget_key, budget) in &self.by_key {
                    let Some(selector) = budget.selector.as_ref() else {
                        continue;
                    };
                    if budget.namespace != namespace
                        || !selector.matches(&victim.resident.labels)
                        || budget.disrupted.contains(name)
                    {
                        continue;
                    }
                    let left = allowed.entry(budget_key.as_str()).or_insert(budget.allowed);
                    *left -= 1;
                    violates |= *left < 0;
                }
            }
            if violates {
                violating.push(victim);
            } else {
                fine.push(victim);
            }
        }
        (violating, fine)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::scheduler::cache::Resident;
    use crate::scheduler::resources::Demand;

    fn pdb(name: &str, app: Option<&str>, allowed: i32, disrupted: &[&str]) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: app.map(|a| BTreeMap::from([("app".to_owned(), a.to_owned())])),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: Some(allowed),
                disrupted_pods: Some(
                    disrupted
                        .iter()
                        .map(|p| ((*p).to_owned(), Time(Timestamp::UNIX_EPOCH)))
                        .collect(),
                ),
                ..PodDisruptionBudgetStatus::default()
            }),
        }
    }

    fn resident(app: &str) -> Resident {
        Resident {
            uid: None,
            generation: None,
            priority: 0,
            started: None,
            preempted: false,
            labels: if app.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([("app".to_owned(), app.to_owned())])
            },
        }
    }

    fn names(bound: &[Bound<'_>]) -> Vec<String> {
        bound.iter().map(|b| b.key.to_owned()).collect()
    }

    #[test]
    fn victims_beyond_a_budget_violate_it_and_others_do_not() {
        let mut budgets = Budgets::default();
        for event in [
            Event::Init,
            Event::InitApply(pdb("web", Some("web"), 1, &["web-3"])),
            Event::InitApply(pdb("empty", None, 0, &[])),
            Event::InitDone,
        ] {
            budgets.on_event(event);
        }
        let demand = Demand::default();
        let residents = [
            ("ns/web-1", resident("web")),
            ("ns/web-2", resident("web")),
            ("ns/web-3", resident("web")),
            ("other/web-4", resident("web")),
            ("ns/db-1", resident("db")),
            ("ns/bare", resident("")),
        ];
        let bound: Vec<Bound<'_>> = residents
            .iter()
            .map(|(key, resident)| Bound {
                key,
                node: "n",
                demand: &demand,
                resident,
            })
            .collect();
        let (violating, fine) = budgets.split(bound);
        // web-1 spends the one disruption allowed; web-2 would go below zero; web-3 is
        // already counted; the empty selector and other namespaces match nothing.
        assert_eq!(names(&violating), ["ns/web-2"]);
        assert_eq!(
            names(&fine),
            ["ns/web-1", "ns/web-3", "other/web-4", "ns/db-1", "ns/bare"]
        );

        budgets.on_event(Event::Delete(pdb("web", Some("web"), 1, &[])));
        let bound = vec![Bound {
            key: "ns/web-2",
            node: "n",
            demand: &demand,
            resident: &residents[1].1,
        }];
        assert!(budgets.split(bound).0.is_empty(), "budget gone");
    }
}
