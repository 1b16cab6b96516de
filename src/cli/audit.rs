//! `secretfs audit`: the audit log, on the server when one is configured (and `--store` is not
//! given), else of the local store; and `audit export`, the log as JSON lines for shippers
//! (Vector, Fluent Bit, Promtail), complete, in commit order, resumable.
//!
//! The export's promise: every record exactly once across restarts and `kill -9` when it
//! writes a file. Lines are appended and synced before the position file says they were; on
//! start, the file's last whole line is the position when it is further than the position file
//! says (the export died between the two), and a partial last line (it died mid-write) is cut.
//! To standard output, a line may repeat after a crash between writing it and saving the
//! position: each line's `id` lets a shipper drop the repeat.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{GlobalArgs, Output, configured_remote, open_local};
use crate::client::Client;
use crate::protocol::AuditLine;
use crate::service::{Caller, OpenMode, Service};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
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
    pub store: super::StoreOpts,
    #[command(flatten)]
    pub server: super::ServerOpts,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the audit log as JSON lines, in commit order, to a file that rotates or to
    /// standard output, resuming where the last run stopped.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to append to ("-": standard output).
    #[arg(long, value_name = "PATH", default_value = "-")]
    pub to: String,
    /// Where the id of the last record written is kept [default: the file's path +
    /// ".position"; to standard output, none: every run starts at the first record].
    #[arg(long, value_name = "PATH")]
    pub position: Option<PathBuf>,
    /// Rotate the file once it holds this many bytes (K, M, G: powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rotate_size: Option<u64>,
    /// Rotate the file once it has been written to for this long (e.g. 1h, 1day).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub rotate_every: Option<Duration>,
    /// Rotated files kept beside the file (the oldest are deleted); 0 keeps every one.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub keep: usize,
    /// Go on exporting records as they are committed, until stopped.
    #[arg(long)]
    pub follow: bool,
    /// How often --follow looks for new records.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    #[command(flatten)]
    pub store: super::StoreOpts,
    #[command(flatten)]
    pub server: super::ServerOpts,
}

/// `100`, `64K`, `100M`, `1G` (also `KiB`, `MB`...: powers of 1024 all). Four suffixes do not
/// need a crate.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size: give bytes, or a number with K, M or G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        other => return Err(format!("unknown size unit {other:?}: use K, M or G")),
    };
    let size = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if size == 0 {
        return Err("the size to rotate at is more than 0".into());
    }
    Ok(size)
}

/// Where records come from: the server, or the local store (as its local user).
enum Log {
    Remote(Client),
    Local(Box<(Service, Caller)>),
}

impl Log {
    async fn open(g: &GlobalArgs) -> anyhow::Result<Log> {
        if let Some(r) = configured_remote(g)? {
            return Ok(Log::Remote(r.client));
        }
        let service = open_local(g, OpenMode::Existing).await?;
        let caller = service.local_caller(false).await?;
        Ok(Log::Local(Box::new((service, caller))))
    }

    /// At most `limit` records since `since`, in time order, or, with `after`, those committed
    /// after it, in commit order.
    async fn read(
        &self,
        after: Option<u64>,
        since: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<AuditLine>> {
        let (s, caller) = match self {
            Log::Remote(c) => return Ok(c.audit(after, since, limit).await?),
            Log::Local(local) => &**local,
        };
        let since = match since {
            None => crate::secret::Timestamp::from_nanos(0),
            Some(w) => crate::api::parse_since(w).ok_or_else(|| {
                anyhow::anyhow!("--since {w:?} is neither an RFC 3339 time nor a duration like 1h")
            })?,
        };
        let query = crate::service::AuditQuery {
            after,
            since,
            workspace: None,
            limit,
            newest: false,
        };
        Ok(s.audit_query(caller, &query)
            .await?
            .into_iter()
            .map(AuditLine::from)
            .collect())
    }

    async fn close(self) {
        if let Log::Local(local) = self {
            local.0.close().await;
        }
    }
}

pub async fn audit(g: &GlobalArgs, a: AuditArgs) -> anyhow::Result<ExitCode> {
    if let Some(AuditCommand::Export(e)) = a.command {
        return export(g, e).await;
    }
    let log = Log::open(g).await?;
    let records = log.read(None, a.since.as_deref(), a.limit).await;
    log.close().await;
    let records = records?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        Output::Table => {
            let mut out = std::io::stdout().lock();
            for rec in records {
                writeln!(out, "{}", table_line(&rec))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One record for people: a coalesced one says how many events it stands for and since when.
fn table_line(rec: &AuditLine) -> String {
    let times = match rec.first_at {
        Some(first) if rec.count > 1 => format!(" ×{} since {}", rec.count, first.rfc3339()),
        _ if rec.count > 1 => format!(" ×{}", rec.count),
        _ => String::new(),
    };
    format!(
        "{} {:<10} {:<16} {}:{}/{} v{} {} {}{times}",
        rec.at.rfc3339(),
        rec.actor,
        rec.action,
        rec.target_kind,
        rec.workspace,
        rec.target,
        rec.version,
        rec.address,
        rec.detail
    )
}

/// Records asked for at once.
const PAGE: u32 = 1000;

async fn export(g: &GlobalArgs, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut sink = Sink::open(&a)?;
    let log = Log::open(g).await?;
    let result = async {
        loop {
            let lines = log.read(Some(sink.after), None, PAGE).await?;
            if !lines.is_empty() {
                sink.write(&lines)?;
            }
            if lines.len() < PAGE as usize {
                if !a.follow {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(a.poll).await;
            }
        }
    }
    .await;
    log.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Where the export writes, and how far it got.
struct Sink {
    /// The id of the last record written.
    after: u64,
    position: Option<PathBuf>,
    file: Option<Rotating>,
    /// Held while the export runs: a second export to the same file or position would
    /// interleave its lines with this one's and move the position under it.
    _lock: Option<nix::fcntl::Flock<File>>,
}

/// An exclusive lock on `PATH.lock`, or an error naming the export that holds it.
fn lock_beside(path: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open \"{}\"", lock_path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another export is writing \"{}\" (it holds \"{}\": {e}); stop it first, or export elsewhere",
            path.display(),
            lock_path.display()
        )
    })
}

/// The file and its rotation.
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    /// When the current file got its first line (seconds since the epoch), kept in the
    /// position file so a restart does not reset the age.
    started: u64,
    rotate_size: Option<u64>,
    rotate_every: Option<Duration>,
    keep: usize,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sink {
    fn open(a: &ExportArgs) -> anyhow::Result<Sink> {
        let to_stdout = a.to == "-";
        if to_stdout && (a.rotate_size.is_some() || a.rotate_every.is_some()) {
            anyhow::bail!("--rotate-size and --rotate-every rotate a file: give --to PATH");
        }
        let position = match (&a.position, to_stdout) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => None,
            (None, false) => Some(PathBuf::from(format!("{}.position", a.to))),
        };
        let lock = match (&position, to_stdout) {
            (_, false) => Some(lock_beside(Path::new(&a.to))?),
            (Some(p), true) => Some(lock_beside(p)?),
            (None, true) => None,
        };
        let (mut after, mut started) = match &position {
            Some(p) => read_position(p)?,
            None => (0, 0),
        };
        let file = if to_stdout {
            None
        } else {
            let path = PathBuf::from(&a.to);
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot open \"{}\" to append to", path.display()))?;
            if let Some(last) = recover_tail(&mut file, &path)? {
                after = after.max(last);
            }
            let size = file.metadata()?.len();
            if size == 0 {
                started = 0;
            }
            Some(Rotating {
                path,
                file,
                size,
                started,
                rotate_size: a.rotate_size,
                rotate_every: a.rotate_every,
                keep: a.keep,
            })
        };
        Ok(Sink {
            after,
            position,
            file,
            _lock: lock,
        })
    }

    /// Writes `lines` (in id order) and then the position: a crash between the two repeats
    /// nothing (see the module's docs).
    fn write(&mut self, lines: &[AuditLine]) -> anyhow::Result<()> {
        let mut text = Vec::with_capacity(lines.len() * 256);
        let mut last = self.after;
        for l in lines {
            // Ids only grow: anything else (a store restored from an older backup, a server
            // that answers another order) would repeat or skip records without a word.
            if l.id <= last {
                anyhow::bail!(
                    "the log answered record {} after record {last}: ids must grow. Was the store \
                     restored from an older backup? Export to a new file (or remove the \
                     position) to start again",
                    l.id
                );
            }
            last = l.id;
            serde_json::to_writer(&mut text, l)?;
            text.push(b'\n');
        }
        let started = match &mut self.file {
            Some(r) => {
                r.rotate_if_due()?;
                r.file
                    .write_all(&text)
                    .and_then(|()| r.file.sync_data())
                    .with_context(|| format!("cannot write \"{}\"", r.path.display()))?;
                if r.size == 0 {
                    r.started = now_secs();
                }
                r.size += text.len() as u64;
                r.started
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(&text)
                    .and_then(|()| out.flush())
                    .context("cannot write to standard output")?;
                0
            }
        };
        self.after = last;
        if let Some(p) = &self.position {
            write_position(p, last, started)?;
        }
        Ok(())
    }
}

impl Rotating {
    /// Moves the file aside (`PATH.YYYYMMDDTHHMMSSZ`) once it is as large or as old as asked,
    /// starts a new one, and deletes the oldest rotated files past `keep`.
    fn rotate_if_due(&mut self) -> anyhow::Result<()> {
        if self.size == 0 {
            return Ok(());
        }
        let by_size = self.rotate_size.is_some_and(|s| self.size >= s);
        let by_age = self
            .rotate_every
            .is_some_and(|e| now_secs().saturating_sub(self.started) >= e.as_secs());
        if !(by_size || by_age) {
            return Ok(());
        }
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(['-', ':'], "");
        let mut aside = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        // More than one rotation in a second: numbered so that names sort in order.
        let mut n = 1;
        while aside.exists() {
            aside = PathBuf::from(format!("{}.{stamp}-{n:04}", self.path.display()));
            n += 1;
        }
        std::fs::rename(&self.path, &aside).with_context(|| {
            format!(
                "cannot rotate \"{}\" to \"{}\"",
                self.path.display(),
                aside.display()
            )
        })?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot create \"{}\"", self.path.display()))?;
        sync_dir(&self.path);
        self.size = 0;
        self.started = now_secs();
        if self.keep > 0 {
            let mut rotated = rotated_files(&self.path)?;
            rotated.sort();
            let excess = rotated.len().saturating_sub(self.keep);
            for old in &rotated[..excess] {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }
}

/// The files a rotation of `path` moved aside, oldest first by name.
fn rotated_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(
        "{}.",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stamp) = name.strip_prefix(&prefix)
            && stamp.len() >= 16
            && stamp.as_bytes()[8] == b'T'
            && stamp[..8].bytes().all(|b| b.is_ascii_digit())
        {
            out.push(dir.join(&name));
        }
    }
    Ok(out)
}

/// The position file: the last id written and when the current file started, or nothing yet.
fn read_position(p: &Path) -> anyhow::Result<(u64, u64)> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read \"{}\"", p.display())),
    };
    let mut words = text.split_whitespace();
    let after = words.next().and_then(|w| w.parse().ok());
    let started = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    match after {
        Some(after) => Ok((after, started)),
        None => anyhow::bail!(
            "\"{}\" is not an export position (it holds the last exported id); remove it to \
             export from the first record",
            p.display()
        ),
    }
}

/// Replaces the position file in one rename, synced: it is never half written.
fn write_position(p: &Path, after: u64, started: u64) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", p.display()));
    let what = || format!("cannot write the export position \"{}\"", p.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(what)?;
    f.write_all(format!("{after} {started}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(what)?;
    std::fs::rename(&tmp, p).with_context(what)?;
    sync_dir(p);
    Ok(())
}

/// Makes a rename or a new file in `path`'s directory durable.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Cuts a partial last line (an export killed mid-write) and answers the id of the last whole
/// line, if the file has one.
fn recover_tail(file: &mut File, path: &Path) -> anyhow::Result<Option<u64>> {
    // A line is a few hundred bytes: the last 64 KiB hold the last whole one, unless a record
    // is huge, and then the tail is read again from further back.
    let mut back = 64 * 1024u64;
    loop {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(None);
        }
        let from = len.saturating_sub(back);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let end = tail.iter().rposition(|&b| b == b'\n');
        let whole = match end {
            Some(i) => from + i as u64 + 1,
            None if from == 0 => 0,
            None => {
                back *= 4;
                continue;
            }
        };
        if whole < len {
            // Opened for appending: set_len is how the partial line goes.
            file.set_len(whole).with_context(|| {
                format!("cannot cut the partial last line of \"{}\"", path.display())
            })?;
            file.sync_data()?;
        }
        let Some(end) = end else {
            return Ok(None);
        };
        let start = match tail[..end].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if from == 0 => 0,
            None => {
                back *= 4;
                continue;
            }
        };
        let line: AuditLine = serde_json::from_slice(&tail[start..end]).with_context(|| {
            format!(
                "the last line of \"{}\" is not an exported audit record; export to a new file",
                path.display()
            )
        })?;
        return Ok(Some(line.id));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_powers_of_1024() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1T").unwrap_err().contains("K, M or G"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
    }
}
