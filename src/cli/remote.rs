//! The CLI's side of the server: where it is (flags, environment, the config file `login`
//! writes), and the commands that only make sense against one: `serve`, `login`, `workspace`,
//! `user`, `token`, `audit`.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{GlobalArgs, Hinted, Output, UsageError};
use crate::auth::Token;
use crate::client::Client;
use crate::protocol::{MintUser, MintWorkload, NewUser};
use crate::secret::{SecretName, Timestamp};

/// What `secretfs login` saves (mode 0600): the server and a user token.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub url: Option<String>,
    pub token: Option<String>,
    pub workspace: Option<String>,
    pub ca_file: Option<PathBuf>,
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

fn save_config(cfg: &Config) -> anyhow::Result<PathBuf> {
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
    let file = crate::auth::read_token_file(path).map_err(anyhow::Error::msg)?;
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

fn require_remote(g: &GlobalArgs) -> anyhow::Result<Remote> {
    remote(g)?.ok_or_else(|| {
        Hinted {
            error: anyhow::anyhow!("no server configured"),
            hint: "run \"secretfs login URL\" or pass --url URL (or set SECRETFS_URL)".into(),
        }
        .into()
    })
}

/// Prints a freshly minted token alone on stdout (messages go to stderr), once.
fn print_token(token: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    out.flush()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, printed when ready).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The store: sqlite://PATH, or postgres://... for replicas sharing one PostgreSQL [env:
    /// SECRETFS_DATABASE_URL]
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// The master key file [env: SECRETFS_KEY_FILE] [default: the SQLite path + ".key";
    /// required with PostgreSQL, the same file on every replica]
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM), with --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// On a new store, create the "default" workspace's admin and write its token to a file.
    #[arg(long)]
    pub init: bool,
    /// Where --init writes the admin token [default: the database path + ".admin-token"].
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Refuse admins minting tokens for other users: no admin can then act as a user and read
    /// their private secrets (user add still hands the new user a first token, once).
    #[arg(long)]
    pub no_admin_impersonation: bool,
    /// How long workload-read audit records may wait to be written together.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub audit_interval: Duration,
}

pub fn serve(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let database = match a.database {
        Some(d) => d,
        None => super::env_var("SECRETFS_DATABASE_URL")
            .map(|v| {
                v.into_string()
                    .map_err(|_| anyhow::anyhow!("SECRETFS_DATABASE_URL is not valid UTF-8"))
            })
            .transpose()?
            .unwrap_or_else(|| "sqlite://secretfs.db".to_owned()),
    };
    let opts = crate::server::ServeOptions {
        listen: a.listen,
        database,
        key_file: a.key_file.or_else(|| g.key_file.clone()),
        tls: a.tls_cert.zip(a.tls_key),
        init: a.init,
        admin_token_file: a.admin_token_file,
        audit_interval: a.audit_interval,
        admin_impersonation: !a.no_admin_impersonation,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::serve(opts, |l| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "secretfs: serving the workspace API on {} ({})",
            l.url, l.store
        );
        let _ = out.flush();
    }))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server, e.g. https://secrets.example.com.
    pub url: String,
    /// Read the token from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust besides the system's (a private CA); saved with
    /// the login [env: SECRETFS_CA_FILE]
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

pub async fn login(g: &GlobalArgs, a: LoginArgs) -> anyhow::Result<ExitCode> {
    let token = match &a.token_file {
        Some(p) => read_token_file(p)?,
        None if std::io::stdin().is_terminal() => {
            let name = crate::secret::SecretName::parse("token").expect("valid");
            let value =
                super::input::read_value(None, &name, Default::default(), Default::default())?;
            Token::from_string(
                String::from_utf8_lossy(value.expose_secret())
                    .trim()
                    .to_owned(),
            )
        }
        None => {
            let mut buf = Zeroizing::new(String::new());
            std::io::stdin().take(4096).read_to_string(&mut buf)?;
            Token::from_string(buf.trim().to_owned())
        }
    };
    let ca_file = a.ca_file.clone().or_else(|| g.ca_file.clone());
    let client = Client::new(&a.url, &token, ca_file.as_deref())?;
    let me = client
        .whoami()
        .await
        .with_context(|| format!("cannot log in to {}", a.url))?;
    let mut cfg = load_config().unwrap_or_default();
    cfg.url = Some(a.url.clone());
    cfg.token = Some(token.expose_token().to_owned());
    if ca_file.is_some() {
        cfg.ca_file = ca_file;
    }
    let path = save_config(&cfg)?;
    eprintln!(
        "logged in to {} as {}{} (workspaces: {}); saved to {}",
        a.url,
        me.user,
        if me.admin { " (admin)" } else { "" },
        me.workspaces.join(", "),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace (admin); you become its first member.
    Create {
        /// The new workspace's name.
        name: String,
    },
    /// The workspaces you belong to.
    #[command(visible_alias = "ls")]
    List,
    /// Add an existing user to a workspace (admin).
    AddMember {
        /// The workspace.
        workspace: String,
        /// The user to add.
        user: String,
    },
    /// Remove a user from a workspace (admin): they see nothing of it from then on.
    RemoveMember {
        /// The workspace.
        workspace: String,
        /// The user to remove from it.
        user: String,
    },
}

pub async fn workspace(g: &GlobalArgs, cmd: WorkspaceCommand) -> anyhow::Result<ExitCode> {
    let r = require_remote(g)?;
    match cmd {
        WorkspaceCommand::Create { name } => {
            r.client.create_workspace(&name).await?;
            eprintln!("created workspace \"{name}\"");
        }
        WorkspaceCommand::List => {
            let list = r.client.workspaces().await?;
            for w in list {
                println!("{w}");
            }
        }
        WorkspaceCommand::AddMember { workspace, user } => {
            r.client.add_member(&workspace, &user).await?;
            eprintln!("added \"{user}\" to workspace \"{workspace}\"");
        }
        WorkspaceCommand::RemoveMember { workspace, user } => {
            r.client.remove_member(&workspace, &user).await?;
            eprintln!("removed \"{user}\" from workspace \"{workspace}\"");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (admin) in the workspace --workspace names [default: default]; prints
    /// their first token, once.
    Add {
        /// The new user's name (letters, digits, ".", "_", "-").
        name: String,
        /// Make the user an administrator: manages users, workspaces and keys, reads the audit
        /// log.
        #[arg(long)]
        admin: bool,
    },
    /// Users and their workspaces (admin).
    #[command(visible_alias = "ls")]
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Remove a user (admin): their tokens and memberships, and their private secrets (says
    /// which); their public secrets stay, owned by the removed user.
    #[command(visible_aliases = ["rm", "remove"])]
    Delete {
        /// The user to remove.
        name: String,
        /// Hand every secret of theirs (private and public) to this user instead.
        #[arg(long, value_name = "USER")]
        transfer_to: Option<String>,
    },
}

pub async fn user(g: &GlobalArgs, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let r = require_remote(g)?;
    match cmd {
        UserCommand::Add { name, admin } => {
            let new = NewUser {
                name: name.clone(),
                admin,
                workspaces: Some(vec![r.workspace.clone()]),
            };
            let minted = r.client.add_user(&new).await?;
            eprintln!(
                "created user \"{name}\"; their token (shown once) is on stdout, id {}",
                minted.info.id
            );
            print_token(minted.token.expose_token())?;
        }
        UserCommand::List { output } => {
            let users = r.client.users().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&users)?),
                Output::Table => {
                    println!("{:<24} {:<6} WORKSPACES", "NAME", "ADMIN");
                    for u in users {
                        println!("{:<24} {:<6} {}", u.name, u.admin, u.workspaces.join(","));
                    }
                }
            }
        }
        UserCommand::Delete { name, transfer_to } => {
            let removed = r.client.delete_user(&name, transfer_to.as_deref()).await?;
            let list = |v: &[SecretName]| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                }
            };
            match transfer_to {
                Some(to) => eprintln!(
                    "removed user \"{name}\": {} tokens revoked; {} secrets transferred to \"{to}\" ({})",
                    removed.tokens,
                    removed.transferred.len(),
                    list(&removed.transferred)
                ),
                None => eprintln!(
                    "removed user \"{name}\": {} tokens revoked; {} private secrets deleted ({}); \
                     {} public secrets kept, owned by the removed user ({})",
                    removed.tokens,
                    removed.deleted.len(),
                    list(&removed.deleted),
                    removed.kept.len(),
                    list(&removed.kept)
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; printed alone on stdout, once.
    Create(TokenCreateArgs),
    /// Your tokens (never the tokens themselves).
    #[command(visible_alias = "ls")]
    List {
        /// Everyone's tokens (admin).
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (the 16 hex digits after sfs_u_ or sfs_w_, as "token list" shows).
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// A workload token: reads the values of the --secret names, nothing else.
    #[arg(long, conflicts_with = "user")]
    pub workload: bool,
    /// A user token, for yourself or (admin) for USER.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub user: Option<String>,
    /// A secret the workload token may read (repeatable).
    #[arg(long = "secret", short = 's', value_name = "NAME")]
    pub secrets: Vec<String>,
    /// How long the token is valid, and how far a renewal extends it ("1h", "30d").
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// The longest a workload token may live, renewals included.
    #[arg(long, value_name = "DURATION")]
    pub max_ttl: Option<String>,
    /// What the token is for, shown in "token list".
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
}

pub async fn token(g: &GlobalArgs, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let r = require_remote(g)?;
    match cmd {
        TokenCommand::Create(a) => {
            let minted = if a.workload {
                if a.secrets.is_empty() {
                    return Err(UsageError(
                        "a workload token needs at least one --secret NAME".into(),
                    )
                    .into());
                }
                let mint = MintWorkload {
                    secrets: a.secrets,
                    ttl: a.ttl,
                    max_ttl: a.max_ttl,
                    description: a.description,
                };
                r.client.mint_workload(&r.workspace, &mint).await?
            } else if let Some(user) = &a.user {
                let who = if user.is_empty() {
                    r.client.whoami().await?.user
                } else {
                    user.clone()
                };
                let mint = MintUser {
                    ttl: a.ttl,
                    description: a.description,
                };
                r.client.mint_user(&who, &mint).await?
            } else {
                return Err(UsageError(
                    "choose --workload (with --secret NAME...) or --user".into(),
                )
                .into());
            };
            eprintln!(
                "minted {} token {}{}; the token (shown once) is on stdout",
                minted.info.kind.as_str(),
                minted.info.id,
                minted
                    .info
                    .expires_at
                    .map(|e| format!(", expires {}", e.rfc3339()))
                    .unwrap_or_default()
            );
            print_token(minted.token.expose_token())?;
        }
        TokenCommand::List { all, output } => {
            let tokens = r.client.tokens(all).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
                Output::Table => {
                    println!(
                        "{:<18} {:<9} {:<14} {:<8} {:<22} SECRETS",
                        "ID", "KIND", "USER", "REVOKED", "EXPIRES"
                    );
                    for t in tokens {
                        let secrets: Vec<&str> = t.secrets.iter().map(|s| s.as_str()).collect();
                        println!(
                            "{:<18} {:<9} {:<14} {:<8} {:<22} {}",
                            t.id,
                            t.kind.as_str(),
                            t.user,
                            t.revoked,
                            t.expires_at
                                .map(Timestamp::rfc3339)
                                .unwrap_or_else(|| "never".to_owned()),
                            secrets.join(",")
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke { id } => {
            r.client.revoke_token(&id).await?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Records since an RFC 3339 time or a duration ago ("1h").
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// At most this many records, newest last.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub server: super::ServerOpts,
}

pub async fn audit(g: &GlobalArgs, a: AuditArgs) -> anyhow::Result<ExitCode> {
    let r = require_remote(g)?;
    let records = r.client.audit(a.since.as_deref(), a.limit).await?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        Output::Table => {
            for rec in records {
                println!(
                    "{} {:<10} {:<16} {}:{}/{} v{} {} {}",
                    rec.at.rfc3339(),
                    rec.actor,
                    rec.action,
                    rec.target_kind,
                    rec.workspace,
                    rec.target,
                    rec.version,
                    rec.address,
                    rec.detail
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
