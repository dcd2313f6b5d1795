//! The controller's passes over filled stores, and their writes against a stand-in API
//! server.

use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus, Taint, Toleration};
use kube::api::ObjectMeta;
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};

use super::health::tests::{at, lease, node};
use super::tainting::{NOT_READY, UNREACHABLE};
use super::*;
use crate::controllers::replicaset::api_double::Double;

fn echo(method: &str, _path: &str, body: &Value, _n: usize) -> (u16, Value) {
    match method {
        "DELETE" => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        "POST" => (201, body.clone()),
        _ => (200, body.clone()),
    }
}

fn pod(name: &str, node: &str, ready: bool, tolerations: Vec<Toleration>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("3".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            tolerations: Some(tolerations),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: None,
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        toleration_seconds: seconds,
        value: None,
    }
}

fn defaults() -> Vec<Toleration> {
    vec![
        toleration(NOT_READY, Some(300)),
        toleration(UNREACHABLE, Some(300)),
    ]
}

struct Stores {
    nodes: Writer<Node>,
    leases: Writer<Lease>,
    pods: Writer<Pod>,
}

fn controller(double: &Double) -> (Controller, Stores) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let client = Client::new(double.clone(), "default");
    let mut c = Controller::new(Config::default(), client, nodes, leases, pods);
    c.listed = [true; 3];
    (
        c,
        Stores {
            nodes: node_writer,
            leases: lease_writer,
            pods: pod_writer,
        },
    )
}

fn renewed(name: &str, second: i64) -> Lease {
    let mut l = lease(second);
    l.metadata.name = Some(name.into());
    l.metadata.namespace = Some(LEASE_NAMESPACE.into());
    l
}

#[tokio::test]
async fn a_silent_node_turns_unknown_its_pods_unready_and_it_is_tainted() {
    let double = Double::new(echo);
    let (mut c, mut stores) = controller(&double);
    for name in ["n1", "n2"] {
        stores
            .nodes
            .apply_watcher_event(&Event::Apply(node(name, Some(("True", 0)))));
        stores
            .leases
            .apply_watcher_event(&Event::Apply(renewed(name, 0)));
    }
    stores
        .pods
        .apply_watcher_event(&Event::Apply(pod("web-1", "n1", true, defaults())));
    stores
        .pods
        .apply_watcher_event(&Event::Apply(pod("web-2", "n2", true, defaults())));
    stores
        .pods
        .apply_watcher_event(&Event::Apply(pod("web-3", "n1", false, defaults())));

    assert!(
        c.plan(at(100)).is_empty(),
        "first sight: a full grace period from now"
    );
    // n2 keeps renewing its lease; n1 is silent past the 50 s grace period.
    stores
        .leases
        .apply_watcher_event(&Event::Apply(renewed("n2", 140)));
    assert!(c.plan(at(145)).is_empty());
    stores
        .leases
        .apply_watcher_event(&Event::Apply(renewed("n2", 150)));
    let plan = c.plan(at(151));

    assert_eq!(plan.unknown.len(), 1);
    let (silent, conditions) = &plan.unknown[0];
    let written = conditions.clone();
    assert_eq!(silent.name_any(), "n1");
    let kinds: Vec<(&str, &str)> = conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("Ready", "Unknown"),
            ("MemoryPressure", "Unknown"),
            ("DiskPressure", "Unknown"),
            ("PIDPressure", "Unknown")
        ]
    );
    let events: Vec<String> = plan.not_ready_events.iter().map(|n| n.name_any()).collect();
    assert_eq!(events, vec!["n1"]);
    let unready: Vec<String> = plan.pods_not_ready.iter().map(|p| p.name_any()).collect();
    assert_eq!(unready, vec!["web-1"], "only n1's pods that are Ready");
    assert!(
        plan.taints.is_empty(),
        "tainted once the Unknown is written"
    );

    // Carried out: conditional writes through the right subresources.
    execute(&c.ctx, plan, at(151)).await;
    let status = double.sent("PATCH", "/api/v1/nodes/n1/status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].2["metadata"]["resourceVersion"], "10");
    assert_eq!(
        status[0].2["status"]["conditions"][0]["reason"],
        "NodeStatusUnknown"
    );
    assert_eq!(
        status[0].2["status"]["conditions"][0]["message"],
        "Kubelet stopped posting node status."
    );
    let ready = double.sent("PATCH", "/api/v1/namespaces/shop/pods/web-1/status");
    assert_eq!(ready.len(), 1);
    assert_eq!(
        ready[0].2["status"]["conditions"],
        json!([{"type": "Ready", "status": "False", "lastTransitionTime": "2027-01-15T08:02:31Z"}])
    );
    let notes: Vec<(String, String)> = double
        .sent("POST", "/apis/events.k8s.io/v1/namespaces/")
        .iter()
        .map(|(_, _, e)| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        notes.contains(&(
            "NodeNotReady".into(),
            "Node n1 status is now: NodeNotReady".into()
        )),
        "{notes:?}"
    );
    assert!(
        notes.contains(&("NodeNotReady".into(), "Node is not ready".into())),
        "{notes:?}"
    );

    // The next pass sees n1 Unknown and taints it, its zone being mostly healthy.
    let mut unknown = node("n1", None);
    unknown.metadata.resource_version = Some("11".into());
    unknown.status = Some(k8s_openapi::api::core::v1::NodeStatus {
        conditions: Some(written),
        ..Default::default()
    });
    stores.nodes.apply_watcher_event(&Event::Apply(unknown));
    stores
        .leases
        .apply_watcher_event(&Event::Apply(renewed("n2", 155)));
    let plan = c.plan(at(156));
    assert!(plan.unknown.is_empty() && plan.not_ready_events.is_empty());
    let taints: Vec<(String, Option<&str>)> = plan
        .taints
        .iter()
        .map(|(n, change)| (n.name_any(), change.taint))
        .collect();
    assert_eq!(taints, vec![("n1".to_owned(), Some(UNREACHABLE))]);
    execute(&c.ctx, plan, at(156)).await;
    let spec = double.sent("PATCH", "/api/v1/nodes/n1");
    let spec: Vec<_> = spec
        .iter()
        .filter(|(_, p, _)| p == "/api/v1/nodes/n1")
        .collect();
    assert_eq!(spec.len(), 1);
    assert_eq!(spec[0].2["metadata"]["resourceVersion"], "11");
    assert_eq!(
        spec[0].2["spec"]["taints"],
        json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2027-01-15T08:02:36Z"}])
    );
}

#[tokio::test]
async fn a_lone_node_going_silent_is_not_tainted() {
    let double = Double::new(echo);
    let (mut c, mut stores) = controller(&double);
    stores
        .nodes
        .apply_watcher_event(&Event::Apply(node("n1", Some(("True", 0)))));
    assert!(c.plan(at(0)).is_empty());
    let plan = c.plan(at(51));
    assert_eq!(plan.unknown.len(), 1, "still marked Unknown");
    assert!(plan.taints.is_empty(), "every node down: no eviction");
}

fn tainted(name: &str, taints: Vec<Taint>) -> Node {
    let mut n = node(name, Some(("Unknown", 0)));
    n.spec = Some(NodeSpec {
        taints: Some(taints),
        ..NodeSpec::default()
    });
    n
}

fn unreachable_since(second: i64) -> Taint {
    Taint {
        key: UNREACHABLE.into(),
        effect: "NoExecute".into(),
        value: None,
        time_added: Some(Time(at(second))),
    }
}

#[tokio::test]
async fn pods_go_when_their_tolerations_run_out_and_stay_when_the_taint_goes() {
    let double = Double::new(echo);
    let (mut c, mut stores) = controller(&double);
    stores
        .nodes
        .apply_watcher_event(&Event::Apply(tainted("n1", vec![unreachable_since(0)])));
    c.on_node(Event::Apply(tainted("n1", vec![unreachable_since(0)])));
    let forever = vec![toleration(UNREACHABLE, None)];
    for p in [
        pod("bare", "n1", true, vec![]),
        pod("web", "n1", true, defaults()),
        pod("agent", "n1", true, forever),
    ] {
        stores.pods.apply_watcher_event(&Event::Apply(p));
    }

    c.evict(at(10));
    assert_eq!(c.evicting, HashSet::from(["uid-bare".to_owned()]));
    assert_eq!(
        c.next_eviction,
        Some(at(300)),
        "the defaults' 300 s from timeAdded"
    );
    while let Some(done) = c.tasks.join_next_with_id().await {
        c.finish(done);
    }
    let deletes = double.sent("DELETE", "/api/v1/namespaces/shop/pods/");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].1, "/api/v1/namespaces/shop/pods/bare");
    assert_eq!(deletes[0].2["preconditions"]["uid"], "uid-bare");
    let marked = double.sent("PATCH", "/api/v1/namespaces/shop/pods/bare/status");
    assert_eq!(marked[0].2["metadata"]["uid"], "uid-bare");
    assert_eq!(
        marked[0].2["status"]["conditions"][0],
        json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
               "message": "Taint manager: deleting due to NoExecute taint",
               "lastTransitionTime": marked[0].2["status"]["conditions"][0]["lastTransitionTime"]})
    );
    let events = double.sent("POST", "/apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(events[0].2["reason"], "TaintManagerEviction");
    assert_eq!(events[0].2["note"], "Marking for deletion Pod shop/bare");
    assert_eq!(events[0].2["reportingController"], EVICTION_REPORTER);

    // Not again while the watch still shows it; web's time comes at 300.
    c.evict(at(299));
    assert!(c.tasks.is_empty());
    c.evict(at(300));
    assert!(c.evicting.contains("uid-web"));
    while let Some(done) = c.tasks.join_next_with_id().await {
        c.finish(done);
    }

    // A failed eviction is retried; a taint that goes calls the rest off.
    let double = Double::new(echo);
    let (mut c, mut stores) = controller(&double);
    stores
        .nodes
        .apply_watcher_event(&Event::Apply(tainted("n1", vec![unreachable_since(0)])));
    c.on_node(Event::Apply(tainted("n1", vec![unreachable_since(0)])));
    stores
        .pods
        .apply_watcher_event(&Event::Apply(pod("web", "n1", true, defaults())));
    c.evict(at(10));
    assert_eq!(c.scheduled.len(), 1);
    stores
        .nodes
        .apply_watcher_event(&Event::Apply(tainted("n1", vec![])));
    c.on_node(Event::Apply(tainted("n1", vec![])));
    assert!(c.evict_due);
    c.evict(at(20));
    assert!(c.scheduled.is_empty() && c.next_eviction.is_none());
    while let Some(done) = c.tasks.join_next_with_id().await {
        c.finish(done);
    }
    let events = double.sent("POST", "/apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["note"], "Cancelling deletion of Pod shop/web");
    assert!(double.sent("DELETE", "/api").is_empty());
}

#[tokio::test]
async fn a_taint_without_time_is_timed_from_when_it_was_seen() {
    let double = Double::new(echo);
    let (mut c, mut stores) = controller(&double);
    let untimed = Taint {
        time_added: None,
        ..unreachable_since(0)
    };
    stores
        .nodes
        .apply_watcher_event(&Event::Apply(tainted("n1", vec![untimed])));
    stores
        .pods
        .apply_watcher_event(&Event::Apply(pod("web", "n1", true, defaults())));
    c.evict(at(40));
    assert_eq!(c.next_eviction, Some(at(340)));
    c.evict(at(100));
    assert_eq!(
        c.next_eviction,
        Some(at(340)),
        "not restarted by a later pass"
    );
}

#[test]
fn go_durations_are_read() {
    let cases: [(&str, Option<u64>); 11] = [
        ("50s", Some(50_000)),
        ("5m", Some(300_000)),
        ("1m30s", Some(90_000)),
        ("8760h0m0s", Some(8760 * 3_600_000)),
        ("500ms", Some(500)),
        ("1.5s", Some(1_500)),
        ("0", Some(0)),
        ("", None),
        ("50", None),
        ("5x", None),
        ("s", None),
    ];
    for (text, want) in cases {
        let got = parse_duration(text).ok().map(|d| d.as_millis());
        assert_eq!(got, want.map(u128::from), "{text:?}");
    }
    assert_eq!(Config::default().grace_period, Duration::from_secs(50));
}
