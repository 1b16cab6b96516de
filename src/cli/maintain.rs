//! Maintenance: rotating the master key and backing the store up, on the server when one is
//! configured (and `--store` is not given), else on the local store.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{GlobalArgs, configured_remote, open_local};
use crate::service::OpenMode;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Replace the master key: every value is re-sealed under a new key while the store keeps
    /// serving, and the old key is dropped from the key file. On a server: admin only.
    Rotate,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup (an SQLite file; values stay sealed).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Replace PATH if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: super::StoreOpts,
    #[command(flatten)]
    pub server: super::ServerOpts,
}

pub async fn key(g: &GlobalArgs, cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Rotate => {
            if let Some(r) = configured_remote(g)? {
                let moved = r.client.rotate_key().await?.resealed;
                eprintln!("master key rotated on the server; {moved} values re-sealed");
                return Ok(ExitCode::SUCCESS);
            }
            let paths = crate::service::LocalPaths::resolve(g.store.clone(), g.key_file.clone())?;
            let service = open_local(g, OpenMode::Existing).await?;
            let caller = service.local_caller(true).await?;
            let moved = service.rotate_key(&caller).await?;
            service.close().await;
            eprintln!(
                "master key rotated; {moved} values re-sealed; key file {} now holds only the new \
                 key (copies of the old key file no longer open this store)",
                paths.key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn backup(g: &GlobalArgs, a: BackupArgs) -> anyhow::Result<ExitCode> {
    if a.path.exists() && !a.force {
        anyhow::bail!(
            "\"{}\" already exists; choose another path or pass --force to replace it",
            a.path.display()
        );
    }
    // Written beside the target and renamed over it, so a failed backup never leaves a
    // truncated file under the name a restore would use.
    let mut partial = a.path.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    if let Some(r) = configured_remote(g)? {
        let bytes = r.client.backup().await?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot create \"{}\"", partial.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write \"{}\"", partial.display()))?;
    } else {
        let service = open_local(g, OpenMode::Existing).await?;
        let caller = service.local_caller(true).await?;
        service.backup(&caller, &partial).await?;
        service.close().await;
    }
    std::fs::rename(&partial, &a.path)
        .with_context(|| format!("cannot move the backup to \"{}\"", a.path.display()))?;
    eprintln!(
        "backup written to {} (values sealed; restoring needs the key file, kept separately)",
        a.path.display()
    );
    Ok(ExitCode::SUCCESS)
}
