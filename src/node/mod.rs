//! `secretfs node`: the node agent, a CSI node plugin serving the pods of one node from one
//! process: the plugin's gRPC surface on a root-only unix socket (`plugin`), each request
//! checked whole (`publish`), and the volumes and identities it serves (`agent`): a FUSE mount
//! per volume, one cache and one long-poll per identity.

mod agent;
pub mod csi;
pub mod metrics;
mod plugin;
pub mod provider;
mod provider_proto;
pub mod publish;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use agent::Agent;
pub use plugin::{DRIVER_NAME, Plugin};

/// Why the agent cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "cannot use {path} as the CSI socket: {cause}; give --csi-socket a path in a directory \
         root owns (the kubelet's plugins directory, /var/lib/kubelet/plugins/<driver>/csi.sock)"
    )]
    Socket {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the CSI socket {path} is served by another process (a running agent); stop it first")]
    InUse { path: PathBuf },
    #[error("the gRPC server stopped: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds the plugin's socket: a stale socket a killed agent left is replaced, a live one (another
/// agent answers on it) refused, anything else at the path left alone and refused; the socket is then made root-only (0600) before anything is
/// served, so no other user of the node can call the plugin.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, NodeError> {
    let socket_error = |cause| NodeError::Socket {
        path: path.to_owned(),
        cause,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ever removed: a path naming anything else (a typo, a file the
        // agent must not touch as root) is refused as it is.
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(socket_error(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(NodeError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(socket_error)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(socket_error)?;
    }
    // Bound under a umask that leaves it root-only from the first moment, then set exactly.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(socket_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_error)?;
    listener.set_nonblocking(true).map_err(socket_error)?;
    tokio::net::UnixListener::from_std(listener).map_err(socket_error)
}

/// Serves the plugin on `listener` (and, with `provider`, the Secrets Store CSI driver's
/// provider on its socket) until `shutdown` completes; the socket files are removed then.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    plugin: Plugin,
    provider: Option<(tokio::net::UnixListener, PathBuf, provider::Provider)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let csi = tonic::transport::Server::builder()
        .add_service(csi::identity_server::IdentityServer::new(plugin.clone()))
        .add_service(csi::node_server::NodeServer::new(plugin))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            until(stopped.clone()),
        );
    let providers = async {
        match provider {
            Some((listener, path, p)) => {
                let served = tonic::transport::Server::builder()
                    .add_service(
                        provider_proto::csi_driver_provider_server::CsiDriverProviderServer::new(p),
                    )
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        until(stopped.clone()),
                    )
                    .await;
                let _ = std::fs::remove_file(&path);
                served
            }
            None => Ok(()),
        }
    };
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (served, provided, ()) = tokio::join!(csi, providers, signal);
    let _ = std::fs::remove_file(&path);
    served?;
    Ok(provided?)
}
