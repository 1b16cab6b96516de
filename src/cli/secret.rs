//! `secretfs secret ...`: create, list, update and delete secrets, in the local store or on the
//! configured server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::input::read_value;
use super::{
    GlobalArgs, Output, Remote, UsageError, configured_remote, open_local, with_store_hint,
};
use crate::client::Client;
use crate::secret::{SecretKind, SecretMeta, SecretName, ValueLimit, Visibility};
use crate::store::local::{LocalError, OpenMode, local_user};
use crate::store::{Actor, DEFAULT_WORKSPACE, NewSecret, SecretUpdate, StoreError, Vault};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret; the value is read from stdin (hidden prompt on a terminal) or a file.
    Create(CreateArgs),
    /// List secrets: names and metadata, never values.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Replace a secret's value (a new version) and/or change its visibility or tags.
    Update(UpdateArgs),
    /// Delete a secret.
    #[command(visible_aliases = ["rm", "remove"])]
    Delete(DeleteArgs),
    /// Create one secret per file of a directory (e.g. an old /run/secrets), named after the file.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The directory whose regular files become secrets.
    pub dir: PathBuf,
    /// Make the imported secrets usable by every workspace member.
    #[arg(long)]
    pub public: bool,
    /// A tag for every imported secret (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The secret's name [default: the template's suggested name, e.g. HF_TOKEN].
    pub name: Option<String>,
    /// The template: custom, ssh-public-key, github, huggingface, openai, datadog, ngc.
    #[arg(
        long = "type",
        short = 't',
        default_value = "custom",
        value_name = "KIND"
    )]
    pub kind: SecretKind,
    /// Every workspace member may use it (default: only you).
    #[arg(long)]
    pub public: bool,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Read the value from this file ("-" for stdin) instead of stdin.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub name: String,
    /// Read the new value from this file ("-" for stdin). Without it, the value is read from
    /// stdin unless only visibility or tags are being changed.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Make the secret usable by every workspace member.
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Make the secret usable only by its owner.
    #[arg(long)]
    pub private: bool,
    /// Replace the tags with these (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Remove every tag.
    #[arg(long, conflicts_with = "tags")]
    pub clear_tags: bool,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: String,
}

fn parse_name(s: &str) -> anyhow::Result<SecretName> {
    Ok(SecretName::parse(s)?)
}

pub async fn run(g: &GlobalArgs, cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Create(a) => create(g, a).await,
        SecretCommand::List(a) => list(g, a).await,
        SecretCommand::Update(a) => update(g, a).await,
        SecretCommand::Delete(a) => delete(g, a).await,
        SecretCommand::Import(a) => import(g, a).await,
    }
}

/// Where `secret` commands act: the local store (with `--store`, or when no server is
/// configured) or the server.
enum Target {
    Local(Vault),
    Remote(Remote),
}

impl Target {
    /// The server if one is configured and `--store` was not given; else the local store
    /// (`None` when it does not exist and `mode` does not create it).
    async fn open(g: &GlobalArgs, mode: OpenMode) -> anyhow::Result<Option<Target>> {
        if g.store.is_none()
            && let Some(r) = configured_remote(g)?
        {
            return Ok(Some(Target::Remote(r)));
        }
        match open_local(g, mode).await {
            Ok(vault) => Ok(Some(Target::Local(vault))),
            Err(e)
                if e.downcast_ref::<LocalError>()
                    .is_some_and(|e| matches!(e, LocalError::Missing(_)))
                    && mode == OpenMode::Existing =>
            {
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn secrets_path(r: &Remote) -> String {
        format!("/api/v1/workspaces/{}/secrets", r.workspace)
    }

    async fn list(&self) -> anyhow::Result<Vec<SecretMeta>> {
        match self {
            Target::Local(v) => Ok(v.list(DEFAULT_WORKSPACE).await?),
            Target::Remote(r) => Ok(r.client.get(&Self::secrets_path(r), &[]).await?),
        }
    }

    /// The secret's metadata, `None` when there is no such secret (or none this caller sees).
    async fn meta(&self, name: &SecretName) -> anyhow::Result<Option<SecretMeta>> {
        match self {
            Target::Local(v) => match v.meta(DEFAULT_WORKSPACE, name).await {
                Ok(m) => Ok(Some(m)),
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Target::Remote(r) => {
                match r
                    .client
                    .get::<SecretMeta>(&format!("{}/{name}", Self::secrets_path(r)), &[])
                    .await
                {
                    Ok(m) => Ok(Some(m)),
                    Err(e) if e.status() == Some(404) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn create(&self, new: NewSecret) -> anyhow::Result<SecretMeta> {
        match self {
            Target::Local(v) => Ok(v
                .create(DEFAULT_WORKSPACE, &Actor::local(local_user()), new)
                .await
                .map_err(with_store_hint)?),
            Target::Remote(r) => {
                let body = serde_json::json!({
                    "name": new.name.as_str(),
                    "value_base64": Client::encode_value(&new.value),
                    "kind": new.kind.as_str(),
                    "visibility": new.visibility.as_str(),
                    "tags": new.tags,
                });
                match r.client.post(&Self::secrets_path(r), body).await {
                    Ok(m) => Ok(m),
                    Err(e) if e.status() == Some(409) => {
                        Err(with_store_hint(StoreError::AlreadyExists(new.name)))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn update(&self, name: &SecretName, update: SecretUpdate) -> anyhow::Result<SecretMeta> {
        match self {
            Target::Local(v) => Ok(v
                .update(DEFAULT_WORKSPACE, &Actor::local(local_user()), name, update)
                .await
                .map_err(with_store_hint)?),
            Target::Remote(r) => {
                let mut body = serde_json::json!({});
                if let Some(v) = &update.value {
                    body["value_base64"] = Client::encode_value(v).into();
                }
                if let Some(v) = update.visibility {
                    body["visibility"] = v.as_str().into();
                }
                if let Some(t) = &update.tags {
                    body["tags"] = serde_json::json!(t);
                }
                Ok(r.client
                    .patch(&format!("{}/{name}", Self::secrets_path(r)), body)
                    .await?)
            }
        }
    }

    async fn delete(&self, name: &SecretName) -> anyhow::Result<()> {
        match self {
            Target::Local(v) => Ok(v
                .delete(DEFAULT_WORKSPACE, &Actor::local(local_user()), name)
                .await
                .map_err(with_store_hint)?),
            Target::Remote(r) => match r
                .client
                .delete(&format!("{}/{name}", Self::secrets_path(r)))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if e.status() == Some(404) => {
                    Err(with_store_hint(StoreError::NotFound(name.clone())))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    fn value_limit(&self) -> ValueLimit {
        match self {
            Target::Local(v) => v.value_limit(),
            Target::Remote(_) => ValueLimit::default(),
        }
    }

    async fn close(&self) {
        if let Target::Local(v) = self {
            v.close().await;
        }
    }
}

async fn create(g: &GlobalArgs, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let name = match (&a.name, a.kind.default_name()) {
        (Some(n), _) => parse_name(n)?,
        (None, Some(default)) => parse_name(default)?,
        (None, None) => {
            return Err(UsageError(
                "a custom secret needs a name: secretfs secret create NAME".into(),
            )
            .into());
        }
    };
    // Everything that can be checked without the store is checked before a new store is
    // created, and a taken name is reported before the user types a value.
    let tags = crate::secret::validate_tags(&a.tags).map_err(anyhow::Error::msg)?;
    let existing = match Target::open(g, OpenMode::Existing).await {
        Ok(t) => t,
        Err(e)
            if e.downcast_ref::<LocalError>()
                .is_some_and(|e| matches!(e, LocalError::Missing(_))) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(target) = &existing
        && target.meta(&name).await?.is_some()
    {
        return Err(with_store_hint(StoreError::AlreadyExists(name)));
    }
    let value = read_value(a.from_file.as_deref(), &name, Default::default())?;
    for w in a.kind.check(&value)? {
        eprintln!("warning: {w}");
    }
    let target = match existing {
        Some(t) => t,
        None => Target::open(g, OpenMode::CreateIfMissing)
            .await?
            .expect("created"),
    };
    let meta = target
        .create(NewSecret {
            name,
            kind: a.kind,
            visibility: if a.public {
                Visibility::Public
            } else {
                Visibility::Private
            },
            tags,
            value,
        })
        .await?;
    target.close().await;
    done(&meta, "created", a.output)
}

async fn list(g: &GlobalArgs, a: ListArgs) -> anyhow::Result<ExitCode> {
    let target = Target::open(g, OpenMode::Existing).await?.expect("opened");
    let secrets = target.list().await?;
    target.close().await;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&secrets)?),
        Output::Table => print!("{}", table(&secrets)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn update(g: &GlobalArgs, a: UpdateArgs) -> anyhow::Result<ExitCode> {
    let name = parse_name(&a.name)?;
    let visibility = match (a.public, a.private) {
        (true, _) => Some(Visibility::Public),
        (_, true) => Some(Visibility::Private),
        _ => None,
    };
    let tags = if a.clear_tags {
        Some(Vec::new())
    } else if a.tags.is_empty() {
        None
    } else {
        Some(crate::secret::validate_tags(&a.tags).map_err(anyhow::Error::msg)?)
    };
    let metadata_only = a.from_file.is_none() && (visibility.is_some() || tags.is_some());
    let target = Target::open(g, OpenMode::Existing).await?.expect("opened");
    // Look the secret up first: an unknown name is reported before the user types a value.
    let current = target
        .meta(&name)
        .await?
        .ok_or_else(|| with_store_hint(StoreError::NotFound(name.clone())))?;
    let value = if metadata_only {
        None
    } else {
        let value = read_value(a.from_file.as_deref(), &name, target.value_limit())?;
        for w in current.kind.check(&value)? {
            eprintln!("warning: {w}");
        }
        Some(value)
    };
    let meta = target
        .update(
            &name,
            SecretUpdate {
                value,
                visibility,
                tags,
            },
        )
        .await?;
    target.close().await;
    done(&meta, "updated", a.output)
}

async fn delete(g: &GlobalArgs, a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let name = parse_name(&a.name)?;
    let target = Target::open(g, OpenMode::Existing).await?.expect("opened");
    target.delete(&name).await?;
    target.close().await;
    eprintln!("deleted secret \"{name}\"");
    Ok(ExitCode::SUCCESS)
}

async fn import(g: &GlobalArgs, a: ImportArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let tags = crate::secret::validate_tags(&a.tags).map_err(anyhow::Error::msg)?;
    // Read and check everything first: a bad file name or value stops the import before any
    // secret is created.
    let mut entries: Vec<_> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("cannot read directory \"{}\"", a.dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read directory \"{}\"", a.dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    let mut secrets = Vec::new();
    for entry in entries {
        if !entry.file_type()?.is_file() {
            continue;
        }
        let file = entry.file_name();
        let name = parse_name(&file.to_string_lossy())
            .with_context(|| format!("file \"{}\" cannot be a secret", entry.path().display()))?;
        let value = read_value(Some(&entry.path()), &name, Default::default())
            .with_context(|| format!("secret \"{name}\""))?;
        secrets.push((name, value));
    }
    let target = Target::open(g, OpenMode::CreateIfMissing)
        .await?
        .expect("opened");
    let count = secrets.len();
    for (name, value) in secrets {
        target
            .create(NewSecret {
                name,
                kind: SecretKind::Custom,
                visibility: if a.public {
                    Visibility::Public
                } else {
                    Visibility::Private
                },
                tags: tags.clone(),
                value,
            })
            .await?;
    }
    target.close().await;
    eprintln!("imported {count} secrets from \"{}\"", a.dir.display());
    Ok(ExitCode::SUCCESS)
}

fn done(meta: &SecretMeta, verb: &str, output: Output) -> anyhow::Result<ExitCode> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(meta)?),
        Output::Table => eprintln!(
            "{verb} secret \"{}\" ({}, {}, version {})",
            meta.name, meta.kind, meta.visibility, meta.version
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain-text table: one header line, one line per secret, columns padded to fit.
fn table(secrets: &[SecretMeta]) -> String {
    let header = [
        "NAME",
        "TYPE",
        "VISIBILITY",
        "OWNER",
        "VERSION",
        "UPDATED",
        "TAGS",
    ];
    let rows: Vec<[String; 7]> = secrets
        .iter()
        .map(|m| {
            [
                m.name.to_string(),
                m.kind.to_string(),
                m.visibility.to_string(),
                m.owner.clone(),
                m.version.to_string(),
                m.updated_at.rfc3339(),
                m.tags.join(","),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}
