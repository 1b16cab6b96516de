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
    /// The secretfs server the pods' tokens are exchanged at.
    #[arg(long, value_name = "URL", env = "SECRETFS_URL")]
    pub url: String,
    /// A PEM file of CA certificates to trust for the server (a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Also serve the Secrets Store CSI driver's provider, on DIR/secretfs.sock (the driver's
    /// --provider-volume, usually /var/run/secrets-store-csi-providers).
    #[arg(long, value_name = "DIR")]
    pub providers_dir: Option<PathBuf>,
    /// Serve /metrics on this address (e.g. 127.0.0.1:9402); not served by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The audience of the pod tokens the kubelet hands over (the CSIDriver's
    /// spec.tokenRequests; default: the server URL).
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
    /// The kubelet's directory: volumes are published under it and nowhere else.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Where the agent keeps the list of its volumes (never a value or a token), to mount them
    /// again when it restarts.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/secretfs-node")]
    pub state_dir: PathBuf,
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
    let url = reqwest::Url::parse(&args.url).map_err(|e| {
        anyhow::anyhow!(
            "--url {:?} is not a URL ({e}); give the server's, e.g. https://secrets.example.com",
            args.url
        )
    })?;
    // The pods' tokens travel to it: never in the clear off this host.
    crate::identity::fetchable(url.as_str()).map_err(|e| {
        anyhow::anyhow!("--url: the pods' tokens would travel in the clear: the server URL {e}")
    })?;
    if !args.kubelet_dir.is_absolute() {
        anyhow::bail!(
            "--kubelet-dir {} must be an absolute path (the kubelet's, /var/lib/kubelet)",
            args.kubelet_dir.display()
        );
    }
    let audience = args.audience.clone().unwrap_or_else(|| args.url.clone());
    let node_id = match args.node_id {
        Some(id) => id,
        None => nix::unistd::gethostname()?
            .into_string()
            .map_err(|_| anyhow::anyhow!("the host name is not UTF-8; give --node-id"))?,
    };
    crate::fs::memory::limit_malloc_arenas();
    crate::fs::memory::fix_mmap_threshold();
    crate::harden::harden_process();
    // Blocking work (a mount, a first read) takes about a millisecond: a few threads keep up
    // with a node's mass start, where tokio's default of 512 would each keep a stack resident
    // for their idle ten seconds.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The socket first: a second agent is refused before it touches the first's mounts.
        let listener = crate::node::bind(&args.csi_socket)?;
        let agent = std::sync::Arc::new(
            crate::node::Agent::new(
                &args.url,
                args.ca_file.as_deref(),
                Some(&args.state_dir),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        agent.start_janitor()?;
        let metrics = match args.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("--metrics-listen {addr}: {e}; choose another address")
                })?;
                let at = listener.local_addr()?;
                let registry = std::sync::Arc::new(agent.metrics().registry());
                tokio::spawn(async move {
                    if let Err(e) = crate::metrics::serve(listener, registry).await {
                        tracing::error!(error = %e, "the metrics listener stopped");
                    }
                });
                format!(", metrics on http://{at}/metrics")
            }
            None => String::new(),
        };
        let provider = match &args.providers_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.sock", crate::node::provider::PROVIDER_NAME));
                let listener = crate::node::bind(&path)?;
                let p = crate::node::provider::Provider::new(
                    args.kubelet_dir.clone(),
                    audience.clone(),
                    agent.clone(),
                );
                Some((listener, path, p))
            }
            None => None,
        };
        let provider_line = provider
            .as_ref()
            .map(|(_, p, _)| format!(", provider on {}", p.display()))
            .unwrap_or_default();
        let restorer = agent.clone();
        let restored = tokio::task::spawn_blocking(move || restorer.restore()).await?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "secretfs: node agent {} serving CSI on {}{provider_line}{metrics} as node {node_id} ({restored} volumes restored)",
            crate::node::DRIVER_NAME,
            args.csi_socket.display()
        );
        let _ = out.flush();
        drop(out);
        crate::node::serve(
            listener,
            args.csi_socket.clone(),
            crate::node::Plugin::new(node_id, args.kubelet_dir.clone(), audience, agent.clone()),
            provider,
            shutdown(),
        )
        .await?;
        // Stopped (a rollout): the volumes stay where they are, disconnected (a reader gets
        // ENOTCONN) until the next agent mounts a live one over each; taking them away would
        // not reach the containers, which hold their own view of them.
        drop(agent);
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
