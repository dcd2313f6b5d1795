//! Pod failure policy: what a Job's `podFailurePolicy` makes of one failed pod — ignored
//! (not counted against backoffLimit: an eviction, a preemption), counted as usual, or the end
//! of the whole Job — upstream's `matchPodFailurePolicy`
//! (`pkg/controller/job/pod_failure_policy.go`).
//!
//! Invariants: the first rule that matches decides; a rule on exit codes looks at containers
//! (init and app) that terminated with a non-zero code, a rule on conditions at the pod's
//! conditions; `FailIndex` counts as a failure and fails the pod's index (see `super::per_index`).

use k8s_openapi::api::batch::v1::{
    Job, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};

/// Upstream's reason for a Job failed by a FailJob rule.
pub const REASON: &str = "PodFailurePolicy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a failure of the Job: the pod is replaced, nothing is counted.
    Ignore,
    Count,
    /// The pod's index fails for good (`backoffLimitPerIndex`; see `super::per_index`).
    FailIndex,
    /// The Job fails, with this message.
    FailJob(String),
}

fn rules(job: &Job) -> &[PodFailurePolicyRule] {
    job.spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
        .map_or(&[], |p| p.rules.as_slice())
}

/// The container that failed with an exit code the requirement names.
fn exit_code_match<'a>(
    pod: &'a Pod,
    requirement: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(&'a ContainerStatus, i32)> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|c| {
            requirement
                .container_name
                .as_ref()
                .is_none_or(|name| *name == c.name)
        })
        .find_map(|c| {
            let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
            if code == 0 {
                return None;
            }
            let listed = requirement.values.contains(&code);
            let matches = match requirement.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            matches.then_some((c, code))
        })
}

fn condition_match<'a>(pod: &'a Pod, rule: &PodFailurePolicyRule) -> Option<&'a PodCondition> {
    let patterns = rule.on_pod_conditions.as_ref()?;
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| {
        patterns
            .iter()
            .any(|p| p.type_ == c.type_ && p.status.as_deref().unwrap_or("True") == c.status)
    })
}

/// What the Job's policy makes of `pod`, a failed pod; [`Verdict::Count`] without a policy.
pub fn judge(job: &Job, pod: &Pod) -> Verdict {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    for (index, rule) in rules(job).iter().enumerate() {
        let message = if let Some(requirement) = &rule.on_exit_codes {
            let Some((container, code)) = exit_code_match(pod, requirement) else {
                continue;
            };
            format!(
                "Container {} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}",
                container.name, rule.action
            )
        } else {
            let Some(condition) = condition_match(pod, rule) else {
                continue;
            };
            format!(
                "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                condition.type_, rule.action
            )
        };
        return match rule.action.as_str() {
            "Ignore" => Verdict::Ignore,
            "FailJob" => Verdict::FailJob(message),
            "FailIndex" => Verdict::FailIndex,
            _ => Verdict::Count,
        };
    }
    Verdict::Count
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{
        JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern,
    };
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn job(rules: Vec<PodFailurePolicyRule>) -> Job {
        Job {
            spec: Some(JobSpec {
                pod_failure_policy: Some(PodFailurePolicy { rules }),
                ..JobSpec::default()
            }),
            ..Job::default()
        }
    }

    fn failed(exit_code: i32, condition: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Failed".into()),
                conditions: condition.map(|c| {
                    vec![PodCondition {
                        type_: c.into(),
                        status: "True".into(),
                        ..PodCondition::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus {
                    name: "main".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code,
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn on_codes(action: &str, operator: &str, values: &[i32]) -> PodFailurePolicyRule {
        PodFailurePolicyRule {
            action: action.into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                container_name: None,
                operator: operator.into(),
                values: values.to_vec(),
            }),
            on_pod_conditions: None,
        }
    }

    fn on_condition(action: &str, type_: &str) -> PodFailurePolicyRule {
        PodFailurePolicyRule {
            action: action.into(),
            on_exit_codes: None,
            on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                type_: type_.into(),
                status: Some("True".into()),
            }]),
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = job(vec![
            on_condition("Ignore", "DisruptionTarget"),
            on_codes("FailJob", "In", &[42]),
            on_codes("Count", "NotIn", &[1]),
        ]);
        assert_eq!(
            judge(&policy, &failed(42, Some("DisruptionTarget"))),
            Verdict::Ignore
        );
        assert_eq!(
            judge(&policy, &failed(42, None)),
            Verdict::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert_eq!(
            judge(&policy, &failed(1, None)),
            Verdict::Count,
            "no rule matches"
        );
        assert_eq!(judge(&job(Vec::new()), &failed(42, None)), Verdict::Count);
        let conditioned = job(vec![on_condition("FailJob", "ConfigIssue")]);
        assert_eq!(
            judge(&conditioned, &failed(1, Some("ConfigIssue"))),
            Verdict::FailJob(
                "Pod ns/p has condition ConfigIssue matching FailJob rule at index 0".into()
            )
        );
    }
}
