//! Usage: what the objects of a namespace use of each resource a ResourceQuota limits, and
//! the status that follows — upstream's quota evaluators (`pkg/quota/v1/evaluator/core`:
//! pods, services, persistent volume claims; `generic`: object counts) and the controller's
//! `syncResourceQuota`, as pure functions.
//!
//! Invariants: a resource is measured only when a source here knows it ([`source_of`]); the
//! others keep the usage the API server's quota admission last wrote. Every measured
//! resource gets an entry, zero when nothing uses it. Scopes narrow pods (and claims by
//! volume attributes class) only: an object count or a service never matches a scoped
//! quota, as upstream's `MatchesNoScopeFunc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus,
    ScopedResourceSelectorRequirement, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::quantity::{self, Milli};
use crate::scheduler::resources::{Amounts, containers_total};

/// Where the usage of a quota resource is measured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Pods,
    Services,
    Claims,
    /// Objects of one type, counted (`count/<plural>.<group>` and the legacy names).
    Count {
        group: String,
        plural: String,
    },
}

impl Source {
    /// The quotas themselves (`resourcequotas`, `count/resourcequotas`).
    pub fn quotas() -> Self {
        Source::count("", "resourcequotas")
    }

    fn count(group: &str, plural: &str) -> Self {
        Source::Count {
            group: group.to_owned(),
            plural: plural.to_owned(),
        }
    }
}

const POD_RESOURCES: &[&str] = &[
    "count/pods",
    "pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];
const SERVICE_RESOURCES: &[&str] = &[
    "services",
    "count/services",
    "services.nodeports",
    "services.loadbalancers",
];
const CLAIM_RESOURCES: &[&str] = &[
    "persistentvolumeclaims",
    "count/persistentvolumeclaims",
    "requests.storage",
];
/// `<class>.storageclass.storage.k8s.io/requests.storage` and `…/persistentvolumeclaims`.
const STORAGE_CLASS_INFIX: &str = ".storageclass.storage.k8s.io/";
/// The core group's counts that predate `count/…` names.
const LEGACY_COUNTS: &[&str] = &[
    "configmaps",
    "secrets",
    "replicationcontrollers",
    "resourcequotas",
];

/// Upstream's `IsNativeResource`: no domain, or a `kubernetes.io` one.
fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Where a quota resource is measured; None for one no evaluator knows (its usage is left
/// to admission, as upstream leaves it).
pub fn source_of(name: &str) -> Option<Source> {
    if POD_RESOURCES.contains(&name)
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
        || (name.starts_with("requests.") && !is_native(name))
    {
        return Some(Source::Pods);
    }
    if SERVICE_RESOURCES.contains(&name) {
        return Some(Source::Services);
    }
    if CLAIM_RESOURCES.contains(&name)
        || name
            .split_once(STORAGE_CLASS_INFIX)
            .is_some_and(|(_, r)| r == "requests.storage" || r == "persistentvolumeclaims")
    {
        return Some(Source::Claims);
    }
    if LEGACY_COUNTS.contains(&name) {
        return Some(Source::count("", name));
    }
    let counted = name.strip_prefix("count/")?;
    let (plural, group) = counted.split_once('.').unwrap_or((counted, ""));
    (!plural.is_empty()).then(|| Source::count(group, plural))
}

/// An amount with the notation it is written in: a sum keeps the notation of its first
/// non-zero part, as the API's `Quantity.Add` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    pub value: Milli,
    pub binary: bool,
}

impl Amount {
    pub const ZERO: Amount = Amount {
        value: Milli(0),
        binary: false,
    };

    pub fn count(n: usize) -> Self {
        Amount {
            value: Milli(i128::try_from(n).unwrap_or(i128::MAX / 1000) * 1000),
            binary: false,
        }
    }

    pub fn parse(q: &Quantity) -> Option<Self> {
        Some(Amount {
            value: quantity::parse(&q.0)?,
            binary: quantity::is_binary(&q.0),
        })
    }

    pub fn plus(self, other: Amount) -> Amount {
        Amount {
            value: Milli(self.value.0 + other.value.0),
            binary: if self.value.0 == 0 {
                other.binary
            } else {
                self.binary
            },
        }
    }

    pub fn quantity(self) -> Quantity {
        Quantity(quantity::format(self.value, self.binary))
    }
}

pub type Usage = BTreeMap<String, Amount>;

fn add(usage: &mut Usage, name: &str, amount: Amount) {
    let slot = usage.entry(name.to_owned()).or_insert(Amount::ZERO);
    *slot = slot.plus(amount);
}

/// What one namespace holds of each source a quota is measured from.
#[derive(Debug, Default)]
pub struct Objects {
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    /// Objects of each counted type; a type absent here is not measured.
    pub counts: HashMap<Source, usize>,
}

/// The quota's scopes as requirements: each of `spec.scopes` (as `Exists`) and each of
/// `spec.scopeSelector`'s expressions.
pub fn scopes(quota: &ResourceQuota) -> Vec<ScopedResourceSelectorRequirement> {
    let Some(spec) = quota.spec.as_ref() else {
        return Vec::new();
    };
    let named = spec
        .scopes
        .iter()
        .flatten()
        .map(|scope| ScopedResourceSelectorRequirement {
            scope_name: scope.clone(),
            operator: "Exists".to_owned(),
            values: None,
        });
    let selected = spec
        .scope_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
        .cloned();
    named.chain(selected).collect()
}

pub fn hard(quota: &ResourceQuota) -> BTreeMap<String, Quantity> {
    quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default()
}

/// The limits the quota's status shows (none when it has no status yet).
pub fn status_hard(quota: &ResourceQuota) -> BTreeMap<String, Quantity> {
    quota
        .status
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default()
}

/// The measured usage of every resource of `spec.hard` that a source knows, zero when none
/// of the namespace's objects in the quota's scopes use it.
pub fn measure(quota: &ResourceQuota, objects: &Objects, now: Timestamp) -> Usage {
    let scopes = scopes(quota);
    let mut found = Usage::new();
    let mut pods = false;
    let mut services = false;
    let mut claims = false;
    for name in hard(quota).keys() {
        match source_of(name) {
            Some(Source::Pods) => pods = true,
            Some(Source::Services) => services = true,
            Some(Source::Claims) => claims = true,
            Some(source @ Source::Count { .. }) => {
                // A type that is not served (a CRD that went, a typo) is not measured.
                let Some(n) = objects.counts.get(&source) else {
                    continue;
                };
                let n = if scopes.is_empty() { *n } else { 0 };
                add(&mut found, name, Amount::count(n));
            }
            None => continue,
        }
        found.entry(name.clone()).or_insert(Amount::ZERO);
    }
    let mut sum = |usage: Usage| {
        for (name, amount) in usage {
            if let Some(slot) = found.get_mut(&name) {
                *slot = slot.plus(amount);
            }
        }
    };
    if pods {
        objects
            .pods
            .iter()
            .filter(|p| scopes.iter().all(|s| pod_in_scope(p, s)))
            .for_each(|p| sum(pod_usage(p, now)));
    }
    if services && scopes.is_empty() {
        objects.services.iter().for_each(|s| sum(service_usage(s)));
    }
    if claims {
        objects
            .claims
            .iter()
            .filter(|c| scopes.iter().all(|s| claim_in_scope(c, s)))
            .for_each(|c| sum(claim_usage(c)));
    }
    found
}

/// The status the quota should have given what was measured — `spec.hard` as the limits,
/// the previous usage overwritten by the measured one and cut to the limited resources —
/// or None when its status already says so (upstream's `syncResourceQuota`).
pub fn status(quota: &ResourceQuota, measured: &Usage) -> Option<ResourceQuotaStatus> {
    let hard = hard(quota);
    let current = quota.status.as_ref();
    let mut used: BTreeMap<String, Quantity> =
        current.and_then(|s| s.used.clone()).unwrap_or_default();
    for (name, amount) in measured {
        used.insert(name.clone(), amount.quantity());
    }
    used.retain(|name, _| hard.contains_key(name));
    // An empty list reads back as none: comparing them as equal keeps an empty quota from
    // being written forever.
    let unchanged = current.is_some_and(|s| {
        same(&status_hard(quota), &hard) && same(&s.used.clone().unwrap_or_default(), &used)
    });
    (!unchanged).then_some(ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used),
    })
}

/// Upstream's `quota.Equals`: the same resources, with equal amounts whatever the notation.
pub fn same(a: &BTreeMap<String, Quantity>, b: &BTreeMap<String, Quantity>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(name, q)| {
            b.get(name).is_some_and(|other| {
                q == other || quantity::parse(&q.0) == quantity::parse(&other.0)
            })
        })
}

/// Upstream's `QuotaV1Pod`: a pod is charged unless it finished, or it is being deleted and
/// its grace period is over (a pod stuck on a lost node must not hold the quota).
fn charged(pod: &Pod, now: Timestamp) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let meta = &pod.metadata;
    match (&meta.deletion_timestamp, meta.deletion_grace_period_seconds) {
        (Some(at), Some(grace)) => now <= at.0 + SignedDuration::from_secs(grace),
        _ => true,
    }
}

fn amounts(list: Option<&BTreeMap<String, Quantity>>) -> Amounts {
    list.into_iter()
        .flatten()
        .filter_map(|(name, q)| Some((name.clone(), quantity::parse(&q.0)?.0)))
        .collect()
}

/// Whether a resource's amounts in the pod are written in binary notation (the first one
/// found decides).
fn binary_in(pod: &Pod, resource: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let lists = containers
        .filter_map(|c| c.resources.as_ref())
        .flat_map(|r| [r.requests.as_ref(), r.limits.as_ref()])
        .chain(
            spec.resources
                .iter()
                .flat_map(|r| [r.requests.as_ref(), r.limits.as_ref()]),
        )
        .chain([spec.overhead.as_ref()]);
    lists
        .flatten()
        .find_map(|list| list.get(resource))
        .is_some_and(|q| quantity::is_binary(&q.0))
}

/// Upstream's `PodRequests` and `PodLimits`: the containers' peak, overridden by pod-level
/// resources where set; overhead adds to every request and to the limits that are set.
fn requests_and_limits(pod: &Pod) -> (Amounts, Amounts) {
    let Some(spec) = pod.spec.as_ref() else {
        return Default::default();
    };
    let of = |c: &Container, limits: bool| {
        let r = c.resources.as_ref();
        amounts(r.and_then(|r| {
            if limits {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }
        }))
    };
    let mut requests = containers_total(spec, |c| of(c, false));
    let mut limits = containers_total(spec, |c| of(c, true));
    if let Some(level) = spec.resources.as_ref() {
        for (list, total) in [
            (&level.requests, &mut requests),
            (&level.limits, &mut limits),
        ] {
            for (name, value) in amounts(list.as_ref()) {
                if name == "cpu" || name == "memory" || name.starts_with("hugepages-") {
                    total.insert(name, value);
                }
            }
        }
    }
    for (name, value) in amounts(spec.overhead.as_ref()) {
        *requests.entry(name.clone()).or_default() += value;
        if let Some(limit) = limits.get_mut(&name) {
            *limit += value;
        }
    }
    (requests, limits)
}

/// What one pod uses: `count/pods` always, the rest only while it is charged.
pub fn pod_usage(pod: &Pod, now: Timestamp) -> Usage {
    let mut usage = Usage::from([("count/pods".to_owned(), Amount::count(1))]);
    if !charged(pod, now) {
        return usage;
    }
    usage.insert("pods".to_owned(), Amount::count(1));
    let (requests, limits) = requests_and_limits(pod);
    let amount = |resource: &str, value: i128| Amount {
        value: Milli(value),
        binary: binary_in(pod, resource),
    };
    for (resource, value) in &requests {
        let value = amount(resource, *value);
        match resource.as_str() {
            "cpu" | "memory" | "ephemeral-storage" => {
                usage.insert(resource.clone(), value);
                usage.insert(format!("requests.{resource}"), value);
            }
            r if r.starts_with("hugepages-") => {
                usage.insert(resource.clone(), value);
                usage.insert(format!("requests.{resource}"), value);
            }
            r if !is_native(r) => {
                usage.insert(format!("requests.{resource}"), value);
            }
            _ => {}
        }
    }
    for (resource, value) in &limits {
        if matches!(resource.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            usage.insert(format!("limits.{resource}"), amount(resource, *value));
        }
    }
    usage
}

/// Upstream's QoS class test for BestEffort: no cpu or memory request or limit anywhere.
fn best_effort(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let positive = |list: Option<&BTreeMap<String, Quantity>>| {
        list.into_iter().flatten().any(|(name, q)| {
            (name == "cpu" || name == "memory") && quantity::parse(&q.0).is_some_and(|m| m.0 > 0)
        })
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let level = spec
        .resources
        .iter()
        .map(|r| (r.requests.as_ref(), r.limits.as_ref()));
    !containers
        .filter_map(|c| c.resources.as_ref())
        .map(|r| (r.requests.as_ref(), r.limits.as_ref()))
        .chain(level)
        .any(|(requests, limits)| positive(requests) || positive(limits))
}

/// Upstream's `IsTerminating`: the pod has an active deadline.
fn terminating(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .is_some_and(|d| d >= 0)
}

/// The required and preferred terms of an affinity or an anti-affinity (the same two lists).
fn affinity_terms<'a>(
    required: Option<&'a Vec<k8s_openapi::api::core::v1::PodAffinityTerm>>,
    preferred: Option<&'a Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>,
) -> impl Iterator<Item = &'a k8s_openapi::api::core::v1::PodAffinityTerm> {
    let preferred = preferred
        .into_iter()
        .flatten()
        .map(|w| &w.pod_affinity_term);
    required.into_iter().flatten().chain(preferred)
}

fn cross_namespace_affinity(pod: &Pod) -> bool {
    let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return false;
    };
    let affinity_side = affinity.pod_affinity.iter().flat_map(|a| {
        affinity_terms(
            a.required_during_scheduling_ignored_during_execution
                .as_ref(),
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref(),
        )
    });
    let anti_side = affinity.pod_anti_affinity.iter().flat_map(|a| {
        affinity_terms(
            a.required_during_scheduling_ignored_during_execution
                .as_ref(),
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref(),
        )
    });
    affinity_side.chain(anti_side).any(|t| {
        t.namespaces.as_ref().is_some_and(|n| !n.is_empty()) || t.namespace_selector.is_some()
    })
}

/// A requirement on a value the object may lack (its priority class, its volume attributes
/// class), evaluated as a label selector on one label.
fn value_selected(value: Option<&str>, requirement: &ScopedResourceSelectorRequirement) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        _ => false,
    }
}

/// Upstream's `podMatchesScopeFunc`.
pub fn pod_in_scope(pod: &Pod, scope: &ScopedResourceSelectorRequirement) -> bool {
    match scope.scope_name.as_str() {
        "Terminating" => terminating(pod),
        "NotTerminating" => !terminating(pod),
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "PriorityClass" => {
            let class = pod
                .spec
                .as_ref()
                .and_then(|s| s.priority_class_name.as_deref())
                .filter(|c| !c.is_empty());
            value_selected(class, scope)
        }
        "CrossNamespacePodAffinity" => cross_namespace_affinity(pod),
        _ => false,
    }
}

/// Claims match only the volume attributes class scope.
fn claim_in_scope(
    claim: &PersistentVolumeClaim,
    scope: &ScopedResourceSelectorRequirement,
) -> bool {
    if scope.scope_name != "VolumeAttributesClass" {
        return false;
    }
    let class = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref())
        .filter(|c| !c.is_empty());
    value_selected(class, scope)
}

/// What one service uses: itself, its load balancer, and a node port per port where it
/// allocates them.
pub fn service_usage(service: &Service) -> Usage {
    let mut usage = Usage::from([
        ("services".to_owned(), Amount::count(1)),
        ("count/services".to_owned(), Amount::count(1)),
    ]);
    let spec = service.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len);
    match spec.and_then(|s| s.type_.as_deref()) {
        Some("NodePort") => {
            usage.insert("services.nodeports".into(), Amount::count(ports));
        }
        Some("LoadBalancer") => {
            usage.insert("services.loadbalancers".into(), Amount::count(1));
            if spec.and_then(|s| s.allocate_load_balancer_node_ports) != Some(false) {
                usage.insert("services.nodeports".into(), Amount::count(ports));
            }
        }
        _ => {}
    }
    usage
}

/// What one claim uses: itself and its storage, in total and under its storage class; the
/// storage is the larger of the request and what was allocated (a failed expansion still
/// holds what it got).
pub fn claim_usage(claim: &PersistentVolumeClaim) -> Usage {
    let mut usage = Usage::from([
        ("persistentvolumeclaims".to_owned(), Amount::count(1)),
        ("count/persistentvolumeclaims".to_owned(), Amount::count(1)),
    ]);
    let spec = claim.spec.as_ref();
    let class = spec
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| {
            claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class").cloned())
        })
        .filter(|c| !c.is_empty());
    let requested = spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(Amount::parse);
    let allocated = claim
        .status
        .as_ref()
        .and_then(|s| s.allocated_resources.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(Amount::parse);
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) if a.value > r.value => Some(a),
        (r, a) => r.or(a),
    };
    if let Some(class) = &class {
        let name = format!("{class}{STORAGE_CLASS_INFIX}persistentvolumeclaims");
        usage.insert(name, Amount::count(1));
    }
    if let Some(storage) = storage {
        usage.insert("requests.storage".into(), storage);
        if let Some(class) = &class {
            usage.insert(
                format!("{class}{STORAGE_CLASS_INFIX}requests.storage"),
                storage,
            );
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PodSpec, PodStatus, ResourceQuotaSpec, ResourceRequirements,
        ScopeSelector, ServicePort, ServiceSpec, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;

    fn list(items: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        (!items.is_empty()).then(|| {
            items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                .collect()
        })
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers,
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        }
    }

    fn quota(hard: &[(&str, &str)], scopes: &[&str]) -> ResourceQuota {
        ResourceQuota {
            metadata: ObjectMeta::default(),
            spec: Some(ResourceQuotaSpec {
                hard: list(hard),
                scopes: (!scopes.is_empty())
                    .then(|| scopes.iter().map(|s| (*s).to_owned()).collect()),
                scope_selector: None,
            }),
            status: None,
        }
    }

    fn shown(usage: &Usage) -> Vec<(String, String)> {
        usage
            .iter()
            .map(|(k, v)| (k.clone(), v.quantity().0))
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn resources_are_measured_where_their_evaluator_would_measure_them() {
        let cases = [
            ("cpu", Some(Source::Pods)),
            ("requests.memory", Some(Source::Pods)),
            ("count/pods", Some(Source::Pods)),
            ("requests.hugepages-2Mi", Some(Source::Pods)),
            ("requests.example.com/dongle", Some(Source::Pods)),
            ("services.nodeports", Some(Source::Services)),
            (
                "gold.storageclass.storage.k8s.io/requests.storage",
                Some(Source::Claims),
            ),
            ("configmaps", Some(Source::count("", "configmaps"))),
            ("count/secrets", Some(Source::count("", "secrets"))),
            (
                "count/replicasets.apps",
                Some(Source::count("apps", "replicasets")),
            ),
            (
                "count/widgets.example.com",
                Some(Source::count("example.com", "widgets")),
            ),
            ("example.com/dongle", None),
            ("requests.kubernetes.io/thing", None),
            ("count/", None),
        ];
        for (name, want) in cases {
            assert_eq!(source_of(name), want, "{name}");
        }
    }

    #[test]
    fn a_pod_uses_its_peak_requests_and_limits_with_overhead_in_its_own_notation() {
        let mut p = pod(vec![
            container(&[("cpu", "100m"), ("memory", "100Mi")], &[("cpu", "200m")]),
            container(&[("cpu", "150m"), ("memory", "50Mi")], &[]),
        ]);
        let spec = p.spec.as_mut().expect("spec");
        // The init phase peaks at 500m cpu, above the apps' 250m; memory stays the apps'.
        spec.init_containers = Some(vec![container(&[("cpu", "500m")], &[])]);
        spec.overhead = list(&[("cpu", "10m"), ("memory", "1Mi")]);
        let usage = pod_usage(&p, Timestamp::now());
        assert_eq!(
            shown(&usage),
            pairs(&[
                ("count/pods", "1"),
                ("cpu", "510m"),
                ("limits.cpu", "210m"),
                ("memory", "151Mi"),
                ("pods", "1"),
                ("requests.cpu", "510m"),
                ("requests.memory", "151Mi"),
            ])
        );
    }

    #[test]
    fn finished_pods_and_pods_past_their_grace_count_only_as_objects() {
        let now = Timestamp::now();
        let mut done = pod(vec![container(&[("cpu", "1")], &[])]);
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        assert_eq!(shown(&pod_usage(&done, now)), pairs(&[("count/pods", "1")]));

        let mut stuck = pod(vec![container(&[("cpu", "1")], &[])]);
        stuck.metadata.deletion_timestamp = Some(Time(now - SignedDuration::from_secs(60)));
        stuck.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(
            shown(&pod_usage(&stuck, now)),
            pairs(&[("count/pods", "1")])
        );

        stuck.metadata.deletion_grace_period_seconds = Some(120);
        assert!(
            pod_usage(&stuck, now).contains_key("cpu"),
            "still in its grace period"
        );
    }

    #[test]
    fn scopes_pick_pods_by_deadline_qos_and_priority_class() {
        let best_effort = pod(vec![container(&[], &[])]);
        let mut burstable = pod(vec![container(&[("memory", "1Gi")], &[])]);
        burstable
            .spec
            .as_mut()
            .expect("spec")
            .active_deadline_seconds = Some(60);
        burstable.spec.as_mut().expect("spec").priority_class_name = Some("gold".into());
        let scope =
            |name: &str, operator: &str, values: &[&str]| ScopedResourceSelectorRequirement {
                scope_name: name.into(),
                operator: operator.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| (*v).to_owned()).collect()),
            };
        let cases = [
            (scope("BestEffort", "Exists", &[]), true, false),
            (scope("NotBestEffort", "Exists", &[]), false, true),
            (scope("Terminating", "Exists", &[]), false, true),
            (scope("NotTerminating", "Exists", &[]), true, false),
            (
                scope("PriorityClass", "In", &["gold", "silver"]),
                false,
                true,
            ),
            (scope("PriorityClass", "NotIn", &["gold"]), true, false),
            (scope("PriorityClass", "Exists", &[]), false, true),
            (scope("PriorityClass", "DoesNotExist", &[]), true, false),
            (
                scope("CrossNamespacePodAffinity", "Exists", &[]),
                false,
                false,
            ),
        ];
        for (s, want_best_effort, want_burstable) in cases {
            assert_eq!(pod_in_scope(&best_effort, &s), want_best_effort, "{s:?}");
            assert_eq!(pod_in_scope(&burstable, &s), want_burstable, "{s:?}");
        }
        // An anti-affinity preference across namespaces counts as much as a requirement.
        let mut spread = best_effort.clone();
        spread.spec.as_mut().expect("spec").affinity = Some(
            serde_json::from_value(serde_json::json!({
                "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 1,
                    "podAffinityTerm": { "topologyKey": "zone", "namespaceSelector": {} },
                }]},
            }))
            .expect("affinity"),
        );
        assert!(pod_in_scope(
            &spread,
            &scope("CrossNamespacePodAffinity", "Exists", &[])
        ));
    }

    #[test]
    fn a_quota_measures_only_its_resources_and_its_scopes_pods() {
        let now = Timestamp::now();
        let mut terminating = pod(vec![container(&[("cpu", "1"), ("memory", "1Gi")], &[])]);
        terminating
            .spec
            .as_mut()
            .expect("spec")
            .active_deadline_seconds = Some(3600);
        let long_running = pod(vec![container(&[("cpu", "2"), ("memory", "2Gi")], &[])]);
        let objects = Objects {
            pods: vec![Arc::new(terminating), Arc::new(long_running)],
            services: vec![Arc::new(Service::default())],
            counts: HashMap::from([(Source::count("", "configmaps"), 3)]),
            ..Objects::default()
        };
        let hard = [
            ("pods", "10"),
            ("requests.memory", "10Gi"),
            ("configmaps", "10"),
            ("services", "5"),
            ("count/widgets.example.com", "1"),
            ("example.com/unknown", "1"),
        ];
        let all = measure(&quota(&hard, &[]), &objects, now);
        assert_eq!(
            shown(&all),
            pairs(&[
                ("configmaps", "3"),
                ("pods", "2"),
                ("requests.memory", "3Gi"),
                ("services", "1"),
            ]),
            "types not served and unknown resources are left out"
        );
        let scoped = measure(&quota(&hard, &["Terminating"]), &objects, now);
        assert_eq!(
            shown(&scoped),
            pairs(&[
                ("configmaps", "0"),
                ("pods", "1"),
                ("requests.memory", "1Gi"),
                ("services", "0"),
            ]),
            "counts and services never match a scoped quota"
        );
    }

    #[test]
    fn the_status_takes_spec_hard_keeps_admissions_other_usage_and_drops_unlimited() {
        let mut q = quota(&[("pods", "10"), ("example.com/unknown", "2")], &[]);
        q.status = Some(ResourceQuotaStatus {
            hard: list(&[("pods", "5")]),
            used: list(&[
                ("pods", "4"),
                ("example.com/unknown", "1"),
                ("secrets", "9"),
            ]),
        });
        let measured = Usage::from([("pods".to_owned(), Amount::count(3))]);
        let status = status(&q, &measured).expect("hard changed");
        assert_eq!(
            status.hard,
            list(&[("pods", "10"), ("example.com/unknown", "2")])
        );
        assert_eq!(
            status.used,
            list(&[("pods", "3"), ("example.com/unknown", "1")])
        );

        q.status = Some(status);
        assert_eq!(super::status(&q, &measured), None, "nothing to write");
        q.status.as_mut().expect("status").used =
            list(&[("pods", "3000m"), ("example.com/unknown", "1")]);
        assert_eq!(
            super::status(&q, &measured),
            None,
            "equal amounts in another notation"
        );
    }

    #[test]
    fn services_use_node_ports_and_load_balancers_by_type() {
        let service = |type_: &str, ports: usize, allocate: Option<bool>| Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                ports: Some(vec![ServicePort::default(); ports]),
                allocate_load_balancer_node_ports: allocate,
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let get = |u: &Usage, k: &str| u.get(k).map(|a| a.quantity().0);
        let cluster_ip = service_usage(&service("ClusterIP", 2, None));
        assert_eq!(get(&cluster_ip, "services.nodeports"), None);
        let node_port = service_usage(&service("NodePort", 2, None));
        assert_eq!(get(&node_port, "services.nodeports"), Some("2".into()));
        let lb = service_usage(&service("LoadBalancer", 3, None));
        assert_eq!(get(&lb, "services.nodeports"), Some("3".into()));
        assert_eq!(get(&lb, "services.loadbalancers"), Some("1".into()));
        let lb_without = service_usage(&service("LoadBalancer", 3, Some(false)));
        assert_eq!(get(&lb_without, "services.nodeports"), None);
    }

    #[test]
    fn claims_use_their_storage_by_class_and_the_larger_of_request_and_allocation() {
        let claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some("gold".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: list(&[("storage", "1Gi")]),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
                allocated_resources: list(&[("storage", "2Gi")]),
                ..Default::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        assert_eq!(
            shown(&claim_usage(&claim)),
            pairs(&[
                ("count/persistentvolumeclaims", "1"),
                (
                    "gold.storageclass.storage.k8s.io/persistentvolumeclaims",
                    "1"
                ),
                ("gold.storageclass.storage.k8s.io/requests.storage", "2Gi"),
                ("persistentvolumeclaims", "1"),
                ("requests.storage", "2Gi"),
            ])
        );
        let scoped = ResourceQuota {
            spec: Some(ResourceQuotaSpec {
                hard: list(&[("persistentvolumeclaims", "5")]),
                scopes: None,
                scope_selector: Some(ScopeSelector {
                    match_expressions: Some(vec![ScopedResourceSelectorRequirement {
                        scope_name: "VolumeAttributesClass".into(),
                        operator: "In".into(),
                        values: Some(vec!["fast".into()]),
                    }]),
                }),
            }),
            ..ResourceQuota::default()
        };
        let objects = Objects {
            claims: vec![Arc::new(claim)],
            ..Objects::default()
        };
        let measured = measure(&scoped, &objects, Timestamp::now());
        assert_eq!(shown(&measured), pairs(&[("persistentvolumeclaims", "0")]));
    }
}
