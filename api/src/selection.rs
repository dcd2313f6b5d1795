//! Selection: which nodes a pod may go to, as the API defines it — `nodeSelector`,
//! required node affinity terms, and tolerations of taints. The kubelet's admission and
//! the scheduler must agree on these, so both use this one reading.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether the pod's `nodeSelector` and required node affinity both admit the node.
pub fn node_matches(pod: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = pod
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// Upstream's `Toleration.ToleratesTaint`: an empty effect or key matches any; `Exists`
/// ignores the value, `Equal` (the default) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// A node selector term: all its expressions and fields match. An empty term matches
/// nothing (API semantics for both required and preferred terms).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.clone().unwrap_or_default();
    // metadata.name is the only field a node selector may select on; other keys are
    // invalid and match nothing.
    let node_fields = BTreeMap::from([("metadata.name".to_owned(), name)]);
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels, true))
        && fields
            .iter()
            .all(|r| requirement_matches(r, &node_fields, false))
}

fn requirement_matches(
    r: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
    label: bool,
) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    // Gt/Lt take exactly one integer; anything else is invalid and fails the term.
    let bound = || match values {
        [only] => number(only),
        _ => None,
    };
    match (r.operator.as_str(), label) {
        ("In", _) => value.is_some_and(|v| values.contains(v)),
        ("NotIn", _) => value.is_none_or(|v| !values.contains(v)),
        ("Exists", true) => value.is_some(),
        ("DoesNotExist", true) => value.is_none(),
        ("Gt", true) => {
            matches!((value.and_then(|v| number(v)), bound()), (Some(a), Some(b)) if a > b)
        }
        ("Lt", true) => {
            matches!((value.and_then(|v| number(v)), bound()), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}
