//! Where the CLI's server is and which token it presents: flags, environment, and the config
//! file `secretfs login` writes (mode 0600, refused when others may read it).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{GlobalArgs, Hinted};
use crate::auth::Token;
use crate::client::Client;

/// What `secretfs login` saves (mode 0600): the server and a user token. Its `Debug` leaves the
/// token out.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub url: Option<String>,
    pub token: Option<String>,
    pub workspace: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("workspace", &self.workspace)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("secretfs").join("config.toml"))
}

/// The saved configuration; refused if others could read the token in it.
pub fn load_config() -> anyhow::Result<Config> {
    let Some(path) = config_path() else {
        return Ok(Config::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mode = std::fs::metadata(&path)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "config file \"{}\" holds a token but is accessible by group or others (mode {mode:04o}); run \"chmod 600 {}\"",
            path.display(),
            path.display()
        );
    }
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

pub(super) fn save_config(cfg: &Config) -> anyhow::Result<PathBuf> {
    let path = config_path().context("neither XDG_CONFIG_HOME nor HOME is set")?;
    let dir = path.parent().expect("config path has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let text = Zeroizing::new(toml::to_string(cfg).expect("config serializes"));
    let tmp = dir.join(".config.toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads a token from a file (first line, trimmed), warning when others may read the file.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<Token> {
    let file = crate::token_file::read_token_file(path).map_err(anyhow::Error::msg)?;
    if let Some(w) = file.warning {
        tracing::warn!("{w}");
    }
    Ok(file.token)
}

/// The token from the environment: `SECRETFS_TOKEN`, else the file `SECRETFS_TOKEN_FILE` names.
pub fn token_from_env() -> anyhow::Result<Option<Token>> {
    if let Some(t) = std::env::var_os("SECRETFS_TOKEN").filter(|t| !t.is_empty()) {
        let t = t
            .into_string()
            .map_err(|_| anyhow::anyhow!("SECRETFS_TOKEN is not valid UTF-8"))?;
        return Ok(Some(Token::from_string(t.trim().to_owned())));
    }
    if let Some(p) = std::env::var_os("SECRETFS_TOKEN_FILE").filter(|p| !p.is_empty()) {
        return read_token_file(std::path::Path::new(&p)).map(Some);
    }
    Ok(None)
}

/// The workload token for a mount or a launch: `--token-file`/`SECRETFS_TOKEN_FILE`, else
/// `SECRETFS_TOKEN`. (Never the saved login: that is a user token, which cannot read values.)
pub fn workload_token(g: &GlobalArgs) -> anyhow::Result<Token> {
    if let Some(p) = &g.token_file {
        return read_token_file(p);
    }
    token_from_env()?.ok_or_else(|| {
        Hinted {
            error: anyhow::anyhow!("no workload token for the server"),
            hint: "pass --token-file PATH or set SECRETFS_TOKEN_FILE (mint one with \"secretfs token create --workload --secret NAME\")".into(),
        }
        .into()
    })
}

/// A configured server: URL, token, workspace.
pub struct Remote {
    pub client: Client,
    pub workspace: String,
}

/// The server the CLI talks to, if one is configured: `--url`/`SECRETFS_URL`, else `login`'s.
pub fn remote(g: &GlobalArgs) -> anyhow::Result<Option<Remote>> {
    let cfg = load_config()?;
    let Some(url) = g.url.clone().or(cfg.url.clone()) else {
        return Ok(None);
    };
    let token = match &g.token_file {
        Some(p) => read_token_file(p)?,
        None => match token_from_env()? {
            Some(t) => t,
            None => match cfg.token.clone() {
                Some(t) => Token::from_string(t),
                None => {
                    return Err(Hinted {
                        error: anyhow::anyhow!("no token for {url}"),
                        hint: "run \"secretfs login URL\", or set SECRETFS_TOKEN_FILE".into(),
                    }
                    .into());
                }
            },
        },
    };
    let ca = g.ca_file.clone().or(cfg.ca_file.clone());
    let client = Client::new(&url, &token, ca.as_deref())?;
    let workspace = g
        .workspace
        .clone()
        .or(cfg.workspace.clone())
        .unwrap_or_else(|| crate::service::DEFAULT_WORKSPACE.to_owned());
    Ok(Some(Remote { client, workspace }))
}

pub(super) fn require_remote(g: &GlobalArgs) -> anyhow::Result<Remote> {
    remote(g)?.ok_or_else(|| {
        Hinted {
            error: anyhow::anyhow!("no server configured"),
            hint: "run \"secretfs login URL\" or pass --url URL (or set SECRETFS_URL)".into(),
        }
        .into()
    })
}
