//! Plan: the one write that makes a Service's `Endpoints` object what it should be, as a pure
//! function of what the Service wants ([`Want`]) and the object observed.
//!
//! Invariants: an object is written only when its subsets (compared in canonical form, so
//! another order, or kube-controller-manager's layout, is no difference), its labels or its
//! over-capacity annotation differ from the desired ones; an update starts from the object
//! read, so its resourceVersion makes the write conditional and annotations and fields this
//! controller does not own are kept; the Endpoints of a Service that does not select are never
//! written (users write those); an object is deleted only when its Service is gone and it
//! carries this controller's managed-by label, conditional on its uid; an object already being
//! deleted is left to the API server.
//!
//! Upstream: `pkg/controller/endpoint/endpoints_controller.go` (`syncService`,
//! `labelsCorrectForEndpoints`, `capacityAnnotationSetCorrectly`). Upstream deletes the
//! same-named Endpoints of any Service that is gone; here only those it manages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointSubset, Endpoints};
use kube::api::ObjectMeta;

use super::desired::{
    ANNOTATION_OVER_CAPACITY, Desired, LABEL_MANAGED_BY, MANAGED_BY, Subset, TRUNCATED, canonical,
};
use crate::controllers::owner::ObjectKey;

/// What a Service asks of the Endpoints object of its name.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// The Service is gone: the object goes too, if this controller manages it.
    Gone,
    /// The Service does not select (no selector, or ExternalName): the object, if any, is
    /// someone else's.
    Unmanaged,
    /// The Service selects: the object should hold these.
    Endpoints(&'a Desired),
}

/// The write that converges one Endpoints object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Keep,
    Create(Endpoints),
    /// A replace of the object read, carrying its resourceVersion.
    Update(Endpoints),
    /// A delete conditional on the uid read.
    Delete {
        uid: Option<String>,
    },
}

/// Whether this controller wrote the object (upstream's managed-by label).
pub fn managed(endpoints: &Endpoints) -> bool {
    endpoints
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY)
}

pub fn plan(key: &ObjectKey, want: Want<'_>, observed: Option<&Endpoints>) -> Plan {
    if observed.is_some_and(|e| e.metadata.deletion_timestamp.is_some()) {
        return Plan::Keep;
    }
    match (want, observed) {
        (Want::Gone, Some(observed)) if managed(observed) => Plan::Delete {
            uid: observed.metadata.uid.clone(),
        },
        (Want::Gone | Want::Unmanaged, _) => Plan::Keep,
        (Want::Endpoints(desired), None) => Plan::Create(Endpoints {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                labels: Some(desired.labels.clone()),
                annotations: desired.truncated.then(|| {
                    BTreeMap::from([(ANNOTATION_OVER_CAPACITY.to_owned(), TRUNCATED.to_owned())])
                }),
                ..ObjectMeta::default()
            },
            subsets: to_api(&desired.subsets),
        }),
        (Want::Endpoints(desired), Some(observed)) if up_to_date(observed, desired) => Plan::Keep,
        (Want::Endpoints(desired), Some(observed)) => {
            let mut next = observed.clone();
            next.metadata.labels = Some(desired.labels.clone());
            let mut annotations = next.metadata.annotations.take().unwrap_or_default();
            if desired.truncated {
                annotations.insert(ANNOTATION_OVER_CAPACITY.into(), TRUNCATED.into());
            } else {
                annotations.remove(ANNOTATION_OVER_CAPACITY);
            }
            next.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
            next.subsets = to_api(&desired.subsets);
            Plan::Update(next)
        }
    }
}

fn to_api(subsets: &[Subset]) -> Option<Vec<EndpointSubset>> {
    Some(subsets.iter().map(Subset::to_api).collect::<Vec<_>>()).filter(|s| !s.is_empty())
}

fn up_to_date(observed: &Endpoints, desired: &Desired) -> bool {
    let labels = observed.metadata.labels.as_ref();
    let over_capacity = observed
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_OVER_CAPACITY))
        .map(String::as_str);
    labels.map_or(desired.labels.is_empty(), |l| *l == desired.labels)
        && over_capacity == desired.truncated.then_some(TRUNCATED)
        && canonical(observed.subsets.as_deref().unwrap_or_default()) == desired.subsets
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::desired::desired;
    use super::*;
    use crate::controllers::endpointslice::fixtures::*;

    fn key() -> ObjectKey {
        ObjectKey::new(NS, "web")
    }

    fn wanted() -> Desired {
        let svc = service("web", &[("app", "web")], vec![tcp("http", 80, 8080)]);
        let pods = [
            pod("a", "10.0.0.1", &[("app", "web")]),
            ready(pod("b", "10.0.0.2", &[("app", "web")]), false),
        ];
        desired(&svc, &pods).expect("selects")
    }

    /// The object as the API server would return it after a create from `wanted()`, with
    /// a user's annotation added since.
    fn stored() -> Endpoints {
        let Plan::Create(mut made) = plan(&key(), Want::Endpoints(&wanted()), None) else {
            panic!("a create");
        };
        made.metadata.uid = Some("uid-ep".into());
        made.metadata.resource_version = Some("7".into());
        made.metadata.annotations = Some(BTreeMap::from([("note".to_owned(), "x".to_owned())]));
        made
    }

    fn user_endpoints() -> Endpoints {
        Endpoints {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some(NS.into()),
                uid: Some("uid-user".into()),
                ..ObjectMeta::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![EndpointAddress {
                    ip: "192.0.2.1".into(),
                    ..EndpointAddress::default()
                }]),
                ports: Some(vec![EndpointPort {
                    port: 80,
                    ..EndpointPort::default()
                }]),
                ..EndpointSubset::default()
            }]),
        }
    }

    #[test]
    fn a_missing_object_is_created_with_labels_and_subsets() {
        let want = wanted();
        let Plan::Create(made) = plan(&key(), Want::Endpoints(&want), None) else {
            panic!("a create");
        };
        assert_eq!(made.metadata.name.as_deref(), Some("web"));
        assert_eq!(made.metadata.namespace.as_deref(), Some(NS));
        assert_eq!(made.metadata.labels.as_ref(), Some(&want.labels));
        assert_eq!(made.metadata.annotations, None);
        let subsets = made.subsets.expect("subsets");
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().map(Vec::len),
            Some(1)
        );
        assert!(managed(&Endpoints {
            metadata: ObjectMeta {
                labels: Some(want.labels),
                ..ObjectMeta::default()
            },
            subsets: None,
        }));
    }

    #[test]
    fn writes_table() {
        struct Case {
            what: &'static str,
            observed: Endpoints,
            /// Whether it is updated (else kept as is).
            updated: bool,
        }
        let with = |change: &dyn Fn(&mut Endpoints)| {
            let mut e = stored();
            change(&mut e);
            e
        };
        let cases = vec![
            Case {
                what: "as written",
                observed: stored(),
                updated: false,
            },
            Case {
                what: "same contents in another order, with API defaults and a pod \
                       resourceVersion: no difference",
                observed: with(&|e| {
                    let subsets = e.subsets.as_mut().expect("subsets");
                    subsets[0]
                        .ports
                        .iter_mut()
                        .flatten()
                        .for_each(|p| p.protocol = None);
                    subsets[0].addresses.iter_mut().flatten().for_each(|a| {
                        if let Some(t) = a.target_ref.as_mut() {
                            t.resource_version = Some("3".into());
                        }
                    });
                }),
                updated: false,
            },
            Case {
                what: "an address missing",
                observed: with(&|e| {
                    e.subsets.as_mut().expect("subsets")[0].not_ready_addresses = None
                }),
                updated: true,
            },
            Case {
                what: "a label of the service missing",
                observed: with(&|e| {
                    e.metadata.labels.as_mut().expect("labels").remove("team");
                }),
                updated: true,
            },
            Case {
                what: "a label the service does not have",
                observed: with(&|e| {
                    e.metadata
                        .labels
                        .as_mut()
                        .expect("labels")
                        .insert("extra".into(), "1".into());
                }),
                updated: true,
            },
            Case {
                what: "not (yet) labelled managed-by: taken over",
                observed: with(&|e| {
                    e.metadata
                        .labels
                        .as_mut()
                        .expect("labels")
                        .remove(LABEL_MANAGED_BY);
                }),
                updated: true,
            },
            Case {
                what: "a stale over-capacity annotation",
                observed: with(&|e| {
                    e.metadata
                        .annotations
                        .as_mut()
                        .expect("annotations")
                        .insert(ANNOTATION_OVER_CAPACITY.into(), TRUNCATED.into());
                }),
                updated: true,
            },
            Case {
                what: "a user's Endpoints of the same name",
                observed: user_endpoints(),
                updated: true,
            },
        ];
        let want = wanted();
        for case in cases {
            let got = plan(&key(), Want::Endpoints(&want), Some(&case.observed));
            match (got, case.updated) {
                (Plan::Keep, false) => {}
                (Plan::Update(next), true) => {
                    assert_eq!(
                        next.metadata.labels.as_ref(),
                        Some(&want.labels),
                        "{}",
                        case.what
                    );
                    assert_eq!(
                        next.metadata.resource_version, case.observed.metadata.resource_version,
                        "{}: the write is conditional on the object read",
                        case.what
                    );
                    let annotations = next.metadata.annotations.clone().unwrap_or_default();
                    assert_eq!(
                        annotations.get(ANNOTATION_OVER_CAPACITY),
                        None,
                        "{}",
                        case.what
                    );
                    assert_eq!(
                        annotations.get("note"),
                        case.observed
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("note")),
                        "{}: other annotations are kept",
                        case.what
                    );
                    assert_eq!(
                        plan(&key(), Want::Endpoints(&want), Some(&next)),
                        Plan::Keep,
                        "{}: the update converges",
                        case.what
                    );
                }
                (got, _) => panic!("{}: unexpected {got:?}", case.what),
            }
        }
    }

    #[test]
    fn truncated_endpoints_carry_the_annotation() {
        let mut want = wanted();
        want.truncated = true;
        let Plan::Create(made) = plan(&key(), Want::Endpoints(&want), None) else {
            panic!("a create");
        };
        let annotations = made.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get(ANNOTATION_OVER_CAPACITY)
                .map(String::as_str),
            Some(TRUNCATED)
        );
        assert_eq!(
            plan(&key(), Want::Endpoints(&want), Some(&made)),
            Plan::Keep
        );
        let Plan::Update(next) = plan(&key(), Want::Endpoints(&want), Some(&stored())) else {
            panic!("an update");
        };
        assert_eq!(
            next.metadata
                .annotations
                .unwrap_or_default()
                .get(ANNOTATION_OVER_CAPACITY)
                .map(String::as_str),
            Some(TRUNCATED)
        );
    }

    #[test]
    fn deletes_and_hands_off_table() {
        let deleting = {
            let mut e = stored();
            e.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
            e
        };
        let want = wanted();
        let cases = [
            (
                "service gone, ours: deleted, conditional on its uid",
                Want::Gone,
                Some(stored()),
                Plan::Delete {
                    uid: Some("uid-ep".into()),
                },
            ),
            (
                "service gone, a user's: kept",
                Want::Gone,
                Some(user_endpoints()),
                Plan::Keep,
            ),
            ("service gone, nothing there", Want::Gone, None, Plan::Keep),
            (
                "selector-less service: a user's Endpoints are not touched",
                Want::Unmanaged,
                Some(user_endpoints()),
                Plan::Keep,
            ),
            (
                "selector-less service: not even ours",
                Want::Unmanaged,
                Some(stored()),
                Plan::Keep,
            ),
            (
                "selector-less service without Endpoints: none made",
                Want::Unmanaged,
                None,
                Plan::Keep,
            ),
            (
                "being deleted: left to the API server",
                Want::Gone,
                Some(deleting.clone()),
                Plan::Keep,
            ),
            (
                "being deleted while the service selects: not updated",
                Want::Endpoints(&want),
                Some(deleting),
                Plan::Keep,
            ),
        ];
        for (what, want, observed, expected) in cases {
            assert_eq!(plan(&key(), want, observed.as_ref()), expected, "{what}");
        }
    }
}
