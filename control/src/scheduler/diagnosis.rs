//! Diagnosis: why a pod fits no node, as the one-line message upstream's scheduler puts in
//! the FailedScheduling event and the PodScheduled condition (`FitError.Error()`): a sorted
//! histogram of the filters' reasons, then what preemption said (`preemption::Decision`).
//! Pure.

use std::collections::BTreeMap;

use super::filters::Rejection;

/// Upstream's `ErrNoNodesAvailable`.
pub const NO_NODES: &str = "no nodes available to schedule pods";

/// Upstream's preemption reasons for a node: rejected for good, or nothing to evict there.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// The message for a pod that every one of `total_nodes` nodes rejected, one rejection per
/// node, followed by what preemption said.
pub fn message<'a>(
    total_nodes: usize,
    rejections: impl IntoIterator<Item = &'a Rejection>,
    preemption: &str,
) -> String {
    if total_nodes == 0 {
        return NO_NODES.to_owned();
    }
    let reasons = rejections
        .into_iter()
        .flat_map(|r| r.reasons.iter().map(String::as_str));
    format!(
        "{} preemption: {preemption}",
        nodes_available(total_nodes, reasons)
    )
}

/// "0/N nodes are available: <histogram>."
pub fn nodes_available<'a>(total_nodes: usize, reasons: impl Iterator<Item = &'a str>) -> String {
    format!(
        "0/{total_nodes} nodes are available: {}.",
        histogram(reasons)
    )
}

/// "2 Insufficient cpu, 1 node(s) ...": counts, then sorted as whole strings, as upstream
/// sorts them (so "10 x" comes before "2 y").
fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in reasons {
        *counts.entry(reason).or_default() += 1;
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::filters::{Code, REASON_AFFINITY, REASON_PORTS, REASON_TAINT};

    /// What preemption says when no pod has a lower priority: nodes rejected for good are
    /// "not helpful", the others have "no victims".
    fn no_victims(total_nodes: usize, rejections: &[Rejection]) -> String {
        let reasons = rejections.iter().map(|r| match r.code {
            Code::UnschedulableAndUnresolvable => NOT_HELPFUL,
            Code::Unschedulable => NO_VICTIMS,
        });
        nodes_available(total_nodes, reasons)
    }

    fn rejection(code: Code, reasons: &[&str]) -> Rejection {
        Rejection {
            plugin: "test",
            code,
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn messages_read_like_upstream() {
        let affinity = rejection(Code::UnschedulableAndUnresolvable, &[REASON_AFFINITY]);
        let cpu = rejection(Code::Unschedulable, &["Insufficient cpu"]);
        let huge_cpu = rejection(Code::UnschedulableAndUnresolvable, &["Insufficient cpu"]);
        let both = rejection(
            Code::Unschedulable,
            &["Insufficient cpu", "Insufficient memory"],
        );
        let taint = rejection(Code::UnschedulableAndUnresolvable, &[REASON_TAINT]);
        let ports = rejection(Code::Unschedulable, &[REASON_PORTS]);
        let cases: Vec<(usize, Vec<Rejection>, &str)> = vec![
            (0, vec![], "no nodes available to schedule pods"),
            (
                3,
                vec![affinity.clone(), huge_cpu.clone(), huge_cpu],
                "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu. \
                 preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
            ),
            (
                3,
                vec![taint.clone(), cpu.clone(), cpu.clone()],
                "0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 Insufficient cpu. \
                 preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
                 2 No preemption victims found for incoming pod.",
            ),
            (
                2,
                vec![both, cpu],
                "0/2 nodes are available: 1 Insufficient memory, 2 Insufficient cpu. \
                 preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.",
            ),
            (
                1,
                vec![ports],
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. \
                 preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            ),
            (
                12,
                std::iter::repeat_n(affinity, 10)
                    .chain(std::iter::repeat_n(taint, 2))
                    .collect(),
                "0/12 nodes are available: 10 node(s) didn't match Pod's node affinity/selector, \
                 2 node(s) had untolerated taint(s). \
                 preemption: 0/12 nodes are available: 12 Preemption is not helpful for scheduling.",
            ),
        ];
        for (total, rejections, want) in cases {
            let preemption = no_victims(total, &rejections);
            assert_eq!(message(total, &rejections, &preemption), want);
        }
    }
}
