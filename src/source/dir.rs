//! A directory of secret files as a source: a secretfs mount, a Kubernetes or Docker secret
//! volume, systemd's `$CREDENTIALS_DIRECTORY`. One file per secret, named as the secret; a
//! directory has no versions and no kinds, so its stamps are what `stat` sees of each file
//! (device, inode, size, mtime: a secretfs rotation and a Kubernetes `..data` swap both change
//! them), and the files themselves are the marks a follower looks at.
//!
//! What the lean `secretfs-run` links of the sources: nothing here reaches a store or a server.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{Source, SourceError, Values};
use crate::secret::{
    SecretKind, SecretName, SecretValue, Timestamp, VALUE_MAX_LEN, ValueLimit, ValueStamp,
};

/// How often a waited-for directory is looked at again.
const WAIT_POLL: Duration = Duration::from_millis(25);

/// A directory source.
#[derive(Debug, Clone)]
pub struct DirSource {
    path: PathBuf,
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DirSource { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The values of `names`, in order, or every problem at once. With `wait`, a directory
    /// that is not there yet, or lacks a file or has it empty (a mount still starting, a volume
    /// still being written), is looked at again until `wait` has passed; a file that is there
    /// but unusable (unreadable, too large, a directory) fails at once.
    pub fn read_waiting(
        &self,
        names: &[SecretName],
        wait: Option<Duration>,
    ) -> Result<Vec<SecretValue>, Vec<String>> {
        fetch_dir(&self.path, names, wait)
    }

    /// One file's stamp, or `None` when it is not there.
    fn stamp(&self, name: &SecretName) -> Option<ValueStamp> {
        let m = std::fs::metadata(self.path.join(name.as_str())).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(&mut h);
        Some(ValueStamp {
            name: name.clone(),
            version: h.finish(),
            updated_at: Timestamp::from_nanos(
                m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ),
        })
    }
}

impl Source for DirSource {
    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError> {
        Ok(names
            .iter()
            .map(|n| match read_secret_file(&self.path, n) {
                Ok(v) => Ok(v),
                Err(Missing::Absent(_)) if !self.path.join(n.as_str()).exists() => {
                    Err(SourceError::NotFound(n.clone()))
                }
                Err(Missing::Absent(p) | Missing::Broken(p)) => Err(SourceError::Failed(p)),
            })
            .collect())
    }

    /// What `stat` sees of each file of `only` (a directory has no kinds: `kinds` is ignored,
    /// and there is nothing to wait on).
    fn stamps(
        &self,
        only: &[SecretName],
        _kinds: &[SecretKind],
        _watch: Option<(&str, Duration)>,
    ) -> Result<(Option<String>, Vec<ValueStamp>), SourceError> {
        Ok((None, only.iter().filter_map(|n| self.stamp(n)).collect()))
    }

    fn kinds(&self) -> Result<Option<Vec<(SecretName, SecretKind)>>, SourceError> {
        Ok(None)
    }

    fn marks(&self, only: &[SecretName]) -> Vec<PathBuf> {
        only.iter().map(|n| self.path.join(n.as_str())).collect()
    }
}

/// Why one file of a directory source cannot be used yet.
enum Missing {
    /// Not there (or empty): worth waiting for.
    Absent(String),
    /// There but unusable: waiting will not help.
    Broken(String),
}

fn read_secret_file(dir: &Path, name: &SecretName) -> Result<SecretValue, Missing> {
    let path = dir.join(name.as_str());
    let shown = path.display();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let names: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| !n.starts_with('.'))
                        .collect()
                })
                .unwrap_or_default();
            let suggestion =
                crate::secret::did_you_mean(name.as_str(), names.iter().map(String::as_str));
            return Err(Missing::Absent(format!(
                "secret \"{name}\" not found: no file {shown}{suggestion}"
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
    match read_zeroized(file, VALUE_MAX_LEN + 1) {
        Ok(buf) if buf.len() > VALUE_MAX_LEN => Err(Missing::Broken(format!(
            "secret \"{name}\": {shown} is larger than the 1 MiB limit"
        ))),
        Ok(buf) if buf.is_empty() => Err(Missing::Absent(format!(
            "secret \"{name}\": {shown} is empty"
        ))),
        Ok(buf) => SecretValue::new(buf, ValueLimit::default())
            .map_err(|e| Missing::Broken(format!("secret \"{name}\": {shown}: {e}"))),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(Missing::Broken(format!(
            "secret \"{name}\": {shown} is a directory, not a secret file"
        ))),
        Err(e) => Err(Missing::Broken(format!(
            "secret \"{name}\": cannot read {shown}: {e}"
        ))),
    }
}

/// Reads up to `limit` bytes into zeroized memory that never moves while it holds a partial
/// value: a plain `read_to_end` grows its `Vec` by reallocation and leaves the old bytes in
/// freed memory. Values are small, so a page first (no `fstat` on the launcher's path); a
/// larger file moves once into a buffer one byte past its size, the old one wiped as it drops.
fn read_zeroized(mut file: File, limit: usize) -> std::io::Result<Zeroizing<Vec<u8>>> {
    const FIRST: usize = 4096;
    let mut buf = Zeroizing::new(vec![0u8; FIRST.min(limit)]);
    let mut len = 0;
    loop {
        if len == buf.len() {
            if len == limit {
                break;
            }
            // One byte past the file's size, so the end is seen inside this buffer and the value
            // moves only once.
            let size = file.metadata().map_or(0, |m| m.len() as usize);
            let want = if size >= len { size + 1 } else { len * 2 };
            let mut bigger = Zeroizing::new(vec![0u8; want.min(limit).max(len + 1)]);
            bigger[..len].copy_from_slice(&buf[..len]);
            buf = bigger;
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Shrinking never reallocates; the bytes past `len` are zeros.
    buf.truncate(len);
    Ok(buf)
}

fn fetch_dir(
    dir: &Path,
    names: &[SecretName],
    wait: Option<Duration>,
) -> Result<Vec<SecretValue>, Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_whole_small_or_large_and_stop_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        for len in [1usize, 4095, 4096, 4097, 100_000] {
            let path = dir.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let got = read_zeroized(std::fs::File::open(&path).unwrap(), 1 << 20).unwrap();
            assert_eq!(&got[..], &bytes[..], "{len} bytes");
            // Past the limit: exactly limit bytes, so the caller can tell it is too large.
            let cut = read_zeroized(std::fs::File::open(&path).unwrap(), 3000).unwrap();
            assert_eq!(cut.len(), len.min(3000));
        }
    }

    #[test]
    fn a_files_stamp_moves_when_it_is_replaced_and_not_when_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let source = DirSource::new(dir.path());
        let names = [
            SecretName::parse("A").unwrap(),
            SecretName::parse("B").unwrap(),
        ];
        std::fs::write(dir.path().join("A"), b"one").unwrap();
        let stamps = |s: &DirSource| s.stamps(&names, &[], None).unwrap();
        let (revision, first) = stamps(&source);
        assert_eq!(revision, None);
        assert_eq!(first.len(), 1, "B is not there: no stamp");
        let _ = source.read(&names[..1]).unwrap();
        assert_eq!(stamps(&source).1, first, "a read changes nothing");
        // Replaced as a rotation replaces it: a new inode under the name.
        std::fs::write(dir.path().join("A.new"), b"two").unwrap();
        std::fs::rename(dir.path().join("A.new"), dir.path().join("A")).unwrap();
        let second = stamps(&source).1;
        assert_ne!(second, first);
        assert_eq!(second[0].name, names[0]);
        std::fs::write(dir.path().join("B"), b"b").unwrap();
        assert_eq!(stamps(&source).1.len(), 2);
        assert_eq!(source.marks(&names)[1], dir.path().join("B"));
        assert!(source.kinds().unwrap().is_none());
        // Per name: found, and not found as such.
        std::fs::remove_file(dir.path().join("B")).unwrap();
        let read = source.read(&names).unwrap();
        assert_eq!(read[0].as_ref().unwrap().expose_secret(), b"two");
        assert!(matches!(read[1], Err(SourceError::NotFound(_))));
    }
}
