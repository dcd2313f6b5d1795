//! Several nodes on one machine (`e2e/cluster up --nodes 3`, which e2e/test brings up for
//! these tests and sets NODUS_E2E_NODES for; with fewer nodes they skip): the extra nodes
//! joined through approved CSRs with the cluster's kubelet-config, a Deployment spreads over all three, pods reach each other
//! across nodes by pod IP with their own source address, a Service's ClusterIP and NodePort
//! reach an endpoint on another node, and a lost node goes NotReady while its pods move to
//! the others.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use nodus_e2e::pods::phase;
use nodus_e2e::{Cluster, TestNamespace, poll};
use serde_json::json;

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";
const WAIT: Duration = Duration::from_secs(120);

/// The cluster when it has at least three nodes, else `None` (the test skips).
fn three_nodes() -> Result<Option<Cluster>> {
    let nodes: usize = std::env::var("NODUS_E2E_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    if nodes < 3 {
        eprintln!("skipping: needs `e2e/cluster up --nodes 3` (NODUS_E2E_NODES={nodes})");
        return Ok(None);
    }
    Ok(Some(Cluster::from_env()?))
}

fn node_names(cluster: &Cluster) -> [String; 3] {
    let first = cluster.node_name();
    [first.clone(), format!("{first}-2"), format!("{first}-3")]
}

fn ready(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn internal_ip(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

fn subject(pem: &[u8]) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().context("stdin")?.write_all(pem)?;
    let output = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// An agnhost netexec Deployment requesting `cpu`, and with short NoExecute tolerations, so
/// that its pods leave a lost node at once.
fn netexec(name: &str, replicas: i32, cpu: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [
                        { "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                          "effect": "NoExecute", "tolerationSeconds": 2 },
                        { "key": "node.kubernetes.io/not-ready", "operator": "Exists",
                          "effect": "NoExecute", "tolerationSeconds": 2 },
                    ],
                    "containers": [{
                        "name": "netexec", "image": AGNHOST,
                        "args": ["netexec", "--http-port=8080"],
                        "resources": { "requests": { "cpu": cpu } },
                        "readinessProbe": { "httpGet": { "path": "/healthz", "port": 8080 },
                                            "periodSeconds": 1 },
                    }],
                },
            },
        },
    }))?)
}

/// The Deployment's ready pods, by node.
async fn ready_pods_by_node(ns: &TestNamespace, app: &str) -> Result<BTreeMap<String, Vec<Pod>>> {
    let pods = ns
        .pods()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods.items {
        let is_ready = pod.metadata.deletion_timestamp.is_none()
            && phase(&pod) == "Running"
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if is_ready {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            by_node.entry(node).or_default().push(pod);
        }
    }
    Ok(by_node)
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// `curl` from this machine (the first node's network).
fn curl(url: &str) -> Result<String> {
    nodus_e2e::curl(["--max-time", "3", url]).with_context(|| format!("GET {url}"))
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn three_nodes_join_and_share_one_pod_network() -> Result<()> {
    let Some(cluster) = three_nodes()? else {
        return Ok(());
    };
    let client = cluster.admin().await?;
    let names = node_names(&cluster);

    // Three Ready nodes; the two that joined got their client certificates through
    // approved requests made with the bootstrap token.
    let nodes: Api<Node> = Api::all(client.clone());
    for name in &names {
        let node = nodes.get(name).await?;
        ensure!(ready(&node) == Some("True"), "node {name} is not Ready");
    }
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let issued: Vec<String> = csrs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| {
            c.spec
                .username
                .as_deref()
                .is_some_and(|u| u.starts_with("system:bootstrap:"))
                && c.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Approved" && c.status == "True")
                })
        })
        .filter_map(|c| c.status?.certificate.map(|p| p.0))
        .map(|pem| subject(&pem))
        .collect::<Result<_>>()?;
    for name in &names[1..] {
        ensure!(
            issued
                .iter()
                .any(|s| s.contains(&format!("CN=system:node:{name}"))),
            "no approved bootstrap CSR issued {name}'s certificate: {issued:?}"
        );
        // The join took the cluster's kubelet-config (maxPods 150, as the harness publishes it).
        let capacity = nodes.get(name).await?.status.and_then(|s| s.capacity);
        let pods = capacity
            .as_ref()
            .and_then(|c| c.get("pods"))
            .map(|q| q.0.clone());
        ensure!(
            pods.as_deref() == Some("150"),
            "{name}'s pod capacity is {pods:?}, not the cluster's 150"
        );
    }

    // A Deployment spreads over the three: at 700m each, no node of this 2-core machine
    // takes a third replica.
    let ns = TestNamespace::create(client.clone(), "multinode").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &netexec("web", 6, "700m")?)
        .await?;
    let by_node = poll(WAIT, "six ready replicas over three nodes", || async {
        let by_node = ready_pods_by_node(&ns, "web").await?;
        let count: usize = by_node.values().map(Vec::len).sum();
        Ok((count == 6 && by_node.len() == 3).then_some(by_node))
    })
    .await?;

    // Pods talk to pods on the other nodes by pod IP, and are seen with their own address.
    let one: Vec<&Pod> = names.iter().map(|n| &by_node[n][0]).collect();
    for from in &one {
        for to in &one {
            if std::ptr::eq(*from, *to) {
                continue;
            }
            let seen = cluster.kubectl(&[
                "exec",
                "-n",
                &ns.name,
                from.metadata.name.as_deref().unwrap_or_default(),
                "--",
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{}:8080/clientip", pod_ip(to)),
            ])?;
            ensure!(
                seen.starts_with(&format!("{}:", pod_ip(from))),
                "{} -> {}: seen as {seen:?}",
                pod_ip(from),
                pod_ip(to)
            );
        }
    }

    // A Service whose only endpoint is on the third node: its ClusterIP from the first
    // node, and its NodePort on the first two nodes' addresses.
    let remote = &by_node[&names[2]][0];
    let remote_name = remote.metadata.name.clone().unwrap_or_default();
    cluster.kubectl(&["label", "pod", "-n", &ns.name, &remote_name, "role=remote"])?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "remote" },
        "spec": { "type": "NodePort", "selector": { "app": "web", "role": "remote" },
                  "ports": [{ "port": 80, "targetPort": 8080 }] },
    }))?;
    let service = services.create(&PostParams::default(), &service).await?;
    let spec = service.spec.context("spec")?;
    let cluster_ip = spec.cluster_ip.context("clusterIP")?;
    let node_port = spec.ports.context("ports")?[0]
        .node_port
        .context("nodePort")?;
    let mut urls = vec![format!("http://{cluster_ip}/hostname")];
    for name in &names[..2] {
        let ip = internal_ip(&nodes.get(name).await?).context("InternalIP")?;
        urls.push(format!("http://{ip}:{node_port}/hostname"));
    }
    for url in urls {
        let answer = poll(WAIT, &format!("{url} to answer"), || async {
            Ok(curl(&url).ok())
        })
        .await?;
        ensure!(answer == remote_name, "{url} answered {answer:?}");
    }
    deployments.delete("web", &Default::default()).await?;
    ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_lost_node_goes_not_ready_and_its_pods_move_to_the_others() -> Result<()> {
    let Some(cluster) = three_nodes()? else {
        return Ok(());
    };
    let client = cluster.admin().await?;
    let names = node_names(&cluster);
    let lost = names[2].clone();
    let ns = TestNamespace::create(client.clone(), "node-loss").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &netexec("mover", 6, "100m")?)
        .await?;
    let before = poll(
        WAIT,
        "six ready replicas, some on the node to lose",
        || async {
            let by_node = ready_pods_by_node(&ns, "mover").await?;
            let count: usize = by_node.values().map(Vec::len).sum();
            Ok((count == 6 && by_node.contains_key(&lost)).then_some(by_node))
        },
    )
    .await?;
    let gone: BTreeSet<String> = before[&lost]
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();

    // The node's agent and runtime stop, as when its machine goes away.
    cluster.script(&["stop", "nodus-3"])?;
    cluster.script(&["stop", "containerd-3"])?;
    let outcome = async {
        let nodes: Api<Node> = Api::all(client.clone());
        poll(WAIT, "the lost node to be NotReady", || async {
            Ok((ready(&nodes.get(&lost).await?) != Some("True")).then_some(()))
        })
        .await?;
        poll(WAIT, "six ready replicas on the other nodes", || async {
            let by_node = ready_pods_by_node(&ns, "mover").await?;
            let count: usize = by_node.values().map(Vec::len).sum();
            Ok((count == 6 && !by_node.contains_key(&lost)).then_some(()))
        })
        .await?;
        // The lost node's pods were evicted: marked for deletion (upstream too leaves them
        // Terminating while their node cannot confirm it), not merely replaced beside them.
        poll(WAIT, "the lost node's pods to be evicted", || async {
            let evicted = ns
                .pods()
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|p| p.metadata.name.as_ref().is_some_and(|n| gone.contains(n)))
                .all(|p| p.metadata.deletion_timestamp.is_some());
            Ok(evicted.then_some(()))
        })
        .await
    }
    .await;
    // The node comes back either way, for the tests after this one.
    cluster.script(&["start", "containerd-3"])?;
    cluster.script(&["start", "nodus-3"])?;
    outcome?;
    let nodes: Api<Node> = Api::all(client);
    // Ready, and its NoExecute taints lifted: only then does it take pods again.
    poll(WAIT, "the node Ready again and untainted", || async {
        let node = nodes.get(&lost).await?;
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"));
        Ok((ready(&node) == Some("True") && !tainted).then_some(()))
    })
    .await?;
    // Back, the node finishes what it was told while away: its evicted pods go.
    poll(WAIT, "the evicted pods to be gone", || async {
        let names: BTreeSet<String> = ns
            .pods()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok(gone.is_disjoint(&names).then_some(()))
    })
    .await?;
    // Settled (six ready pods and no other) before it goes: a pod deleted while its
    // container is being started can stay Terminating (see the session notes).
    poll(WAIT, "the Deployment settled", || async {
        let all = ns.pods().list(&ListParams::default()).await?.items.len();
        let ready: usize = ready_pods_by_node(&ns, "mover")
            .await?
            .values()
            .map(Vec::len)
            .sum();
        Ok((all == 6 && ready == 6).then_some(()))
    })
    .await?;
    deployments.delete("mover", &Default::default()).await?;
    ns.delete_pods().await
}

/// With the DNS add-on (`e2e/cluster up --dns`, which e2e/test uses for this cluster): a pod
/// on one node finds a Service by its short and full names and reaches its endpoint on
/// another, and a pod with a hostname and subdomain is found under that name, as nodus
/// points pods at the cluster DNS (--cluster-dns) with the kubelet's search path.
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn pods_find_services_and_named_pods_through_the_cluster_dns() -> Result<()> {
    let Some(cluster) = three_nodes()? else {
        return Ok(());
    };
    let nodes = node_names(&cluster);
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "dns").await?;
    let pods = ns.pods();

    // The server on the second node, a Service for it, and a headless one naming it.
    let server: Pod = serde_json::from_value(json!({
        "metadata": { "name": "server", "labels": { "app": "server" } },
        "spec": {
            "nodeName": nodes[1], "hostname": "db-0", "subdomain": "db",
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "netexec", "image": AGNHOST,
                             "args": ["netexec", "--http-port=8080"],
                             "readinessProbe": { "httpGet": { "path": "/healthz", "port": 8080 },
                                                 "periodSeconds": 1 } }],
        },
    }))?;
    pods.create(&PostParams::default(), &server).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    for (name, cluster_ip) in [("web", None), ("db", Some("None"))] {
        let mut spec = json!({ "selector": { "app": "server" },
                               "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] });
        if let Some(ip) = cluster_ip {
            spec["clusterIP"] = json!(ip);
        }
        let service: Service =
            serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec }))?;
        services.create(&PostParams::default(), &service).await?;
    }
    // The client on the third node.
    let client_pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "client" },
        "spec": {
            "nodeName": nodes[2], "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "agnhost", "image": AGNHOST, "args": ["pause"] }],
        },
    }))?;
    pods.create(&PostParams::default(), &client_pod).await?;
    let server_ip = poll(WAIT, "the server pod to be ready", || async {
        let pod = pods.get("server").await?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(ready.then(|| pod_ip(&pod)))
    })
    .await?;
    poll(WAIT, "the client pod to run", || async {
        Ok((phase(&pods.get("client").await?) == "Running").then_some(()))
    })
    .await?;

    let exec = |script: String| {
        let ns = ns.name.clone();
        let cluster = cluster.clone();
        async move {
            cluster
                .kubectl(&["exec", "-n", &ns, "client", "--", "sh", "-c", &script])
                .map(|out| Some(out.trim().to_owned()))
        }
    };
    let resolv = exec("cat /etc/resolv.conf".into())
        .await?
        .unwrap_or_default();
    ensure!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains(&format!(
                "search {}.svc.cluster.local svc.cluster.local cluster.local",
                ns.name
            )),
        "the client's resolv.conf does not name the cluster DNS and search path:\n{resolv}"
    );
    // Through the Service by its short name (search path) and its full name.
    for name in ["web", &format!("web.{}.svc.cluster.local", ns.name)] {
        let reply = poll(
            WAIT,
            &format!("GET http://{name}/hostname from the client"),
            || exec(format!("curl -sS --max-time 3 http://{name}/hostname")),
        )
        .await?;
        ensure!(
            reply == "db-0",
            "http://{name}/hostname answered {reply:?}, not db-0"
        );
    }
    // The pod by hostname.subdomain: an A record of the headless Service.
    let found = poll(WAIT, "db-0.db to resolve to the server pod", || async {
        let out = exec("getent hosts db-0.db".into())
            .await?
            .unwrap_or_default();
        Ok(out.split_whitespace().next().map(str::to_owned))
    })
    .await?;
    ensure!(
        found == server_ip,
        "db-0.db resolved to {found}, not the server's {server_ip}"
    );
    Ok(())
}

/// A pod reaches a NodePort on another node whose only endpoint is back on the pod's own
/// node: the other node masquerades the connection, so the reply returns through it. (On
/// this machine that also checks the harness: its nodes share a switch without netfilter,
/// as VMs do; a bridge in the host's namespace bridged such packets past the masquerade.)
#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_nodeport_on_another_node_reaches_an_endpoint_beside_the_client() -> Result<()> {
    let Some(cluster) = three_nodes()? else {
        return Ok(());
    };
    let nodes = node_names(&cluster);
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "nodeport-back").await?;
    let pods = ns.pods();
    for (name, args) in [
        ("server", json!(["netexec", "--http-port=8080"])),
        ("client", json!(["pause"])),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "app": name } },
            "spec": {
                "nodeName": nodes[1], "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "agnhost", "image": AGNHOST, "args": args }],
            },
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "server" },
        "spec": { "type": "NodePort", "selector": { "app": "server" },
                  "ports": [{ "port": 80, "targetPort": 8080 }] },
    }))?;
    let node_port = services
        .create(&PostParams::default(), &service)
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .context("no nodePort")?;
    for name in ["server", "client"] {
        poll(WAIT, &format!("pod {name} to run"), || async {
            Ok((phase(&pods.get(name).await?) == "Running").then_some(()))
        })
        .await?;
    }
    let nodes_api: Api<Node> = Api::all(client.clone());
    let first_ip = internal_ip(&nodes_api.get(&nodes[0]).await?).context("first node's IP")?;
    let url = format!("http://{first_ip}:{node_port}/hostname");
    // The endpoint may take a moment to be programmed on the first node; then every
    // connection must get through.
    poll(WAIT, &format!("GET {url} from the client"), || async {
        Ok(cluster
            .kubectl(&[
                "exec",
                "-n",
                &ns.name,
                "client",
                "--",
                "curl",
                "-sS",
                "--max-time",
                "3",
                &url,
            ])
            .ok()
            .filter(|out| out.trim() == "server")
            .map(|_| ()))
    })
    .await?;
    for attempt in 0..5 {
        let out = cluster.kubectl(&[
            "exec",
            "-n",
            &ns.name,
            "client",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "3",
            &url,
        ]);
        ensure!(
            out.as_ref().is_ok_and(|o| o.trim() == "server"),
            "connection {attempt} to {url} from the server's node failed: {out:?}"
        );
    }
    Ok(())
}
