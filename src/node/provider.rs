//! The Secrets Store CSI driver's provider (`CSIDriverProvider` on `<providers dir>/secretfs.sock`),
//! for clusters that already run that driver: the driver hands each `Mount` the
//! SecretProviderClass's parameters (the same keys as a volume's attributes), the pod's info and
//! its token; the answer is the files, which the driver writes into a tmpfs of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::agent::Agent;
use super::provider_proto as v1alpha1;
use super::publish;
use v1alpha1::csi_driver_provider_server::CsiDriverProvider;

/// The provider's name: a SecretProviderClass's `spec.provider`, and its socket's file name.
pub const PROVIDER_NAME: &str = "secretfs";

/// The driver's default limit on a provider's answer (`--max-call-recv-msg-size`, 4 MiB).
pub const DRIVER_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// The driver's file rules (`pkg/util/fileutil`): a path at most this long, each name at most
/// `NAME_MAX`.
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;

#[derive(Clone)]
pub struct Provider {
    kubelet_dir: PathBuf,
    audience: String,
    agent: Arc<Agent>,
}

impl Provider {
    pub fn new(kubelet_dir: PathBuf, audience: String, agent: Arc<Agent>) -> Provider {
        Provider {
            kubelet_dir,
            audience,
            agent,
        }
    }
}

/// Whether the driver takes `path` as a file of the mount: relative, clean, no `..`, within its
/// lengths (the driver refuses the whole answer otherwise).
pub fn driver_path_ok(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= PATH_MAX
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= NAME_MAX)
        && !path.starts_with("..")
}

#[tonic::async_trait]
impl CsiDriverProvider for Provider {
    async fn version(
        &self,
        _: Request<v1alpha1::VersionRequest>,
    ) -> Result<Response<v1alpha1::VersionResponse>, Status> {
        Ok(Response::new(v1alpha1::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: PROVIDER_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn mount(
        &self,
        request: Request<v1alpha1::MountRequest>,
    ) -> Result<Response<v1alpha1::MountResponse>, Status> {
        let r = request.into_inner();
        // The parameters, the pod's info and tokens: a JSON object of strings. The error never
        // quotes it (the pod's token is in it).
        let mut attributes: HashMap<String, String> =
            serde_json::from_str(&r.attributes).map_err(|_| {
                Status::invalid_argument(
                    "the driver's attributes are not a JSON object of strings (the \
                     SecretProviderClass's parameters must all be strings)",
                )
            })?;
        // The driver's own permission (a JSON number, 420 = 0644) when the class names no
        // mode: its read bits only, as a mount's files have.
        if !attributes.contains_key("mode")
            && let Ok(permission) = r.permission.trim().parse::<u32>()
        {
            attributes.insert("mode".into(), format!("{:o}", permission & 0o444));
        }
        let p = publish::check(
            &r.target_path,
            &r.target_path,
            &attributes,
            &self.kubelet_dir,
            &self.audience,
        )
        .map_err(|problems| Status::invalid_argument(problems.join("; ")))?;
        let target = p.target.clone();
        let current: Vec<(String, String)> = r
            .current_object_version
            .into_iter()
            .map(|o| (o.id, o.version))
            .collect();
        let provided = self.agent.provide(p, &current).await;
        self.agent
            .metrics()
            .provider_mounts
            .get_or_create(&super::metrics::code_of(&provided))
            .inc();
        let provided = provided?;
        let total: usize = provided
            .files
            .iter()
            .map(|f| f.contents.len() + f.name.len() + 16)
            .sum();
        if total > DRIVER_MESSAGE_LIMIT - 64 * 1024 {
            return Err(Status::resource_exhausted(format!(
                "the volume's files total {total} bytes, over what the Secrets Store CSI driver \
                 takes by default (4 MiB, its --max-call-recv-msg-size): split the \
                 SecretProviderClass, or use the secretfs CSI driver (no such limit)"
            )));
        }
        if let Some(bad) = provided.files.iter().find(|f| !driver_path_ok(&f.name)) {
            return Err(Status::internal(format!(
                "the file name {:?} breaks the driver's path rules",
                bad.name
            )));
        }
        tracing::info!(
            target = %target.display(),
            files = provided.files.len(),
            unchanged = provided.unchanged,
            "Secrets Store CSI driver mount answered"
        );
        Ok(Response::new(v1alpha1::MountResponse {
            object_version: provided
                .versions
                .into_iter()
                .map(|(id, version)| v1alpha1::ObjectVersion { id, version })
                .collect(),
            error: None,
            files: provided
                .files
                .into_iter()
                .map(|f| v1alpha1::File {
                    path: f.name.clone(),
                    mode: i32::from(f.mode),
                    // The gRPC answer owns its bytes; the snapshot's copy is wiped as it drops.
                    contents: f.contents.to_vec(),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drivers_path_rules() {
        for ok in ["HF_TOKEN", "hf.json", "a/b", "..a"] {
            assert_eq!(driver_path_ok(ok), ok != "..a", "{ok}");
        }
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            &"x".repeat(256),
        ] {
            assert!(!driver_path_ok(bad), "{bad}");
        }
    }
}
