//! CertificateSigningRequests: the approver that lets kubelets get their client
//! certificates (TLS bootstrap and renewal) and the signer that issues certificates from the
//! cluster CA for the kubernetes.io kubelet and API-server-client signer names.
//!
//! Invariants: level-triggered — each sync looks at the CSR as the store has it now; only
//! `kubernetes.io/kube-apiserver-client-kubelet` requests for a node client certificate are
//! approved, and only when a SubjectAccessReview allows the requester to create
//! `certificatesigningrequests/selfnodeclient` (its own renewal) or `/nodeclient`;
//! `kubernetes.io/kubelet-serving` requests are never approved here (an admin does); only
//! approved, not failed, not yet issued requests of [`policy::SIGNERS`] are signed, after
//! the signer's own checks, and one that fails them gets the `Failed` condition instead;
//! every write is conditional on the resourceVersion read; a request that cannot be parsed
//! is reported once (log and event) and left alone, its spec being immutable. Upstream:
//! `pkg/controller/certificates/approver/sarapprove.go`,
//! `pkg/controller/certificates/signer/signer.go` and `certificate_controller.go`.
//!
//! ```text
//!  CSR watch ─► queue of names ─► decide (pure) ─┬─ Approve: SubjectAccessReviews, then /approval
//!   (store)     dedup, backoff                   ├─ Sign: certificate into /status
//!                                                └─ Fail: Failed condition into /status
//! ```

pub mod authority;
pub mod key;
pub mod policy;
pub mod request;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use self::authority::{SignError, Signer};
use self::key::KeyError;
use self::policy::Recognized;
use self::request::{Malformed, Request};
use super::chain;
use super::queue::{Backoff, Queue};

/// The name approval events are reported under, as upstream's controller.
pub const APPROVER: &str = "csrapproving";
/// The name signing events are reported under.
pub const SIGNER: &str = "csrsigning";
/// The Failed condition's reason when the signer's checks refuse a request (upstream's).
pub const REASON_VALIDATION: &str = "SignerValidationFailure";
/// The Failed condition's reason when this signer cannot encode what is asked.
pub const REASON_UNSUPPORTED: &str = "UnsupportedRequest";
/// CSRs synced at once.
const WORKERS: usize = 2;
/// How soon a CSR that changed under a write is looked at again (its watch event usually
/// brings it back sooner).
const STALE_RETRY: Duration = Duration::from_secs(1);
/// Retries of a refused SubjectAccessReview or a failed write: RBAC may change.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA certificate {file}: {reason}")]
    CaCertificate { file: String, reason: String },
    #[error("the CA key {file}")]
    CaKey {
        file: String,
        #[source]
        source: KeyError,
    },
    #[error("the CA key {key} is not the key of the CA certificate {cert}")]
    KeyMismatch { cert: String, key: String },
    /// kube-runtime's watcher retries by itself and never ends; if it does, the
    /// controller stops rather than act on a frozen view.
    #[error("the CertificateSigningRequest watch ended")]
    WatchEnded,
}

/// A failed sync of one CSR.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("creating a SubjectAccessReview for CSR {csr}")]
    Review {
        csr: String,
        #[source]
        source: kube::Error,
    },
    /// Not a failure: upstream's "ignorable" error, retried in case RBAC changes.
    #[error("recognized CSR {csr} as {tried:?} but no SubjectAccessReview allowed it")]
    NotAllowed {
        csr: String,
        tried: Vec<&'static str>,
    },
    #[error("writing CSR {csr}")]
    Write {
        csr: String,
        #[source]
        source: kube::Error,
    },
    #[error("signing CSR {csr}")]
    Sign {
        csr: String,
        #[source]
        source: SignError,
    },
    #[error("the sync task failed")]
    Panicked,
    /// The CSR changed or went since the store showed it; its watch event brings it back.
    #[error("CSR {csr} changed since it was read")]
    Stale { csr: String },
}

/// What a CSR needs, decided from it alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing: not ours, decided already, or waiting for an admin.
    Nothing,
    /// The request cannot be read: reported, never retried.
    Malformed(Malformed),
    /// Ask a SubjectAccessReview for each, in order; approve on the first allowed.
    Approve(Vec<Recognized>),
    /// Refuse with the Failed condition.
    Fail {
        reason: &'static str,
        message: String,
    },
    /// Issue the certificate.
    Sign(Box<Request>),
}

fn conditions(csr: &CertificateSigningRequest) -> &[CertificateSigningRequestCondition] {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

/// Upstream's `GetCertApprovalCondition`: an Approved or Denied condition counts whatever
/// its status.
fn approval(csr: &CertificateSigningRequest) -> (bool, bool) {
    let conditions = conditions(csr);
    (
        conditions.iter().any(|c| c.type_ == "Approved"),
        conditions.iter().any(|c| c.type_ == "Denied"),
    )
}

/// Upstream's `HasTrueCondition(csr, Failed)`: an empty status counts as True.
fn failed(csr: &CertificateSigningRequest) -> bool {
    conditions(csr)
        .iter()
        .any(|c| c.type_ == "Failed" && (c.status.is_empty() || c.status == "True"))
}

fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// What `csr` needs now: the approver's step if it is undecided, else the signer's.
pub fn decide(csr: &CertificateSigningRequest) -> Step {
    let spec = &csr.spec;
    if issued(csr) {
        return Step::Nothing;
    }
    let (approved, denied) = approval(csr);
    let usages = spec.usages.clone().unwrap_or_default();
    let username = spec.username.as_deref().unwrap_or_default();
    if !approved && !denied {
        if spec.signer_name != policy::KUBE_APISERVER_CLIENT_KUBELET {
            return Step::Nothing;
        }
        return match request::parse(&spec.request.0) {
            Err(malformed) => Step::Malformed(malformed),
            Ok(req) => {
                let recognized = policy::recognize(&spec.signer_name, &req, &usages, username);
                if recognized.is_empty() {
                    Step::Nothing
                } else {
                    Step::Approve(recognized)
                }
            }
        };
    }
    if !approved || denied || failed(csr) || !policy::SIGNERS.contains(&spec.signer_name.as_str()) {
        return Step::Nothing;
    }
    let req = match request::parse(&spec.request.0) {
        Err(malformed) => return Step::Malformed(malformed),
        Ok(req) => req,
    };
    match policy::signer_check(&spec.signer_name, &req, &usages, username) {
        Some(Ok(())) => Step::Sign(Box::new(req)),
        Some(Err(refusal)) => Step::Fail {
            reason: REASON_VALIDATION,
            message: refusal.to_string(),
        },
        None => Step::Nothing,
    }
}

/// Runs the approver and signer until cancelled; a watch that ends stops them, logged here.
pub async fn run(client: Client, signer: Signer, cancel: CancellationToken) {
    info!(duration = ?signer.duration, "CSR approver and signer starting");
    match run_until(client, signer, cancel).await {
        Ok(()) => info!("CSR approver and signer stopped"),
        Err(err) => error!(error = %chain(&err), "the CSR approver and signer stopped"),
    }
}

struct Ctx {
    client: Client,
    signer: Signer,
}

impl Ctx {
    /// Records an event on `csr` (in `default`, as for every cluster-scoped object); a
    /// failure is logged, never retried.
    async fn event(
        &self,
        csr: &CertificateSigningRequest,
        reporter: &str,
        reason: &str,
        note: String,
    ) {
        let note = Note {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Sync".into(),
            secondary: None,
        };
        // A recorder per event: kube's folds later notes of one reason into the first.
        let recorder = Recorder::new(self.client.clone(), Reporter::from(reporter));
        if let Err(err) = recorder.publish(&note, &csr.object_ref(&())).await {
            debug!(csr = ?csr.metadata.name, error = %chain(&err), "recording an event failed");
        }
    }
}

struct Controller {
    ctx: Arc<Ctx>,
    csrs: Store<CertificateSigningRequest>,
    listed: bool,
    queue: Queue<String>,
    /// CSRs reported as unusable, by uid: said once.
    reported: HashMap<String, String>,
    tasks: JoinSet<Result<(), SyncError>>,
    /// The CSR each running sync is for (event tasks are not here).
    running: HashMap<tokio::task::Id, String>,
}

async fn run_until(client: Client, signer: Signer, cancel: CancellationToken) -> Result<(), Error> {
    let (csrs, writer) = reflector::store::<CertificateSigningRequest>();
    let events = watcher(
        Api::<CertificateSigningRequest>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer);
    let mut events = pin!(events);
    let mut c = Controller {
        ctx: Arc::new(Ctx { client, signer }),
        csrs,
        listed: false,
        queue: Queue::new(BACKOFF),
        reported: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let result = loop {
        let now = Instant::now();
        let ready = c.listed && c.tasks.len() < WORKERS && c.queue.has_ready(now);
        let wake = if c.listed {
            c.queue.next_wakeup()
        } else {
            None
        };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = events.next() => match event {
                Some(Ok(event)) => c.on_event(event),
                Some(Err(err)) => warn!(error = %chain(&err), "CSR watch failed; retrying with backoff"),
                None => break Err(Error::WatchEnded),
            },
            Some(done) = c.tasks.join_next_with_id(), if !c.tasks.is_empty() => c.finish(done),
            _ = sleep_until(wake.unwrap_or(now)), if !ready && wake.is_some() => {}
            _ = std::future::ready(()), if ready => c.work_one(now),
        }
    };
    let drain = async { while c.tasks.join_next().await.is_some() {} };
    if timeout(GRACE, drain).await.is_err() {
        warn!("CSR syncs still in flight at shutdown were abandoned");
    }
    result
}

impl Controller {
    fn on_event(&mut self, event: Event<CertificateSigningRequest>) {
        match event {
            Event::Apply(csr) | Event::InitApply(csr) => {
                if let Some(name) = csr.metadata.name {
                    self.queue.add(name);
                }
            }
            Event::Delete(csr) => {
                if let Some(name) = &csr.metadata.name {
                    self.queue.remove(name);
                }
                if let Some(uid) = &csr.metadata.uid {
                    self.reported.remove(uid);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                self.listed = true;
                for csr in self.csrs.state() {
                    if let Some(name) = &csr.metadata.name {
                        self.queue.add(name.clone());
                    }
                }
            }
        }
    }

    fn work_one(&mut self, now: Instant) {
        let Some(name) = self.queue.pop(now) else {
            return;
        };
        let Some(csr) = self.csrs.get(&ObjectRef::new(&name)) else {
            self.queue.done(&name);
            self.queue.forget(&name);
            return;
        };
        let step = decide(&csr);
        if let Step::Malformed(why) = &step {
            let uid = csr.metadata.uid.clone().unwrap_or_default();
            let first = self.reported.insert(uid, name.clone()).is_none();
            self.queue.done(&name);
            self.queue.forget(&name);
            if first {
                warn!(csr = %name, error = %why, "skipping CSR: its request cannot be used");
                let ctx = self.ctx.clone();
                let note = format!("the request cannot be used: {why}");
                self.tasks.spawn(async move {
                    ctx.event(&csr, SIGNER, "InvalidRequest", note).await;
                    Ok(())
                });
            }
            return;
        }
        if step == Step::Nothing {
            self.queue.done(&name);
            self.queue.forget(&name);
            return;
        }
        let ctx = self.ctx.clone();
        let handle = self
            .tasks
            .spawn(async move { sync(&ctx, &csr, step).await });
        self.running.insert(handle.id(), name);
    }

    fn finish(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), SyncError>), tokio::task::JoinError>,
    ) {
        let now = Instant::now();
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(err) => {
                let id = err.id();
                error!(error = %err, "CSR sync task failed");
                (id, Err(SyncError::Panicked))
            }
        };
        // Not a sync: an event task.
        let Some(name) = self.running.remove(&id) else {
            return;
        };
        self.queue.done(&name);
        match result {
            Ok(()) => self.queue.forget(&name),
            Err(SyncError::Stale { .. }) => self.queue.add_after(name, now + STALE_RETRY),
            Err(err @ SyncError::NotAllowed { .. }) => {
                let delay = self.queue.backoff(&name);
                debug!(csr = %name, error = %err, retry_in = ?delay, "not approved");
                self.queue.add_after(name, now + delay);
            }
            Err(err) => {
                let delay = self.queue.backoff(&name);
                warn!(csr = %name, error = %chain(&err), retry_in = ?delay, "syncing CSR failed");
                self.queue.add_after(name, now + delay);
            }
        }
    }
}

/// Carries out `step` for `csr`.
async fn sync(ctx: &Ctx, csr: &CertificateSigningRequest, step: Step) -> Result<(), SyncError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let write_error = |source: kube::Error| match source {
        kube::Error::Api(s) if s.is_conflict() || s.is_not_found() => {
            SyncError::Stale { csr: name.clone() }
        }
        source => SyncError::Write {
            csr: name.clone(),
            source,
        },
    };
    match step {
        Step::Nothing | Step::Malformed(_) => Ok(()),
        Step::Approve(recognized) => {
            let mut tried = Vec::new();
            for kind in recognized {
                tried.push(kind.subresource());
                if !allowed(ctx, csr, kind).await? {
                    continue;
                }
                let mut approved = csr.clone();
                push_condition(
                    &mut approved,
                    CertificateSigningRequestCondition {
                        type_: "Approved".into(),
                        status: "True".into(),
                        reason: Some("AutoApproved".into()),
                        message: Some(kind.message().into()),
                        ..CertificateSigningRequestCondition::default()
                    },
                );
                api.replace_subresource("approval", &name, &PostParams::default(), &approved)
                    .await
                    .map_err(write_error)?;
                info!(csr = %name, requester = ?csr.spec.username, as_ = kind.subresource(), "approved kubelet client certificate request");
                return Ok(());
            }
            Err(SyncError::NotAllowed { csr: name, tried })
        }
        Step::Fail { reason, message } => fail(ctx, &api, csr, reason, message)
            .await
            .map_err(write_error),
        Step::Sign(req) => {
            let usages = csr.spec.usages.clone().unwrap_or_default();
            match ctx
                .signer
                .sign(&req, &usages, csr.spec.expiration_seconds, Timestamp::now())
            {
                Ok(pem) => {
                    let mut signed = csr.clone();
                    signed.status.get_or_insert_default().certificate =
                        Some(ByteString(pem.into_bytes()));
                    api.replace_status(&name, &PostParams::default(), &signed)
                        .await
                        .map_err(write_error)?;
                    info!(csr = %name, signer = %csr.spec.signer_name, subject = %req.subject.common_name, "issued certificate");
                    Ok(())
                }
                Err(err) if err.is_permanent() => {
                    fail(ctx, &api, csr, REASON_UNSUPPORTED, err.to_string())
                        .await
                        .map_err(write_error)
                }
                Err(source) => Err(SyncError::Sign { csr: name, source }),
            }
        }
    }
}

fn push_condition(
    csr: &mut CertificateSigningRequest,
    condition: CertificateSigningRequestCondition,
) {
    csr.status
        .get_or_insert_default()
        .conditions
        .get_or_insert_default()
        .push(condition);
}

/// Marks the CSR Failed with `message`, through the status subresource, and says so.
async fn fail(
    ctx: &Ctx,
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    reason: &str,
    message: String,
) -> Result<(), kube::Error> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let mut refused = csr.clone();
    push_condition(
        &mut refused,
        CertificateSigningRequestCondition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.clone()),
            last_update_time: Some(Time(Timestamp::now())),
            ..CertificateSigningRequestCondition::default()
        },
    );
    api.replace_status(&name, &PostParams::default(), &refused)
        .await?;
    warn!(csr = %name, signer = %csr.spec.signer_name, requester = ?csr.spec.username, "refused to sign: {message}");
    ctx.event(csr, SIGNER, reason, message).await;
    Ok(())
}

/// Upstream's `authorize`: may the requester, as the CSR records it, create the
/// subresource `kind` names?
async fn allowed(
    ctx: &Ctx,
    csr: &CertificateSigningRequest,
    kind: Recognized,
) -> Result<bool, SyncError> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                verb: Some("create".into()),
                subresource: Some(kind.subresource().into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .map_err(|source| SyncError::Review {
            csr: csr.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

#[cfg(test)]
mod tests;
