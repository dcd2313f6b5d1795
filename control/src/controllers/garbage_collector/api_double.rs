//! A stand-in API server for the garbage collector's writes: objects by path with their
//! metadata, reads as `PartialObjectMetadata`, merge patches of metadata and deletes that
//! honour the resourceVersion and UID preconditions as the real server does, and events
//! accepted as created.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use kube::client::Body;
use serde_json::{Value, json};

/// One request: method, path, JSON body.
pub type Sent = (String, String, Value);

#[derive(Debug, Default)]
pub struct State {
    /// Each object's metadata, by its path.
    pub objects: BTreeMap<String, Value>,
    pub sent: Vec<Sent>,
    version: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ApiDouble {
    pub state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

fn partial(metadata: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": metadata})
}

impl ApiDouble {
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self
            .state
            .lock()
            .expect("the double's lock is never poisoned"))
    }

    /// Adds an object at `path` with this metadata (a resourceVersion is given to it).
    pub fn put(&self, path: &str, mut metadata: Value) {
        self.with(|s| {
            s.version += 1;
            metadata["resourceVersion"] = s.version.to_string().into();
            s.objects.insert(path.to_owned(), metadata);
        });
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.with(|s| s.objects.get(path).cloned())
    }

    /// The requests since the last call, as `METHOD path`, events left out.
    pub fn take_calls(&self) -> Vec<String> {
        self.take_sent()
            .into_iter()
            .filter(|(_, path, _)| !path.contains("/events"))
            .map(|(method, path, _)| format!("{method} {path}"))
            .collect()
    }

    pub fn take_sent(&self) -> Vec<Sent> {
        self.with(|s| std::mem::take(&mut s.sent))
    }
}

impl State {
    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        if path.contains("/events") {
            return (201, body.clone());
        }
        let Some(current) = self.objects.get(path).cloned() else {
            return status(404, "NotFound");
        };
        match method {
            "GET" => (200, partial(&current)),
            "PATCH" => {
                let patch = &body["metadata"];
                if !patch["resourceVersion"].is_null()
                    && patch["resourceVersion"] != current["resourceVersion"]
                {
                    return status(409, "Conflict");
                }
                let mut updated = current;
                if let Some(fields) = patch.as_object() {
                    for (field, value) in fields {
                        if value.is_null() {
                            if let Some(m) = updated.as_object_mut() {
                                m.remove(field);
                            }
                        } else {
                            updated[field] = value.clone();
                        }
                    }
                }
                self.version += 1;
                updated["resourceVersion"] = self.version.to_string().into();
                self.objects.insert(path.to_owned(), updated.clone());
                (200, partial(&updated))
            }
            "DELETE" => {
                let pre = &body["preconditions"];
                let differs = |field: &str| !pre[field].is_null() && pre[field] != current[field];
                if differs("uid") || differs("resourceVersion") {
                    return status(409, "Conflict");
                }
                self.objects.remove(path);
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                )
            }
            _ => status(405, "MethodNotAllowed"),
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
