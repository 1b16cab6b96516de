//! The commands that only make sense against a server: `login`, `workspace`, `user`, `token`,
//! `audit`, each a call of the typed client.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::config::{load_config, read_token_file, require_remote, save_config};
use super::{GlobalArgs, Output, UsageError};
use crate::auth::Token;
use crate::client::Client;
use crate::protocol::{MintUser, MintWorkload, NewUser};
use crate::secret::{SecretName, Timestamp};

/// Prints a freshly minted token alone on stdout (messages go to stderr), once.
fn print_token(token: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    private_if_a_file(&out);
    writeln!(out, "{token}")?;
    out.flush()?;
    Ok(())
}

/// `secretfs token create ... > job.token` makes the file with the shell's umask (0644 as a
/// rule), and every consumer of the file then warns that others may read it. A token written
/// to a regular file gets that file's group and other bits cleared first (the file is ours: the
/// shell opened it for us), and a file we cannot tighten is named in a warning.
fn private_if_a_file(out: &impl std::os::fd::AsFd) {
    use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat};
    let Ok(FileStat { st_mode, .. }) = fstat(out.as_fd()) else {
        return;
    };
    let mode = st_mode & 0o7777;
    if SFlag::from_bits_truncate(st_mode) & SFlag::S_IFMT != SFlag::S_IFREG || mode & 0o077 == 0 {
        return;
    }
    let private = Mode::from_bits_truncate(mode & 0o700);
    if let Err(e) = fchmod(out.as_fd(), private) {
        eprintln!(
            "warning: the token goes to a file group or others may read (mode {mode:04o}), \
             whose mode cannot be changed ({e}): chmod 600 it"
        );
    }
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
    for said in crate::source::choose::shadowing_login(&super::config::environment_level(), &a.url)
    {
        eprintln!("warning: {said}");
    }
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
    /// Show or set how the workspace's audit coalesces repeated events and how long it keeps
    /// their records (admin); what is not given stays as it is.
    Audit {
        /// The workspace.
        workspace: String,
        /// Repeated events within this interval are one record with a count (at least 10s).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        coalesce: Option<std::time::Duration>,
        /// Records of repeated events are deleted after this long (at least 1h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Return both to the server's defaults.
        #[arg(long, conflicts_with_all = ["coalesce", "retention"])]
        default: bool,
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
        WorkspaceCommand::Audit {
            workspace,
            coalesce,
            retention,
            default,
        } => {
            let mut settings = r.client.audit_settings(&workspace).await?;
            let changing = default || coalesce.is_some() || retention.is_some();
            if default {
                settings = Default::default();
            }
            if let Some(c) = coalesce {
                settings.coalesce_secs = Some(c.as_secs());
            }
            if let Some(k) = retention {
                settings.retention_secs = Some(k.as_secs());
            }
            if changing {
                r.client.set_audit_settings(&workspace, &settings).await?;
            }
            let shown = |secs: Option<u64>| {
                secs.map_or("the server's default".to_owned(), |s| {
                    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
                })
            };
            println!("coalesce: {}", shown(settings.coalesce_secs));
            println!("retention: {}", shown(settings.retention_secs));
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

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Trust tokens of an issuer whose audience, subject and claims match: each exchange acts
    /// as --user for exactly the --secret names, under that user's visibility (admin).
    Add(Box<IdentityAddArgs>),
    /// The bindings (admin).
    #[command(visible_alias = "ls")]
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Remove a binding; the tokens its exchanges minted are revoked with it (admin).
    #[command(visible_alias = "rm")]
    Remove {
        /// The binding's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct IdentityAddArgs {
    /// The binding's name (used in the audit log and as the exchange's scope).
    pub name: String,
    /// The tokens' "iss", exactly (e.g. the cluster's OIDC provider URL).
    #[arg(long, value_name = "URL")]
    pub issuer: String,
    /// The "aud" the tokens must carry.
    #[arg(long, value_name = "AUD")]
    pub audience: String,
    /// The "sub" the tokens must have: '*' matches any run of characters, '?' one
    /// (e.g. "system:serviceaccount:ws-*:default").
    #[arg(long, value_name = "PATTERN")]
    pub subject: String,
    /// A further claim the tokens must have, PATH=PATTERN (repeatable; dots reach nested
    /// claims: kubernetes.io.namespace=ws-abc).
    #[arg(long = "claim", value_name = "PATH=PATTERN")]
    pub claims: Vec<String>,
    /// Whom an exchange acts as.
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// A secret the exchanged token may read (repeatable).
    #[arg(long = "secret", short = 's', value_name = "NAME", required = true)]
    pub secrets: Vec<String>,
    /// The longest life of an exchanged workload token [default: 1h]; never past the
    /// presented token's own expiry.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// The longest life (exp - iat) a presented token may have [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub max_token_lifetime: Option<String>,
    /// The issuer's keys from this JWKS URL instead of OIDC discovery.
    #[arg(long, value_name = "URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// The issuer's keys from this JWKS file (an issuer the server cannot reach:
    /// `kubectl get --raw /openid/v1/jwks`).
    #[arg(long, value_name = "PATH")]
    pub jwks_file: Option<PathBuf>,
}

pub async fn identity(g: &GlobalArgs, cmd: IdentityCommand) -> anyhow::Result<ExitCode> {
    let r = require_remote(g)?;
    match cmd {
        IdentityCommand::Add(a) => {
            let jwks = match &a.jwks_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read the JWKS file {}", p.display()))?,
                ),
                None => None,
            };
            let b = r
                .client
                .add_binding(&crate::protocol::NewBinding {
                    name: a.name,
                    workspace: r.workspace.clone(),
                    issuer: a.issuer,
                    audience: a.audience,
                    subject: a.subject,
                    claims: a.claims,
                    user: a.user,
                    secrets: a.secrets,
                    ttl: a.ttl,
                    max_token_lifetime: a.max_token_lifetime,
                    jwks_url: a.jwks_url,
                    jwks,
                })
                .await?;
            eprintln!(
                "added identity binding {} ({}): tokens of {} for {} with sub {} act as {} for {}",
                b.name,
                b.id,
                b.issuer,
                b.audience,
                b.subject,
                b.user,
                b.secrets.join(",")
            );
        }
        IdentityCommand::List { output } => {
            let list = r.client.bindings().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    println!(
                        "{:<16} {:<10} {:<12} {:<40} {:<40} SECRETS",
                        "NAME", "WORKSPACE", "USER", "ISSUER", "SUBJECT"
                    );
                    for b in list {
                        println!(
                            "{:<16} {:<10} {:<12} {:<40} {:<40} {}",
                            b.name,
                            b.workspace,
                            b.user,
                            b.issuer,
                            b.subject,
                            b.secrets.join(",")
                        );
                    }
                }
            }
        }
        IdentityCommand::Remove { name } => {
            r.client.remove_binding(&name).await?;
            eprintln!("removed identity binding {name}; the tokens it minted are revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
