//! QoS: a pod's quality-of-service class (Guaranteed, Burstable, BestEffort), from its
//! containers' cpu and memory requests and limits, as the API defines it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const COMPUTE: [&str; 2] = ["cpu", "memory"];

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// A container's (requests, limits), with a request left out defaulting to its limit, as
/// the API server's defaulting and the kubelet read them.
pub fn requirements(
    container: &Container,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let resources = container.resources.clone().unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let mut requests = resources.requests.unwrap_or_default();
    for (name, limit) in &limits {
        requests
            .entry(name.clone())
            .or_insert_with(|| limit.clone());
    }
    (requests, limits)
}

pub fn class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for container in all_containers(spec) {
        let (requests, limits) = requirements(container);
        for resource in COMPUTE {
            let request = requests.get(resource).filter(|q| !is_zero(q));
            let limit = limits.get(resource).filter(|q| !is_zero(q));
            any |= request.is_some() || limit.is_some();
            guaranteed &= matches!((request, limit), (Some(r), Some(l)) if r == l);
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn is_zero(q: &Quantity) -> bool {
    q.0.trim_start_matches('0').is_empty() || q.0 == "0m"
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ResourceRequirements;

    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn pod(resources: &[(Pairs<'_>, Pairs<'_>)]) -> PodSpec {
        let map = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, Quantity>> {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).into(), Quantity((*v).into())))
                    .collect()
            })
        };
        PodSpec {
            containers: resources
                .iter()
                .enumerate()
                .map(|(i, (requests, limits))| Container {
                    name: format!("c{i}"),
                    resources: Some(ResourceRequirements {
                        requests: map(requests),
                        limits: map(limits),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        }
    }

    #[test]
    fn classes() {
        assert_eq!(class(&pod(&[(&[], &[])])), "BestEffort");
        assert_eq!(class(&pod(&[(&[("cpu", "100m")], &[])])), "Burstable");
        let full = [("cpu", "1"), ("memory", "1Gi")];
        assert_eq!(
            class(&pod(&[(&[], &full)])),
            "Guaranteed",
            "requests default to limits"
        );
        assert_eq!(
            class(&pod(&[(&full, &full), (&[], &[])])),
            "Burstable",
            "every container must be guaranteed"
        );
        assert_eq!(
            class(&pod(&[(&[("cpu", "500m"), ("memory", "1Gi")], &full)])),
            "Burstable"
        );
    }
}
