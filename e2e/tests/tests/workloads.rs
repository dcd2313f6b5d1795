//! Workloads as users drive them with kubectl, with nodus-control as the controller manager
//! and no pod bound by hand: a Deployment becomes available, scales, rolls out a new image
//! (`kubectl rollout status` succeeding) and back (`rollout undo`); deleting it removes its
//! ReplicaSets and pods (background, foreground), and orphaning leaves the pods behind; a
//! Job completes (`kubectl wait --for=condition=complete`), a failing one stops at its
//! backoffLimit, a finished one goes after its TTL; a DaemonSet runs one pod on the node
//! and rolls out a new template; a ReplicationController scales and shows a quota refusal
//! as its ReplicaFailure condition; a CronJob makes a Job a minute, records its runs and
//! keeps only its history; a PodDisruptionBudget refuses an eviction until its counts allow
//! one; a StatefulSet makes its pods in order, rolls a new template out in reverse and rolls
//! back; a Job's pod failure policy ignores an evicted pod, and an Indexed Job completes
//! by its success policy.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use nodus_e2e::{Cluster, TestNamespace, poll};

const WAIT: Duration = Duration::from_secs(120);
/// Ends at once on SIGTERM, so rollouts and deletions do not wait out grace periods.
const SERVE: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";
/// Fails at once on SIGTERM: an evicted pod of it ends Failed, not Succeeded.
const FAIL_ON_TERM: &str = "trap 'exit 1' TERM; while true; do sleep 1; done";

struct Kubectl<'a> {
    cluster: &'a Cluster,
    ns: &'a str,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.ns];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }
}

/// The namespace's pods that are not being deleted, with their images.
async fn live_pods(ns: &TestNamespace) -> Result<Vec<(String, String)>> {
    Ok(ns
        .pods()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
                .unwrap_or_default();
            (p.metadata.name.unwrap_or_default(), image)
        })
        .collect())
}

async fn replica_sets(ns: &TestNamespace, client: &kube::Client) -> Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    Ok(api.list(&ListParams::default()).await?.items)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_deployment_scales_rolls_out_and_rolls_back() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "deploy").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    k.run(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        SERVE,
    ])?;
    k.run(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let status = deployments.get("web").await?.status.context("a status")?;
    assert_eq!(
        (
            status.replicas,
            status.ready_replicas,
            status.available_replicas
        ),
        (Some(3), Some(3), Some(3))
    );
    assert_eq!(live_pods(&ns).await?.len(), 3);

    for replicas in [5, 2] {
        k.run(&["scale", "deployment/web", &format!("--replicas={replicas}")])?;
        poll(WAIT, &format!("{replicas} replicas"), || async {
            let live = live_pods(&ns).await?.len();
            let available = deployments
                .get("web")
                .await?
                .status
                .and_then(|s| s.available_replicas);
            Ok((live == replicas && available == Some(replicas as i32)).then_some(()))
        })
        .await?;
    }

    k.run(&["set", "image", "deployment/web", "busybox=busybox:latest"])?;
    k.run(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    let pods = live_pods(&ns).await?;
    ensure!(
        pods.len() == 2 && pods.iter().all(|(_, image)| image == "busybox:latest"),
        "after the rollout: {pods:?}"
    );
    ensure!(
        replica_sets(&ns, &client).await?.len() == 2,
        "the old ReplicaSet is kept as history"
    );

    k.run(&["rollout", "undo", "deployment/web"])?;
    k.run(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    let pods = live_pods(&ns).await?;
    ensure!(
        pods.len() == 2 && pods.iter().all(|(_, image)| image == "busybox:1.36"),
        "after the undo: {pods:?}"
    );
    // The first ReplicaSet came back as revision 3, rather than a third one being made.
    let sets = replica_sets(&ns, &client).await?;
    ensure!(sets.len() == 2, "{} ReplicaSets", sets.len());
    let revision = |rs: &ReplicaSet| {
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
    };
    let current = sets
        .iter()
        .find(|rs| rs.spec.replicas == Some(2))
        .context("the scaled-up ReplicaSet")?;
    assert_eq!(revision(current).as_deref(), Some("3"));
    let history = k.run(&["rollout", "history", "deployment/web"])?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| r.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn deleting_a_deployment_takes_its_replica_sets_and_pods_along() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "cascade").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    for name in ["background", "foreground"] {
        k.run(&[
            "create",
            "deployment",
            name,
            "--image=busybox:1.36",
            "--replicas=2",
            "--",
            "sh",
            "-c",
            SERVE,
        ])?;
        k.run(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=120s",
        ])?;
    }
    // kubectl's default: the Deployment goes at once, the collector removes the rest.
    k.run(&["delete", "deployment", "background", "--wait=false"])?;
    // Foreground: the Deployment stays, being deleted, until its dependents are gone.
    k.run(&[
        "delete",
        "deployment",
        "foreground",
        "--cascade=foreground",
        "--wait=false",
    ])?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let held = deployments.get_opt("foreground").await?;
    if let Some(held) = held {
        ensure!(
            held.metadata.deletion_timestamp.is_some()
                && held
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == "foregroundDeletion"),
            "a foreground deletion holds the owner with its finalizer"
        );
    }
    poll(
        WAIT,
        "the Deployments, ReplicaSets and pods to be gone",
        || async {
            let left = deployments.list(&ListParams::default()).await?.items.len()
                + replica_sets(&ns, &client).await?.len()
                + ns.pods().list(&ListParams::default()).await?.items.len();
            Ok((left == 0).then_some(()))
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_orphaning_delete_leaves_the_pods_running() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "orphan").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    k.run(&[
        "create",
        "deployment",
        "keep",
        "--image=busybox:1.36",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        SERVE,
    ])?;
    k.run(&["rollout", "status", "deployment/keep", "--timeout=120s"])?;
    let rs = replica_sets(&ns, &client).await?;
    let rs_name = rs
        .first()
        .and_then(|r| r.metadata.name.clone())
        .context("the ReplicaSet")?;
    // Orphan the pods from their ReplicaSet, and the ReplicaSet from its Deployment.
    k.run(&["delete", "deployment", "keep", "--cascade=orphan"])?;
    k.run(&["delete", "replicaset", &rs_name, "--cascade=orphan"])?;
    let pods = poll(WAIT, "the pods to lose their owner", || async {
        let pods: Vec<Pod> = ns.pods().list(&ListParams::default()).await?.items;
        let free = pods.iter().all(|p| {
            p.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
        });
        Ok((free && !pods.is_empty()).then_some(pods))
    })
    .await?;
    assert_eq!(pods.len(), 2);
    ensure!(
        pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()),
        "orphaned pods keep running"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn jobs_complete_fail_at_their_backoff_limit_and_expire() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "jobs").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let create = |name: &str, spec: serde_json::Value| {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": spec,
        }))?;
        anyhow::Ok(job)
    };
    let template = |script: &str| {
        serde_json::json!({ "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", script] }],
        }})
    };
    let post = kube::api::PostParams::default();
    jobs.create(
        &post,
        &create(
            "three",
            serde_json::json!({
                "completions": 3, "parallelism": 2, "template": template("echo ok"),
            }),
        )?,
    )
    .await?;
    jobs.create(
        &post,
        &create(
            "failing",
            serde_json::json!({
                "backoffLimit": 1, "template": template("exit 3"),
            }),
        )?,
    )
    .await?;
    jobs.create(
        &post,
        &create(
            "brief",
            serde_json::json!({
                "ttlSecondsAfterFinished": 3, "template": template("true"),
            }),
        )?,
    )
    .await?;
    k.run(&[
        "wait",
        "--for=condition=complete",
        "job/three",
        "--timeout=120s",
    ])?;
    let status = jobs.get("three").await?.status.context("a status")?;
    assert_eq!((status.succeeded, status.active.unwrap_or(0)), (Some(3), 0));
    assert!(status.completion_time.is_some());
    k.run(&[
        "wait",
        "--for=condition=failed",
        "job/failing",
        "--timeout=120s",
    ])?;
    let failing = jobs.get("failing").await?.status.context("a status")?;
    let reason = failing
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    // backoffLimit 1: the first pod and one retry.
    assert_eq!(failing.failed, Some(2));
    poll(WAIT, "the finished Job to expire", || async {
        Ok(jobs.get_opt("brief").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_daemon_set_runs_one_pod_on_the_node_and_rolls_out() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "daemons").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    let daemon_set = |name: &str,
                      selector: serde_json::Value|
     -> Result<k8s_openapi::api::apps::v1::DaemonSet> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": {
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": {
                        "nodeSelector": selector,
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", SERVE] }],
                    },
                },
            },
        }))?)
    };
    let sets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), &ns.name);
    let post = kube::api::PostParams::default();
    sets.create(&post, &daemon_set("everywhere", serde_json::json!({}))?)
        .await?;
    sets.create(
        &post,
        &daemon_set("nowhere", serde_json::json!({ "no-such-label": "x" }))?,
    )
    .await?;
    k.run(&[
        "rollout",
        "status",
        "daemonset/everywhere",
        "--timeout=120s",
    ])?;
    let node = cluster.node_name();
    let pods = ns.pods().list(&ListParams::default()).await?.items;
    let placed: Vec<(Option<String>, Option<String>)> = pods
        .iter()
        .map(|p| {
            (
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app").cloned()),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            )
        })
        .collect();
    assert_eq!(placed, vec![(Some("everywhere".into()), Some(node))]);
    let nowhere = sets.get("nowhere").await?.status.context("a status")?;
    assert_eq!(nowhere.desired_number_scheduled, 0);

    k.run(&["set", "image", "daemonset/everywhere", "c=busybox:latest"])?;
    k.run(&[
        "rollout",
        "status",
        "daemonset/everywhere",
        "--timeout=120s",
    ])?;
    let live = live_pods(&ns).await?;
    ensure!(
        live.len() == 1 && live[0].1 == "busybox:latest",
        "after the rollout: {live:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn bad_workloads_are_refused_and_the_rest_carry_on() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "bad-workloads").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    // A selector that does not match the template's labels never reaches a controller.
    let manifest = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "mismatched" },
        "spec": {
            "selector": { "matchLabels": { "app": "one" } },
            "template": {
                "metadata": { "labels": { "app": "other" } },
                "spec": { "containers": [{ "name": "c", "image": "busybox:1.36" }] },
            },
        },
    });
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest.to_string())?;
    let path = file.path().to_string_lossy().into_owned();
    let refused = k.run(&["apply", "-f", &path]);
    let message = format!("{:#}", refused.expect_err("the API refuses it"));
    ensure!(
        message.contains("selector") && message.contains("does not match template"),
        "{message}"
    );
    // A Service whose selector matches nothing gets an EndpointSlice with no endpoints.
    k.run(&["create", "service", "clusterip", "lonely", "--tcp=80:8080"])?;
    k.run(&["set", "selector", "service/lonely", "app=nobody"])?;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), &ns.name);
    let empty = poll(WAIT, "lonely's EndpointSlice", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=lonely"))
            .await?;
        Ok(list
            .items
            .first()
            .map(|s| s.endpoints.as_ref().is_none_or(Vec::is_empty)))
    })
    .await?;
    ensure!(empty, "no pod matches, so no endpoint");
    // And the controllers carry on with good objects.
    k.run(&[
        "create",
        "deployment",
        "fine",
        "--image=busybox:1.36",
        "--replicas=1",
        "--",
        "sh",
        "-c",
        SERVE,
    ])?;
    k.run(&["rollout", "status", "deployment/fine", "--timeout=120s"])?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_replication_controller_scales_and_surfaces_a_quota_refusal() -> Result<()> {
    use k8s_openapi::api::core::v1::{ReplicationController, ResourceQuota};
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "rc").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "two-pods" }, "spec": { "hard": { "pods": "2" } },
    }))?;
    quotas.create(&Default::default(), &quota).await?;
    poll(WAIT, "the quota's status", || async {
        let status = quotas.get("two-pods").await?.status;
        Ok(status.and_then(|s| s.hard).map(|_| ()))
    })
    .await?;
    // Three replicas against a quota of two pods.
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "ReplicationController",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "selector": { "app": "web" },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", SERVE],
                    }],
                },
            },
        },
    });
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest.to_string())?;
    k.run(&["apply", "-f", &file.path().to_string_lossy()])?;
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), &ns.name);
    let failure = poll(WAIT, "a ReplicaFailure condition on the RC", || async {
        let status = rcs.get("web").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True"))
    })
    .await?;
    ensure!(
        failure.reason.as_deref() == Some("FailedCreate")
            && failure
                .message
                .as_deref()
                .is_some_and(|m| m.contains("exceeded quota: two-pods")),
        "{failure:?}"
    );
    // Scaled to what the quota allows, the condition goes and both pods become ready.
    k.run(&["scale", "rc", "web", "--replicas=2"])?;
    poll(WAIT, "the RC to be ready without a failure", || async {
        let status = rcs.get("web").await?.status.unwrap_or_default();
        let failing = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "ReplicaFailure");
        Ok((status.ready_replicas == Some(2) && !failing).then_some(()))
    })
    .await?;
    // Its pods name it as their controller; one deleted is replaced.
    let pods = live_pods(&ns).await?;
    ensure!(pods.len() == 2, "{pods:?}");
    let owner = ns.pods().get(&pods[0].0).await?.metadata.owner_references;
    let owner = owner
        .into_iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    ensure!(
        owner.as_ref().map(|o| (o.kind.as_str(), o.name.as_str()))
            == Some(("ReplicationController", "web")),
        "{owner:?}"
    );
    ns.pods().delete(&pods[0].0, &Default::default()).await?;
    poll(WAIT, "a replacement pod", || async {
        let now = live_pods(&ns).await?;
        Ok((now.len() == 2 && !now.iter().any(|(n, _)| *n == pods[0].0)).then_some(()))
    })
    .await?;
    k.run(&["delete", "rc", "web", "--wait=true"])?;
    ns.delete_pods().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_cron_job_runs_on_schedule_records_its_runs_and_keeps_its_history() -> Result<()> {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "cron").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    let manifest = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": { "name": "tick" },
        "spec": {
            "schedule": "*/1 * * * *",
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "jobTemplate": { "spec": { "template": { "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["true"] }],
            }}}},
        },
    });
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest.to_string())?;
    k.run(&["apply", "-f", &file.path().to_string_lossy()])?;
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // A run a minute: wait for two, the first one's Job gone by the history limit.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    poll(Duration::from_secs(200), "two runs, one kept", || async {
        let list = jobs.list(&ListParams::default()).await?.items;
        let runs = {
            let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            seen.extend(list.iter().filter_map(|j| j.metadata.name.clone()));
            seen.len()
        };
        let status = cronjobs.get("tick").await?.status.unwrap_or_default();
        let succeeded = status.last_successful_time.is_some();
        Ok((runs >= 2 && list.len() == 1 && succeeded).then_some(()))
    })
    .await?;
    let job = jobs.list(&ListParams::default()).await?.items.remove(0);
    let name = job.metadata.name.clone().unwrap_or_default();
    let scheduled = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| {
            a.get("batch.kubernetes.io/cronjob-scheduled-timestamp")
                .cloned()
        })
        .context("the scheduled-time annotation")?;
    // Named after its scheduled minute, which the annotation says in RFC 3339.
    let minute: i64 = name.trim_start_matches("tick-").parse()?;
    let at: k8s_openapi::jiff::Timestamp = scheduled.parse()?;
    ensure!(at.as_second() == minute * 60, "{name} vs {scheduled}");
    let owner = job.metadata.owner_references.unwrap_or_default();
    ensure!(
        owner
            .iter()
            .any(|o| o.kind == "CronJob" && o.name == "tick" && o.controller == Some(true)),
        "{owner:?}"
    );
    let listed = k.run(&[
        "get",
        "cronjob",
        "tick",
        "-o",
        "jsonpath={.status.lastScheduleTime}",
    ])?;
    ensure!(!listed.is_empty(), "kubectl shows when it last ran");
    k.run(&["delete", "cronjob", "tick", "--wait=true"])?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_disruption_budget_blocks_evictions_until_it_allows_them() -> Result<()> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "pdb").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    k.run(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        SERVE,
    ])?;
    k.run(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    k.run(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=2",
    ])?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let counts = |want: (i32, i32, i32, i32)| {
        let budgets = budgets.clone();
        async move {
            let what = format!("PDB (expected, healthy, desired, allowed) = {want:?}");
            poll(WAIT, &what, || async {
                let s = budgets.get("web").await?.status.unwrap_or_default();
                let got = (
                    s.expected_pods.unwrap_or(-1),
                    s.current_healthy.unwrap_or(-1),
                    s.desired_healthy.unwrap_or(-1),
                    s.disruptions_allowed.unwrap_or(-1),
                );
                Ok((got == want).then_some(()))
            })
            .await
        }
    };
    counts((2, 2, 2, 0)).await?;
    let victim = live_pods(&ns).await?.remove(0).0;
    let refused = ns
        .pods()
        .evict(&victim, &kube::api::EvictParams::default())
        .await;
    match refused {
        Err(kube::Error::Api(status)) => ensure!(
            status.code == 429 && status.message.contains("disruption budget"),
            "{status:?}"
        ),
        other => anyhow::bail!("the eviction was not refused: {other:?}"),
    }
    // A percentage counts against the Deployment's scale: 50% of 2 may go.
    k.run(&[
        "patch", "pdb", "web", "--type=json",
        "-p", r#"[{"op":"remove","path":"/spec/minAvailable"},{"op":"add","path":"/spec/maxUnavailable","value":"50%"}]"#,
    ])?;
    counts((2, 2, 1, 1)).await?;
    ns.pods()
        .evict(&victim, &kube::api::EvictParams::default())
        .await?;
    poll(WAIT, "the evicted pod to go and be replaced", || async {
        let pods = live_pods(&ns).await?;
        Ok((pods.len() == 2 && !pods.iter().any(|(n, _)| *n == victim)).then_some(()))
    })
    .await?;
    counts((2, 2, 1, 1)).await?;
    let condition = budgets
        .get("web")
        .await?
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed");
    ensure!(
        condition
            .as_ref()
            .map(|c| (c.status.as_str(), c.reason.as_str()))
            == Some(("True", "SufficientPods")),
        "{condition:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_stateful_set_keeps_ordered_identities_rolls_out_in_reverse_and_rolls_back() -> Result<()>
{
    use k8s_openapi::api::apps::v1::StatefulSet;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "sts").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    k.run(&[
        "create",
        "service",
        "clusterip",
        "web",
        "--clusterip=None",
        "--tcp=80:80",
    ])?;
    let manifest = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", SERVE] }],
                },
            },
        },
    });
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest.to_string())?;
    k.run(&["apply", "-f", &file.path().to_string_lossy()])?;
    k.run(&["rollout", "status", "statefulset/web", "--timeout=120s"])?;
    let find = |pods: &[k8s_openapi::api::core::v1::Pod], name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .cloned()
    };
    let created = |pods: &[k8s_openapi::api::core::v1::Pod], name: &str| {
        find(pods, name)
            .and_then(|p| p.metadata.creation_timestamp)
            .map(|t| t.0)
    };
    let ready = |pods: &[k8s_openapi::api::core::v1::Pod], name: &str| {
        find(pods, name)
            .and_then(|p| p.status?.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time)
            .map(|t| t.0)
    };
    // `later` was made once `earlier` was ready (times have whole seconds).
    let after_ready = |pods: &[k8s_openapi::api::core::v1::Pod], earlier: &str, later: &str| {
        let (ready, made) = (ready(pods, earlier), created(pods, later));
        ready.is_some() && made.is_some() && made >= ready
    };
    let pods = ns.pods().list(&ListParams::default()).await?.items;
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    ensure!(names == ["web-0", "web-1", "web-2"], "{names:?}");
    // In order: each made after the one before it was ready.
    ensure!(after_ready(&pods, "web-0", "web-1"), "in order");
    ensure!(after_ready(&pods, "web-1", "web-2"), "in order");
    // Each knows its stable name, under the headless Service.
    let hostname = k.run(&["exec", "web-1", "--", "hostname"])?;
    ensure!(hostname.trim() == "web-1", "{hostname}");
    let spec = pods[1].spec.clone().unwrap_or_default();
    ensure!(spec.subdomain.as_deref() == Some("web"), "{spec:?}");

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let first = sets.get("web").await?.status.unwrap_or_default();
    let first_revision = first.update_revision.clone().unwrap_or_default();
    ensure!(first.current_revision == first.update_revision, "{first:?}");

    // A new template rolls out from the highest ordinal down.
    k.run(&["set", "env", "statefulset/web", "VERSION=2"])?;
    k.run(&["rollout", "status", "statefulset/web", "--timeout=180s"])?;
    let status = sets.get("web").await?.status.unwrap_or_default();
    let second_revision = status.update_revision.clone().unwrap_or_default();
    ensure!(second_revision != first_revision, "{status:?}");
    ensure!(
        status.current_revision == status.update_revision,
        "{status:?}"
    );
    ensure!(status.updated_replicas == Some(3), "{status:?}");
    let pods = ns.pods().list(&ListParams::default()).await?.items;
    // From the top down, each remade once the one above it was ready again. Times have
    // whole seconds, so two pods remade within one second compare equal, not less.
    ensure!(after_ready(&pods, "web-2", "web-1"), "reverse order");
    ensure!(after_ready(&pods, "web-1", "web-0"), "reverse order");
    for pod in &pods {
        let revision = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("controller-revision-hash"));
        ensure!(
            revision == Some(&second_revision),
            "{:?}",
            pod.metadata.name
        );
    }

    // Undoing it goes back to the first revision, not a new one.
    k.run(&["rollout", "undo", "statefulset/web"])?;
    k.run(&["rollout", "status", "statefulset/web", "--timeout=180s"])?;
    let status = sets.get("web").await?.status.unwrap_or_default();
    ensure!(
        status.update_revision.as_deref() == Some(first_revision.as_str()),
        "{status:?}"
    );

    // Scaled down, the highest ordinals go.
    k.run(&["scale", "statefulset/web", "--replicas=1"])?;
    poll(WAIT, "only web-0 to remain", || async {
        let names: Vec<String> = live_pods(&ns).await?.into_iter().map(|(n, _)| n).collect();
        Ok((names == ["web-0"]).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_job_ignores_an_evicted_pod_by_its_pod_failure_policy() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "evicted-job").await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "patient" },
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": { "rules": [{
                "action": "Ignore",
                "onPodConditions": [{ "type": "DisruptionTarget", "status": "True" }],
            }]},
            "template": { "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", FAIL_ON_TERM] }],
            }},
        },
    }))?;
    jobs.create(&Default::default(), &job).await?;
    let first = poll(WAIT, "the job's pod to run", || async {
        let pods = ns.pods().list(&ListParams::default()).await?.items;
        Ok(pods
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
    })
    .await?;
    let name = first.metadata.name.clone().unwrap_or_default();
    ns.pods()
        .evict(&name, &kube::api::EvictParams::default())
        .await?;
    // The pod's failure is ignored, not counted: a replacement runs and the Job goes on.
    let replacement = poll(WAIT, "a replacement pod", || async {
        let pods = ns.pods().list(&ListParams::default()).await?.items;
        Ok(pods
            .into_iter()
            .find(|p| p.metadata.name.as_deref() != Some(name.as_str()))
            .map(|p| p.metadata.name.unwrap_or_default()))
    })
    .await?;
    let status = jobs.get("patient").await?.status.unwrap_or_default();
    let failed = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    ensure!(!failed && status.failed.unwrap_or(0) == 0, "{status:?}");
    ensure!(!replacement.is_empty());
    jobs.delete(
        "patient",
        &kube::api::DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn indexes_with_their_own_backoff_limit_fail_alone_then_fail_the_job() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "job-per-index").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // Odd indexes fail with exit code 3 and are tried twice; index 2 fails with exit code
    // 42, which a FailIndex rule turns into a failed index at once; index 0 succeeds.
    let script = "case $JOB_COMPLETION_INDEX in 0) exit 0;; 2) exit 42;; *) exit 3;; esac";
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "mixed" },
        "spec": {
            "completionMode": "Indexed", "completions": 4, "parallelism": 2,
            "backoffLimitPerIndex": 1,
            "podFailurePolicy": { "rules": [
                { "action": "FailIndex", "onExitCodes": { "operator": "In", "values": [42] } },
            ]},
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", script] }],
            }},
        },
    }))?;
    jobs.create(&Default::default(), &job).await?;
    k.run(&[
        "wait",
        "--for=condition=failed",
        "job/mixed",
        "--timeout=180s",
    ])?;
    let status = jobs.get("mixed").await?.status.unwrap_or_default();
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.reason.clone());
    ensure!(failed.as_deref() == Some("FailedIndexes"), "{status:?}");
    ensure!(
        status.failed_indexes.as_deref() == Some("1-3"),
        "{status:?}"
    );
    ensure!(
        status.completed_indexes.as_deref() == Some("0"),
        "{status:?}"
    );
    // Two tries of each odd index, one of index 2.
    ensure!(status.failed == Some(5), "{status:?}");
    ensure!(status.succeeded == Some(1), "{status:?}");
    // Each try of an index carries how often it failed before.
    let pods = ns.pods().list(&ListParams::default()).await?.items;
    let mut counts: Vec<(String, String)> = pods
        .iter()
        .filter_map(|p| {
            let a = p.metadata.annotations.as_ref()?;
            Some((
                a.get("batch.kubernetes.io/job-completion-index")?.clone(),
                a.get("batch.kubernetes.io/job-index-failure-count")?
                    .clone(),
            ))
        })
        .collect();
    counts.sort();
    let want: Vec<(String, String)> = [
        ("0", "0"),
        ("1", "0"),
        ("1", "1"),
        ("2", "0"),
        ("3", "0"),
        ("3", "1"),
    ]
    .iter()
    .map(|(ix, n)| ((*ix).to_owned(), (*n).to_owned()))
    .collect();
    ensure!(counts == want, "{counts:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn an_indexed_job_completes_by_its_success_policy_and_stops_the_rest() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "job-success").await?;
    let k = Kubectl {
        cluster: &cluster,
        ns: &ns.name,
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // Index 0 finishes at once; the others would run for ten minutes.
    let script = format!("[ \"$JOB_COMPLETION_INDEX\" = 0 ] && exit 0; {SERVE}");
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "leader" },
        "spec": {
            "completionMode": "Indexed", "completions": 3, "parallelism": 3,
            "successPolicy": { "rules": [{ "succeededIndexes": "0" }] },
            "template": { "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", script] }],
            }},
        },
    }))?;
    jobs.create(&Default::default(), &job).await?;
    k.run(&[
        "wait",
        "--for=condition=complete",
        "job/leader",
        "--timeout=120s",
    ])?;
    let status = jobs.get("leader").await?.status.unwrap_or_default();
    let complete = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Complete")
        .and_then(|c| c.reason.clone());
    ensure!(complete.as_deref() == Some("SuccessPolicy"), "{status:?}");
    ensure!(
        status.completed_indexes.as_deref() == Some("0"),
        "{status:?}"
    );
    ensure!(status.active.unwrap_or(0) == 0, "{status:?}");
    poll(WAIT, "the other indexes' pods to be stopped", || async {
        let pods = ns.pods().list(&ListParams::default()).await?.items;
        let running = pods.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            p.metadata.deletion_timestamp.is_none() && matches!(phase, Some("Running" | "Pending"))
        });
        Ok((!running).then_some(()))
    })
    .await?;
    Ok(())
}
