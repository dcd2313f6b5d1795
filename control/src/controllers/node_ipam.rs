//! Node IPAM: every node gets a block of the cluster's pod network in `spec.podCIDR` and
//! `spec.podCIDRs` — upstream's range allocator (`pkg/controller/nodeipam/ipam/
//! range_allocator.go`, kube-controller-manager `--allocate-node-cidrs`, `--cluster-cidr`,
//! `--node-cidr-mask-size`).
//!
//! Invariants: nothing is allocated before the first full node listing has marked every block
//! nodes already show (a block outside the cluster CIDR or of another size is warned about
//! and left alone); a node is given blocks only while it shows none, and only once — the API
//! server allows setting them once, from empty; a block is freed only when its node is gone,
//! or when the node turned out to show other CIDRs than the ones reserved for it; a reserved
//! block stays reserved across failed writes (a timed-out patch may still have landed), so
//! the retry writes the same one. When the range is full the node gets upstream's
//! `CIDRNotAvailable` event and is retried with backoff, and at once when a block is freed.
//!
//! Not done: dual-stack (the [`Ledger`] holds one range per family, but [`Config`] and
//! [`Ipv4Cidr`] take IPv4 only), excluding the service CIDR from the range
//! (`--service-cluster-ip-range`), and the cloud allocator.
//!
//! ```text
//!  Node watch ──► store + ledger (occupy what nodes show) ──► queue of nodes without CIDRs
//!                        ▲                                          │
//!                        └──── reserve lowest free block ◄──────────┘
//!                                   │ task: patch spec.podCIDR(s), or CIDRNotAvailable event
//! ```

mod blocks;
mod cidr;
mod ledger;

pub use blocks::{BlockError, Blocks, MAX_BLOCK_BITS, RangeError};
pub use cidr::{CidrError, Ipv4Cidr};
pub use ledger::{Exhausted, Ledger, Seen};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::chain;
use super::queue::{Backoff, Queue};

/// kube-controller-manager's default `--node-cidr-mask-size` for IPv4.
pub const DEFAULT_NODE_MASK: u8 = 24;
/// Upstream's event reason when the range has no free block.
pub const CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
/// Upstream's event source for this controller.
const REPORTER: &str = "cidrAllocator";
/// Node writes at once (upstream runs 30 workers; a node joining is rare here).
const WORKERS: usize = 4;
/// A node whose write failed, or that found the range full, is retried with this backoff
/// (and at once when a block is freed).
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// The flags' values: `--cluster-cidr` and `--node-cidr-mask-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub cluster_cidr: Ipv4Cidr,
    pub node_mask: u8,
}

/// Flags that do not make a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--cluster-cidr")]
    ClusterCidr(#[source] CidrError),
    #[error("--node-cidr-mask-size")]
    NodeMask(#[source] RangeError),
}

impl Config {
    /// From the flags' text, checked: the mask must cut the cluster CIDR into blocks.
    pub fn parse(cluster_cidr: &str, node_mask: u8) -> Result<Self, ConfigError> {
        let cluster_cidr = cluster_cidr.parse().map_err(ConfigError::ClusterCidr)?;
        let config = Config {
            cluster_cidr,
            node_mask,
        };
        config.ranges()?;
        Ok(config)
    }

    /// The ranges blocks come from, one per address family (one, IPv4, today).
    pub fn ranges(&self) -> Result<Vec<Blocks>, ConfigError> {
        Blocks::new(self.cluster_cidr, self.node_mask)
            .map(|b| vec![b])
            .map_err(ConfigError::NodeMask)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-runtime's watcher retries by itself and never ends; if it does, the controller
    /// would no longer hear of nodes, so it stops.
    #[error("the node watch ended")]
    WatchEnded,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("node {node} gets no pod CIDR")]
    Exhausted {
        node: String,
        #[source]
        source: Exhausted,
    },
    #[error("setting the pod CIDRs {cidrs} of node {node}")]
    Patch {
        node: String,
        cidrs: String,
        #[source]
        source: kube::Error,
    },
    /// The API server refused the CIDRs (the node has others already, set since it was
    /// seen): the reservation goes, and the watch shows what the node has.
    #[error("node {node} refused the pod CIDRs {cidrs}")]
    Refused {
        node: String,
        cidrs: String,
        #[source]
        source: kube::Error,
    },
}

/// What this controller keeps of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Facts {
    uid: Option<String>,
    pod_cidrs: Vec<String>,
}

impl Facts {
    fn of(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let mut pod_cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        // The API server keeps both fields in step; a node written by an old client may
        // still have only the singular one.
        if pod_cidrs.is_empty()
            && let Some(cidr) = spec.and_then(|s| s.pod_cidr.clone())
            && !cidr.is_empty()
        {
            pod_cidrs.push(cidr);
        }
        Facts {
            uid: node.metadata.uid.clone(),
            pod_cidrs,
        }
    }
}

/// The patch that sets a node's pod CIDRs, as upstream's `PatchNodeCIDRs` writes it: the
/// singular field is the first of the list.
pub fn cidr_patch(cidrs: &[Ipv4Cidr]) -> serde_json::Value {
    let all: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    json!({ "spec": { "podCIDR": all.first(), "podCIDRs": all } })
}

/// The CIDRNotAvailable event's text, upstream's `RecordNodeStatusChange`.
pub fn not_available_message(node: &str) -> String {
    format!("Node {node} status is now: {CIDR_NOT_AVAILABLE}")
}

/// Runs the allocator until cancelled; a bad configuration or a watch that ends stops it,
/// logged here.
pub async fn run(client: Client, config: Config, cancel: CancellationToken) {
    info!(cluster_cidr = %config.cluster_cidr, node_mask = config.node_mask, "node IPAM starting");
    match run_until(client, config, cancel).await {
        Ok(()) => info!("node IPAM stopped"),
        Err(err) => error!(error = %chain(&err), "node IPAM stopped"),
    }
}

type Written = (String, Result<(), Error>);

struct Allocator {
    client: Client,
    recorder: Recorder,
    nodes: BTreeMap<String, Facts>,
    ledger: Ledger,
    /// Nodes listed since the watch (re)started; Some until the listing is complete.
    listing: Option<Vec<(String, Facts)>>,
    synced: bool,
    /// Nodes that found the range full: retried as soon as a block is freed.
    starved: BTreeSet<String>,
    queue: Queue<String>,
    tasks: JoinSet<Written>,
    running: HashMap<tokio::task::Id, String>,
}

async fn run_until(client: Client, config: Config, cancel: CancellationToken) -> Result<(), Error> {
    let ledger = Ledger::new(config.ranges()?);
    let events =
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff();
    let mut events = pin!(events);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.to_owned(),
            instance: None,
        },
    );
    let mut a = Allocator {
        client,
        recorder,
        nodes: BTreeMap::new(),
        ledger,
        listing: None,
        synced: false,
        starved: BTreeSet::new(),
        queue: Queue::new(BACKOFF),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let result = loop {
        let now = Instant::now();
        let ready = a.synced && a.tasks.len() < WORKERS && a.queue.has_ready(now);
        let wake = if a.synced {
            a.queue.next_wakeup()
        } else {
            None
        };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = events.next() => match event {
                Some(Ok(event)) => a.observe(event),
                Some(Err(err)) => warn!(error = %chain(&err), "node watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded),
            },
            Some(done) = a.tasks.join_next_with_id(), if !a.tasks.is_empty() => a.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => a.dispatch(now),
        }
    };
    super::drain(&mut a.tasks, "node CIDR writes").await;
    result
}

impl Allocator {
    fn observe(&mut self, event: Event<Node>) {
        match event {
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(node) => {
                if let Some(listing) = self.listing.as_mut() {
                    listing.push((node.name_any(), Facts::of(&node)));
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.relisted(listed);
            }
            Event::Apply(node) => {
                let name = node.name_any();
                let facts = Facts::of(&node);
                let seen = self.ledger.observe(&name, &facts.pod_cidrs);
                self.nodes.insert(name.clone(), facts);
                self.seen(&name, seen);
            }
            Event::Delete(node) => {
                let name = node.name_any();
                self.nodes.remove(&name);
                self.queue.remove(&name);
                self.starved.remove(&name);
                if self.ledger.release(&name) {
                    debug!(node = %name, "node gone; its pod CIDRs are free again");
                    self.wake_starved();
                }
            }
        }
    }

    /// A complete listing: the ledger starts over from what the nodes show (a node deleted
    /// while the watch was down frees its blocks here).
    fn relisted(&mut self, listed: Vec<(String, Facts)>) {
        let seen = self.ledger.rebuild(
            listed
                .iter()
                .map(|(name, facts)| (name.as_str(), facts.pod_cidrs.as_slice())),
        );
        self.nodes = listed.into_iter().collect();
        self.starved.retain(|name| self.nodes.contains_key(name));
        if !self.synced {
            let used: u32 = self.ledger.ranges().iter().map(Blocks::used).sum();
            info!(
                nodes = self.nodes.len(),
                blocks_used = used,
                "node IPAM has listed the nodes"
            );
        }
        self.synced = true;
        for (name, seen) in seen {
            self.seen(&name, seen);
        }
        // Blocks freed by the rebuild are not reported one by one.
        self.wake_starved();
    }

    fn seen(&mut self, name: &str, seen: Seen) {
        for reason in &seen.ignored {
            warn!(node = %name, reason = %reason, "ignoring a pod CIDR of the node");
        }
        if seen.freed {
            self.wake_starved();
        }
        if seen.needs_cidrs {
            self.queue.add(name.to_owned());
        }
    }

    fn wake_starved(&mut self) {
        for name in std::mem::take(&mut self.starved) {
            self.queue.add(name);
        }
    }

    /// Reserves blocks for the next node that needs them and writes them, or reports that
    /// none is left.
    fn dispatch(&mut self, now: Instant) {
        let Some(name) = self.queue.pop(now) else {
            return;
        };
        let Some(facts) = self.nodes.get(&name).cloned() else {
            self.queue.done(&name);
            self.queue.forget(&name);
            return;
        };
        if !facts.pod_cidrs.is_empty() {
            self.queue.done(&name);
            self.queue.forget(&name);
            return;
        }
        let reserved = match self.ledger.reserved(&name) {
            // A failed write is retried with the same blocks.
            Some(cidrs) => Ok(cidrs.to_vec()),
            None => self.ledger.reserve(&name),
        };
        let key = name.clone();
        let handle = match reserved {
            Ok(cidrs) => {
                self.starved.remove(&name);
                let api: Api<Node> = Api::all(self.client.clone());
                self.tasks.spawn(async move {
                    let result = write(&api, &key, &cidrs).await;
                    (key, result)
                })
            }
            Err(exhausted) => {
                self.starved.insert(name.clone());
                let recorder = self.recorder.clone();
                self.tasks.spawn(async move {
                    report_full(&recorder, &key, facts.uid).await;
                    let err = Error::Exhausted {
                        node: key.clone(),
                        source: exhausted,
                    };
                    (key, Err(err))
                })
            }
        };
        self.running.insert(handle.id(), name);
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Written), tokio::task::JoinError>) {
        let now = Instant::now();
        let (name, result) = match done {
            Ok((id, written)) => {
                self.running.remove(&id);
                written
            }
            Err(err) => {
                let Some(name) = self.running.remove(&err.id()) else {
                    return;
                };
                warn!(node = %name, error = %err, "node CIDR task failed");
                self.queue.done(&name);
                let delay = self.queue.backoff(&name);
                self.queue.add_after(name, now + delay);
                return;
            }
        };
        self.queue.done(&name);
        match result {
            Ok(()) => self.queue.forget(&name),
            Err(err) => {
                if matches!(err, Error::Refused { .. })
                    && self.ledger.reserved(&name).is_some()
                    && self.ledger.release(&name)
                {
                    self.wake_starved();
                }
                let delay = self.queue.backoff(&name);
                warn!(node = %name, error = %chain(&err), retry_in = ?delay, "node gets no pod CIDR yet");
                self.queue.add_after(name, now + delay);
            }
        }
    }
}

/// Sets the node's pod CIDRs; a node that is gone needs none.
async fn write(api: &Api<Node>, node: &str, cidrs: &[Ipv4Cidr]) -> Result<(), Error> {
    let text = cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match api
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Strategic(cidr_patch(cidrs)),
        )
        .await
    {
        Ok(_) => {
            info!(node = %node, cidrs = %text, "node pod CIDRs set");
            Ok(())
        }
        // Its deletion event frees the reservation.
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        // Validation: the node's podCIDRs may only go from empty to set.
        Err(kube::Error::Api(s)) if s.code == 422 => Err(Error::Refused {
            node: node.to_owned(),
            cidrs: text,
            source: kube::Error::Api(s),
        }),
        Err(source) => Err(Error::Patch {
            node: node.to_owned(),
            cidrs: text,
            source,
        }),
    }
}

/// Upstream's event when no block is left: Normal, on the node, logged if it cannot be
/// recorded (the retry records it again).
async fn report_full(recorder: &Recorder, node: &str, uid: Option<String>) {
    let reference = ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Node".to_owned()),
        name: Some(node.to_owned()),
        uid,
        ..ObjectReference::default()
    };
    let note = Note {
        type_: EventType::Normal,
        reason: CIDR_NOT_AVAILABLE.to_owned(),
        note: Some(not_available_message(node)),
        action: "CIDRAssignment".to_owned(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&note, &reference).await {
        warn!(node = %node, error = %err, "recording the CIDRNotAvailable event failed");
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use kube::client::Body;
    use serde_json::Value;

    use super::*;

    #[test]
    fn config_parses_the_flags_and_rejects_what_makes_no_range() {
        let config = Config::parse("10.244.0.0/16", DEFAULT_NODE_MASK).expect("valid");
        assert_eq!(config.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(config.ranges().expect("valid")[0].capacity(), 256);

        let err = Config::parse("10.244.0.0", 24).expect_err("no prefix");
        assert!(matches!(
            err,
            ConfigError::ClusterCidr(CidrError::NoPrefix { .. })
        ));
        assert_eq!(
            chain(&err),
            "--cluster-cidr: \"10.244.0.0\" is not a CIDR: it has no /prefix"
        );
        let err = Config::parse("10.244.0.0/25", 24).expect_err("mask too short");
        assert_eq!(
            chain(&err),
            "--node-cidr-mask-size: the node CIDR mask /24 is shorter than the cluster CIDR 10.244.0.0/25: a node block would not fit"
        );
    }

    #[test]
    fn the_patch_sets_both_fields_and_the_event_reads_as_upstream() {
        let cidrs = vec!["10.244.3.0/24".parse().expect("cidr")];
        assert_eq!(
            cidr_patch(&cidrs),
            json!({"spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}})
        );
        assert_eq!(
            not_available_message("worker-1"),
            "Node worker-1 status is now: CIDRNotAvailable"
        );
    }

    #[test]
    fn the_singular_field_stands_in_for_a_missing_list() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "a", "uid": "u"},
            "spec": {"podCIDR": "10.244.1.0/24"}
        }))
        .expect("node");
        assert_eq!(Facts::of(&node).pod_cidrs, vec!["10.244.1.0/24"]);
        assert!(Facts::of(&Node::default()).pod_cidrs.is_empty());
    }

    /// A stand-in API server that records requests and answers node patches with `code`.
    #[derive(Clone)]
    struct Double {
        sent: Arc<Mutex<Vec<(String, String, Value)>>>,
        code: u16,
    }

    impl tower::Service<http::Request<Body>> for Double {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let double = self.clone();
            Box::pin(async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                double.sent.lock().expect("not poisoned").push((
                    method.clone(),
                    path,
                    body.clone(),
                ));
                let (code, reply) = if method == "PATCH" && double.code != 200 {
                    let reason = match double.code {
                        404 => "NotFound",
                        422 => "Invalid",
                        _ => "InternalError",
                    };
                    (
                        double.code,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "reason": reason, "code": double.code}),
                    )
                } else if method == "PATCH" {
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}}),
                    )
                } else {
                    // An event: echoed back as created.
                    (201, body)
                };
                Ok(http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"))
            })
        }
    }

    fn double(code: u16) -> (Double, Client) {
        let d = Double {
            sent: Arc::default(),
            code,
        };
        let client = Client::new(d.clone(), "default");
        (d, client)
    }

    #[tokio::test]
    async fn a_write_patches_the_node_and_a_refusal_is_told_apart() {
        let cidrs = vec!["10.244.0.0/24".parse().expect("cidr")];
        let (d, client) = double(200);
        write(&Api::all(client), "a", &cidrs)
            .await
            .expect("written");
        let sent = d.sent.lock().expect("not poisoned").clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "PATCH");
        assert_eq!(sent[0].1, "/api/v1/nodes/a");
        assert_eq!(sent[0].2["spec"]["podCIDRs"], json!(["10.244.0.0/24"]));

        let (_, client) = double(422);
        let err = write(&Api::all(client), "a", &cidrs)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Refused { .. }), "{err:?}");
        let (_, client) = double(500);
        let err = write(&Api::all(client), "a", &cidrs)
            .await
            .expect_err("failed");
        assert!(matches!(err, Error::Patch { .. }), "{err:?}");
        let (_, client) = double(404);
        write(&Api::all(client), "a", &cidrs)
            .await
            .expect("a node that is gone needs nothing");
    }

    #[tokio::test]
    async fn a_full_range_is_reported_on_the_node_as_upstream_does() {
        let (d, client) = double(200);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: REPORTER.to_owned(),
                instance: None,
            },
        );
        report_full(&recorder, "worker-1", Some("uid-1".to_owned())).await;
        let sent = d.sent.lock().expect("not poisoned").clone();
        let (method, path, event) = &sent[0];
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/default/events");
        assert_eq!(event["reason"], CIDR_NOT_AVAILABLE);
        assert_eq!(event["type"], "Normal");
        assert_eq!(
            event["note"],
            "Node worker-1 status is now: CIDRNotAvailable"
        );
        assert_eq!(event["regarding"]["kind"], "Node");
        assert_eq!(event["regarding"]["uid"], "uid-1");
    }
}
