//! Why a mount could not start or stay: one error for the daemon's checks, its source and its
//! rounds (`mount` and `refresh` both report it).

use std::path::PathBuf;

use crate::secret::SecretName;
use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point \"{}\" does not exist; create it first (mkdir -p {})", .0.display(), .0.display())]
    NoMountPoint(PathBuf),
    #[error("mount point \"{}\" is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "\"{}\" is already a live secretfs mount; unmount it first (umount {}) or choose another \
         directory",
        .0.display(), .0.display()
    )]
    AlreadyMounted(PathBuf),
    // The causes are in the messages, and not `source()`s as well: a chain printed with its
    // causes would say each twice.
    #[error("cannot recover the stale mount at \"{}\": {cause}", .path.display())]
    Stale { path: PathBuf, cause: nix::Error },
    #[error("cannot inspect mount point \"{}\": {cause}", .path.display())]
    Inspect {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}", missing_message(.0))]
    Missing(Vec<SecretName>),
    #[error("cannot read secrets from the source: {0}")]
    Source(SourceError),
    #[error(
        "the source was still unavailable after {waited}: {last}; is it running and reachable?"
    )]
    StartTimeout { waited: String, last: String },
    #[error("cannot hold secrets in memory: {0}")]
    Memory(std::io::Error),
    #[error("cannot mount at \"{}\": {}{}", .dir.display(), .cause.to_string().trim_end(), diagnosis(.problems))]
    Mount {
        dir: PathBuf,
        cause: std::io::Error,
        problems: Vec<String>,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("metrics: {0} (choose another --metrics-listen address)")]
    Metrics(String),
    #[error("cannot render the files of --files:\n  {}", .0.join("\n  "))]
    Render(Vec<String>),
}

fn missing_message(names: &[SecretName]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "{} not found in the source: {}; check the names with \"secretfs secret list\"",
        if names.len() == 1 {
            "secret"
        } else {
            "secrets"
        },
        list.join(", ")
    )
}

fn diagnosis(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", problems.join("; "))
    }
}

impl From<SourceError> for MountError {
    fn from(e: SourceError) -> Self {
        MountError::Source(e)
    }
}
