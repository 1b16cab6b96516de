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
use crate::source::choose::{self, CredentialSpec, Fallback, Given, Named, SourceSpec};

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

/// The environment as `source::choose` reads it (`SECRETFS_STORE`, `SECRETFS_URL`, the token
/// variables; `SECRETFS_DIR` is the launcher's alone).
pub fn environment_level() -> Given {
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    choose::from_environment(&env, &cwd, false)
}

/// What `secretfs login` saved, as the last level of `source::choose`.
fn login_level(cfg: &Config) -> Given {
    Given {
        url: cfg.url.clone().map(|u| Named::new(u, "the login file")),
        token: cfg
            .token
            .clone()
            .map(|t| Named::new(Token::from_string(t), "the login file")),
        ca_file: cfg.ca_file.clone(),
        ..Given::default()
    }
}

/// Every problem of a choice, as one error.
pub fn chosen(result: Result<SourceSpec, Vec<String>>) -> anyhow::Result<SourceSpec> {
    result.map_err(|problems| anyhow::anyhow!("{}", problems.join("; ")))
}

/// A configured server: URL, token, workspace.
pub struct Remote {
    pub client: Client,
    pub workspace: String,
}

/// The server the management CLI talks to, when the rule of every command (`source::choose`:
/// flags, then the environment, then `login`'s file) chooses one; `None` when it chooses the
/// local store.
pub fn remote(g: &GlobalArgs) -> anyhow::Result<Option<Remote>> {
    let cfg = load_config()?;
    let env = environment_level();
    let login = login_level(&cfg);
    let spec = chosen(choose::choose(&[&g.flags, &env, &login], Fallback::Store))?;
    let SourceSpec::Server {
        urls,
        credential,
        ca_file,
    } = spec
    else {
        return Ok(None);
    };
    let token = match credential {
        CredentialSpec::Token(t) => t,
        CredentialSpec::TokenFile(p) => read_token_file(&p)?,
        CredentialSpec::Identity { .. } => anyhow::bail!(
            "an identity token file (SECRETFS_IDENTITY_TOKEN_FILE) is a workload's credential, \
             for mount and run; the management commands need a user token (--token-file, \
             SECRETFS_TOKEN_FILE, or secretfs login)"
        ),
    };
    let client = Client::new(&urls, &token, ca_file.as_deref())?;
    let workspace = g
        .workspace
        .clone()
        .or(cfg.workspace.clone())
        .unwrap_or_else(|| crate::service::DEFAULT_WORKSPACE.to_owned());
    Ok(Some(Remote { client, workspace }))
}

pub(super) fn require_remote(g: &GlobalArgs) -> anyhow::Result<Remote> {
    if let Some(r) = remote(g)? {
        return Ok(r);
    }
    // The local store was chosen: by name, or because no server is configured.
    let store = g
        .flags
        .store
        .as_ref()
        .or(environment_level().store.as_ref())
        .map(|s| s.by.clone());
    Err(match store {
        Some(by) => anyhow::anyhow!(
            "this command needs a server, but {by} names the local store; unset it, or pass \
             --url URL"
        ),
        None => Hinted {
            error: anyhow::anyhow!("no server configured"),
            hint: "run \"secretfs login URL\" or pass --url URL (or set SECRETFS_URL)".into(),
        }
        .into(),
    })
}
