//! Plan: the writes that make one Endpoints object's mirrored EndpointSlices what they should
//! be, as a pure function of the Endpoints object, its Service and the mirrored slices
//! observed ([`mirror`]).
//!
//! Invariants: only an object that [`should_mirror`] and whose Service exists and is
//! [`selectorless`] has slices, otherwise all its slices are deleted; one slice per
//! [`Desired`] group (address family and port set) — a group holds at most
//! [`MAX_ENDPOINTS_PER_SUBSET`](super::desired::MAX_ENDPOINTS_PER_SUBSET) endpoints, so one
//! slice always fits it; a slice that already holds a group's key is updated in place, and
//! only when its endpoints, labels, annotations or owner differ; a slice no group wants is
//! deleted, or rewritten for a new group of its family instead of deleting one and creating
//! another (upstream's `recycleSlices`); every slice written carries the object's labels and
//! annotations (less the two upstream leaves out), the service-name and managed-by labels, and
//! the object as its controller owner; updates start from the slice read, so its
//! resourceVersion makes them conditional; nothing is created for an object being deleted;
//! slices already being deleted are left to the API server.
//!
//! Upstream: `pkg/controller/endpointslicemirroring/reconciler.go` (`reconcile`,
//! `reconcileByPortMapping`, `finalize`), `reconciler_helpers.go` (`recycleSlices`) and
//! `utils.go` (`newEndpointSlice`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;

use super::desired::{Desired, Skipped, desired, identity, selectorless, should_mirror};
use crate::controllers::endpointslice::desired::{AddressType, Port, SliceKey};
use crate::controllers::endpointslice::plan::{Plan, delete_all};
use crate::controllers::endpointslice::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME};

/// The managed-by value of upstream's mirroring controller: the only slices this controller
/// reads or writes.
pub const MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";
/// Annotations of the Endpoints object its slices do not carry: they describe the object
/// itself, not its endpoints.
const NOT_MIRRORED: [&str; 2] = [
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only an object read from the API server can own slices.
    #[error("Endpoints {namespace}/{name} has no uid")]
    NoUid { namespace: String, name: String },
}

/// One reconcile's outcome: the writes, and what was left out of the mirror.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mirror {
    pub plan: Plan,
    pub skipped: Vec<Skipped>,
}

/// The writes for the Endpoints object of one name: `endpoints` and `service` as the stores
/// show them (None if absent), `existing` the mirrored slices naming that Service.
pub fn mirror(
    endpoints: Option<&Endpoints>,
    service: Option<&Service>,
    existing: &[&EndpointSlice],
) -> Result<Mirror, Error> {
    let mirrored = endpoints
        .filter(|e| should_mirror(e))
        .filter(|_| service.is_some_and(selectorless));
    let Some(endpoints) = mirrored else {
        // Upstream deletes them too (it does not wait for the garbage collector): gone,
        // opted out, or the Service now selects, and then its own slices take over.
        return Ok(Mirror {
            plan: delete_all(existing),
            skipped: Vec::new(),
        });
    };
    let wanted = desired(endpoints);
    Ok(Mirror {
        plan: plan(endpoints, &wanted, existing)?,
        skipped: wanted.skipped,
    })
}

/// What every slice of the object carries.
struct Stamp {
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Stamp {
    fn of(endpoints: &Endpoints) -> Result<Self, Error> {
        let meta = &endpoints.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().ok_or_else(|| Error::NoUid {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        })?;
        let mut labels = meta.labels.clone().unwrap_or_default();
        labels.insert(LABEL_SERVICE_NAME.into(), name.clone());
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
        let mut annotations = meta.annotations.clone().unwrap_or_default();
        annotations.retain(|k, _| !NOT_MIRRORED.contains(&k.as_str()));
        Ok(Stamp {
            // Upstream's `NewControllerRef` for a core/v1 Endpoints.
            owner: OwnerReference {
                api_version: "v1".into(),
                kind: "Endpoints".into(),
                name,
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            labels,
            annotations,
        })
    }

    /// Whether `slice` carries this stamp (a slice of an earlier object of the same name is
    /// owned by another uid and is rewritten, upstream's `needRebuildExistingSlices`).
    fn on(&self, slice: &EndpointSlice) -> bool {
        let meta = &slice.metadata;
        meta.labels.clone().unwrap_or_default() == self.labels
            && meta.annotations.clone().unwrap_or_default() == self.annotations
            && meta.owner_references.as_deref() == Some(std::slice::from_ref(&self.owner))
    }

    fn apply(&self, slice: &mut EndpointSlice, key: &SliceKey, endpoints: &[Endpoint]) {
        slice.metadata.labels = Some(self.labels.clone());
        slice.metadata.annotations = Some(self.annotations.clone()).filter(|a| !a.is_empty());
        slice.metadata.owner_references = Some(vec![self.owner.clone()]);
        slice.address_type = key.address_type.as_str().into();
        slice.ports = Some(key.ports.iter().map(Port::to_api).collect());
        slice.endpoints = Some(endpoints.to_vec());
    }
}

fn key_of(slice: &EndpointSlice) -> Option<SliceKey> {
    let address_type = AddressType::parse(&slice.address_type)?;
    let ports = slice.ports.iter().flatten().map(Port::from_api).collect();
    Some(SliceKey::new(address_type, ports))
}

/// The part of an endpoint that tells whether it changed, as upstream's
/// `EndpointsEqualBeyondHash` plus its hash compare them: a target's resourceVersion, and
/// fields this controller never writes, are no difference.
fn comparable(endpoint: &Endpoint) -> Endpoint {
    let mut addresses = endpoint.addresses.clone();
    addresses.sort();
    Endpoint {
        addresses,
        conditions: endpoint.conditions.clone(),
        hostname: endpoint.hostname.clone(),
        node_name: endpoint.node_name.clone(),
        zone: endpoint.zone.clone(),
        target_ref: endpoint.target_ref.as_ref().map(|r| ObjectReference {
            resource_version: None,
            ..r.clone()
        }),
        ..Endpoint::default()
    }
}

fn same_endpoints(slice: &EndpointSlice, wanted: &[Endpoint]) -> bool {
    let normal = |list: &mut Vec<Endpoint>| list.sort_by_key(identity);
    let mut have: Vec<Endpoint> = slice.endpoints.iter().flatten().map(comparable).collect();
    let mut want: Vec<Endpoint> = wanted.iter().map(comparable).collect();
    normal(&mut have);
    normal(&mut want);
    have == want
}

fn new_slice(
    endpoints: &Endpoints,
    stamp: &Stamp,
    key: &SliceKey,
    wanted: &[Endpoint],
) -> EndpointSlice {
    let name = endpoints.metadata.name.clone().unwrap_or_default();
    let mut slice = EndpointSlice {
        metadata: ObjectMeta {
            // A mirrored object is named after its Service (at most 63 characters), so the
            // prefix is always a valid one.
            generate_name: Some(format!("{name}-")),
            namespace: endpoints.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        ..EndpointSlice::default()
    };
    stamp.apply(&mut slice, key, wanted);
    slice
}

fn rewritten(
    slice: &EndpointSlice,
    stamp: &Stamp,
    key: &SliceKey,
    wanted: &[Endpoint],
) -> EndpointSlice {
    let mut next = slice.clone();
    stamp.apply(&mut next, key, wanted);
    next
}

/// The writes that turn `existing` into the slices `desired` asks of `endpoints`.
pub fn plan(
    endpoints: &Endpoints,
    desired: &Desired,
    existing: &[&EndpointSlice],
) -> Result<Plan, Error> {
    let stamp = Stamp::of(endpoints)?;
    let mut live: Vec<&EndpointSlice> = existing
        .iter()
        .copied()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    live.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut by_key: BTreeMap<SliceKey, Vec<&EndpointSlice>> = BTreeMap::new();
    let mut doomed: Vec<&EndpointSlice> = Vec::new();
    for slice in live {
        match key_of(slice) {
            Some(key) => by_key.entry(key).or_default().push(slice),
            // An address type this controller never writes (FQDN).
            None => doomed.push(slice),
        }
    }

    let mut plan = Plan::default();
    let mut missing: Vec<(&SliceKey, &Vec<Endpoint>)> = Vec::new();
    for (key, wanted) in &desired.groups {
        let mut slices = by_key.remove(key).unwrap_or_default().into_iter();
        match slices.next() {
            Some(slice) => {
                if !(stamp.on(slice) && same_endpoints(slice, wanted)) {
                    plan.update.push(rewritten(slice, &stamp, key, wanted));
                }
                // Upstream keeps one slice per key; duplicates (a create the store had not
                // shown yet, say) go.
                doomed.extend(slices);
            }
            None => missing.push((key, wanted)),
        }
    }
    doomed.extend(by_key.into_values().flatten());

    for (key, wanted) in missing {
        let family = key.address_type.as_str();
        match doomed.iter().position(|s| s.address_type == family) {
            Some(at) => {
                let slice = doomed.remove(at);
                plan.update.push(rewritten(slice, &stamp, key, wanted));
            }
            None => plan.create.push(new_slice(endpoints, &stamp, key, wanted)),
        }
    }
    plan.delete = delete_all(&doomed).delete;
    if endpoints.metadata.deletion_timestamp.is_some() {
        // Upstream's `finalize`: slices created now would outlive the object at once.
        plan.create.clear();
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::desired::tests::{NS, endpoints, port, service, subset};
    use super::super::desired::{LABEL_SKIP_MIRROR, MAX_ENDPOINTS_PER_SUBSET};
    use super::*;

    /// Pretends the API server created the plan's slices: names, uids, resourceVersions.
    fn as_created(plan: &Plan) -> Vec<EndpointSlice> {
        plan.create
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut s = s.clone();
                s.metadata.name = Some(format!("web-{i}"));
                s.metadata.uid = Some(format!("slice-{i}"));
                s.metadata.resource_version = Some("1".into());
                s
            })
            .collect()
    }

    fn run(ep: Option<&Endpoints>, svc: Option<&Service>, existing: &[EndpointSlice]) -> Mirror {
        let existing: Vec<&EndpointSlice> = existing.iter().collect();
        mirror(ep, svc, &existing).expect("mirror")
    }

    fn web(ready: &[&str]) -> Endpoints {
        endpoints("web", vec![subset(vec![port("", 80)], ready, &[])])
    }

    fn addresses(slice: &EndpointSlice) -> Vec<String> {
        slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|e| e.addresses.clone())
            .collect()
    }

    #[test]
    fn a_custom_endpoints_of_a_selectorless_service_gets_a_labelled_owned_slice() {
        let mut ep = endpoints(
            "web",
            vec![subset(vec![port("http", 80)], &["10.1.2.3"], &["10.1.2.4"])],
        );
        ep.metadata.annotations = Some(BTreeMap::from([
            ("note".into(), "kept".into()),
            (NOT_MIRRORED[0].into(), "2025-01-01T00:00:00Z".into()),
        ]));
        let m = run(Some(&ep), Some(&service("web", &[])), &[]);
        assert!(m.skipped.is_empty());
        assert!(m.plan.update.is_empty() && m.plan.delete.is_empty());
        assert_eq!(m.plan.create.len(), 1);
        let slice = &m.plan.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some(NS));
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(
            slice.metadata.labels.clone().unwrap_or_default(),
            BTreeMap::from([
                ("team".into(), "blue".into()),
                (LABEL_SERVICE_NAME.into(), "web".into()),
                (LABEL_MANAGED_BY.into(), MANAGED_BY.into()),
            ])
        );
        assert_eq!(
            slice.metadata.annotations,
            Some(BTreeMap::from([("note".into(), "kept".into())]))
        );
        let owners = slice.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(
            owners,
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Endpoints".into(),
                name: "web".into(),
                uid: "uid-web".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        );
        let ports = slice.ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (
                ports[0].name.as_deref(),
                ports[0].port,
                ports[0].protocol.as_deref()
            ),
            (Some("http"), Some(80), Some("TCP"))
        );
        let ready: Vec<(String, Option<bool>)> = slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect();
        assert_eq!(
            ready,
            vec![
                ("10.1.2.3".into(), Some(true)),
                ("10.1.2.4".into(), Some(false))
            ]
        );
    }

    #[test]
    fn converged_slices_need_no_writes_and_a_changed_address_updates_in_place() {
        let svc = service("web", &[]);
        let first = run(Some(&web(&["10.1.2.3"])), Some(&svc), &[]);
        let existing = as_created(&first.plan);
        let again = run(Some(&web(&["10.1.2.3"])), Some(&svc), &existing);
        assert!(again.plan.is_empty(), "{:?}", again.plan);

        let moved = run(Some(&web(&["10.2.3.4"])), Some(&svc), &existing);
        assert!(moved.plan.create.is_empty() && moved.plan.delete.is_empty());
        assert_eq!(moved.plan.update.len(), 1);
        let updated = &moved.plan.update[0];
        assert_eq!(updated.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(
            updated.metadata.resource_version.as_deref(),
            Some("1"),
            "the update is conditional on the slice read"
        );
        assert_eq!(addresses(updated), vec!["10.2.3.4"]);

        // A label of the object reaches its slice.
        let mut relabelled = web(&["10.1.2.3"]);
        relabelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "red".into());
        let m = run(Some(&relabelled), Some(&svc), &existing);
        assert_eq!(m.plan.update.len(), 1);
        let labels = m.plan.update[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("red"));
    }

    #[test]
    fn one_slice_per_port_set_and_family() {
        let ep = endpoints(
            "web",
            vec![
                subset(vec![port("http", 80)], &["10.0.0.1", "fd00::1"], &[]),
                subset(vec![port("dns", 53)], &["10.0.0.2"], &[]),
            ],
        );
        let m = run(Some(&ep), Some(&service("web", &[])), &[]);
        let mut got: Vec<(String, Option<i32>, Vec<String>)> = m
            .plan
            .create
            .iter()
            .map(|s| {
                let port = s.ports.as_ref().and_then(|p| p.first()?.port);
                (s.address_type.clone(), port, addresses(s))
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("IPv4".into(), Some(53), vec!["10.0.0.2".into()]),
                ("IPv4".into(), Some(80), vec!["10.0.0.1".into()]),
                ("IPv6".into(), Some(80), vec!["fd00::1".into()]),
            ]
        );
    }

    #[test]
    fn more_addresses_than_a_slice_holds_are_cut_at_the_limit_and_reported() {
        let ips: Vec<String> = (0..1200)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let m = run(Some(&web(&ips)), Some(&service("web", &[])), &[]);
        let sizes: Vec<usize> = m.plan.create.iter().map(|s| addresses(s).len()).collect();
        assert_eq!(sizes, vec![MAX_ENDPOINTS_PER_SUBSET]);
        assert_eq!(m.skipped, vec![Skipped::TooMany { count: 200 }]);
    }

    #[test]
    fn nothing_is_mirrored_for_an_opted_out_object_or_a_selecting_missing_service() {
        let svc = service("web", &[]);
        let existing = as_created(&run(Some(&web(&["10.1.2.3"])), Some(&svc), &[]).plan);
        let mut opted_out = web(&["10.1.2.3"]);
        opted_out
            .metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_SKIP_MIRROR.into(), "true".into());
        let selecting = service("web", &[("app", "web")]);
        let cases: [(&str, Option<&Endpoints>, Option<&Service>); 4] = [
            ("skip-mirror", Some(&opted_out), Some(&svc)),
            ("selector", Some(&web(&["10.1.2.3"])), Some(&selecting)),
            ("no service", Some(&web(&["10.1.2.3"])), None),
            ("endpoints deleted", None, Some(&svc)),
        ];
        for (case, ep, service) in cases {
            let fresh = run(ep, service, &[]);
            assert!(fresh.plan.is_empty(), "{case}: nothing created");
            let m = run(ep, service, &existing);
            assert!(
                m.plan.create.is_empty() && m.plan.update.is_empty(),
                "{case}"
            );
            let deleted: Vec<_> = m.plan.delete.iter().map(|d| d.name.as_str()).collect();
            assert_eq!(deleted, vec!["web-0"], "{case}: the mirror goes");
            assert_eq!(m.plan.delete[0].uid.as_deref(), Some("slice-0"));
        }
    }

    #[test]
    fn slices_no_group_wants_are_recycled_within_their_family_or_deleted() {
        let svc = service("web", &[]);
        let existing = as_created(&run(Some(&web(&["10.1.2.3"])), Some(&svc), &[]).plan);
        // The port changes: the old slice is rewritten for the new port set, not replaced.
        let ep = endpoints(
            "web",
            vec![subset(vec![port("", 8080)], &["10.1.2.3"], &[])],
        );
        let m = run(Some(&ep), Some(&svc), &existing);
        assert!(
            m.plan.create.is_empty() && m.plan.delete.is_empty(),
            "{m:?}"
        );
        assert_eq!(m.plan.update.len(), 1);
        assert_eq!(m.plan.update[0].metadata.name.as_deref(), Some("web-0"));
        let number = m.plan.update[0]
            .ports
            .as_ref()
            .and_then(|p| p.first()?.port);
        assert_eq!(number, Some(8080));
        // Another family cannot take it over; an empty object keeps no slices.
        let v6 = endpoints("web", vec![subset(vec![port("", 80)], &["fd00::1"], &[])]);
        let m = run(Some(&v6), Some(&svc), &existing);
        assert_eq!((m.plan.create.len(), m.plan.delete.len()), (1, 1));
        let empty = endpoints("web", vec![]);
        let m = run(Some(&empty), Some(&svc), &existing);
        assert!(m.plan.create.is_empty() && m.plan.update.is_empty());
        assert_eq!(m.plan.delete.len(), 1);
    }

    #[test]
    fn duplicates_and_slices_of_an_earlier_object_are_fixed_and_deleting_ones_left_alone() {
        let svc = service("web", &[]);
        let mut existing = as_created(&run(Some(&web(&["10.1.2.3"])), Some(&svc), &[]).plan);
        let mut duplicate = existing[0].clone();
        duplicate.metadata.name = Some("web-dup".into());
        let mut going = existing[0].clone();
        going.metadata.name = Some("web-going".into());
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        if let Some(owners) = existing[0].metadata.owner_references.as_mut() {
            owners[0].uid = "uid-earlier".into();
        }
        existing.extend([duplicate, going]);
        let m = run(Some(&web(&["10.1.2.3"])), Some(&svc), &existing);
        assert!(m.plan.create.is_empty());
        assert_eq!(m.plan.update.len(), 1);
        let owners = m.plan.update[0]
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        assert_eq!(owners[0].uid, "uid-web");
        let deleted: Vec<_> = m.plan.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, vec!["web-dup"]);
    }

    #[test]
    fn an_object_being_deleted_gets_no_new_slices_and_one_without_uid_is_an_error() {
        let mut ep = web(&["10.1.2.3"]);
        ep.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let m = run(Some(&ep), Some(&service("web", &[])), &[]);
        assert!(m.plan.is_empty());
        let mut ep = web(&["10.1.2.3"]);
        ep.metadata.uid = None;
        let existing: [&EndpointSlice; 0] = [];
        assert_eq!(
            mirror(Some(&ep), Some(&service("web", &[])), &existing),
            Err(Error::NoUid {
                namespace: NS.into(),
                name: "web".into()
            })
        );
    }
}
