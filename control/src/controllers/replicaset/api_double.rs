//! A stand-in API server for sync tests: answers each request with a function of the
//! request (and how many alike came before it) and remembers every request, so that tests
//! see the writes a sync makes, their paths and bodies, without a cluster.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use kube::client::Body;
use serde_json::{Value, json};

/// One request: method, path, JSON body.
pub type Sent = (String, String, Value);
/// Answers a request, given how many of the same method and path came before it.
pub type Answer = dyn Fn(&str, &str, &Value, usize) -> (u16, Value) + Send + Sync;

/// A stand-in API server that answers with `answer` and remembers what it was sent.
#[derive(Clone)]
pub struct Double {
    sent: Arc<Mutex<Vec<Sent>>>,
    answer: Arc<Answer>,
}

impl Double {
    pub fn new(
        answer: impl Fn(&str, &str, &Value, usize) -> (u16, Value) + Send + Sync + 'static,
    ) -> Self {
        Double {
            sent: Arc::default(),
            answer: Arc::new(answer),
        }
    }

    pub fn sent(&self, method: &str, prefix: &str) -> Vec<Sent> {
        let sent = self.sent.lock().expect("never poisoned");
        sent.iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix))
            .cloned()
            .collect()
    }
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
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = {
                let mut sent = double.sent.lock().expect("never poisoned");
                let before = sent
                    .iter()
                    .filter(|(m, p, _)| *m == method && *p == path)
                    .count();
                sent.push((method.clone(), path.clone(), body.clone()));
                (double.answer)(&method, &path, &body, before)
            };
            Ok(http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response"))
        })
    }
}

/// An API error as the server sends it.
pub fn failure(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}
