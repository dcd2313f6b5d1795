//! nodus-control's EndpointSlice controller on the local cluster: a Service with a selector gets
//! an EndpointSlice it owns, empty until pods match, then listing the pods' IPs on the resolved
//! named port with `ready` following pod readiness; the host reaches the ready backend through
//! the ClusterIP; the legacy Endpoints object agrees; a deleted pod leaves the slice. And the
//! mirroring controller: a custom Endpoints object of a Service without a selector is mirrored
//! into a slice of its own through create, update and delete (upstream's conformance spec
//! "EndpointSliceMirroring should mirror a custom Endpoints resource").
//!
//! The not-ready backend has a readiness probe on a path its server does not have (404).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nodus_e2e::{Cluster, TestNamespace, poll};
use serde_json::json;

const IMAGE: &str = "busybox:1.36";
/// The controller's watch and write, then the proxy's watch and debounced sync.
const PROGRAMMED: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MIRRORED_BY: &str = "endpointslicemirroring-controller.k8s.io";

struct Env {
    ns: TestNamespace,
    node: String,
    client: Client,
}

async fn setup(prefix: &str) -> Result<Env> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), prefix).await?;
    Ok(Env {
        ns,
        node: cluster.node_name(),
        client,
    })
}

impl Env {
    fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// A busy box httpd pod labelled `app: web`, answering `/` with its name on container port
    /// `http` (8080); with `probe`, it also has a readinessProbe that always fails (a 404).
    /// Returns its IP once it runs.
    async fn web_pod(&self, name: &str, probe: bool) -> Result<IpAddr> {
        let mut container = json!({
            "name": "httpd",
            "image": IMAGE,
            "command": ["sh", "-c",
                format!("mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www")],
            "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
        });
        if probe {
            container["readinessProbe"] =
                json!({ "httpGet": { "path": "/missing", "port": 8080 }, "periodSeconds": 1 });
        }
        self.ns
            .create_pod(
                &self.node,
                json!({
                    "metadata": { "name": name, "labels": { "app": "web" } },
                    "spec": {
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 1,
                        "containers": [container],
                    },
                }),
            )
            .await?;
        let pods = self.ns.pods();
        let ip = poll(
            Duration::from_secs(45),
            &format!("pod {name} to run with an IP"),
            || async {
                let status = pods.get(name).await?.status.unwrap_or_default();
                let running = status.phase.as_deref() == Some("Running");
                Ok(status.pod_ip.filter(|_| running))
            },
        )
        .await?;
        Ok(ip.parse()?)
    }

    /// A ClusterIP Service selecting `app: web`, port `http` 80 -> the pods' named port
    /// `http`. Returns it once its ClusterIP is in nodus's nft table: before that, traffic to
    /// it would be routed off the machine.
    async fn service(&self, name: &str) -> Result<Service> {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": name },
            "spec": {
                "type": "ClusterIP",
                "selector": { "app": "web" },
                "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
            },
        }))?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.ns.name);
        let service = services.create(&PostParams::default(), &service).await?;
        let ip = cluster_ip(&service)?.to_string();
        nodus_e2e::wait_programmed(&ip).await?;
        Ok(service)
    }

    /// The controller's slices of `service`, once `check` accepts them.
    async fn slices_until<F>(
        &self,
        service: &str,
        what: &str,
        check: F,
    ) -> Result<Vec<EndpointSlice>>
    where
        F: Fn(&[EndpointSlice]) -> bool,
    {
        let selector = format!(
            "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
        );
        self.labelled_until(&selector, what, check).await
    }

    /// Every slice naming `service`, whoever manages it, once `check` accepts them.
    async fn all_slices_until<F>(
        &self,
        service: &str,
        what: &str,
        check: F,
    ) -> Result<Vec<EndpointSlice>>
    where
        F: Fn(&[EndpointSlice]) -> bool,
    {
        let selector = format!("kubernetes.io/service-name={service}");
        self.labelled_until(&selector, what, check).await
    }

    async fn labelled_until<F>(
        &self,
        selector: &str,
        what: &str,
        check: F,
    ) -> Result<Vec<EndpointSlice>>
    where
        F: Fn(&[EndpointSlice]) -> bool,
    {
        let api = self.slices();
        poll(PROGRAMMED, what, || async {
            let slices = api
                .list(&ListParams::default().labels(selector))
                .await?
                .items;
            Ok(check(&slices).then_some(slices))
        })
        .await
    }
}

fn cluster_ip(service: &Service) -> Result<IpAddr> {
    let ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .context("the Service has no cluster IP")?;
    Ok(ip.parse()?)
}

fn endpoints(slices: &[EndpointSlice]) -> Vec<&Endpoint> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .collect()
}

/// The endpoint of `ip` and its ready condition.
fn ready_of(slices: &[EndpointSlice], ip: IpAddr) -> Option<bool> {
    let ip = ip.to_string();
    endpoints(slices)
        .into_iter()
        .find(|e| e.addresses.contains(&ip))
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
}

/// One HTTP/1.0 `GET /` from the host over a new connection; returns the body, trimmed.
async fn get(addr: SocketAddr) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: nodus-e2e\r\n\r\n")?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .with_context(|| format!("reading from {addr}"))?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP answer from {addr}: {answer:?}"))?;
        ensure!(head.contains(" 200 "), "{addr} answered {head:?}");
        Ok(body.trim().to_owned())
    })
    .await?
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_selected_pods_slice_follows_readiness_and_carries_traffic_to_the_ready_one() -> Result<()>
{
    let env = setup("eps").await?;
    let service = env.service("web").await?;
    let uid = service
        .metadata
        .uid
        .clone()
        .context("the Service has no uid")?;

    // Nothing matches yet: one empty slice, owned by the Service.
    let empty = env
        .slices_until("web", "an empty EndpointSlice for web", |s| {
            s.len() == 1 && endpoints(s).is_empty()
        })
        .await?;
    let owners = empty[0]
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    ensure!(
        owners.len() == 1
            && owners[0].kind == "Service"
            && owners[0].uid == uid
            && owners[0].controller == Some(true)
            && owners[0].block_owner_deletion == Some(true),
        "owner references {owners:?}"
    );

    let ready_ip = env.web_pod("web-ready", false).await?;
    let probed_ip = env.web_pod("web-probed", true).await?;
    let slices = env
        .slices_until(
            "web",
            "web-ready ready and web-probed not ready in the slice",
            |s| {
                s.len() == 1
                    && ready_of(s, ready_ip) == Some(true)
                    && ready_of(s, probed_ip) == Some(false)
            },
        )
        .await?;
    ensure!(
        slices.len() == 1,
        "expected one slice, got {}",
        slices.len()
    );
    let slice = &slices[0];
    assert_eq!(slice.address_type, "IPv4");
    let ports = slice.ports.clone().unwrap_or_default();
    ensure!(
        ports.len() == 1
            && ports[0].name.as_deref() == Some("http")
            && ports[0].port == Some(8080)
            && ports[0].protocol.as_deref() == Some("TCP"),
        "the named target port resolves to 8080: {ports:?}"
    );
    let listed: BTreeSet<String> = endpoints(&slices)
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([ready_ip.to_string(), probed_ip.to_string()])
    );
    for endpoint in endpoints(&slices) {
        assert_eq!(endpoint.node_name.as_deref(), Some(env.node.as_str()));
        let target = endpoint.target_ref.clone().unwrap_or_default();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        let serving = endpoint.conditions.as_ref().and_then(|c| c.serving);
        let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
        assert_eq!(
            serving, ready,
            "a pod that is not terminating serves as it is ready"
        );
    }

    // Only the ready backend answers on the ClusterIP.
    let addr = SocketAddr::new(cluster_ip(&service)?, 80);
    let first = poll(PROGRAMMED, &format!("{addr} to answer"), || async {
        Ok(Some(get(addr).await?))
    })
    .await?;
    let mut seen = BTreeSet::from([first]);
    for _ in 0..20 {
        seen.insert(get(addr).await?);
    }
    assert_eq!(seen, BTreeSet::from(["web-ready".to_owned()]));

    // The legacy Endpoints object says the same: ready in addresses, the other not ready.
    let legacy: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(env.client.clone(), &env.ns.name);
    let (ready, not_ready, port) = poll(PROGRAMMED, "web's Endpoints", || async {
        let Some(object) = legacy.get_opt("web").await? else {
            return Ok(None);
        };
        let subsets = object.subsets.unwrap_or_default();
        let ips = |list: Option<&Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
            list.into_iter()
                .flatten()
                .map(|a| a.ip.clone())
                .collect::<Vec<_>>()
        };
        let ready: Vec<String> = subsets
            .iter()
            .flat_map(|s| ips(s.addresses.as_ref()))
            .collect();
        let not_ready: Vec<String> = subsets
            .iter()
            .flat_map(|s| ips(s.not_ready_addresses.as_ref()))
            .collect();
        let port = subsets
            .first()
            .and_then(|s| s.ports.as_ref()?.first().map(|p| p.port));
        Ok((ready.len() + not_ready.len() == 2).then_some((ready, not_ready, port)))
    })
    .await?;
    assert_eq!(ready, [ready_ip.to_string()]);
    assert_eq!(not_ready, [probed_ip.to_string()]);
    assert_eq!(port, Some(8080));
    env.ns.delete_pods().await
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_deleted_pod_leaves_the_slice() -> Result<()> {
    let env = setup("eps-gone").await?;
    env.service("web").await?;
    let ip = env.web_pod("web-a", false).await?;
    env.slices_until("web", "web-a in the slice", |s| {
        ready_of(s, ip) == Some(true)
    })
    .await?;
    env.ns
        .pods()
        .delete("web-a", &DeleteParams::default())
        .await?;
    env.slices_until("web", "the slice to be empty again", |s| {
        s.len() == 1 && endpoints(s).is_empty()
    })
    .await?;
    env.ns.delete_pods().await
}

/// Whether the only slice is the mirroring controller's and lists exactly `ip`.
fn mirrors(slices: &[EndpointSlice], ip: &str) -> bool {
    let managed_by = |s: &EndpointSlice| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
            .map(String::as_str)
            == Some(MIRRORED_BY)
    };
    let listed: Vec<&Vec<String>> = endpoints(slices).iter().map(|e| &e.addresses).collect();
    slices.len() == 1 && managed_by(&slices[0]) && listed == [&vec![ip.to_owned()]]
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_custom_endpoints_of_a_selectorless_service_is_mirrored_through_update_and_delete()
-> Result<()> {
    let env = setup("eps-mirror").await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns.name);
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "custom" },
        "spec": { "ports": [{ "name": "example", "port": 80, "protocol": "TCP" }] },
    }))?;
    services.create(&PostParams::default(), &service).await?;
    let objects: Api<Endpoints> = Api::namespaced(env.client.clone(), &env.ns.name);
    let object: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": { "name": "custom", "labels": { "team": "blue" } },
        "subsets": [{ "addresses": [{ "ip": "10.1.2.3" }], "ports": [{ "port": 80 }] }],
    }))?;
    let object = objects.create(&PostParams::default(), &object).await?;
    let uid = object
        .metadata
        .uid
        .clone()
        .context("the Endpoints has no uid")?;

    // Created: one slice, and only the mirror (the EndpointSlice controller leaves a
    // selectorless Service alone).
    let slices = env
        .all_slices_until("custom", "a slice mirroring 10.1.2.3", |s| {
            mirrors(s, "10.1.2.3")
        })
        .await?;
    let slice = &slices[0];
    assert_eq!(slice.address_type, "IPv4");
    let ports = slice.ports.clone().unwrap_or_default();
    ensure!(
        ports.len() == 1
            && ports[0].port == Some(80)
            && ports[0].protocol.as_deref() == Some("TCP"),
        "the object's port: {ports:?}"
    );
    let ready = endpoints(&slices)[0]
        .conditions
        .as_ref()
        .and_then(|c| c.ready);
    assert_eq!(ready, Some(true), "an address, not a notReadyAddress");
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("blue"));
    let owners = slice.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.len() == 1
            && owners[0].kind == "Endpoints"
            && owners[0].uid == uid
            && owners[0].controller == Some(true),
        "owner references {owners:?}"
    );
    let name = slice.metadata.name.clone();

    // Updated: the same slice follows the new address.
    let mut changed = objects.get("custom").await?;
    changed.subsets = Some(serde_json::from_value(json!([
        { "addresses": [{ "ip": "10.2.3.4" }], "ports": [{ "port": 80 }] },
    ]))?);
    objects
        .replace("custom", &PostParams::default(), &changed)
        .await?;
    let slices = env
        .all_slices_until("custom", "the slice to mirror 10.2.3.4", |s| {
            mirrors(s, "10.2.3.4")
        })
        .await?;
    assert_eq!(slices[0].metadata.name, name, "updated in place");

    // Deleted: the mirror goes with it, while the Service stays.
    objects.delete("custom", &DeleteParams::default()).await?;
    env.all_slices_until("custom", "the mirrored slice to be gone", |s| s.is_empty())
        .await?;
    Ok(())
}
