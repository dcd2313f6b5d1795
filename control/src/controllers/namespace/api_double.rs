//! A stand-in API server for the namespace controller's passes: the namespace `shop` being
//! deleted, the core group (pods, configmaps, the cluster-scoped namespaces, create-only
//! bindings), `apps` (deployments) and, when asked, an aggregated group that does not answer.
//! Deleted pods stay, terminating, until the test stops them, as their node would; a
//! `finalize` that leaves no finalizer deletes the namespace, as the real server does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use serde_json::{Value, json};

pub const NS: &str = "shop";
pub const PODS: &str = "/api/v1/namespaces/shop/pods";
pub const CONFIG_MAPS: &str = "/api/v1/namespaces/shop/configmaps";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";
const NAMESPACE: &str = "/api/v1/namespaces/shop";

/// One request: method, path, JSON body.
pub type Sent = (String, String, Value);

#[derive(Debug)]
pub struct State {
    pub namespace: Option<Value>,
    /// Each collection's objects, as `{metadata: ...}`.
    pub objects: BTreeMap<&'static str, Vec<Value>>,
    /// Whether `metrics.k8s.io` is listed and fails to answer.
    pub broken_group: bool,
    pub sent: Vec<Sent>,
    version: u64,
}

#[derive(Debug, Clone)]
pub struct ApiDouble {
    pub state: Arc<Mutex<State>>,
}

fn named(name: &str) -> Value {
    json!({ "metadata": { "name": name, "namespace": NS } })
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str]) -> Value {
    json!({ "name": name, "singularName": "", "kind": kind, "namespaced": namespaced, "verbs": verbs })
}

const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ApiDouble {
    /// `shop` deleted but held by `kubernetes`, with a pod, two ConfigMaps and a Deployment.
    pub fn new(broken_group: bool) -> Self {
        let namespace = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": NS, "uid": "uid-shop", "resourceVersion": "1",
                          "deletionTimestamp": "2025-01-01T00:00:00Z" },
            "spec": { "finalizers": ["kubernetes"] },
            "status": { "phase": "Terminating" },
        });
        let objects = BTreeMap::from([
            (PODS, vec![named("web")]),
            (
                CONFIG_MAPS,
                vec![named("settings"), named("kube-root-ca.crt")],
            ),
            (DEPLOYMENTS, vec![named("web")]),
        ]);
        ApiDouble {
            state: Arc::new(Mutex::new(State {
                namespace: Some(namespace),
                objects,
                broken_group,
                sent: Vec::new(),
                version: 1,
            })),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self
            .state
            .lock()
            .expect("the double's lock is never poisoned"))
    }

    /// The requests since the last call.
    pub fn take_sent(&self) -> Vec<Sent> {
        self.with(|s| std::mem::take(&mut s.sent))
    }
}

impl State {
    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        match (method, path) {
            ("GET", NAMESPACE) => match &self.namespace {
                Some(ns) => (200, ns.clone()),
                None => status(404, "NotFound"),
            },
            ("GET", "/api") => (
                200,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ),
            ("GET", "/apis") => {
                let mut groups = vec![json!({"name": "apps",
                    "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}})];
                if self.broken_group {
                    groups.push(json!({"name": "metrics.k8s.io",
                        "versions": [{"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}],
                        "preferredVersion": {"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}}));
                }
                (
                    200,
                    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                )
            }
            ("GET", "/api/v1") => (
                200,
                json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                    resource("pods", "Pod", true, ALL),
                    resource("pods/status", "Pod", true, &["get", "patch", "update"]),
                    resource("configmaps", "ConfigMap", true, ALL),
                    resource("namespaces", "Namespace", false, ALL),
                    resource("bindings", "Binding", true, &["create"]),
                ]}),
            ),
            ("GET", "/apis/apps/v1") => (
                200,
                json!({"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
                    resource("deployments", "Deployment", true, ALL),
                ]}),
            ),
            ("GET", "/apis/metrics.k8s.io/v1beta1") => status(503, "ServiceUnavailable"),
            ("PATCH", "/api/v1/namespaces/shop/status") => {
                let Some(ns) = self.namespace.as_mut() else {
                    return status(404, "NotFound");
                };
                ns["status"]["conditions"] = body["status"]["conditions"].clone();
                self.version += 1;
                ns["metadata"]["resourceVersion"] = self.version.to_string().into();
                (200, ns.clone())
            }
            ("PUT", "/api/v1/namespaces/shop/finalize") => {
                let Some(ns) = self.namespace.as_mut() else {
                    return status(404, "NotFound");
                };
                if body["metadata"]["resourceVersion"] != ns["metadata"]["resourceVersion"] {
                    return status(409, "Conflict");
                }
                ns["spec"]["finalizers"] = body["spec"]["finalizers"].clone();
                self.version += 1;
                ns["metadata"]["resourceVersion"] = self.version.to_string().into();
                let written = ns.clone();
                let held = written["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if !held {
                    self.namespace = None;
                }
                (200, written)
            }
            ("DELETE", NAMESPACE) => match self.namespace.take() {
                Some(ns) => (200, ns),
                None => status(404, "NotFound"),
            },
            (method, collection) => {
                let Some(objects) = self.objects.get_mut(collection) else {
                    return status(404, "NotFound");
                };
                if method == "DELETE" {
                    if collection == PODS {
                        let due = Timestamp::now() + Duration::from_secs(30);
                        let due = Timestamp::from_second(due.as_second())
                            .expect("a time within range")
                            .to_string();
                        for pod in objects.iter_mut() {
                            pod["metadata"]["deletionTimestamp"] = due.clone().into();
                        }
                    } else {
                        objects.clear();
                    }
                }
                (
                    200,
                    json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                           "metadata": {}, "items": objects}),
                )
            }
        }
    }
}

impl tower::Service<http::Request<Body>> for ApiDouble {
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
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = double.with(|s| {
                s.sent.push((method.clone(), path.clone(), body.clone()));
                s.answer(&method, &path, &body)
            });
            let response = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            Ok(response)
        })
    }
}
