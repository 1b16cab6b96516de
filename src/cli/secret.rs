//! `secretfs secret ...`: create, list, update and delete secrets, in the local store or on the
//! configured server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::input::{TrailingNewline, read_value};
use super::{
    GlobalArgs, Output, Remote, UsageError, configured_remote, name_taken, name_taken_hint,
    no_such_secret, not_found_hint, open_local, with_store_hint,
};
use crate::client::ClientError;
use crate::protocol::{Base64Value, CreateSecret, ImportSecrets, UpdateSecret};
use crate::secret::{SecretKind, SecretMeta, SecretName, SecretValue, ValueLimit, Visibility};
use crate::service::{
    DEFAULT_WORKSPACE, LocalError, NewSecret, OpenMode, SecretUpdate, Service, ServiceError,
};

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
    /// Create secrets from a directory of files (Docker's /run/secrets, a Kubernetes secret
    /// volume) or a .env file; everything is checked first, then all are created or none.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A directory whose files become secrets named after them; a Kubernetes secret volume's
    /// links (NAME -> ..data/NAME) are followed, its ..-entries skipped.
    #[arg(required_unless_present = "dotenv", conflicts_with = "dotenv")]
    pub dir: Option<PathBuf>,
    /// A .env file whose NAME=VALUE lines become secrets (python-dotenv's quoting, comments and
    /// ${VAR} expansion).
    #[arg(long, value_name = "FILE")]
    pub dotenv: Option<PathBuf>,
    /// With --dotenv: keep ${VAR} as written instead of expanding it.
    #[arg(long, requires = "dotenv")]
    pub no_interpolate: bool,
    /// Drop one trailing newline from each file's value (files written with echo end in one).
    #[arg(long)]
    pub trim_newline: bool,
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
    /// Drop one trailing newline from a piped or file value (echo adds one).
    #[arg(long)]
    pub trim_newline: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The secret to update.
    pub name: String,
    /// Read the new value from this file ("-" for stdin). Without it, the value is read from
    /// stdin unless only visibility or tags are being changed.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Drop one trailing newline from a piped or file value (echo adds one).
    #[arg(long)]
    pub trim_newline: bool,
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
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The secret to delete.
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
    Local(Box<Service>),
    Remote(Remote),
}

/// A new secret as the API takes it; the value goes as base64, which carries any bytes.
fn wire_secret(new: &NewSecret) -> CreateSecret {
    CreateSecret {
        name: new.name.as_str().to_owned(),
        value: None,
        value_base64: Some(Base64Value::encode(&new.value)),
        kind: Some(new.kind.as_str().to_owned()),
        visibility: Some(new.visibility.as_str().to_owned()),
        tags: new.tags.clone(),
    }
}

impl Target {
    /// The server when the rule of every command chooses one (`source::choose`), else the
    /// local store (`None` when it does not exist and `mode` does not create it).
    async fn open(g: &GlobalArgs, mode: OpenMode) -> anyhow::Result<Option<Target>> {
        if let Some(r) = configured_remote(g)? {
            return Ok(Some(Target::Remote(r)));
        }
        match open_local(g, mode).await {
            Ok(service) => Ok(Some(Target::Local(Box::new(service)))),
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

    async fn list(&self) -> anyhow::Result<Vec<SecretMeta>> {
        match self {
            Target::Local(s) => {
                let caller = s.local_caller(false).await?;
                Ok(s.list_secrets(&caller, DEFAULT_WORKSPACE).await?)
            }
            Target::Remote(r) => Ok(r.client.list_secrets(&r.workspace).await?),
        }
    }

    /// The secret's metadata, `None` when there is no such secret (or none this caller sees).
    async fn meta(&self, name: &SecretName) -> anyhow::Result<Option<SecretMeta>> {
        match self {
            Target::Local(s) => {
                let caller = s.local_caller(false).await?;
                match s.secret(&caller, DEFAULT_WORKSPACE, name).await {
                    Ok(m) => Ok(Some(m)),
                    Err(ServiceError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Target::Remote(r) => match r.client.secret(&r.workspace, name).await {
                Ok(m) => Ok(Some(m)),
                Err(ClientError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn create(&self, new: NewSecret) -> anyhow::Result<SecretMeta> {
        match self {
            Target::Local(s) => {
                let caller = s.local_caller(true).await?;
                let written = s
                    .create_secrets(&caller, DEFAULT_WORKSPACE, vec![new])
                    .await
                    .map_err(with_store_hint)?;
                Ok(written.into_iter().next().expect("one created").meta)
            }
            Target::Remote(r) => {
                match r
                    .client
                    .create_secret(&r.workspace, &wire_secret(&new))
                    .await
                {
                    Ok(w) => Ok(w.meta),
                    Err(e @ ClientError::Conflict { .. }) => {
                        Err(name_taken_hint(e.into(), &new.name))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Creates every secret or none.
    async fn create_many(&self, new: Vec<NewSecret>) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => {
                let caller = s.local_caller(true).await?;
                s.create_secrets(&caller, DEFAULT_WORKSPACE, new)
                    .await
                    .map_err(with_store_hint)?;
                Ok(())
            }
            Target::Remote(r) => {
                let import = ImportSecrets {
                    secrets: new.iter().map(wire_secret).collect(),
                };
                r.client.import_secrets(&r.workspace, &import).await?;
                Ok(())
            }
        }
    }

    async fn update(&self, name: &SecretName, update: SecretUpdate) -> anyhow::Result<SecretMeta> {
        match self {
            Target::Local(s) => {
                let caller = s.local_caller(true).await?;
                Ok(s.update_secret(&caller, DEFAULT_WORKSPACE, name, update)
                    .await
                    .map_err(with_store_hint)?
                    .meta)
            }
            Target::Remote(r) => {
                let wire = UpdateSecret {
                    value: None,
                    value_base64: update.value.as_ref().map(Base64Value::encode),
                    visibility: update.visibility.map(|v| v.as_str().to_owned()),
                    tags: update.tags,
                };
                Ok(r.client
                    .update_secret(&r.workspace, name, &wire)
                    .await?
                    .meta)
            }
        }
    }

    async fn delete(&self, name: &SecretName) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => {
                let caller = s.local_caller(true).await?;
                Ok(s.delete_secret(&caller, DEFAULT_WORKSPACE, name)
                    .await
                    .map_err(with_store_hint)?)
            }
            Target::Remote(r) => match r.client.delete_secret(&r.workspace, name).await {
                Ok(()) => Ok(()),
                Err(e @ ClientError::NotFound { .. }) => Err(not_found_hint(e.into())),
                Err(e) => Err(e.into()),
            },
        }
    }

    fn value_limit(&self) -> ValueLimit {
        match self {
            Target::Local(s) => s.value_limit(),
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
        return Err(name_taken(&name));
    }
    let value = read_value(
        a.from_file.as_deref(),
        &name,
        Default::default(),
        newline(a.trim_newline, a.kind),
    )?;
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
    let current = match target.meta(&name).await? {
        Some(m) => m,
        None => return Err(no_such_secret(&name, &target.list().await?)),
    };
    let value = if metadata_only {
        None
    } else {
        let value = read_value(
            a.from_file.as_deref(),
            &name,
            target.value_limit(),
            newline(a.trim_newline, current.kind),
        )?;
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

/// What to do with one trailing newline: drop it when asked, and always for an SSH public key,
/// whose format ends every line with one (every `.pub` file does): the key is the line.
fn newline(trim: bool, kind: SecretKind) -> TrailingNewline {
    if trim || kind == SecretKind::SshPublicKey {
        TrailingNewline::Trim
    } else {
        TrailingNewline::Keep
    }
}

/// One secret an import would create, or why it cannot.
struct Candidate {
    /// Where it came from, for messages: `file "PATH"` or `FILE line N`.
    from: String,
    name: SecretName,
    value: SecretValue,
}

async fn import(g: &GlobalArgs, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let tags = crate::secret::validate_tags(&a.tags).map_err(anyhow::Error::msg)?;
    let mut problems = Vec::new();
    let (source, candidates) = match (&a.dir, &a.dotenv) {
        (Some(dir), _) => (
            dir.display().to_string(),
            import_dir(
                dir,
                newline(a.trim_newline, SecretKind::Custom),
                &mut problems,
            )?,
        ),
        (None, Some(file)) => (
            file.display().to_string(),
            import_dotenv(file, !a.no_interpolate, &mut problems)?,
        ),
        (None, None) => unreachable!("clap requires DIR or --dotenv"),
    };
    // Names the target already holds are problems too, found before anything is written.
    let target = Target::open(g, OpenMode::CreateIfMissing)
        .await?
        .expect("opened");
    let existing: Vec<SecretName> = target.list().await?.into_iter().map(|m| m.name).collect();
    for c in &candidates {
        if existing.contains(&c.name) {
            problems.push(format!(
                "{}: secret \"{}\" already exists (\"secretfs secret update {}\" replaces it)",
                c.from, c.name, c.name
            ));
        }
    }
    if !problems.is_empty() {
        target.close().await;
        let count = problems.len();
        return Err(anyhow::anyhow!(
            "nothing imported from \"{source}\"; {count} problem{} to fix first:\n  {}",
            if count == 1 { "" } else { "s" },
            problems.join("\n  ")
        ));
    }
    if candidates.is_empty() {
        target.close().await;
        eprintln!("imported 0 secrets from \"{source}\" (it holds none)");
        return Ok(ExitCode::SUCCESS);
    }
    let visibility = if a.public {
        Visibility::Public
    } else {
        Visibility::Private
    };
    let count = candidates.len();
    let new: Vec<NewSecret> = candidates
        .into_iter()
        .map(|c| NewSecret {
            name: c.name,
            kind: SecretKind::Custom,
            visibility,
            tags: tags.clone(),
            value: c.value,
        })
        .collect();
    target.create_many(new).await?;
    target.close().await;
    eprintln!(
        "imported {count} secret{} from \"{source}\"",
        if count == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The files of `dir` as secrets: regular files, and links to regular files inside `dir` (a
/// Kubernetes volume's `NAME -> ..data/NAME`, whose `..data` is swapped atomically on update).
/// Entries starting with `..` are the volume's own and are skipped.
fn import_dir(
    dir: &std::path::Path,
    newline: TrailingNewline,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<Candidate>> {
    use anyhow::Context;
    let unreadable = || format!("cannot read directory \"{}\"", dir.display());
    let root = dir.canonicalize().with_context(unreadable)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(unreadable)?
        .collect::<Result<_, _>>()
        .with_context(unreadable)?;
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for entry in entries {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with("..") {
            continue;
        }
        let path = entry.path();
        let from = format!("file \"{}\"", path.display());
        let link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if link {
            match path.canonicalize() {
                Ok(target) if target.starts_with(&root) => {}
                Ok(target) => {
                    problems.push(format!(
                        "{from} links to {} outside the directory; copy the file in if it is meant \
                         to be imported",
                        target.display()
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{from} is a broken link: {e}"));
                    continue;
                }
            }
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => {
                eprintln!(
                    "warning: skipped directory \"{}\" (import reads files only)",
                    path.display()
                );
                continue;
            }
            Ok(_) => {
                problems.push(format!("{from} is not a regular file"));
                continue;
            }
            Err(e) => {
                problems.push(format!("{from}: {e}"));
                continue;
            }
        }
        let name = match SecretName::parse(&file) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("{from} cannot be a secret: {e}"));
                continue;
            }
        };
        match read_value(Some(&path), &name, Default::default(), newline) {
            Ok(value) => out.push(Candidate { from, name, value }),
            Err(e) => problems.push(format!("{from}: {e:#}")),
        }
    }
    Ok(out)
}

/// The entries of a .env file as secrets (see `dotenv`): every problem is collected, with its
/// line, never a value.
fn import_dotenv(
    file: &std::path::Path,
    interpolate: bool,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<Candidate>> {
    use anyhow::Context;
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(file).with_context(|| format!("cannot read \"{}\"", file.display()))?,
    );
    let Ok(text) = std::str::from_utf8(&bytes) else {
        anyhow::bail!(
            "\"{}\" is not UTF-8 text; a .env file must be",
            file.display()
        );
    };
    let env = |name: &str| std::env::var(name).ok();
    let parsed = super::dotenv::parse(
        text,
        interpolate.then_some(&env as super::dotenv::Lookup<'_>),
    );
    let shown = file.display();
    for line in &parsed.bad_lines {
        problems.push(format!(
            "{shown} line {line}: cannot be parsed (a quote left open, or text after a closing quote)"
        ));
    }
    let mut out: Vec<Candidate> = Vec::new();
    let mut lines_of: std::collections::HashMap<String, usize> = Default::default();
    for e in parsed.entries {
        let from = format!("{shown} line {}", e.line);
        if let Some(first) = lines_of.insert(e.key.clone(), e.line) {
            problems.push(format!(
                "{from}: {} is set again (first on line {first}); keep one",
                e.key
            ));
            continue;
        }
        for var in &e.from_environment {
            eprintln!(
                "warning: {from}: {} takes ${{{var}}} from this shell's environment, as \
                 python-dotenv would; pass --no-interpolate to keep it as written",
                e.key
            );
        }
        let name = match SecretName::parse(&e.key) {
            Ok(n) => n,
            Err(err) => {
                problems.push(format!("{from}: {err}"));
                continue;
            }
        };
        let Some(text) = e.value else {
            problems.push(format!("{from}: {name} has no value (no \"=\")"));
            continue;
        };
        let bytes = zeroize::Zeroizing::new(text.as_bytes().to_vec());
        match SecretValue::new(bytes, Default::default()) {
            Ok(value) => out.push(Candidate { from, name, value }),
            Err(err) => problems.push(format!("{from}: {err}")),
        }
    }
    Ok(out)
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
