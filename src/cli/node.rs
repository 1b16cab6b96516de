//! `secretfs node`: the node agent (`crate::node`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The CSI socket the kubelet calls (root-only; the node-driver-registrar's
    /// --kubelet-registration-path names the same file).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/kubelet/plugins/secrets.secretfs.dev/csi.sock"
    )]
    pub csi_socket: PathBuf,
    /// This node's id, as the kubelet knows it (default: the host name).
    #[arg(
        long,
        value_name = "ID",
        env = "SECRETFS_NODE_ID",
        hide_env_values = true
    )]
    pub node_id: Option<String>,
}

pub fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let node_id = match args.node_id {
        Some(id) => id,
        None => nix::unistd::gethostname()?
            .into_string()
            .map_err(|_| anyhow::anyhow!("the host name is not UTF-8; give --node-id"))?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = crate::node::bind(&args.csi_socket)?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "secretfs: node agent {} serving CSI on {} as node {node_id}",
            crate::node::DRIVER_NAME,
            args.csi_socket.display()
        );
        let _ = out.flush();
        drop(out);
        crate::node::serve(
            listener,
            args.csi_socket.clone(),
            crate::node::Plugin::new(node_id),
            shutdown(),
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM (a DaemonSet's rollout) or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
