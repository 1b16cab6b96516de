//! Reads the secrets a plan needs from its source and builds the workload's environment block.
//! Every problem is collected, so a failed launch names everything that is missing at once.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::plan::{ExecPlan, SourcePlan, Value};
use crate::auth::Token;
use crate::secret::{SecretName, VALUE_MAX_LEN};
use crate::service::LocalPaths;
use crate::source::{LocalSource, ServerSource, Source, SourceError};

/// The workload's environment, ready for `execve`: `NAME=VALUE\0` entries, wiped on drop (so a
/// failed exec leaves no value behind), plus the memory files `[secret_files]` point at.
pub struct Resolved {
    pub env: Vec<Zeroizing<Vec<u8>>>,
    /// Kept open (and inherited by the workload) for `/proc/self/fd/N` paths.
    pub memfds: Vec<OwnedFd>,
}

/// A secret's bytes as read for the launch.
pub type Bytes = Zeroizing<Vec<u8>>;

/// How often a waited-for directory is looked at again.
const WAIT_POLL: Duration = Duration::from_millis(25);

/// Reads the values of `names` (sorted) from a source, one per name, or every problem.
pub trait Fetch {
    fn fetch(&self, source: &SourcePlan, names: &[SecretName]) -> Result<Vec<Bytes>, Vec<String>>;
}

/// Every source: directories, the local store, servers.
pub struct AnySource;

impl Fetch for AnySource {
    fn fetch(&self, source: &SourcePlan, names: &[SecretName]) -> Result<Vec<Bytes>, Vec<String>> {
        fetch(source, names)
    }
}

/// Directories only: what the lean `secretfs-run` binary links, so that it carries no store,
/// TLS or HTTP code (it hands other sources to `secretfs run`).
pub struct DirOnly;

impl Fetch for DirOnly {
    fn fetch(&self, source: &SourcePlan, names: &[SecretName]) -> Result<Vec<Bytes>, Vec<String>> {
        match source {
            SourcePlan::Dir { path, wait } if !names.is_empty() => fetch_dir(path, names, *wait),
            SourcePlan::Dir { .. } => Ok(Vec::new()),
            _ => Err(vec![
                "this launcher reads directory sources only; use secretfs run".into(),
            ]),
        }
    }
}

/// Reads every needed secret and builds the environment, or returns every problem.
pub fn resolve(plan: &ExecPlan, fetcher: &impl Fetch) -> Result<Resolved, Vec<String>> {
    let names = plan.secret_names();
    let values = fetcher.fetch(&plan.source, &names)?;
    let value_of = |n: &SecretName| -> &Bytes {
        &values[names.binary_search(n).expect("fetched every planned name")]
    };

    let mut problems = Vec::new();
    let mut env: Vec<Bytes> = Vec::with_capacity(plan.inherited.len() + plan.vars.len());
    let mut memfds = Vec::new();
    for (k, v) in &plan.inherited {
        env.push(entry(k.as_bytes(), v.as_bytes()));
    }
    for var in &plan.vars {
        match &var.value {
            Value::Plain(v) => env.push(entry(var.name.as_bytes(), v.as_bytes())),
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
                env.push(entry(var.name.as_bytes(), bytes));
            }
            Value::SecretFile(n) => match &plan.source {
                SourcePlan::Dir { path, .. } => {
                    let file = path.join(n.as_str());
                    env.push(entry(var.name.as_bytes(), file.as_os_str().as_bytes()));
                }
                SourcePlan::Store { .. } | SourcePlan::Server { .. } => {
                    match memory_file(n, value_of(n)) {
                        Ok(fd) => {
                            // This process becomes the workload (exec keeps the pid), so the
                            // path names the same file in every process of the workload, for
                            // as long as it runs: /proc/self would be each opener's own table.
                            let path =
                                format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
                            env.push(entry(var.name.as_bytes(), path.as_bytes()));
                            memfds.push(fd);
                        }
                        Err(e) => problems.push(format!(
                            "cannot make an in-memory file for secret \"{n}\": {e}"
                        )),
                    }
                }
            },
        }
    }
    if problems.is_empty() {
        Ok(Resolved { env, memfds })
    } else {
        Err(problems)
    }
}

fn entry(name: &[u8], value: &[u8]) -> Bytes {
    let mut e = Zeroizing::new(Vec::with_capacity(name.len() + value.len() + 2));
    e.extend_from_slice(name);
    e.push(b'=');
    e.extend_from_slice(value);
    e.push(0);
    e
}

/// A sealed memory file holding `value`, inherited by the workload: `[secret_files]` for
/// sources that have no file of their own, without ever writing the value to a disk. It looks
/// like a mounted secret file: owned by this (the workload's) uid, mode 0400, so tools that check
/// a key file's permissions (`ssh-keygen`, `ssh`) accept it.
fn memory_file(name: &SecretName, value: &[u8]) -> nix::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::sys::stat::{Mode, fchmod};
    // No MFD_CLOEXEC: the descriptor must survive exec.
    let fd = memfd_create(
        format!("secretfs:{name}").as_str(),
        MFdFlags::MFD_ALLOW_SEALING,
    )?;
    // A memfd starts at 0777; the owner's write bit is not needed (the seals forbid writes).
    fchmod(&fd, Mode::S_IRUSR)?;
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
fn fetch(source: &SourcePlan, names: &[SecretName]) -> Result<Vec<Bytes>, Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    match source {
        SourcePlan::Dir { path, wait } => fetch_dir(path, names, *wait),
        SourcePlan::Store { path, key_file } => {
            let paths = LocalPaths::resolve(Some(path.clone()), key_file.clone())
                .map_err(|e| vec![e.to_string()])?;
            let source = LocalSource::open(paths).map_err(|e| vec![e.to_string()])?;
            fetch_source(&source, names)
        }
        SourcePlan::Server {
            urls,
            token_file,
            ca_file,
        } => {
            let token = server_token(token_file.as_deref()).map_err(|e| vec![e])?;
            let source = ServerSource::connect(urls, &token, ca_file.as_deref())
                .map_err(|e| vec![e.to_string()])?;
            fetch_source(&source, names)
        }
    }
}

/// The workload token: the spec's or flag's token file, else `SECRETFS_TOKEN`, else the file
/// `SECRETFS_TOKEN_FILE` names.
fn server_token(file: Option<&Path>) -> Result<Token, String> {
    let from_file = |p: &Path| -> Result<Token, String> {
        let file = crate::auth::read_token_file(p)?;
        if let Some(w) = file.warning {
            eprintln!("warning: {w}");
        }
        Ok(file.token)
    };
    if let Some(p) = file {
        return from_file(p);
    }
    if let Some(t) = std::env::var("SECRETFS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(Token::from_string(t.trim().to_owned()));
    }
    if let Some(p) = std::env::var_os("SECRETFS_TOKEN_FILE").filter(|p| !p.is_empty()) {
        return from_file(Path::new(&p));
    }
    Err(
        "no workload token for the server: set token_file in [source], pass --token-file, or \
         set SECRETFS_TOKEN_FILE"
            .into(),
    )
}

fn fetch_source(source: &dyn Source, names: &[SecretName]) -> Result<Vec<Bytes>, Vec<String>> {
    let results = source.read(names).map_err(|e| vec![e.to_string()])?;
    let mut values = Vec::with_capacity(names.len());
    let mut problems = Vec::new();
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok((_, value)) => {
                values.push(Zeroizing::new(value.expose_secret().to_vec()));
            }
            Err(SourceError::NotFound(_)) => problems.push(format!(
                "secret \"{name}\" not found in {}",
                source.describe()
            )),
            Err(e) => problems.push(format!("secret \"{name}\": {e}")),
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

/// Why one file of a directory source cannot be used yet.
enum Missing {
    /// Not there (or empty): worth waiting for.
    Absent(String),
    /// There but unusable: waiting will not help.
    Broken(String),
}

fn read_secret_file(dir: &Path, name: &SecretName) -> Result<Bytes, Missing> {
    let path = dir.join(name.as_str());
    let shown = path.display();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Missing::Absent(format!(
                "secret \"{name}\" not found: no file {shown}"
            )));
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(Missing::Broken(format!(
                "secret \"{name}\": {shown} is not readable by uid {} (permission denied)",
                nix::unistd::getuid()
            )));
        }
        Err(e) => {
            return Err(Missing::Broken(format!(
                "secret \"{name}\": cannot open {shown}: {e}"
            )));
        }
    };
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    match file.take(VALUE_MAX_LEN as u64 + 1).read_to_end(&mut buf) {
        Ok(_) if buf.len() > VALUE_MAX_LEN => Err(Missing::Broken(format!(
            "secret \"{name}\": {shown} is larger than the 1 MiB limit"
        ))),
        Ok(0) => Err(Missing::Absent(format!(
            "secret \"{name}\": {shown} is empty"
        ))),
        Ok(_) => Ok(buf),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(Missing::Broken(format!(
            "secret \"{name}\": {shown} is a directory, not a secret file"
        ))),
        Err(e) => Err(Missing::Broken(format!(
            "secret \"{name}\": cannot read {shown}: {e}"
        ))),
    }
}

fn fetch_dir(
    dir: &Path,
    names: &[SecretName],
    wait: Option<Duration>,
) -> Result<Vec<Bytes>, Vec<String>> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let mut values = Vec::with_capacity(names.len());
        let mut problems = Vec::new();
        let mut only_absent = true;
        // The directory itself first: one clear problem instead of "no file" per name.
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(vec![format!(
                    "the source {} is not a directory; give --dir the directory that holds \
                     the secret files",
                    dir.display()
                )]);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => problems.push(format!(
                "the source directory {} does not exist (is the secretfs mount or the secret \
                 volume there yet? --wait waits for it)",
                dir.display()
            )),
            Err(e) => {
                return Err(vec![format!(
                    "cannot use the source directory {}: {e}",
                    dir.display()
                )]);
            }
        }
        let dir_missing = !problems.is_empty();
        for name in names.iter().filter(|_| !dir_missing) {
            match read_secret_file(dir, name) {
                Ok(v) => values.push(v),
                Err(Missing::Absent(p)) => problems.push(p),
                Err(Missing::Broken(p)) => {
                    only_absent = false;
                    problems.push(p);
                }
            }
        }
        if problems.is_empty() {
            return Ok(values);
        }
        match deadline {
            Some(d) if only_absent && Instant::now() < d => {
                drop(values);
                std::thread::sleep(WAIT_POLL);
            }
            Some(_) if only_absent => {
                let waited = humantime::format_duration(wait.unwrap_or_default());
                problems.push(format!(
                    "gave up after waiting {waited} for {} to hold every secret",
                    dir.display()
                ));
                return Err(problems);
            }
            _ => return Err(problems),
        }
    }
}

/// The `PATH` the workload will have, to find its command the way a shell would.
pub fn child_path(env: &[Bytes]) -> Option<OsString> {
    env.iter().find_map(|e| {
        e.strip_prefix(b"PATH=")
            .map(|v| OsStr::from_bytes(v.strip_suffix(&[0]).unwrap_or(v)).to_owned())
    })
}
