//! The agent's `/metrics` (`--metrics-listen`), under `secretfs_node_`: what a node's operator
//! watches (volumes and identities held, publish outcomes and latency, driver mounts).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The gRPC code answered (`OK`, `PermissionDenied`, ...).
    pub code: String,
}

/// The agent's metrics.
#[derive(Clone)]
pub struct NodeMetrics {
    pub volumes: Gauge,
    pub identities: Gauge,
    pub publishes: Family<Outcome, Counter>,
    pub publish_seconds: Histogram,
    pub provider_mounts: Family<Outcome, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            volumes: Gauge::default(),
            identities: Gauge::default(),
            publishes: Family::default(),
            // 1 ms to about 8 s.
            publish_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            provider_mounts: Family::default(),
        }
    }
}

impl NodeMetrics {
    pub fn registry(&self) -> Registry {
        let mut root = Registry::default();
        crate::metrics::register_build_info(&mut root);
        let r = root.sub_registry_with_prefix("secretfs_node");
        r.register(
            "volumes",
            "CSI volumes the agent serves",
            self.volumes.clone(),
        );
        r.register(
            "identities",
            "Identities whose cache and long-poll the agent holds (one each, whatever the number of pods)",
            self.identities.clone(),
        );
        r.register(
            "publishes",
            "NodePublishVolume calls answered, by gRPC code",
            self.publishes.clone(),
        );
        r.register(
            "publish_seconds",
            "Time to answer a NodePublishVolume (a first publish: exchange, first read, mount)",
            self.publish_seconds.clone(),
        );
        r.register(
            "provider_mounts",
            "Secrets Store CSI driver Mount calls answered, by gRPC code",
            self.provider_mounts.clone(),
        );
        root
    }
}

/// The gRPC code's name as a label.
pub fn code_of<T>(result: &Result<T, tonic::Status>) -> Outcome {
    Outcome {
        code: match result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        },
    }
}
