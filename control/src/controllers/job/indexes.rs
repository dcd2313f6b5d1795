//! Completion indexes of Indexed Jobs: the index each pod carries, the compressed text of
//! `status.completedIndexes` ("1,3-5,7"), which indexes still want a pod, and which pods
//! hold an index twice or one out of range.
//!
//! Invariants: an index is a non-negative integer in the pod's
//! `batch.kubernetes.io/job-completion-index` annotation, below `spec.completions`;
//! [`Intervals`] are sorted, disjoint and never adjacent (adjacent runs are merged), and
//! print as upstream does — a run of two as "3,4", of three or more as "3-5"; pending
//! indexes are handed out lowest first. Upstream: `pkg/controller/job/indexed_job_utils.go`
//! (`orderedIntervals`, `parseIndexesFromString`, `firstPendingIndexes`,
//! `appendDuplicatedIndexPodsForRemoval`, `podGenerateNameWithIndex`,
//! `addCompletionIndexEnvVariables`).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec,
};
use k8s_openapi::jiff::Timestamp;

use crate::controllers::replicaset::pods::to_delete;

/// The annotation (and, since PodIndexLabel, the label) naming a pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The variable every container of an Indexed Job's pods gets its index in.
pub const ENV: &str = "JOB_COMPLETION_INDEX";
/// Upstream's `names.MaxGeneratedNameLength`: 63 less the 5 random characters.
const MAX_GENERATED_NAME: usize = 58;

/// The pod's completion index; None without one or with one that is not a non-negative
/// integer (upstream's `unknownCompletionIndex`).
pub fn completion_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
        .filter(|ix| *ix >= 0)
}

/// A set of indexes as sorted, disjoint, non-adjacent closed runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i32, i32)>);

impl Intervals {
    /// Upstream's `parseIndexesFromString`: what is at or beyond `completions` is dropped,
    /// a corrupt run skipped.
    pub fn parse(text: &str, completions: i32) -> Self {
        let mut runs: Vec<(i32, i32)> = Vec::new();
        if text.is_empty() {
            return Intervals(runs);
        }
        for run in text.split(',') {
            let mut limits = run.splitn(2, '-');
            let Some(Ok(first)) = limits.next().map(str::parse::<i32>) else {
                continue;
            };
            if first >= completions {
                break;
            }
            let last = match limits.next() {
                None => first,
                Some(text) => match text.parse::<i32>() {
                    Ok(last) => last.min(completions - 1),
                    Err(_) => continue,
                },
            };
            if last < first {
                continue;
            }
            match runs.last_mut() {
                Some(previous) if previous.1 + 1 >= first => previous.1 = previous.1.max(last),
                _ => runs.push((first, last)),
            }
        }
        Intervals(runs)
    }

    /// These intervals and the given indexes.
    pub fn with(&self, indexes: impl IntoIterator<Item = i32>) -> Self {
        let mut sorted: Vec<i32> = indexes.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        self.merge(&Intervals(sorted.into_iter().map(|i| (i, i)).collect()))
    }

    /// The union of both.
    pub fn merge(&self, other: &Intervals) -> Self {
        let mut all: Vec<(i32, i32)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut runs: Vec<(i32, i32)> = Vec::with_capacity(all.len());
        for (first, last) in all {
            match runs.last_mut() {
                Some(previous) if first <= previous.1.saturating_add(1) => {
                    previous.1 = previous.1.max(last);
                }
                _ => runs.push((first, last)),
            }
        }
        Intervals(runs)
    }

    /// How many indexes there are.
    pub fn total(&self) -> i32 {
        self.0.iter().map(|(first, last)| last - first + 1).sum()
    }

    pub fn has(&self, index: i32) -> bool {
        self.0
            .iter()
            .any(|(first, last)| *first <= index && index <= *last)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Intervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (first, last)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{first}")?;
            if last == &(first + 1) {
                write!(f, ",{last}")?;
            } else if last > first {
                write!(f, "-{last}")?;
            }
        }
        Ok(())
    }
}

/// Upstream's `firstPendingIndexes`: the `count` lowest indexes below `completions` that
/// `taken` (succeeded, held by an active pod, ...) does not hold.
pub fn first_pending(taken: &Intervals, count: usize, completions: i32) -> Vec<i32> {
    let mut pending = Vec::with_capacity(count.min(1024));
    let mut candidate = 0;
    let mut runs = taken.0.iter().peekable();
    while candidate < completions && pending.len() < count {
        match runs.peek() {
            Some((first, last)) if candidate >= *first => {
                candidate = candidate.max(last + 1);
                runs.next();
            }
            _ => {
                pending.push(candidate);
                candidate += 1;
            }
        }
    }
    pending
}

/// Upstream's `appendDuplicatedIndexPodsForRemoval`: of active `pods`, those to delete
/// because they have no valid index or share theirs with another (all but the one that is
/// furthest along), and those left.
pub fn for_removal<'a>(
    pods: &[&'a Pod],
    completions: i32,
    now: Timestamp,
) -> (Vec<&'a Pod>, Vec<&'a Pod>) {
    let mut by_index: BTreeMap<i32, Vec<&'a Pod>> = BTreeMap::new();
    let mut remove = Vec::new();
    for pod in pods {
        match completion_index(pod).filter(|ix| *ix < completions) {
            Some(ix) => by_index.entry(ix).or_default().push(*pod),
            None => remove.push(*pod),
        }
    }
    let mut left = Vec::new();
    for group in by_index.into_values() {
        // The deletion order of surplus pods: all but the last to go are removed.
        let doomed = to_delete(&group, &[], group.len() - 1, now);
        for pod in group {
            if doomed.iter().any(|d| std::ptr::eq(*d, pod)) {
                remove.push(pod);
            } else {
                left.push(pod);
            }
        }
    }
    (remove, left)
}

/// Upstream's `podGenerateNameWithIndex`: `<job>-<index>-`, the Job's name cut so that the
/// generated name stays a valid DNS label.
pub fn generate_name(job: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    let prefix = format!("{job}{suffix}");
    if prefix.len() <= MAX_GENERATED_NAME {
        return prefix;
    }
    let mut keep = MAX_GENERATED_NAME.saturating_sub(suffix.len());
    while !job.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &job[..keep])
}

/// Upstream's `addCompletionIndexEnvVariables`: every container and init container that
/// does not set it gets [`ENV`] from the pod's completion index label.
pub fn add_env(spec: &mut PodSpec) {
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for container in containers {
        add_env_to(container);
    }
}

fn add_env_to(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    if env.iter().any(|v| v.name == ENV) {
        return;
    }
    env.push(EnvVar {
        name: ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    });
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;
    use crate::controllers::replicaset::pods::tests::{NOW, at, pod};

    fn indexed(name: &str, index: &str, phase: &str, ready: Option<i64>) -> Pod {
        let mut p = pod(name, "n1", phase, ready, 0);
        p.metadata.annotations = Some(BTreeMap::from([(
            COMPLETION_INDEX.to_owned(),
            index.to_owned(),
        )]));
        p
    }

    #[test]
    fn intervals_parse_merge_and_print_as_upstream() {
        // (text, completions, printed, total)
        let cases = [
            ("", 10, "", 0),
            ("1,3-5,7", 10, "1,3-5,7", 5),
            ("0,1", 10, "0,1", 2),
            ("0,1,2", 10, "0-2", 3),
            ("1-3,4-6", 10, "1-6", 6),
            ("3-9", 5, "3,4", 2),
            ("2,x,4", 10, "2,4", 2),
            ("2,7,9", 5, "2", 1),
        ];
        for (text, completions, want, total) in cases {
            let parsed = Intervals::parse(text, completions);
            assert_eq!(parsed.to_string(), want, "{text:?}");
            assert_eq!(parsed.total(), total, "{text:?}");
        }
        let merged = Intervals::parse("1,5-6", 10).with([2, 3, 9, 5]);
        assert_eq!(merged.to_string(), "1-3,5,6,9");
        assert!(merged.has(2) && merged.has(9) && !merged.has(4));
        assert_eq!(
            Intervals::parse("0-2", 10)
                .merge(&Intervals::parse("4,6", 10))
                .to_string(),
            "0-2,4,6"
        );
    }

    #[test]
    fn pending_indexes_are_the_lowest_free_ones() {
        // (taken, count, completions, pending)
        let cases: [(&str, usize, i32, Vec<i32>); 5] = [
            ("", 3, 5, vec![0, 1, 2]),
            ("0,2-3", 3, 6, vec![1, 4, 5]),
            ("0-4", 2, 5, vec![]),
            ("1", 10, 3, vec![0, 2]),
            ("", 0, 3, vec![]),
        ];
        for (taken, count, completions, want) in cases {
            assert_eq!(
                first_pending(&Intervals::parse(taken, completions), count, completions),
                want,
                "taken {taken:?}"
            );
        }
    }

    #[test]
    fn duplicate_and_invalid_indexes_are_removed_keeping_the_furthest_along() {
        let now = at(NOW);
        let pods = [
            indexed("a0-pending", "0", "Pending", None),
            indexed("a0-running", "0", "Running", Some(NOW - 10)),
            indexed("b1", "1", "Running", Some(NOW - 10)),
            indexed("c-out-of-range", "7", "Running", None),
            indexed("d-garbage", "x", "Running", None),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let (remove, left) = for_removal(&refs, 3, now);
        let names = |v: &[&Pod]| -> Vec<String> {
            let mut n: Vec<String> = v.iter().filter_map(|p| p.metadata.name.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&remove),
            vec!["a0-pending", "c-out-of-range", "d-garbage"]
        );
        assert_eq!(names(&left), vec!["a0-running", "b1"]);
    }

    #[test]
    fn names_indexes_and_env() {
        assert_eq!(generate_name("pi", 3), "pi-3-");
        let long = "j".repeat(80);
        let name = generate_name(&long, 12);
        assert_eq!(name.len(), MAX_GENERATED_NAME);
        assert!(name.ends_with("-12-"));

        let mut p = indexed("x", "4", "Running", None);
        assert_eq!(completion_index(&p), Some(4));
        p.metadata = ObjectMeta::default();
        assert_eq!(completion_index(&p), None);
        assert_eq!(completion_index(&indexed("y", "-1", "Running", None)), None);

        let mut spec = PodSpec {
            containers: vec![
                Container {
                    name: "main".into(),
                    ..Container::default()
                },
                Container {
                    name: "own".into(),
                    env: Some(vec![EnvVar {
                        name: ENV.into(),
                        value: Some("9".into()),
                        value_from: None,
                    }]),
                    ..Container::default()
                },
            ],
            init_containers: Some(vec![Container {
                name: "init".into(),
                ..Container::default()
            }]),
            ..PodSpec::default()
        };
        add_env(&mut spec);
        let path = |c: &Container| {
            c.env.as_ref().and_then(|e| {
                e.iter()
                    .find(|v| v.name == ENV)
                    .and_then(|v| v.value_from.as_ref())
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| f.field_path.clone())
            })
        };
        let want = Some(format!("metadata.labels['{COMPLETION_INDEX}']"));
        assert_eq!(path(&spec.containers[0]), want);
        assert_eq!(path(&spec.containers[1]), None, "its own value stays");
        assert_eq!(path(&spec.init_containers.as_ref().expect("init")[0]), want);
    }
}
