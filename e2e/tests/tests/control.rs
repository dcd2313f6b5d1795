//! nodus-control on the local cluster: pods without a node are scheduled onto it, with
//! the events and conditions the stock scheduler writes, a pod that fits nowhere preempts
//! pods of lower priority, and the node's condition taints follow its state.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use nodus_e2e::{Cluster, TestNamespace, poll};
use serde_json::json;

/// A pod for the scheduler: no nodeName, no service-account token volume.
fn unbound(name: &str, extra_spec: serde_json::Value) -> Result<Pod> {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"] }],
        },
    });
    if let (Some(spec), serde_json::Value::Object(extra)) =
        (pod["spec"].as_object_mut(), extra_spec)
    {
        spec.extend(extra);
    }
    Ok(serde_json::from_value(pod)?)
}

async fn event_message(ns: &TestNamespace, pod: &str, reason: &str) -> Result<String> {
    let events: Api<Event> = Api::namespaced(ns.pods().into_client(), &ns.name);
    poll(
        Duration::from_secs(30),
        &format!("a {reason} event for {pod}"),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(pod)
                        && e.reason.as_deref() == Some(reason)
                })
                .and_then(|e| e.message))
        },
    )
    .await
}

fn scheduled(pod: &Pod) -> Option<(String, Option<String>)> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((condition.status.clone(), condition.reason.clone()))
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_ready_node_loses_the_not_ready_taint() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    let name = cluster.node_name();
    poll(
        Duration::from_secs(30),
        "the not-ready taint to be lifted",
        || async {
            let node = nodes.get(&name).await?;
            let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
            Ok((!taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/not-ready"))
            .then_some(()))
        },
    )
    .await
}

/// The harness gives nodus no `--pod-cidr`: the range comes from node IPAM, and the pod
/// tests' addresses (checked against it) prove nodus took it from the Node.
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn node_ipam_gives_the_node_the_first_block_of_the_cluster_cidr() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    let expected = std::env::var("NODUS_E2E_POD_CIDR").context("NODUS_E2E_POD_CIDR")?;
    let spec = nodes
        .get(&cluster.node_name())
        .await?
        .spec
        .context("the node's spec")?;
    assert_eq!(spec.pod_cidr.as_deref(), Some(expected.as_str()));
    assert_eq!(spec.pod_cidrs, Some(vec![expected]));
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn pods_are_scheduled_onto_the_node_and_unsatisfiable_ones_wait() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let node = cluster.node_name();
    let ns = TestNamespace::create(cluster.admin().await?, "sched").await?;
    let pods = ns.pods();
    pods.create(&Default::default(), &unbound("placed", json!({}))?)
        .await?;
    let running = poll(
        Duration::from_secs(60),
        "the pod to be scheduled and run",
        || async {
            let pod = pods.get("placed").await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok((phase.as_deref() == Some("Running")).then_some(pod))
        },
    )
    .await?;
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.as_str())
    );
    assert_eq!(scheduled(&running).map(|s| s.0), Some("True".into()));
    let message = event_message(&ns, "placed", "Scheduled").await?;
    assert_eq!(
        message,
        format!("Successfully assigned {}/placed to {node}", ns.name)
    );

    // A selector no node matches: Pending, Unschedulable, and upstream's message.
    let label = "nodus.dev/e2e-sched";
    pods.create(
        &Default::default(),
        &unbound("picky", json!({ "nodeSelector": { label: "yes" } }))?,
    )
    .await?;
    let waiting = poll(Duration::from_secs(30), "PodScheduled=False", || async {
        let pod = pods.get("picky").await?;
        Ok(scheduled(&pod).filter(|(status, _)| status == "False"))
    })
    .await?;
    assert_eq!(waiting.1.as_deref(), Some("Unschedulable"));
    let message = event_message(&ns, "picky", "FailedScheduling").await?;
    assert!(
        message.starts_with(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        ),
        "{message}"
    );

    // Once the node has the label, the parked pod is scheduled.
    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    let set = |value: Option<&str>| json!({ "metadata": { "labels": { label: value } } });
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(set(Some("yes"))),
        )
        .await?;
    let placed = poll(
        Duration::from_secs(60),
        "the labelled node to take the pod",
        || async {
            let pod = pods.get("picky").await?;
            Ok(pod.spec.as_ref().and_then(|s| s.node_name.clone()))
        },
    )
    .await;
    nodes
        .patch(&node, &PatchParams::default(), &Patch::Merge(set(None)))
        .await?;
    assert_eq!(placed?, node);
    ns.delete_pods().await.context("cleanup")
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_cordoned_node_takes_no_new_pods() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let node = cluster.node_name();
    let ns = TestNamespace::create(cluster.admin().await?, "cordon").await?;
    let pods = ns.pods();
    cluster.kubectl(&["cordon", &node])?;
    let outcome = async {
        pods.create(&Default::default(), &unbound("waits", json!({}))?)
            .await?;
        let message = event_message(&ns, "waits", "FailedScheduling").await?;
        anyhow::ensure!(
            message.contains("1 node(s) were unschedulable"),
            "{message}"
        );
        anyhow::Ok(())
    }
    .await;
    cluster.kubectl(&["uncordon", &node])?;
    outcome?;
    poll(
        Duration::from_secs(60),
        "the pod to be scheduled after uncordon",
        || async {
            let pod = pods.get("waits").await?;
            Ok(pod.spec.as_ref().and_then(|s| s.node_name.clone()))
        },
    )
    .await?;
    ns.delete_pods().await
}

/// The node's status advertises `amount` of an extended resource in its capacity and
/// allocatable (as upstream's e2e `AddExtendedResource` does), or stops advertising it
/// (`None`).
async fn set_extended_resource(
    nodes: &Api<Node>,
    node: &str,
    resource: &str,
    amount: Option<&str>,
) -> Result<()> {
    let patch = json!({ "status": {
        "capacity": { resource: amount },
        "allocatable": { resource: amount },
    } });
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

const FINALIZER: &str = "nodus.dev/e2e-hold";

fn disruption_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")?
        .reason
        .clone()
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_pod_that_fits_nowhere_preempts_a_lower_priority_pod() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let node = cluster.node_name();
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "preempt").await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let classes: Api<PriorityClass> = Api::all(client);
    let resource = "nodus.dev/e2e-preempt";
    let low = format!("{}-low", ns.name);
    let high = format!("{}-high", ns.name);
    let polite = format!("{}-polite", ns.name);
    for (name, value, policy) in [
        (&low, 10, "PreemptLowerPriority"),
        (&high, 1000, "PreemptLowerPriority"),
        (&polite, 2000, "Never"),
    ] {
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": { "name": name }, "value": value, "preemptionPolicy": policy,
        });
        classes
            .create(&Default::default(), &serde_json::from_value(class)?)
            .await?;
    }
    set_extended_resource(&nodes, &node, resource, Some("1")).await?;
    let pods = ns.pods();
    let outcome = async {
        let wants_one = |class: &str| {
            json!({
                "priorityClassName": class,
                "containers": [{
                    "name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"],
                    "resources": { "requests": { resource: "1" }, "limits": { resource: "1" } },
                }],
            })
        };
        // A finalizer holds the victim while terminating, so its condition can be read.
        let mut victim = unbound("victim", wants_one(&low))?;
        victim.metadata.finalizers = Some(vec![FINALIZER.into()]);
        pods.create(&Default::default(), &victim).await?;
        poll(Duration::from_secs(60), "the victim to run", || async {
            let pod = pods.get("victim").await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok((phase.as_deref() == Some("Running")).then_some(()))
        })
        .await?;

        let preemptor = pods
            .create(
                &Default::default(),
                &unbound("preemptor", wants_one(&high))?,
            )
            .await?;
        let terminating = poll(
            Duration::from_secs(30),
            "the victim to be deleted with a reason",
            || async {
                let pod = pods.get("victim").await?;
                Ok(pod.metadata.deletion_timestamp.is_some().then_some(pod))
            },
        )
        .await?;
        anyhow::ensure!(
            disruption_reason(&terminating).as_deref() == Some("PreemptionByScheduler"),
            "the victim's DisruptionTarget: {:?}",
            disruption_reason(&terminating)
        );
        let message = event_message(&ns, "victim", "Preempted").await?;
        let expected = format!(
            "Preempted by pod {} on node {node}",
            preemptor.metadata.uid.as_deref().unwrap_or_default()
        );
        anyhow::ensure!(message == expected, "{message}");
        // The preemptor says where it made room (the API server clears its
        // nominatedNodeName again when it is bound).
        let message = event_message(&ns, "preemptor", "FailedScheduling").await?;
        anyhow::ensure!(
            message.ends_with(&format!(
                "preemption: found a potential placement for pod on node {node}, preempting 1 victims"
            )),
            "{message}"
        );
        let patch = json!({ "metadata": { "finalizers": null } });
        pods.patch("victim", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let placed = poll(
            Duration::from_secs(60),
            "the preemptor to run in the victim's place",
            || async {
                let pod = pods.get("preemptor").await?;
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                Ok((phase.as_deref() == Some("Running")).then_some(pod))
            },
        )
        .await?;
        anyhow::ensure!(
            placed.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()),
            "the preemptor runs on {node}"
        );
        poll(Duration::from_secs(30), "the victim to be gone", || async {
            Ok(pods.get_opt("victim").await?.is_none().then_some(()))
        })
        .await?;

        // A more important pod whose class says Never waits rather than preempt.
        pods.create(&Default::default(), &unbound("polite", wants_one(&polite))?)
            .await?;
        let message = event_message(&ns, "polite", "FailedScheduling").await?;
        anyhow::ensure!(
            message.ends_with("preemption: not eligible due to preemptionPolicy=Never."),
            "{message}"
        );
        let preemptor = pods.get("preemptor").await?;
        anyhow::ensure!(
            preemptor.metadata.deletion_timestamp.is_none(),
            "the running pod stays"
        );
        anyhow::Ok(())
    }
    .await;
    // Let a victim left behind by a failure go, too.
    let release = json!({ "metadata": { "finalizers": null } });
    let _ = pods
        .patch("victim", &PatchParams::default(), &Patch::Merge(&release))
        .await;
    ns.delete_pods().await?;
    set_extended_resource(&nodes, &node, resource, None).await?;
    for name in [&low, &high, &polite] {
        classes.delete(name, &Default::default()).await?;
    }
    outcome
}

/// `leader_election_master_status` from a nodus-control's `/metrics`, if it answers.
fn leading(port: u16) -> Option<bool> {
    let output = std::process::Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("leader_election_master_status{name=\"nodus-control\"} "))?;
    Some(value.trim() == "1")
}

/// Stops a child with SIGTERM (a clean stop, which releases the lease) and reaps it.
fn terminate(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = child.wait();
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_second_replica_stands_by_and_takes_over() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let binary = std::env::var("NODUS_E2E_CONTROL_BIN").context("NODUS_E2E_CONTROL_BIN")?;
    let ns = TestNamespace::create(cluster.admin().await?, "leader").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await?, &ns.name);
    let log = std::fs::File::create(std::env::temp_dir().join("nodus-control-standby.log"))?;
    let mut standby = std::process::Command::new(&binary)
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args(["--healthz-bind-address", "127.0.0.1:10258", "-v", "2"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting a second nodus-control")?;
    let outcome = async {
        poll(
            Duration::from_secs(30),
            "the standby to answer, not leading",
            || async { Ok((leading(10258) == Some(false)).then_some(())) },
        )
        .await?;
        ensure_leads(10257)?;
        cluster.script(&["stop", "nodus-control"])?;
        // A clean stop releases the lease: the standby takes over well before it would lapse.
        poll(Duration::from_secs(20), "the standby to lead", || async {
            Ok((leading(10258) == Some(true)).then_some(()))
        })
        .await?;
        pods.create(&Default::default(), &unbound("after", json!({}))?)
            .await?;
        poll(
            Duration::from_secs(30),
            "the new leader to schedule",
            || async {
                Ok(pods
                    .get("after")
                    .await?
                    .spec
                    .and_then(|s| s.node_name)
                    .map(|_| ()))
            },
        )
        .await
    }
    .await;
    terminate(&mut standby);
    cluster.script(&["start", "nodus-control"])?;
    poll(
        Duration::from_secs(30),
        "the cluster's nodus-control to lead again",
        || async { Ok((leading(10257) == Some(true)).then_some(())) },
    )
    .await?;
    outcome
}

fn ensure_leads(port: u16) -> Result<()> {
    anyhow::ensure!(
        leading(port) == Some(true),
        "nodus-control on {port} does not lead"
    );
    Ok(())
}
