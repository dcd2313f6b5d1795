//! Sync: the proxy's reconcile loop. It keeps reflector stores of Services, EndpointSlices and this
//! Node, and on each sync maps their current contents to the model, builds the whole desired
//! ruleset, and applies the difference against the last applied ruleset as one atomic transaction
//! (nothing when there is none).
//!
//! Invariants: the stores are current state, never change events: a sync does not know why it
//! runs, and nothing syncs before all three stores have listed once; building (mapping, ruleset,
//! diff, stale-flow and health-check computation) is pure and apart from I/O (nft, conntrack,
//! events); the first sync, the first after any failure, and one an hour replace the whole table
//! (so drift such as a hand-flushed chain is repaired), every other sync changes only what
//! differs; failures are retried with backoff; one invalid Service is skipped and reported, never
//! breaking the others.
//!
//! Timeline of the schedule (upstream's `BoundedFrequencyRunner`):
//! ```text
//!   change ──> sync at once, unless the last sync started less than min_sync_period ago;
//!              then at last_start + min_sync_period (changes in between collapse into one sync)
//!   quiet  ──> sync at last_start + sync_period (re-checks the stores; applies only on change)
//!   failure──> retry at now + backoff (changes do not bring it forward), applying in full
//!   FULL_SYNC_PERIOD since the last full apply ──> the next sync applies in full (repairs drift,
//!              e.g. a flushed table, as upstream's nftables mode does once an hour)
//! ```

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use nodus_net::proxy::apply::{self, Nft};
use nodus_net::proxy::conntrack::{self, Conntrack};
use nodus_net::proxy::model::ProxyState;
use nodus_net::proxy::netlink::{self, Netlink};
use nodus_net::proxy::ruleset::{Builder, Ruleset};
use nodus_net::proxy::transaction::{Transaction, Update};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ProxySettings;
use super::health::{self, ProxyHealth, ServiceChecks};
use super::mapping::{self, Mapped, Mapper};
use super::metrics::ProxyMetrics;
use super::stale::{self, Cleanup};
use super::warnings::{Skipped, Warnings};
use crate::backoff::Backoff;
use crate::node::runtime::error_chain;

/// How often a sync applies in full even when nothing changed (upstream nftables mode: 1 h).
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// Backoff after a failed sync.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// An error of one sync; the next sync is a full one.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("applying the ruleset")]
    Apply(#[source] ApplyError),
    #[error("the apply task did not finish")]
    Task(#[source] tokio::task::JoinError),
}

/// How one transaction was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub duration: Duration,
    pub via: &'static str,
}

/// An error applying a transaction; the next sync is a full one.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Nft(#[from] apply::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
}

/// The kernel side, behind a narrow trait so the loop can be tested with a recording double.
/// Calls block (they talk to the kernel or run processes) and are made from `spawn_blocking`.
pub trait Dataplane: Send + Sync + 'static {
    /// Applies one transaction atomically.
    fn apply(&self, tx: &Transaction<'_>) -> Result<Applied, ApplyError>;
    /// Deletes stale UDP conntrack entries; returns how many.
    fn clean(&self, cleanup: Cleanup) -> Result<u64, conntrack::Error>;
}

/// The real kernel: transactions straight through netlink; as text through `nft -f -` what the
/// netlink encoder does not cover, and a full replace that failed through netlink; `conntrack`
/// from `PATH`.
///
/// Why netlink: at 10k services nft 1.0.6 spends ~140 ms loading its cache before any update,
/// and a full replace as its text takes 0.74 s against 0.25 s as a batch of our own (see
/// `nodus_net::proxy::netlink` and `nodus_net::proxy::apply`).
#[derive(Debug)]
pub struct System {
    pub nft: Nft,
    /// `None` when no netfilter netlink socket could be opened: everything goes through nft.
    pub netlink: Option<Netlink>,
    pub conntrack: Conntrack,
}

impl Default for System {
    fn default() -> Self {
        System::new()
    }
}

impl System {
    pub fn new() -> Self {
        let netlink = Netlink::open()
            .inspect_err(|err| {
                warn!(error = %error_chain(err), "no netfilter netlink socket; every proxy sync goes through nft");
            })
            .ok();
        System {
            nft: Nft::new(),
            netlink,
            conntrack: Conntrack::default(),
        }
    }
}

impl Dataplane for System {
    fn apply(&self, tx: &Transaction<'_>) -> Result<Applied, ApplyError> {
        if let Some(netlink) = &self.netlink {
            match netlink.apply(tx) {
                Ok(duration) => {
                    return Ok(Applied {
                        duration,
                        via: "netlink",
                    });
                }
                Err(netlink::Error::Unsupported(what)) => {
                    debug!(
                        what,
                        "update not encodable for netlink; applying it with nft"
                    );
                }
                // A full replace through nft is right whatever the kernel holds now, and nft
                // text is the reference form: a fault of the encoder must not stall the proxy.
                Err(err) if tx.full => {
                    warn!(error = %error_chain(&err), "full replace through netlink failed; applying it with nft");
                }
                Err(err) => return Err(err.into()),
            }
        }
        let duration = self.nft.run(&tx.render())?;
        Ok(Applied {
            duration,
            via: "nft",
        })
    }

    fn clean(&self, cleanup: Cleanup) -> Result<u64, conntrack::Error> {
        match cleanup {
            Cleanup::ToService { ip, port } => self.conntrack.delete_udp_to(ip, port),
            Cleanup::ServiceNat { service, endpoint } => {
                self.conntrack.delete_udp_nat(service, endpoint)
            }
            Cleanup::ToNodePort { family_of, port } => {
                self.conntrack.delete_udp_node_port(family_of, port)
            }
            Cleanup::NodePortNat { port, endpoint } => {
                self.conntrack.delete_udp_node_port_nat(port, endpoint)
            }
        }
    }
}

/// When the next sync is due: debounced by `min`, bounded by `max`, delayed by backoff after a
/// failure. Pure: every method takes the time.
#[derive(Debug, Clone)]
pub struct Schedule {
    min: Duration,
    max: Duration,
    last_start: Option<Instant>,
    dirty: bool,
    retry_at: Option<Instant>,
}

impl Schedule {
    /// Starts dirty: the first sync is due as soon as the stores are ready.
    pub fn new(min: Duration, max: Duration) -> Self {
        Schedule {
            min,
            max: max.max(min),
            last_start: None,
            dirty: true,
            retry_at: None,
        }
    }

    /// Something in the stores changed.
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// When the next sync should start, given the time now.
    pub fn due(&self, now: Instant) -> Instant {
        let wanted = match (self.retry_at, self.last_start) {
            (Some(retry), _) => retry,
            (None, _) if self.dirty => now,
            (None, Some(last)) => last + self.max,
            (None, None) => now,
        };
        match self.last_start {
            Some(last) => wanted.max(last + self.min),
            None => wanted,
        }
    }

    /// A sync starts: what changed so far is in it.
    pub fn started(&mut self, now: Instant) {
        self.last_start = Some(now);
        self.dirty = false;
        self.retry_at = None;
    }

    /// The sync failed: try again after `delay`.
    pub fn failed(&mut self, now: Instant, delay: Duration) {
        self.retry_at = Some(now + delay);
    }
}

/// What one successful sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether a transaction ran (false: the kernel already held the desired ruleset).
    pub applied: bool,
    /// Whether it replaced the whole table (else it changed only what differed).
    pub full: bool,
    /// How the transaction reached the kernel ("netlink" or "nft").
    pub via: &'static str,
    pub services: usize,
    /// Rules in the desired ruleset.
    pub rules: usize,
    /// Operations in the transaction.
    pub operations: usize,
    pub apply_time: Duration,
    /// Services left out, each with its reason.
    pub skipped: Vec<Skipped>,
    /// Health checks of the Services in the ruleset.
    pub checks: ServiceChecks,
    /// Conntrack deletions attempted, and how many of them failed.
    pub cleanups: usize,
    pub cleanup_failures: usize,
}

/// The state between syncs: what was last applied, and whether the next sync must be full.
#[derive(Debug)]
pub struct Syncer<D> {
    dataplane: Arc<D>,
    /// Remembers each service's rules between syncs, so unchanged services cost nothing.
    builder: Builder,
    /// What the kernel holds, as far as we know: the ruleset of the last successful apply.
    applied: Option<Ruleset>,
    /// The state of the last successful sync (only Services that made it into the ruleset).
    synced: Option<ProxyState>,
    needs_full: bool,
    last_full: Option<Instant>,
}

impl<D: Dataplane> Syncer<D> {
    pub fn new(dataplane: Arc<D>) -> Self {
        Syncer {
            dataplane,
            builder: Builder::default(),
            applied: None,
            synced: None,
            needs_full: true,
            last_full: None,
        }
    }

    /// One sync of `mapped` at time `now`.
    pub async fn sync(&mut self, mapped: Mapped, now: Instant) -> Result<Report, SyncError> {
        let Mapped { mut state, invalid } = mapped;
        let build = self.builder.build(&state);
        let left_out: HashSet<String> = build
            .skipped
            .iter()
            .map(|e| Skipped::from(e.clone()).service().to_string())
            .collect();
        state.services.retain(|s| !left_out.contains(&s.id()));
        let mut skipped: Vec<Skipped> = invalid.into_iter().map(Skipped::from).collect();
        skipped.extend(build.skipped.into_iter().map(Skipped::from));

        let desired = build.ruleset;
        let periodic_full = self
            .last_full
            .is_none_or(|t| now.saturating_duration_since(t) >= FULL_SYNC_PERIOD);
        let force_full = self.needs_full || periodic_full;
        let mut report = Report {
            applied: false,
            full: false,
            via: "",
            services: state.services.len(),
            rules: desired.rule_count(),
            operations: 0,
            apply_time: Duration::ZERO,
            skipped,
            checks: health::service_checks(&state),
            cleanups: 0,
            cleanup_failures: 0,
        };
        // Until an apply succeeds the kernel may hold anything: a failure leaves `applied`
        // empty, which makes the next sync a full one.
        self.needs_full = true;
        let applied = self.applied.take();
        let dataplane = self.dataplane.clone();
        // The diff borrows both rulesets, so they go to the blocking thread and come back.
        let (outcome, applied, desired) = tokio::task::spawn_blocking(move || {
            let outcome = match applied.as_ref().filter(|_| !force_full) {
                Some(applied) => match Transaction::update(applied, &desired) {
                    Update::Unchanged => Ok(None),
                    Update::Apply(tx) => dataplane.apply(&tx).map(|a| Some((a, tx.len(), false))),
                    Update::NeedsFull => {
                        let tx = Transaction::full(&desired);
                        dataplane.apply(&tx).map(|a| Some((a, tx.len(), true)))
                    }
                },
                None => {
                    let tx = Transaction::full(&desired);
                    dataplane.apply(&tx).map(|a| Some((a, tx.len(), true)))
                }
            };
            (outcome, applied, desired)
        })
        .await
        .map_err(SyncError::Task)?;
        let done = outcome.map_err(SyncError::Apply)?;
        drop(applied);
        if let Some((how, operations, full)) = done {
            report.applied = true;
            report.full = full;
            report.via = how.via;
            report.operations = operations;
            report.apply_time = how.duration;
            if full {
                self.last_full = Some(now);
            }
        }
        self.needs_full = false;
        self.applied = Some(desired);

        // Stale flows are judged against the last successful sync even when nothing was
        // applied: an endpoint the ruleset never used (serving but not ready) can still have
        // flows from when it was ready.
        let empty = ProxyState {
            node: state.node.clone(),
            services: Vec::new(),
        };
        let cleanups = stale::stale_udp(self.synced.as_ref().unwrap_or(&empty), &state);
        self.synced = Some(state);
        report.cleanups = cleanups.len();
        report.cleanup_failures = self.clean(cleanups).await;
        Ok(report)
    }

    /// The next sync applies in full (e.g. after the loop saw an error elsewhere).
    pub fn force_full(&mut self) {
        self.needs_full = true;
    }

    /// Deletes stale conntrack entries; failures are logged, as upstream does, since the rules
    /// are already right and a retry would not help a missing tool.
    async fn clean(&self, cleanups: BTreeSet<Cleanup>) -> usize {
        if cleanups.is_empty() {
            return 0;
        }
        let dataplane = self.dataplane.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut failures = 0;
            for cleanup in cleanups {
                match dataplane.clean(cleanup) {
                    Ok(deleted) => debug!(?cleanup, deleted, "deleted stale UDP conntrack entries"),
                    Err(err) => {
                        failures += 1;
                        warn!(?cleanup, error = %error_chain(&err), "deleting stale UDP conntrack entries failed");
                    }
                }
            }
            failures
        })
        .await;
        done.unwrap_or_else(|err| {
            warn!(error = %err, "the conntrack cleanup task did not finish");
            1
        })
    }
}

/// Channels through which the loop publishes to the health servers.
#[derive(Debug)]
pub struct Published {
    pub health: watch::Sender<ProxyHealth>,
    pub checks: watch::Sender<ServiceChecks>,
    pub metrics: watch::Sender<ProxyMetrics>,
}

/// Which of the three watches have listed once.
#[derive(Debug, Default)]
struct Listed {
    services: bool,
    slices: bool,
    node: bool,
}

impl Listed {
    fn all(&self) -> bool {
        self.services && self.slices && self.node
    }
}

/// What a watch event means for the loop.
fn on_event<K>(event: &Result<Event<K>, watcher::Error>, watched: Watched) -> News {
    let news = |changed, listed| News {
        watched,
        changed,
        listed,
    };
    match event {
        Ok(Event::InitDone) => news(true, true),
        Ok(Event::Init) | Ok(Event::InitApply(_)) => news(false, false),
        Ok(Event::Apply(_)) | Ok(Event::Delete(_)) => news(true, false),
        Err(err) => {
            warn!(watch = watched.name(), error = %error_chain(err), "watch failed; retrying");
            news(false, false)
        }
    }
}

/// The watches the loop follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Services,
    Slices,
    Node,
}

impl Watched {
    fn name(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::Slices => "endpointslices",
            Watched::Node => "node",
        }
    }
}

/// What one watch event means to the loop (the store has it already).
#[derive(Debug, Clone, Copy)]
struct News {
    watched: Watched,
    /// The stores changed: a sync is due.
    changed: bool,
    /// The watch's first list is complete.
    listed: bool,
}

/// Polls one watch on a task of its own, which also writes its store, and tells the loop what
/// each event means. Why not poll it in the loop: decoding the first list of 10k Services and
/// 10k slices took turns on one core there, ~0.9 s of a cold start; here they decode side by
/// side.
fn spawn_watch<K>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    watched: Watched,
    news: mpsc::UnboundedSender<News>,
    cancel: CancellationToken,
) where
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                event = stream.next() => event,
            };
            let Some(event) = event else { break };
            if news.send(on_event(&event, watched)).is_err() {
                break;
            }
        }
    });
}

/// Drops what the proxy never reads from cached objects, to keep the stores small.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// Runs the loop until `cancel`.
pub async fn run<D: Dataplane>(
    client: Client,
    settings: ProxySettings,
    dataplane: Arc<D>,
    published: Published,
    cancel: CancellationToken,
) {
    // The watches stop with the loop, however it ends.
    let watches = cancel.child_token();
    let _stop_watches = watches.clone().drop_guard();
    let (news_tx, mut news) = mpsc::unbounded_channel();
    // As kube-proxy's informers list: from the API server's watch cache (resourceVersion 0)
    // in one response. kube's default is a quorum read in pages of 500, 20 sequential round
    // trips per 10k objects at a cold start.
    let selector = watcher::Config {
        page_size: None,
        ..watcher::Config::default()
            .labels(mapping::WATCH_LABEL_SELECTOR)
            .any_semantic()
    };
    let (service_store, writer) = reflector::store::<Service>();
    let services = watcher::watcher(Api::<Service>::all(client.clone()), selector.clone())
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    spawn_watch(
        services,
        Watched::Services,
        news_tx.clone(),
        watches.clone(),
    );
    let (slice_store, writer) = reflector::store::<EndpointSlice>();
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), selector)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    spawn_watch(slices, Watched::Slices, news_tx.clone(), watches.clone());
    let (node_store, writer) = reflector::store::<Node>();
    let node_selector =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.node_name));
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), node_selector)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    spawn_watch(nodes, Watched::Node, news_tx, watches);

    let stores = Stores {
        services: service_store,
        slices: slice_store,
        node: node_store,
    };
    let mut warnings = Warnings::start(client, &settings.node_name, cancel.child_token());
    let mut mapper = Mapper::default();
    let mut syncer = Syncer::new(dataplane);
    let mut schedule = Schedule::new(settings.min_sync_period, settings.sync_period);
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
    let mut listed = Listed::default();
    let mut failing = false;
    let mut first = true;

    loop {
        let due = listed.all().then(|| schedule.due(Instant::now()));
        let changed = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                schedule.started(now);
                let mapped = stores.mapped(&settings, &mut mapper);
                if let Some(node) = stores.node.state().first() {
                    let eligible = mapping::node_eligible(node);
                    published.health.send_if_modified(|h| {
                        let changed = h.node_eligible != eligible;
                        h.node_eligible = eligible;
                        changed
                    });
                }
                match syncer.sync(mapped, now).await {
                    Ok(report) => {
                        backoff.reset();
                        published.health.send_modify(|h| h.updated(SystemTime::now()));
                        published.checks.send_if_modified(|checks| {
                            let changed = *checks != report.checks;
                            if changed {
                                checks.clone_from(&report.checks);
                            }
                            changed
                        });
                        warnings.report(&report.skipped, &stores.services.state());
                        let took = now.elapsed();
                        published
                            .metrics
                            .send_modify(|m| m.synced(&report, took, SystemTime::now()));
                        log_report(&report, took, first || failing);
                        first = false;
                        failing = false;
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        schedule.failed(Instant::now(), delay);
                        syncer.force_full();
                        published.health.send_modify(|h| h.queued(now));
                        published.metrics.send_modify(|m| m.failed());
                        warn!(error = %error_chain(&err), retry_in = ?delay, "proxy sync failed");
                        failing = true;
                    }
                }
                false
            }
            Some(news) = news.recv() => {
                if news.listed {
                    match news.watched {
                        Watched::Services => listed.services = true,
                        Watched::Slices => listed.slices = true,
                        Watched::Node => listed.node = true,
                    }
                }
                news.changed
            }
        };
        if changed {
            schedule.changed();
            published.health.send_modify(|h| h.queued(Instant::now()));
            published
                .metrics
                .send_modify(|m| m.queued(SystemTime::now()));
        }
    }
}

/// The reflector stores the loop reads at each sync.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    node: Store<Node>,
}

impl Stores {
    /// The model of the stores' current contents. Interface addresses are read here (the only
    /// I/O of the build), and only when `--nodeport-addresses` names CIDRs.
    fn mapped(&self, settings: &ProxySettings, mapper: &mut Mapper) -> Mapped {
        let node = self.node.state().into_iter().next();
        let node_ips = if settings.node_ips.is_empty() {
            node.as_deref().map(mapping::node_ips).unwrap_or_default()
        } else {
            settings.node_ips.clone()
        };
        let local = if settings.nodeport_addresses.is_empty() {
            Vec::new()
        } else {
            local_addresses()
        };
        let node_model = mapping::node_model(
            &node_ips,
            &settings.nodeport_addresses,
            &local,
            &settings.cluster_cidrs,
        );
        mapper.map(
            &self.services.state(),
            &self.slices.state(),
            &settings.node_name,
            node_model,
        )
    }
}

/// Every address of every interface; a failure to list means none (NodePorts on the listed CIDRs
/// stop until the next sync), logged.
fn local_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let address = a.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect(),
        Err(err) => {
            warn!(error = %err, "listing interface addresses for --nodeport-addresses failed");
            Vec::new()
        }
    }
}

fn log_report(report: &Report, took: Duration, notable: bool) {
    if notable {
        info!(
            services = report.services,
            rules = report.rules,
            via = report.via,
            skipped = report.skipped.len(),
            apply_time = ?report.apply_time,
            took = ?took,
            "proxy rules in sync"
        );
    } else {
        debug!(
            applied = report.applied,
            full = report.full,
            services = report.services,
            rules = report.rules,
            operations = report.operations,
            via = report.via,
            skipped = report.skipped.len(),
            cleanups = report.cleanups,
            apply_time = ?report.apply_time,
            took = ?took,
            "proxy sync"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodus_net::proxy::model::{self, Endpoint, Protocol, SessionAffinity, TrafficPolicy};
    use std::sync::Mutex;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn the_schedule_debounces_bounds_and_backs_off() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut schedule = Schedule::new(MIN, MAX);
        assert_eq!(schedule.due(t0), t0, "the first sync is due at once");
        schedule.started(t0);
        assert_eq!(schedule.due(t0), s(60), "quiet: the periodic re-sync");
        schedule.changed();
        assert_eq!(
            schedule.due(t0 + Duration::from_millis(200)),
            s(1),
            "a change right after a sync waits for the minimum interval"
        );
        schedule.changed();
        assert_eq!(schedule.due(s(1)), s(1), "changes collapse into one sync");
        assert_eq!(
            schedule.due(s(5)),
            s(5),
            "a change long after a sync runs at once"
        );
        schedule.started(s(5));
        schedule.failed(s(6), Duration::from_secs(4));
        schedule.changed();
        assert_eq!(
            schedule.due(s(6)),
            s(10),
            "a change does not cut a backoff short"
        );
        schedule.started(s(10));
        assert_eq!(schedule.due(s(10)), s(70), "success ends the backoff");
        schedule.failed(s(10), Duration::from_millis(100));
        assert_eq!(
            schedule.due(s(10)),
            s(11),
            "backoff never beats the minimum interval"
        );
    }

    /// Records what the loop asks of the kernel; fails applies while `fail` is set.
    #[derive(Debug, Default)]
    struct Recording {
        applied: Mutex<Vec<String>>,
        cleaned: Mutex<Vec<Cleanup>>,
        fail: Mutex<bool>,
    }

    impl Recording {
        fn applies(&self) -> usize {
            self.applied.lock().expect("test lock").len()
        }
    }

    impl Dataplane for Recording {
        fn apply(&self, tx: &Transaction<'_>) -> Result<Applied, ApplyError> {
            if *self.fail.lock().expect("test lock") {
                return Err(ApplyError::Nft(apply::Error::Spawn {
                    program: "nft".into(),
                    source: std::io::Error::other("test failure"),
                }));
            }
            self.applied.lock().expect("test lock").push(tx.render());
            Ok(Applied {
                duration: Duration::from_millis(1),
                via: "test",
            })
        }

        fn clean(&self, cleanup: Cleanup) -> Result<u64, conntrack::Error> {
            self.cleaned.lock().expect("test lock").push(cleanup);
            Ok(1)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn service(name: &str, cluster_ip: &str, protocol: Protocol, eps: &[&str]) -> model::Service {
        model::Service {
            namespace: "ns".into(),
            name: name.into(),
            cluster_ips: vec![ip(cluster_ip)],
            external_ips: vec![],
            load_balancer_ips: vec![],
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            ports: vec![model::ServicePort {
                name: String::new(),
                protocol,
                port: 53,
                node_port: None,
                endpoints: eps
                    .iter()
                    .map(|e| Endpoint::ready(ip(e), 5353, false))
                    .collect(),
            }],
        }
    }

    fn mapped(services: Vec<model::Service>) -> Mapped {
        Mapped {
            state: ProxyState {
                node: model::Node {
                    node_port_addresses: model::NodePortAddresses::AllLocal,
                    cluster_cidrs: vec![],
                },
                services: services.into_iter().map(Arc::new).collect(),
            },
            invalid: vec![],
        }
    }

    #[tokio::test]
    async fn unchanged_rules_are_not_applied_and_failures_force_a_full_apply() {
        let recording = Arc::new(Recording::default());
        let mut syncer = Syncer::new(recording.clone());
        let t0 = Instant::now();
        let one = || {
            mapped(vec![service(
                "dns",
                "10.96.0.10",
                Protocol::Tcp,
                &["10.244.0.5"],
            )])
        };

        let first = syncer.sync(one(), t0).await.expect("first sync");
        assert!(first.applied && first.full, "{first:?}");
        assert_eq!(recording.applies(), 1);
        assert!(
            recording.applied.lock().expect("test lock")[0].contains("10.96.0.10"),
            "the rendered ruleset was applied"
        );

        let same = syncer.sync(one(), t0 + MIN).await.expect("same state");
        assert!(!same.applied, "{same:?}");
        assert_eq!(
            recording.applies(),
            1,
            "identical text is not applied again"
        );

        let two = mapped(vec![service(
            "dns",
            "10.96.0.10",
            Protocol::Tcp,
            &["10.244.0.5", "10.244.0.6"],
        )]);
        let changed = syncer
            .sync(two.clone(), t0 + 2 * MIN)
            .await
            .expect("change");
        assert!(changed.applied && !changed.full, "{changed:?}");
        assert_eq!(recording.applies(), 2);
        let update = recording.applied.lock().expect("test lock")[1].clone();
        assert!(
            !update.contains("delete table") && update.contains("10.244.0.6"),
            "a change is applied in place, not as a new table: {update}"
        );

        *recording.fail.lock().expect("test lock") = true;
        let err = syncer.sync(one(), t0 + 3 * MIN).await;
        assert!(matches!(err, Err(SyncError::Apply(_))), "{err:?}");
        *recording.fail.lock().expect("test lock") = false;
        // The same text as the last successful apply still goes out in full after a failure:
        // the kernel may hold anything now.
        let retry = syncer.sync(two, t0 + 4 * MIN).await.expect("retry");
        assert!(retry.applied && retry.full, "{retry:?}");
        assert_eq!(recording.applies(), 3);

        let hour_later = syncer
            .sync(one(), t0 + FULL_SYNC_PERIOD + 5 * MIN)
            .await
            .expect("an hour later");
        assert!(hour_later.full, "a periodic full apply repairs drift");
    }

    #[tokio::test]
    async fn an_invalid_service_is_skipped_and_the_others_are_applied() {
        let recording = Arc::new(Recording::default());
        let mut syncer = Syncer::new(recording.clone());
        let mut bad = service("bad", "10.96.0.11", Protocol::Tcp, &["10.244.0.7"]);
        bad.ports[0].port = 0;
        // Claims the same address and port as `dns`, which sorts first and keeps it.
        let thief = service("zz-thief", "10.96.0.10", Protocol::Tcp, &["10.244.0.8"]);
        let good = service("dns", "10.96.0.10", Protocol::Tcp, &["10.244.0.5"]);
        let mut input = mapped(vec![bad, good, thief]);
        input
            .invalid
            .push(mapping::MappingError::UnsupportedProtocol {
                service: mapping::ServiceKey {
                    namespace: "ns".into(),
                    name: "quic".into(),
                },
                port: "q".into(),
                protocol: "QUIC".into(),
            });
        let report = syncer.sync(input, Instant::now()).await.expect("sync");
        let mut skipped: Vec<String> = report
            .skipped
            .iter()
            .map(|s| s.service().to_string())
            .collect();
        skipped.sort();
        assert_eq!(skipped, vec!["ns/bad", "ns/quic", "ns/zz-thief"]);
        assert_eq!(report.services, 1);
        let text = recording.applied.lock().expect("test lock")[0].clone();
        assert!(
            text.contains("10.244.0.5"),
            "the valid service is programmed"
        );
        assert!(!text.contains("10.244.0.7") && !text.contains("10.244.0.8"));
    }

    #[tokio::test]
    async fn udp_endpoint_changes_clean_conntrack() {
        let recording = Arc::new(Recording::default());
        let mut syncer = Syncer::new(recording.clone());
        let t0 = Instant::now();
        let udp = |eps: &[&str]| mapped(vec![service("dns", "10.96.0.10", Protocol::Udp, eps)]);
        let cleaned = |r: &Recording| std::mem::take(&mut *r.cleaned.lock().expect("test lock"));

        syncer.sync(udp(&[]), t0).await.expect("no endpoints");
        assert_eq!(cleaned(&recording), vec![]);
        syncer
            .sync(udp(&["10.244.0.5", "10.244.0.6"]), t0 + MIN)
            .await
            .expect("first");
        assert_eq!(
            cleaned(&recording),
            vec![Cleanup::ToService {
                ip: ip("10.96.0.10"),
                port: 53
            }]
        );
        syncer
            .sync(udp(&["10.244.0.5"]), t0 + 2 * MIN)
            .await
            .expect("one gone");
        assert_eq!(
            cleaned(&recording),
            vec![Cleanup::ServiceNat {
                service: ip("10.96.0.10"),
                endpoint: ip("10.244.0.6")
            }]
        );
    }
}
