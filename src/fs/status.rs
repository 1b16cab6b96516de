//! What a running mount reports about itself: the status line the service manager shows
//! (`STATUS=` of sd_notify) and the figures of its opt-in `/metrics`. Both are written from the
//! refresh rounds and hold counts, times and error texts, never a secret's name or value.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::notify::Notifier;

pub struct MountStatus {
    dir: String,
    notifier: Option<Notifier>,
    /// Only with `--metrics-listen`: a mount without it runs none of the metrics code.
    metrics: Option<MountMetrics>,
    secrets: AtomicU64,
    /// The outage being reported, if the last round failed.
    outage: Mutex<Option<String>>,
}

struct MountMetrics {
    secrets: Gauge,
    rounds: Counter,
    failures: Counter,
    last_success: Gauge<f64, AtomicU64>,
    source_latency: Histogram,
}

impl MountStatus {
    pub fn new(dir: &std::path::Path, notifier: Option<Notifier>, metrics: bool) -> Self {
        MountStatus {
            dir: dir.display().to_string(),
            notifier,
            metrics: metrics.then(|| MountMetrics {
                secrets: Gauge::default(),
                rounds: Counter::default(),
                failures: Counter::default(),
                last_success: Gauge::default(),
                // 1 ms to about 4 s.
                source_latency: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            }),
            secrets: AtomicU64::new(0),
            outage: Mutex::new(None),
        }
    }

    /// The metrics, under the `secretfs_mount_` prefix, with the build's; `None` without
    /// `--metrics-listen`.
    pub fn registry(&self) -> Option<Registry> {
        let m = self.metrics.as_ref()?;
        let mut root = Registry::default();
        crate::metrics::register_build_info(&mut root);
        let r = root.sub_registry_with_prefix("secretfs_mount");
        r.register("secrets", "Secrets the mount serves", m.secrets.clone());
        r.register(
            "refresh_rounds",
            "Rounds that brought the mount in step with its source",
            m.rounds.clone(),
        );
        r.register(
            "refresh_failures",
            "Rounds that failed (the last known good values stay served)",
            m.failures.clone(),
        );
        r.register(
            "last_refresh_success_timestamp_seconds",
            "When a round last succeeded, in seconds since the epoch",
            m.last_success.clone(),
        );
        r.register(
            "source_latency_seconds",
            "How long the source took to answer a round that did not wait for a change",
            m.source_latency.clone(),
        );
        Some(root)
    }

    /// The first load: the mount is live with every secret loaded.
    pub fn ready(&self, secrets: usize, source: &str, latency: Duration) {
        self.succeeded(secrets, Some(latency));
        if let Some(n) = &self.notifier {
            n.ready(&format!(
                "{secrets} secret{} mounted at {} from {source}",
                plural(secrets),
                self.dir
            ));
        }
    }

    /// A round succeeded; `latency` is the source's answer time when the round did not wait.
    pub fn round(&self, secrets: usize, latency: Option<Duration>) {
        self.succeeded(secrets, latency);
        let recovered = self
            .outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some();
        if let Some(n) = &self.notifier {
            n.status(&format!(
                "{secrets} secret{} at {}; last refresh {}{}",
                plural(secrets),
                self.dir,
                humantime::format_rfc3339_seconds(SystemTime::now()),
                if recovered {
                    " (source reachable again)"
                } else {
                    ""
                }
            ));
        }
    }

    /// A round failed: the tree keeps its last known good values. Said once per cause.
    pub fn failed(&self, error: &str) {
        if let Some(m) = &self.metrics {
            m.failures.inc();
        }
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        if outage.as_deref() == Some(error) {
            return;
        }
        *outage = Some(error.to_owned());
        if let Some(n) = &self.notifier {
            let secrets = self.secrets.load(Ordering::Relaxed) as usize;
            n.status(&format!(
                "{secrets} secret{} at {} (last known good values); source failing since {}: {error}",
                plural(secrets),
                self.dir,
                humantime::format_rfc3339_seconds(SystemTime::now()),
            ));
        }
    }

    pub fn stopping(&self) {
        if let Some(n) = &self.notifier {
            n.stopping();
        }
    }

    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.as_ref()
    }

    fn succeeded(&self, secrets: usize, latency: Option<Duration>) {
        self.secrets.store(secrets as u64, Ordering::Relaxed);
        let Some(m) = &self.metrics else {
            return;
        };
        if let Some(l) = latency {
            m.source_latency.observe(l.as_secs_f64());
        }
        m.rounds.inc();
        m.secrets.set(secrets as i64);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        m.last_success.set(now.as_secs_f64());
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
