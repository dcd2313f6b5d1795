//! Test fixtures: Deployments and ReplicaSets for the rollout tables.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, DeploymentStrategy, ReplicaSet, ReplicaSetSpec,
    ReplicaSetStatus, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

pub const NOW: i64 = 1_000_000;

pub fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("in range")
}

/// "25%" as a percentage, "2" as a number.
pub fn intstr(value: &str) -> IntOrString {
    match value.parse() {
        Ok(n) => IntOrString::Int(n),
        Err(_) => IntOrString::String(value.into()),
    }
}

pub fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: Some(image.into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

/// A RollingUpdate Deployment `web` of `replicas` with these fenceposts, generation 1,
/// progress deadline 600 s, observed already.
pub fn deployment(replicas: i32, max_surge: &str, max_unavailable: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("uid-web".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(intstr(max_surge)),
                    max_unavailable: Some(intstr(max_unavailable)),
                }),
            }),
            template: template("nginx:1.27"),
            progress_deadline_seconds: Some(600),
            revision_history_limit: Some(10),
            ..DeploymentSpec::default()
        },
        status: Some(DeploymentStatus {
            observed_generation: Some(1),
            ..DeploymentStatus::default()
        }),
    }
}

pub fn recreate(replicas: i32) -> Deployment {
    let mut d = deployment(replicas, "25%", "25%");
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    d
}

/// A ReplicaSet `name` of `replicas` with `available` of them available (and as many
/// reported), created at second `created`, observed.
pub fn rs(name: &str, replicas: i32, available: i32, created: i64) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(at(created))),
            generation: Some(1),
            annotations: Some(BTreeMap::new()),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            template: Some(template(name)),
            ..ReplicaSetSpec::default()
        },
        status: Some(ReplicaSetStatus {
            replicas,
            available_replicas: Some(available),
            ready_replicas: Some(available),
            observed_generation: Some(1),
            ..ReplicaSetStatus::default()
        }),
    }
}

pub fn annotated(mut rs: ReplicaSet, pairs: &[(&str, &str)]) -> ReplicaSet {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in pairs {
        annotations.insert((*k).to_owned(), (*v).to_owned());
    }
    rs
}
