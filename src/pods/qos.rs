//! QoS: a pod's quality-of-service class (Guaranteed, Burstable, BestEffort), from its
//! containers' cpu and memory requests and limits, as the API defines it; and the pod-level
//! totals the kubelet derives from them (effective requests for admission, the pod cgroup's
//! shares, quota and memory limit).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

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

/// Which half of the containers' requirements to total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Requests,
    Limits,
}

/// A pod's effective total of `side`, in milli-units: the larger of the sum over its app
/// containers (sidecars count with them) and what runs while each init container runs,
/// plus the pod's overhead.
pub fn pod_totals(spec: &PodSpec, side: Side) -> BTreeMap<String, i128> {
    let of = |c: &Container| -> BTreeMap<String, i128> {
        let (requests, limits) = requirements(c);
        let chosen = match side {
            Side::Requests => requests,
            Side::Limits => limits,
        };
        chosen
            .into_iter()
            .filter_map(|(name, q)| quantity::parse(&q.0).map(|m| (name, m.0)))
            .collect()
    };
    let add = |total: &mut BTreeMap<String, i128>, more: BTreeMap<String, i128>| {
        for (name, value) in more {
            *total.entry(name).or_default() += value;
        }
    };
    let mut apps: BTreeMap<String, i128> = BTreeMap::new();
    for container in &spec.containers {
        add(&mut apps, of(container));
    }
    let mut sidecars: BTreeMap<String, i128> = BTreeMap::new();
    let mut total = BTreeMap::new();
    for init in spec.init_containers.iter().flatten() {
        let own = of(init);
        if init.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, own);
            continue;
        }
        // An init container runs beside the sidecars started before it.
        let mut running = sidecars.clone();
        add(&mut running, own);
        for (name, value) in running {
            let slot = total.entry(name).or_insert(0);
            *slot = (*slot).max(value);
        }
    }
    add(&mut apps, sidecars);
    for (name, value) in apps {
        let slot = total.entry(name).or_insert(0);
        *slot = (*slot).max(value);
    }
    for (name, q) in spec.overhead.clone().unwrap_or_default() {
        if let Some(m) = quantity::parse(&q.0) {
            *total.entry(name).or_default() += m.0;
        }
    }
    total
}

/// What the pod's own cgroup is given, as upstream's `ResourceConfigForPod`: cpu shares from
/// the cpu request; a cpu quota and a memory limit only when every container has that limit
/// (one unlimited container leaves the pod unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodResources {
    pub milli_cpu_request: i128,
    pub milli_cpu_limit: Option<i128>,
    pub memory_limit: Option<i128>,
}

impl PodResources {
    /// Room for both: the larger request, and a limit only where both have one.
    pub fn covering(self, other: Self) -> Self {
        let larger = |a: Option<i128>, b: Option<i128>| a.zip(b).map(|(a, b)| a.max(b));
        Self {
            milli_cpu_request: self.milli_cpu_request.max(other.milli_cpu_request),
            milli_cpu_limit: larger(self.milli_cpu_limit, other.milli_cpu_limit),
            memory_limit: larger(self.memory_limit, other.memory_limit),
        }
    }
}

pub fn pod_resources(spec: &PodSpec) -> PodResources {
    let requests = pod_totals(spec, Side::Requests);
    let limits = pod_totals(spec, Side::Limits);
    let everyone_has = |name: &str| {
        all_containers(spec).all(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key(name))
        })
    };
    PodResources {
        milli_cpu_request: requests.get("cpu").copied().unwrap_or(0),
        milli_cpu_limit: everyone_has("cpu")
            .then(|| limits.get("cpu").copied())
            .flatten(),
        memory_limit: everyone_has("memory")
            .then(|| limits.get("memory").map(|m| m / 1000))
            .flatten(),
    }
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

    #[test]
    fn pod_cgroups_are_limited_only_when_every_container_is() {
        let limited = [("cpu", "250m"), ("memory", "32Mi")];
        let both = pod_resources(&pod(&[(&[], &limited), (&[], &limited)]));
        assert_eq!(
            both,
            PodResources {
                milli_cpu_request: 500,
                milli_cpu_limit: Some(500),
                memory_limit: Some(64 << 20),
            }
        );
        let one_unlimited = pod_resources(&pod(&[(&[], &limited), (&[("cpu", "100m")], &[])]));
        assert_eq!(
            one_unlimited,
            PodResources {
                milli_cpu_request: 350,
                milli_cpu_limit: None,
                memory_limit: None,
            }
        );
    }
}
