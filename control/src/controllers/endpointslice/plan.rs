//! Plan: the writes that make a Service's managed EndpointSlices hold its desired endpoints,
//! as a pure function of the Service, its [`Desired`] endpoints and the slices observed.
//! Invariants: at most [`MAX_ENDPOINTS`] endpoints per slice; every slice written carries the
//! reserved labels and the Service's labels; an endpoint that stays keeps its slice (fewer
//! writes and no flapping, as upstream's reconciler); a slice not owned by this Service (by
//! uid), of an address type the Service no longer has, or of a port set no endpoint has any
//! more is deleted; an address type without endpoints keeps exactly one empty placeholder.
//! Slices already being deleted are left to the API server.
//!
//! Upstream: `pkg/controller/endpointslice/reconciler.go` (`reconcileByAddressType`,
//! placeholder slices) and `utils.go` (`newEndpointSlice`, `setEndpointSliceLabels`).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;

use super::desired::{AddressType, Desired, Port, SliceKey, is_headless};

/// Upstream's `maxEndpointsPerSlice` default (kube-controller-manager flag
/// `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS: usize = 100;
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The managed-by value of upstream's controller: consumers (and a later swap to
/// kube-controller-manager) see these slices as the usual ones.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only a Service read from the API server can own slices.
    #[error("service {namespace}/{name} has no uid")]
    NoUid { namespace: String, name: String },
}

/// A slice to delete, with the uid that makes the delete conditional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    pub name: String,
    pub uid: Option<String>,
}

/// The writes to converge one Service, in the order upstream makes them: creates first, so
/// that endpoints moving between slices are never absent from all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<Doomed>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Deletes every slice given (not already being deleted): for a Service that is gone or no
/// longer has a selector. Upstream leaves that to the garbage collector and leaves a
/// selector-less Service's slices alone; nodus has no garbage collector yet, and slices for
/// a selector the Service dropped would keep sending traffic to pods it no longer names.
pub fn delete_all(existing: &[&EndpointSlice]) -> Plan {
    Plan {
        delete: existing
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .map(|s| doomed(s))
            .collect(),
        ..Plan::default()
    }
}

fn doomed(slice: &EndpointSlice) -> Doomed {
    Doomed {
        name: slice.metadata.name.clone().unwrap_or_default(),
        uid: slice.metadata.uid.clone(),
    }
}

/// The labels of every slice of `service`: the Service's own, less the reserved ones, plus
/// the reserved ones as this controller sets them.
pub fn labels(service: &Service) -> BTreeMap<String, String> {
    let reserved = [LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS];
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if is_headless(service) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels
}

fn owner(service: &Service) -> Result<OwnerReference, Error> {
    let uid = service.metadata.uid.clone().ok_or_else(|| Error::NoUid {
        namespace: service.metadata.namespace.clone().unwrap_or_default(),
        name: service.metadata.name.clone().unwrap_or_default(),
    })?;
    Ok(OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: service.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Upstream's `ownedBy`: an owner reference to this very Service (same uid), so that a
/// Service deleted and recreated under the same name does not inherit the old slices.
fn owned_by(slice: &EndpointSlice, owner: &OwnerReference) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner.uid && o.kind == "Service" && o.api_version == "v1")
}

fn key_of(slice: &EndpointSlice) -> Option<SliceKey> {
    let address_type = AddressType::parse(&slice.address_type)?;
    let ports = slice.ports.iter().flatten().map(Port::from_api).collect();
    Some(SliceKey::new(address_type, ports))
}

/// Which pod an endpoint stands for (one per slice key): its target, else its address.
fn identity(endpoint: &Endpoint) -> String {
    endpoint
        .target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .or_else(|| endpoint.addresses.first().cloned())
        .unwrap_or_default()
}

/// The part of an endpoint this controller writes, so that fields the API server or another
/// version may add do not look like drift.
fn comparable(endpoint: &Endpoint) -> Endpoint {
    Endpoint {
        addresses: endpoint.addresses.clone(),
        conditions: endpoint.conditions.clone(),
        hostname: endpoint.hostname.clone(),
        node_name: endpoint.node_name.clone(),
        zone: endpoint.zone.clone(),
        target_ref: endpoint.target_ref.as_ref().map(|r| ObjectReference {
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

fn sorted(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort_by_key(identity);
    endpoints
}

fn new_slice(
    service: &Service,
    key: &SliceKey,
    owner: &OwnerReference,
    labels: &BTreeMap<String, String>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            // A Service name is at most 63 characters, so the prefix is always valid.
            generate_name: Some(format!("{name}-")),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        address_type: key.address_type.as_str().into(),
        endpoints: Some(sorted(endpoints)),
        ports: Some(key.ports.iter().map(Port::to_api).collect()),
    }
}

/// `slice` holding `endpoints` and the current labels: None if that is what it holds.
fn updated(
    slice: &EndpointSlice,
    key: &SliceKey,
    labels: &BTreeMap<String, String>,
    endpoints: Vec<Endpoint>,
) -> Option<EndpointSlice> {
    let endpoints = sorted(endpoints);
    let current = sorted(slice.endpoints.iter().flatten().map(comparable).collect());
    let same_labels = slice.metadata.labels.as_ref() == Some(labels);
    if same_labels && current == endpoints {
        return None;
    }
    let mut next = slice.clone();
    next.metadata.labels = Some(labels.clone());
    next.endpoints = Some(endpoints);
    next.ports = Some(key.ports.iter().map(Port::to_api).collect());
    Some(next)
}

/// The writes that turn `existing` (this Service's managed slices) into `desired`.
pub fn plan(
    service: &Service,
    desired: &Desired,
    existing: &[&EndpointSlice],
) -> Result<Plan, Error> {
    let owner = owner(service)?;
    let labels = labels(service);
    let mut plan = Plan::default();

    let mut existing: Vec<&EndpointSlice> = existing
        .iter()
        .copied()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut by_key: BTreeMap<SliceKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        match key_of(slice) {
            Some(key)
                if desired.address_types.contains(&key.address_type) && owned_by(slice, &owner) =>
            {
                by_key.entry(key).or_default().push(slice);
            }
            _ => plan.delete.push(doomed(slice)),
        }
    }

    let mut wanted = desired.groups.clone();
    wanted.retain(|key, endpoints| {
        !endpoints.is_empty() && desired.address_types.contains(&key.address_type)
    });
    for address_type in &desired.address_types {
        if !wanted.keys().any(|k| k.address_type == *address_type) {
            // Upstream's placeholder: an empty slice with no ports, so that consumers can
            // tell "no endpoints" from "not yet processed".
            wanted.insert(SliceKey::new(*address_type, Vec::new()), Vec::new());
        }
    }

    for (key, endpoints) in wanted {
        let slices = by_key.remove(&key).unwrap_or_default();
        if endpoints.is_empty() {
            match slices.split_first() {
                Some((keep, rest)) => {
                    plan.update.extend(updated(keep, &key, &labels, Vec::new()));
                    plan.delete.extend(rest.iter().map(|s| doomed(s)));
                }
                None => plan
                    .create
                    .push(new_slice(service, &key, &owner, &labels, Vec::new())),
            }
            continue;
        }
        fill(
            service, &key, &owner, &labels, endpoints, &slices, &mut plan,
        );
    }
    for slices in by_key.into_values() {
        plan.delete.extend(slices.iter().map(|s| doomed(s)));
    }
    Ok(plan)
}

/// Places one key's endpoints: each stays in the slice that holds it, the new ones fill the
/// slices with room in name order, then new slices of at most [`MAX_ENDPOINTS`].
fn fill(
    service: &Service,
    key: &SliceKey,
    owner: &OwnerReference,
    labels: &BTreeMap<String, String>,
    endpoints: Vec<Endpoint>,
    slices: &[&EndpointSlice],
    plan: &mut Plan,
) {
    let mut unplaced: BTreeMap<String, Endpoint> =
        endpoints.into_iter().map(|e| (identity(&e), e)).collect();
    let mut kept: Vec<(&EndpointSlice, Vec<Endpoint>)> = Vec::new();
    for slice in slices {
        let mut holds = Vec::new();
        let mut seen = HashSet::new();
        for endpoint in slice.endpoints.iter().flatten() {
            let id = identity(endpoint);
            if holds.len() < MAX_ENDPOINTS
                && seen.insert(id.clone())
                && let Some(wanted) = unplaced.remove(&id)
            {
                holds.push(wanted);
            }
        }
        kept.push((slice, holds));
    }
    let mut rest = unplaced.into_values();
    for (_, holds) in &mut kept {
        let room = MAX_ENDPOINTS.saturating_sub(holds.len());
        holds.extend(rest.by_ref().take(room));
    }
    let rest: Vec<Endpoint> = rest.collect();
    for chunk in rest.chunks(MAX_ENDPOINTS) {
        plan.create
            .push(new_slice(service, key, owner, labels, chunk.to_vec()));
    }
    for (slice, holds) in kept {
        if holds.is_empty() {
            plan.delete.push(doomed(slice));
        } else {
            plan.update.extend(updated(slice, key, labels, holds));
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::super::desired::desired;
    use super::*;
    use crate::controllers::endpointslice::fixtures::*;

    fn web() -> Service {
        service("web", &[("app", "web")], vec![tcp("http", 80, 8080)])
    }

    fn pods(n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    &[("app", "web")],
                )
            })
            .collect()
    }

    /// Pretends the API server created the plan's slices: names and uids.
    fn as_created(plan: &Plan) -> Vec<EndpointSlice> {
        plan.create
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut s = s.clone();
                s.metadata.name = Some(format!("web-{i}"));
                s.metadata.uid = Some(format!("slice-{i}"));
                s
            })
            .collect()
    }

    fn plan_for(service: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> Plan {
        let d = desired(service, pods, &nodes);
        let existing: Vec<&EndpointSlice> = existing.iter().collect();
        plan(service, &d, &existing).expect("plan")
    }

    fn sizes(slices: &[EndpointSlice]) -> Vec<usize> {
        slices
            .iter()
            .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
            .collect()
    }

    #[test]
    fn new_slices_are_owned_labelled_and_named_after_the_service() {
        let p = plan_for(&web(), &pods(2), &[]);
        assert_eq!(p.create.len(), 1);
        let slice = &p.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some(NS));
        assert_eq!(slice.address_type, "IPv4");
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_SERVICE_NAME).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("blue"));
        assert!(!labels.contains_key(LABEL_HEADLESS));
        let owners = slice.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].uid.as_str(),
                owners[0].controller,
                owners[0].block_owner_deletion
            ),
            ("Service", "uid-web", Some(true), Some(true))
        );
        let ports = slice.ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (
                ports[0].name.as_deref(),
                ports[0].port,
                ports[0].protocol.as_deref()
            ),
            (Some("http"), Some(8080), Some("TCP"))
        );
        assert_eq!(sizes(&p.create), vec![2]);
    }

    #[test]
    fn split_table() {
        // (pods, slice sizes on creation)
        let cases: &[(usize, &[usize])] = &[
            (1, &[1]),
            (100, &[100]),
            (101, &[100, 1]),
            (250, &[100, 100, 50]),
        ];
        for (n, want) in cases {
            let p = plan_for(&web(), &pods(*n), &[]);
            assert_eq!(sizes(&p.create), *want, "{n} pods");
            assert!(p.update.is_empty() && p.delete.is_empty());
        }
    }

    #[test]
    fn converged_slices_need_no_writes() {
        for n in [0, 1, 150] {
            let first = plan_for(&web(), &pods(n), &[]);
            let again = plan_for(&web(), &pods(n), &as_created(&first));
            assert!(again.is_empty(), "{n} pods: {again:?}");
        }
    }

    #[test]
    fn endpoints_stay_in_their_slice_and_new_ones_fill_room_first() {
        let all = pods(150);
        let existing = as_created(&plan_for(&web(), &all, &[]));
        assert_eq!(sizes(&existing), vec![100, 50]);
        // p000 goes and two come: the first fills the room in slice 0 (which is written
        // anyway), the second goes to slice 1.
        let mut next: Vec<Pod> = all[1..].to_vec();
        next.extend(
            ["q1", "q2"]
                .iter()
                .enumerate()
                .map(|(i, n)| pod(n, &format!("10.9.0.{}", i + 1), &[("app", "web")])),
        );
        let p = plan_for(&web(), &next, &existing);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        let by_name: BTreeMap<_, _> = p
            .update
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap_or_default(),
                    s.endpoints.as_ref().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(
            by_name,
            BTreeMap::from([("web-0".into(), 100), ("web-1".into(), 51)])
        );
    }

    #[test]
    fn readiness_changes_update_in_place() {
        let existing = as_created(&plan_for(&web(), &pods(2), &[]));
        let mut next = pods(2);
        next[1] = ready(next[1].clone(), false);
        let p = plan_for(&web(), &next, &existing);
        assert_eq!(p.update.len(), 1);
        let flags: Vec<_> = p.update[0]
            .endpoints
            .iter()
            .flatten()
            .map(|e| e.conditions.as_ref().and_then(|c| c.ready))
            .collect();
        assert_eq!(flags, vec![Some(true), Some(false)]);
    }

    #[test]
    fn a_service_selecting_nothing_gets_one_empty_placeholder_per_family() {
        let p = plan_for(&web(), &[], &[]);
        assert_eq!(sizes(&p.create), vec![0]);
        assert_eq!(p.create[0].ports.as_deref(), Some(&[][..]));
        // Pods leaving: the slice with endpoints goes and a placeholder comes.
        let existing = as_created(&plan_for(&web(), &pods(3), &[]));
        let p = plan_for(&web(), &[], &existing);
        assert_eq!(sizes(&p.create), vec![0]);
        assert_eq!(p.delete.len(), 1);
        // Dual-stack: one per family.
        let mut dual = web();
        if let Some(spec) = dual.spec.as_mut() {
            spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        }
        let p = plan_for(&dual, &[], &[]);
        let types: Vec<_> = p.create.iter().map(|s| s.address_type.as_str()).collect();
        assert_eq!(types, vec!["IPv4", "IPv6"]);
    }

    #[test]
    fn foreign_stale_and_surplus_slices_are_deleted() {
        let mut existing = as_created(&plan_for(&web(), &pods(1), &[]));
        // Owned by an earlier Service of the same name.
        let mut orphan = existing[0].clone();
        orphan.metadata.name = Some("web-old".into());
        orphan.metadata.uid = Some("old".into());
        if let Some(owners) = orphan.metadata.owner_references.as_mut() {
            owners[0].uid = "uid-previous".into();
        }
        // An address type the Service does not have.
        let mut v6 = existing[0].clone();
        v6.metadata.name = Some("web-v6".into());
        v6.address_type = "IPv6".into();
        // Being deleted already: left alone.
        let mut going = existing[0].clone();
        going.metadata.name = Some("web-going".into());
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        // A port set no endpoint has any more.
        let mut old_ports = existing[0].clone();
        old_ports.metadata.name = Some("web-oldport".into());
        if let Some(ports) = old_ports.ports.as_mut() {
            ports[0].port = Some(9999);
        }
        existing.extend([orphan, v6, going, old_ports]);
        let p = plan_for(&web(), &pods(1), &existing);
        let mut deleted: Vec<_> = p.delete.iter().map(|d| d.name.as_str()).collect();
        deleted.sort();
        assert_eq!(deleted, vec!["web-old", "web-oldport", "web-v6"]);
        assert!(p.create.is_empty() && p.update.is_empty(), "{p:?}");
    }

    #[test]
    fn label_changes_on_the_service_reach_its_slices_and_headless_is_marked() {
        let existing = as_created(&plan_for(&web(), &pods(1), &[]));
        let mut relabelled = web();
        relabelled.metadata.labels = Some(BTreeMap::from([("team".into(), "red".into())]));
        if let Some(spec) = relabelled.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        let p = plan_for(&relabelled, &pods(1), &existing);
        assert_eq!(p.update.len(), 1);
        let labels = p.update[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("red"));
        assert_eq!(labels.get(LABEL_HEADLESS).map(String::as_str), Some(""));
    }

    #[test]
    fn a_service_without_uid_is_an_error_and_delete_all_spares_the_deleting() {
        let mut svc = web();
        svc.metadata.uid = None;
        let d = desired(&svc, &pods(1), &nodes);
        assert_eq!(
            plan(&svc, &d, &[]),
            Err(Error::NoUid {
                namespace: NS.into(),
                name: "web".into()
            })
        );
        let existing = as_created(&plan_for(&web(), &pods(1), &[]));
        let refs: Vec<&EndpointSlice> = existing.iter().collect();
        assert_eq!(delete_all(&refs).delete.len(), 1);
    }
}
