//! The CSI services the agent answers.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::agent::Agent;
use super::csi::identity_server::Identity;
use super::csi::node_server::Node;
use super::{csi, publish};

/// The driver's name: what a `CSIDriver` object and a pod's `csi:` volume name.
pub const DRIVER_NAME: &str = "secrets.secretfs.dev";

/// The plugin: this node's id, answered to the kubelet; where volumes may be published; the
/// audience of the pod tokens it takes; the volumes it serves.
#[derive(Clone)]
pub struct Plugin {
    node_id: String,
    kubelet_dir: PathBuf,
    audience: String,
    agent: Arc<Agent>,
}

impl Plugin {
    pub fn new(
        node_id: String,
        kubelet_dir: PathBuf,
        audience: String,
        agent: Arc<Agent>,
    ) -> Plugin {
        Plugin {
            node_id,
            kubelet_dir,
            audience,
            agent,
        }
    }
}

#[tonic::async_trait]
impl Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    /// A node plugin only: no controller service, no volume topology.
    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Node for Plugin {
    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    /// Ephemeral inline volumes need no staging: no capability is claimed.
    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    /// The request is checked whole first (what `kubectl describe pod` shows when it is
    /// wrong), then published: the pod's token exchanged, the volume mounted or, republished,
    /// brought up to date.
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        match publish::check(
            &r.volume_id,
            &r.target_path,
            &r.volume_context,
            &self.kubelet_dir,
            &self.audience,
        ) {
            Err(problems) => Err(Status::invalid_argument(problems.join("; "))),
            Ok(p) => {
                let started = std::time::Instant::now();
                let published = self.agent.publish(p).await;
                let m = self.agent.metrics();
                m.publishes
                    .get_or_create(&super::metrics::code_of(&published))
                    .inc();
                m.publish_seconds.observe(started.elapsed().as_secs_f64());
                published?;
                Ok(Response::new(csi::NodePublishVolumeResponse {}))
            }
        }
    }

    /// Unmounts and wipes; the spec's answer for a volume the plugin does not hold is OK
    /// (unpublish is idempotent).
    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        let target = publish::target_under(&r.target_path, &self.kubelet_dir)
            .map_err(Status::invalid_argument)?;
        self.agent.unpublish(&r.volume_id, &target).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no staging: the plugin claims no STAGE_UNSTAGE_VOLUME",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no staging: the plugin claims no STAGE_UNSTAGE_VOLUME",
        ))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented(
            "no volume stats: the plugin claims no GET_VOLUME_STATS",
        ))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("secret volumes do not expand"))
    }
}
