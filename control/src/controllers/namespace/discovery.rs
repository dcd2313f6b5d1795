//! Discovery: the resource types the API server serves, each at the version it prefers
//! (client-go's `ServerPreferredResources`: a resource of a group at the group's preferred
//! version when served there, else at the first version that serves it), and the group
//! versions that could not be read.
//!
//! Invariant: a group version that does not answer is reported, never skipped silently: the
//! namespace controller must not release a namespace while a type it cannot see may still
//! hold content there (an aggregated API server that is down, typically).

use std::collections::HashSet;

use kube::Client;
use kube::core::gvk::GroupVersion;
use kube::discovery::{ApiCapabilities, ApiResource, pinned_group};

use crate::controllers::chain;

/// Resource types with what each serves.
pub type Resources = Vec<(ApiResource, ApiCapabilities)>;

/// One API group as the server lists it, with what each of its versions answered.
#[derive(Debug, Clone)]
pub struct Served {
    /// Empty for the core group.
    pub group: String,
    pub preferred: Option<String>,
    /// In the server's order (most preferred first), with the version's resource types or
    /// why they could not be read.
    pub versions: Vec<(String, Result<Resources, String>)>,
}

/// What discovery found.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub resources: Resources,
    /// `group/version: error` for each group version that failed.
    pub failed: Vec<String>,
}

/// Each group's resource types at their preferred version, and the failed group versions.
pub fn preferred(groups: Vec<Served>) -> Discovered {
    let mut found = Discovered::default();
    for served in groups {
        let preferred = served
            .preferred
            .clone()
            .or_else(|| served.versions.first().map(|(v, _)| v.clone()));
        // The preferred version's resources first, so that they win.
        let mut versions = served.versions;
        versions.sort_by_key(|(v, _)| Some(v) != preferred.as_ref());
        let mut seen = HashSet::new();
        for (version, answer) in versions {
            match answer {
                Ok(resources) => {
                    for (resource, caps) in resources {
                        if seen.insert(resource.plural.clone()) {
                            found.resources.push((resource, caps));
                        }
                    }
                }
                Err(err) => {
                    let gv = GroupVersion::gv(&served.group, &version).api_version();
                    found.failed.push(format!("{gv}: {err}"));
                }
            }
        }
    }
    found
}

/// Asks the API server for every group version's resources. Fails only when the group lists
/// themselves cannot be read; a group version that fails is in [`Discovered::failed`].
pub async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let core = client.list_core_api_versions().await?;
    let groups = client.list_api_groups().await?;
    let mut listed = vec![(String::new(), Some("v1".to_owned()), core.versions)];
    for group in groups.groups {
        listed.push((
            group.name,
            group.preferred_version.map(|p| p.version),
            group.versions.into_iter().map(|v| v.version).collect(),
        ));
    }
    let mut served = Vec::with_capacity(listed.len());
    for (group, preferred, versions) in listed {
        let mut answers = Vec::with_capacity(versions.len());
        for version in versions {
            let answer = pinned_group(client, &GroupVersion::gv(&group, &version))
                .await
                .map(|g| g.versioned_resources(&version))
                .map_err(|err| chain(&err));
            answers.push((version, answer));
        }
        served.push(Served {
            group,
            preferred,
            versions: answers,
        });
    }
    Ok(preferred(served))
}

#[cfg(test)]
mod tests {
    use kube::discovery::Scope;

    use super::*;

    fn resource(group: &str, version: &str, plural: &str) -> (ApiResource, ApiCapabilities) {
        let api_version = GroupVersion::gv(group, version).api_version();
        (
            ApiResource {
                group: group.into(),
                version: version.into(),
                api_version,
                kind: plural.into(),
                plural: plural.into(),
            },
            ApiCapabilities {
                scope: Scope::Namespaced,
                subresources: vec![],
                operations: vec!["list".into(), "delete".into()],
            },
        )
    }

    fn found(d: &Discovered) -> Vec<String> {
        d.resources
            .iter()
            .map(|(r, _)| format!("{}.{}", r.plural, r.api_version))
            .collect()
    }

    #[test]
    fn the_preferred_version_wins_and_resources_only_elsewhere_are_kept() {
        let groups = vec![Served {
            group: "batch".into(),
            preferred: Some("v1".into()),
            versions: vec![
                (
                    "v2alpha1".into(),
                    Ok(vec![
                        resource("batch", "v2alpha1", "jobs"),
                        resource("batch", "v2alpha1", "experiments"),
                    ]),
                ),
                ("v1".into(), Ok(vec![resource("batch", "v1", "jobs")])),
            ],
        }];
        assert_eq!(
            found(&preferred(groups)),
            vec!["jobs.batch/v1", "experiments.batch/v2alpha1"]
        );
    }

    #[test]
    fn failed_group_versions_are_reported_and_the_rest_kept() {
        let groups = vec![
            Served {
                group: String::new(),
                preferred: Some("v1".into()),
                versions: vec![("v1".into(), Ok(vec![resource("", "v1", "pods")]))],
            },
            Served {
                group: "metrics.k8s.io".into(),
                preferred: None,
                versions: vec![("v1beta1".into(), Err("503 unavailable".into()))],
            },
        ];
        let discovered = preferred(groups);
        assert_eq!(found(&discovered), vec!["pods.v1"]);
        assert_eq!(
            discovered.failed,
            vec!["metrics.k8s.io/v1beta1: 503 unavailable"]
        );
    }
}
