//! Prometheus metrics: the server's figures (kept by the service and the API), the build's, and
//! a small listener that serves them on a `--metrics-listen` address of their own.
//!
//! Labels are fixed sets (a route template, a method, a status, a result, a store operation):
//! never a secret's name, a user's, a value or a token, so a scrape tells an operator how the
//! server is doing and nothing about what it holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The OpenMetrics text format, which Prometheus asks for first and whose samples the
/// Prometheus text parsers read as well.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels are `&'static str`: a request's labels are looked up without allocating.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's template (`/api/v1/workspaces/{ws}/secrets/{name}`), or `unmatched`.
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

/// The route templates seen, each stored once for the life of the process: there are as many
/// as the router has routes, so the set is bounded.
fn intern(route: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(r) = routes.read().unwrap_or_else(|e| e.into_inner()).get(route) {
        return r;
    }
    let mut w = routes.write().unwrap_or_else(|e| e.into_inner());
    match w.get(route) {
        Some(r) => r,
        None => {
            let r: &'static str = Box::leak(route.to_owned().into_boxed_str());
            w.insert(r);
            r
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The server's figures. Cheap to update (atomics, and a map lookup per labelled family).
pub struct ServerMetrics {
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<RouteLabel>,
    workload_secrets: Family<ResultLabel, Counter>,
    long_polls: Gauge,
    store_seconds: Histograms<OperationLabel>,
    store_errors: Family<OperationLabel, Counter>,
    audit_batch: Histogram,
    audit_lag: Histogram,
    fanout_seconds: Histogram,
    replica_lag: Histogram,
    auth_failures: Family<ReasonLabel, Counter>,
    audit_coalesced: Counter,
    audit_pruned: Counter,
    /// When the last change was committed here (or announced by another replica): what a
    /// long-poll's answer is measured from.
    last_change: Mutex<Option<Instant>>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            workload_secrets: Family::default(),
            long_polls: Gauge::default(),
            store_seconds: Family::new_with_constructor(latency),
            store_errors: Family::default(),
            audit_batch: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            audit_lag: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            fanout_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            replica_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            auth_failures: Family::default(),
            audit_coalesced: Counter::default(),
            audit_pruned: Counter::default(),
            last_change: Mutex::new(None),
        }
    }
}

impl ServerMetrics {
    pub fn registry(&self) -> Registry {
        let mut root = Registry::default();
        register_build_info(&mut root);
        let r = root.sub_registry_with_prefix("secretfs");
        r.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template (a long-poll's hold included)",
            self.request_seconds.clone(),
        );
        r.register(
            "workload_secrets",
            "Secrets answered to workload reads: served (value sent), held (the reader's copy is \
             current), listed (no value asked for), missing (not found or not readable)",
            self.workload_secrets.clone(),
        );
        r.register(
            "long_polls_held",
            "Workload long-polls waiting for a change",
            self.long_polls.clone(),
        );
        r.register(
            "store_operation_duration_seconds",
            "Time the store took, by operation",
            self.store_seconds.clone(),
        );
        r.register(
            "store_errors",
            "Store operations that failed, by operation",
            self.store_errors.clone(),
        );
        r.register(
            "audit_read_batch_records",
            "Workload-read audit records written together",
            self.audit_batch.clone(),
        );
        r.register(
            "audit_read_lag_seconds",
            "From the first record of a batch being queued to the batch being written",
            self.audit_lag.clone(),
        );
        r.register(
            "change_fanout_seconds",
            "From a change being committed (or announced by a replica) to a long-poll answering it",
            self.fanout_seconds.clone(),
        );
        r.register(
            "replica_notification_lag_seconds",
            "From another replica's commit to this one hearing of it (both clocks)",
            self.replica_lag.clone(),
        );
        r.register(
            "auth_failures",
            "Requests refused for their credentials: no token, or a token not valid now",
            self.auth_failures.clone(),
        );
        r.register(
            "audit_events_coalesced",
            "Repeated events (reads, refusals) counted into a coalesced audit record instead of \
             written as their own",
            self.audit_coalesced.clone(),
        );
        r.register(
            "audit_records_pruned",
            "Audit records of repeated events deleted past their workspace's retention",
            self.audit_pruned.clone(),
        );
        root
    }

    /// `route` is a route template (from the router), never a request's path.
    pub fn request(&self, route: &str, method: &'static str, status: u16, took: Duration) {
        let route = intern(route);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    pub fn workload_secrets(&self, result: &'static str, n: usize) {
        if n > 0 {
            self.workload_secrets
                .get_or_create(&ResultLabel { result })
                .inc_by(n as u64);
        }
    }

    /// Counts a held long-poll until the returned guard is dropped.
    pub fn long_poll(&self) -> LongPoll<'_> {
        self.long_polls.inc();
        LongPoll(&self.long_polls)
    }

    /// Times one store operation and counts it if it failed.
    pub async fn store<T, E>(
        &self,
        operation: &'static str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = f.await;
        self.store_seconds
            .get_or_create(&OperationLabel { operation })
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.store_errors
                .get_or_create(&OperationLabel { operation })
                .inc();
        }
        result
    }

    pub fn audit_batch(&self, records: usize, queued_for: Duration) {
        self.audit_batch.observe(records as f64);
        self.audit_lag.observe(queued_for.as_secs_f64());
    }

    pub fn changed(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// A long-poll answers a change: how long after the change it does.
    pub fn answered_change(&self) {
        if let Some(at) = *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) {
            self.fanout_seconds.observe(at.elapsed().as_secs_f64());
        }
    }

    pub fn replica_lag(&self, lag: Duration) {
        self.replica_lag.observe(lag.as_secs_f64());
    }

    pub fn audit_coalesced(&self, events: usize) {
        self.audit_coalesced.inc_by(events as u64);
    }

    pub fn audit_pruned(&self, records: u64) {
        self.audit_pruned.inc_by(records);
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

pub struct LongPoll<'a>(&'a Gauge);

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `secretfs_build_info{version}`.
pub fn register_build_info(r: &mut Registry) {
    r.register(
        "secretfs_build",
        "The secretfs build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
}

/// The registry in the text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Serves `GET /metrics` (and nothing else) on `addr` until the runtime ends: a listener apart
/// from the API, so scraping needs no token and can be kept on an internal address.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
) -> std::io::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(&registry)) }
        }),
    );
    axum::serve(listener, app).await
}
