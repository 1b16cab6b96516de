//! Reads the secrets a plan needs from its source and builds the workload's environment block.
//! Every problem is collected, so a failed launch names everything that is missing at once.

use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use zeroize::Zeroizing;

use super::plan::{ExecPlan, SourcePlan, Value};
use crate::render::{Listed, Recipe};
use crate::secret::{SecretKind, SecretName, SecretValue};
use crate::service::LocalPaths;
use crate::source::dir::DirSource;
use crate::source::follow::{FirstLook, Followed};
use crate::source::{Credential, LocalSource, ServerSource, Source, SourceError};

/// The workload's environment, ready for `execve`, plus the memory files `[secret_files]` point
/// at.
pub struct Resolved {
    pub env: EnvBlock,
    /// Kept open (and inherited by the workload) for `/proc/PID/fd/N` paths.
    pub memfds: Vec<OwnedFd>,
    /// The variables that hold such a path. For a child ([`resolve_for_child`]) they say
    /// `/proc/self/...`, for the hand-over to make into the child's own PID.
    pub memfd_vars: Vec<OsString>,
    /// With `--mask`, the values by name, for the masker (else empty).
    pub values: Vec<(SecretName, SecretValue)>,
}

/// The environment as one zeroized buffer of `NAME=VALUE\0` entries, wiped on drop (so a failed
/// exec leaves no value behind). Its size is computed before anything is written: a buffer
/// that grew would leave copies of the values in the memory it moved out of. (`push` beyond
/// the reserved size still works, moving into a new zeroized buffer and wiping the old one.)
pub struct EnvBlock {
    bytes: Zeroizing<Vec<u8>>,
    /// Where each entry ends (after its NUL).
    ends: Vec<usize>,
}

impl EnvBlock {
    /// An empty block with room for `bytes` bytes of entries (`name=value\0` each).
    pub fn with_capacity(bytes: usize, entries: usize) -> Self {
        EnvBlock {
            bytes: Zeroizing::new(Vec::with_capacity(bytes)),
            ends: Vec::with_capacity(entries),
        }
    }

    /// The bytes an entry of `name` and `value` takes.
    pub fn entry_len(name: &[u8], value: &[u8]) -> usize {
        name.len() + value.len() + 2
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        crate::secret::reserve_zeroized(&mut self.bytes, Self::entry_len(name, value));
        self.bytes.extend_from_slice(name);
        self.bytes.push(b'=');
        self.bytes.extend_from_slice(value);
        self.bytes.push(0);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each entry, its NUL included.
    pub fn entries(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }

    /// The process's own environment, as the block a re-exec hands on.
    pub fn inherited() -> Self {
        let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let size = vars
            .iter()
            .map(|(k, v)| Self::entry_len(k.as_bytes(), v.as_bytes()))
            .sum();
        let mut block = EnvBlock::with_capacity(size, vars.len());
        for (k, v) in &vars {
            block.push(k.as_bytes(), v.as_bytes());
        }
        block
    }
}

/// Reads the values of `names` (sorted) from a source, one per name, or every problem.
pub trait Fetch {
    fn fetch(
        &self,
        source: &SourcePlan,
        names: &[SecretName],
    ) -> Result<Vec<SecretValue>, Vec<String>>;

    /// The name and kind of every secret the source lets this identity use, for rendered
    /// files; `None` for a directory, which has files but no kinds.
    fn list(
        &self,
        source: &SourcePlan,
    ) -> Result<Option<Vec<(SecretName, SecretKind)>>, Vec<String>>;

    /// Looks once at what a supervised run uses, for `source::follow` to follow from there.
    fn first_look(
        &self,
        source: &SourcePlan,
        followed: &Followed,
    ) -> Result<FirstLook, Vec<String>>;

    /// What the source says of each of `names` now, one answer per name: what the broker
    /// needs to tell a deleted secret (refuse) from an outage (keep the last value).
    fn read_each(
        &self,
        source: &SourcePlan,
        names: &[SecretName],
    ) -> Result<crate::source::Values, SourceError>;

    /// Starts the brokers of `routes` (`values` in their order); their addresses in order.
    /// (Behind the trait so that the lean launcher, which hands brokers to `secretfs run`,
    /// links no HTTP server.)
    fn start_broker(
        &self,
        source: &SourcePlan,
        routes: &[super::broker::Route],
        values: &[&SecretValue],
    ) -> Result<StartedBroker, Vec<String>>;
}

/// A broker started, and its listeners' addresses in the routes' order.
pub type StartedBroker = (Box<dyn Brokering>, Vec<super::broker::Address>);

/// A running broker, told of each change of its secrets.
pub trait Brokering {
    fn update(&self, secret: &SecretName, now: &Result<SecretValue, SourceError>);
}

impl Brokering for super::proxy::Running {
    fn update(&self, secret: &SecretName, now: &Result<SecretValue, SourceError>) {
        super::proxy::Running::update(self, secret, now);
    }
}

/// Every source: directories, the local store, servers.
pub struct AnySource;

impl AnySource {
    fn open(source: &SourcePlan) -> Result<Box<dyn Source>, Vec<String>> {
        Ok(match source {
            SourcePlan::Dir { path, .. } => Box::new(DirSource::new(path)),
            SourcePlan::Store { path, key_file } => Box::new(open_store(path, key_file)?),
            server @ SourcePlan::Server { .. } => Box::new(open_server(server)?),
        })
    }
}

impl Fetch for AnySource {
    fn fetch(
        &self,
        source: &SourcePlan,
        names: &[SecretName],
    ) -> Result<Vec<SecretValue>, Vec<String>> {
        fetch(source, names)
    }

    fn list(
        &self,
        source: &SourcePlan,
    ) -> Result<Option<Vec<(SecretName, SecretKind)>>, Vec<String>> {
        match source {
            SourcePlan::Dir { .. } => Ok(None),
            other => Self::open(other)?.kinds().map_err(|e| vec![e.to_string()]),
        }
    }

    fn first_look(
        &self,
        source: &SourcePlan,
        followed: &Followed,
    ) -> Result<FirstLook, Vec<String>> {
        FirstLook::take(Self::open(source)?, followed.clone()).map_err(|e| vec![e.to_string()])
    }

    fn read_each(
        &self,
        source: &SourcePlan,
        names: &[SecretName],
    ) -> Result<crate::source::Values, SourceError> {
        Self::open(source)
            .map_err(|p| SourceError::Unavailable(p.join("; ")))?
            .read(names)
    }

    fn start_broker(
        &self,
        source: &SourcePlan,
        routes: &[super::broker::Route],
        values: &[&SecretValue],
    ) -> Result<StartedBroker, Vec<String>> {
        // The audit goes to the store or the server, through a source of its own (its
        // requests never wait behind the follower's long-poll); a directory keeps none.
        let audit = match source {
            SourcePlan::Dir { .. } => None,
            other => Some(Self::open(other)?),
        };
        let (running, addresses) = super::proxy::Running::start(routes, values, audit)?;
        Ok((Box::new(running), addresses))
    }
}

/// Directories only: what the lean `secretfs-run` binary links, so that it carries no store,
/// TLS or HTTP code (it hands other sources to `secretfs run`).
pub struct DirOnly;

impl Fetch for DirOnly {
    fn fetch(
        &self,
        source: &SourcePlan,
        names: &[SecretName],
    ) -> Result<Vec<SecretValue>, Vec<String>> {
        match source {
            SourcePlan::Dir { path, wait } if !names.is_empty() => {
                DirSource::new(path).read_waiting(names, *wait)
            }
            SourcePlan::Dir { .. } => Ok(Vec::new()),
            _ => Err(vec![
                "this launcher reads directory sources only; use secretfs run".into(),
            ]),
        }
    }

    fn list(
        &self,
        _source: &SourcePlan,
    ) -> Result<Option<Vec<(SecretName, SecretKind)>>, Vec<String>> {
        Ok(None)
    }

    fn first_look(
        &self,
        source: &SourcePlan,
        followed: &Followed,
    ) -> Result<FirstLook, Vec<String>> {
        match source {
            SourcePlan::Dir { path, .. } => {
                FirstLook::take(Box::new(DirSource::new(path)), followed.clone())
                    .map_err(|e| vec![e.to_string()])
            }
            _ => Err(vec![
                "this launcher follows directory sources only; use secretfs run".into(),
            ]),
        }
    }

    fn read_each(
        &self,
        source: &SourcePlan,
        names: &[SecretName],
    ) -> Result<crate::source::Values, SourceError> {
        match source {
            SourcePlan::Dir { path, .. } => DirSource::new(path).read(names),
            _ => Err(SourceError::Failed(
                "this launcher reads directory sources only; use secretfs run".into(),
            )),
        }
    }

    fn start_broker(
        &self,
        _source: &SourcePlan,
        _routes: &[super::broker::Route],
        _values: &[&SecretValue],
    ) -> Result<StartedBroker, Vec<String>> {
        Err(vec![
            "secretfs-run hands brokers to secretfs run; install secretfs beside it".into(),
        ])
    }
}

/// Reads every needed secret and builds the environment, or returns every problem. Memory
/// files are named by this process's PID: it becomes the workload.
pub fn resolve(plan: &ExecPlan, fetcher: &impl Fetch) -> Result<Resolved, Vec<String>> {
    resolve_as(plan, fetcher, &std::process::id().to_string())
}

/// As [`resolve`], for a workload started as a child: its memory files' paths say
/// `/proc/self/fd/N` until the hand-over ([`super::exec::handover`]) names the child's PID.
pub fn resolve_for_child(plan: &ExecPlan, fetcher: &impl Fetch) -> Result<Resolved, Vec<String>> {
    resolve_as(plan, fetcher, "self")
}

fn resolve_as(
    plan: &ExecPlan,
    fetcher: &impl Fetch,
    proc_dir: &str,
) -> Result<Resolved, Vec<String>> {
    let mut problems = Vec::new();
    let mut names = plan.secret_names();
    // Rendered files: what the source lists decides a built-in's secrets, and a template's
    // reference to a secret it does not list is reported with the template's line (not
    // fetched, so not reported twice).
    let listing = if plan.files.is_empty() {
        None
    } else {
        fetcher.list(&plan.source)?
    };
    if let Some(listing) = &listing {
        let listed: Vec<Listed<'_>> = listing.iter().map(|(n, k)| (n, *k)).collect();
        for f in &plan.files {
            match f.uses(&listed) {
                Ok(used) => names.extend(used),
                Err(e) => problems.extend(e),
            }
        }
        let by_vars: Vec<SecretName> = plan
            .vars
            .iter()
            .filter_map(|v| match &v.value {
                Value::Secret(n) | Value::SecretFile(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names.retain(|n| listing.iter().any(|(m, _)| m == n) || by_vars.contains(n));
        // A file that cannot be made: nothing is read (a retrying supervisor must not read
        // and audit every value each time), but every problem is still said: the templates'
        // references to secrets the source does not list, with their lines.
        if !problems.is_empty() {
            for f in plan
                .files
                .iter()
                .filter(|f| matches!(f.recipe, Recipe::Template(_)))
            {
                let listed_only =
                    |n: &SecretName| listing.iter().any(|(m, _)| m == n).then_some(&b""[..]);
                if let Err(e) = f.render(&listed, listed_only) {
                    problems.extend(e);
                }
            }
            return Err(problems);
        }
    }
    let values = match fetcher.fetch(&plan.source, &names) {
        Ok(v) => v,
        Err(e) => {
            problems.extend(e);
            return Err(problems);
        }
    };
    let value_of = |n: &SecretName| -> &[u8] {
        values[names.binary_search(n).expect("fetched every planned name")].expose_secret()
    };
    let rendered = render_files(plan, listing.as_deref(), &names, &value_of, &mut problems);

    let mut files = MemoryFiles {
        proc_dir,
        fds: Vec::new(),
        vars: Vec::new(),
    };
    // Sized first, from what each variable will hold (a file variable's path is at most
    // `/proc/PID/fd/N` or the source's path plus the name), so the block never grows.
    let file_path_len = |n: &SecretName| match &plan.source {
        SourcePlan::Dir { path, .. } => path.as_os_str().len() + 1 + n.as_str().len(),
        _ => 40,
    };
    let size: usize = plan
        .inherited
        .iter()
        .map(|(k, v)| EnvBlock::entry_len(k.as_bytes(), v.as_bytes()))
        .chain(plan.vars.iter().map(|var| {
            var.name.len()
                + 2
                + match &var.value {
                    Value::Plain(v) => v.len(),
                    Value::Secret(n) => value_of(n).len(),
                    Value::SecretFile(n) => file_path_len(n),
                    Value::Rendered(_) => 40,
                }
        }))
        .sum();
    let mut env = EnvBlock::with_capacity(size, plan.inherited.len() + plan.vars.len());
    for (k, v) in &plan.inherited {
        env.push(k.as_bytes(), v.as_bytes());
    }
    for var in &plan.vars {
        match &var.value {
            Value::Plain(v) => env.push(var.name.as_bytes(), v.as_bytes()),
            Value::Secret(n) => {
                let bytes = value_of(n);
                if bytes.contains(&0) {
                    problems.push(format!(
                        "secret \"{n}\" (for {}) contains a NUL byte, which an environment \
                         variable cannot hold; deliver it as a file with [secret_files] or \
                         --secret-file {}_FILE={n}",
                        var.name, var.name
                    ));
                    continue;
                }
                env.push(var.name.as_bytes(), bytes);
            }
            Value::SecretFile(n) => match &plan.source {
                SourcePlan::Dir { path, .. } => {
                    let file = path.join(n.as_str());
                    env.push(var.name.as_bytes(), file.as_os_str().as_bytes());
                }
                SourcePlan::Store { .. } | SourcePlan::Server { .. } => {
                    if let Err(e) = files.add(&mut env, var, n.as_str(), value_of(n), 0o400) {
                        problems.push(format!(
                            "cannot make an in-memory file for secret \"{n}\": {e}"
                        ));
                    }
                }
            },
            Value::Rendered(f) => {
                // Not rendered: its problems are reported already.
                let Some((_, bytes)) = rendered.iter().find(|(n, _)| n == f) else {
                    continue;
                };
                let mode = plan
                    .files
                    .iter()
                    .find(|x| &x.name == f)
                    .and_then(|x| x.mode)
                    .unwrap_or(0o400);
                if let Err(e) = files.add(&mut env, var, f, bytes, mode) {
                    problems.push(format!(
                        "cannot make an in-memory file for the rendered file \"{f}\": {e}"
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        let values = if plan.mask {
            names.into_iter().zip(values).collect()
        } else {
            Vec::new()
        };
        Ok(Resolved {
            env,
            memfds: files.fds,
            memfd_vars: files.vars,
            values,
        })
    } else {
        Err(problems)
    }
}

/// The memory files made for a workload, and the variables that name them.
struct MemoryFiles<'a> {
    /// `/proc/<this>/fd/N`: the workload's PID, or `self` before the hand-over.
    proc_dir: &'a str,
    fds: Vec<OwnedFd>,
    vars: Vec<OsString>,
}

impl MemoryFiles<'_> {
    /// A memory file holding `bytes`, its path in `var`.
    fn add(
        &mut self,
        env: &mut EnvBlock,
        var: &super::plan::Var,
        name: &str,
        bytes: &[u8],
        mode: u16,
    ) -> nix::Result<()> {
        let fd = memory_file(name, bytes, mode)?;
        // The workload's PID (exec keeps it), so the path names the same file in every process
        // of the workload, for as long as it runs: /proc/self would be each opener's own table.
        let path = format!("/proc/{}/fd/{}", self.proc_dir, fd.as_raw_fd());
        env.push(var.name.as_bytes(), path.as_bytes());
        self.fds.push(fd);
        self.vars.push(OsString::from(&var.name));
        Ok(())
    }
}

/// Renders the plan's files from the fetched values; `listing` is the source's (name, kind) of
/// every secret, or, for a directory, `None`: then what was fetched is what there is. Problems
/// (a template's reference to a secret that is not there, with its line) go to `problems`.
fn render_files<'v>(
    plan: &ExecPlan,
    listing: Option<&[(SecretName, SecretKind)]>,
    fetched: &[SecretName],
    value_of: &impl Fn(&SecretName) -> &'v [u8],
    problems: &mut Vec<String>,
) -> Vec<(String, Zeroizing<Vec<u8>>)> {
    let listed: Vec<Listed<'_>> = match listing {
        Some(l) => l.iter().map(|(n, k)| (n, *k)).collect(),
        None => fetched.iter().map(|n| (n, SecretKind::Custom)).collect(),
    };
    let mut out = Vec::new();
    for f in &plan.files {
        if matches!(f.recipe, Recipe::Builtin { .. }) && listing.is_none() {
            // Refused by the plan already; never rendered from a guess at kinds.
            continue;
        }
        let value = |n: &SecretName| fetched.binary_search(n).ok().map(|_| value_of(n));
        match f.render(&listed, value) {
            Ok(r) => {
                for note in &r.left_out {
                    eprintln!("warning: {note}");
                }
                out.push((f.name.clone(), r.bytes));
            }
            Err(e) => problems.extend(e),
        }
    }
    out
}

/// Reads a template of a files spec: a regular file whose real path (symbolic links resolved)
/// is inside `base`, the spec's directory.
pub fn read_template(base: &Path, path: &Path) -> std::io::Result<String> {
    let real = path.canonicalize()?;
    if !real.starts_with(base.canonicalize()?) {
        return Err(std::io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "it resolves to {}, outside the files spec's directory",
                real.display()
            ),
        ));
    }
    if !real.metadata()?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    std::fs::read_to_string(real)
}

/// A sealed memory file holding `value`, inherited by the workload: `[secret_files]` for
/// sources that have no file of their own, without ever writing the value to a disk. It looks
/// like a mounted secret file: owned by this (the workload's) uid, mode 0400, so tools that check
/// a key file's permissions (`ssh-keygen`, `ssh`) accept it.
fn memory_file(name: &str, value: &[u8], mode: u16) -> nix::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::sys::stat::{Mode, fchmod};
    // No MFD_CLOEXEC: the descriptor must survive exec.
    let fd = memfd_create(
        format!("secretfs:{name}").as_str(),
        MFdFlags::MFD_ALLOW_SEALING,
    )?;
    // A memfd starts at 0777; the owner's write bit is not needed (the seals forbid writes).
    fchmod(&fd, Mode::from_bits_truncate(u32::from(mode) & 0o444))?;
    let mut written = 0;
    while written < value.len() {
        written += nix::unistd::write(&fd, &value[written..])?;
    }
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// The values of `names` (sorted), one per name, or every problem.
fn fetch(source: &SourcePlan, names: &[SecretName]) -> Result<Vec<SecretValue>, Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    match source {
        SourcePlan::Dir { path, wait } => DirSource::new(path).read_waiting(names, *wait),
        SourcePlan::Store { path, key_file } => {
            let store = open_store(path, key_file)?;
            fetch_source(&store, names, || {
                known_names(store.kinds().map(Option::unwrap_or_default))
            })
        }
        // A server's read answers found and missing in one request; listing for a "did you
        // mean" would be a second (and the launcher reads in one).
        server @ SourcePlan::Server { .. } => fetch_source(&open_server(server)?, names, Vec::new),
    }
}

fn open_store(
    path: &Option<std::path::PathBuf>,
    key_file: &Option<std::path::PathBuf>,
) -> Result<LocalSource, Vec<String>> {
    let paths =
        LocalPaths::resolve(path.clone(), key_file.clone()).map_err(|e| vec![e.to_string()])?;
    LocalSource::open(paths).map_err(|e| vec![e.to_string()])
}

/// A server source of the plan, with its credential.
fn open_server(plan: &SourcePlan) -> Result<ServerSource, Vec<String>> {
    let SourcePlan::Server {
        urls,
        credential,
        ca_file,
    } = plan
    else {
        unreachable!("open_server is given server sources only");
    };
    let credential = Credential::open(credential).map_err(|e| vec![e])?;
    ServerSource::connect(urls, credential, ca_file.as_deref()).map_err(|e| vec![e.to_string()])
}

/// The names a source may serve, for a "did you mean" (none when it cannot say).
fn known_names(
    listed: Result<Vec<(SecretName, crate::secret::SecretKind)>, SourceError>,
) -> Vec<String> {
    listed
        .map(|l| l.into_iter().map(|(n, _)| n.as_str().to_owned()).collect())
        .unwrap_or_default()
}

/// The values of `names` from `source`, or every problem; a name not found gets the closest
/// one `known` lists (asked only then).
fn fetch_source(
    source: &dyn Source,
    names: &[SecretName],
    known: impl FnOnce() -> Vec<String>,
) -> Result<Vec<SecretValue>, Vec<String>> {
    let results = source.read(names).map_err(|e| vec![e.to_string()])?;
    let mut values = Vec::with_capacity(names.len());
    let mut problems = Vec::new();
    let mut known = Some(known);
    let mut listed: Vec<String> = Vec::new();
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(value) => values.push(value),
            Err(SourceError::NotFound(_)) => {
                if let Some(k) = known.take() {
                    listed = k();
                }
                let suggestion =
                    crate::secret::did_you_mean(name.as_str(), listed.iter().map(String::as_str));
                problems.push(format!(
                    "secret \"{name}\" not found in {}{suggestion}",
                    source.describe()
                ));
            }
            Err(e) => problems.push(format!("secret \"{name}\": {e}")),
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

/// The `PATH` the workload will have, to find its command the way a shell would.
pub fn child_path(env: &EnvBlock) -> Option<OsString> {
    env.entries().find_map(|e| {
        e.strip_prefix(b"PATH=")
            .map(|v| OsStr::from_bytes(v.strip_suffix(&[0]).unwrap_or(v)).to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::EnvBlock;

    #[test]
    fn a_sized_block_never_moves_and_a_grown_one_keeps_every_entry() {
        let entries = [("A", "1"), ("PATH", "/usr/bin:/bin"), ("TOKEN", "xyz")];
        let size = entries
            .iter()
            .map(|(k, v)| EnvBlock::entry_len(k.as_bytes(), v.as_bytes()))
            .sum();
        let mut block = EnvBlock::with_capacity(size, entries.len());
        let start = block.bytes.as_ptr();
        for (k, v) in entries {
            block.push(k.as_bytes(), v.as_bytes());
        }
        // Sized right: written in place, never moved (no copy of a value left behind).
        assert_eq!(block.bytes.as_ptr(), start);
        assert_eq!(block.bytes.len(), size);
        let seen: Vec<&[u8]> = block.entries().collect();
        assert_eq!(
            seen,
            [&b"A=1\0"[..], b"PATH=/usr/bin:/bin\0", b"TOKEN=xyz\0"]
        );
        assert_eq!(
            super::child_path(&block).as_deref(),
            Some(std::ffi::OsStr::new("/usr/bin:/bin"))
        );
        // Too small: it moves into a bigger buffer, and every entry is still whole.
        let mut small = EnvBlock::with_capacity(2, 0);
        for (k, v) in entries {
            small.push(k.as_bytes(), v.as_bytes());
        }
        assert_eq!(small.entries().collect::<Vec<_>>(), seen);
        assert_eq!(small.len(), 3);
    }
}
