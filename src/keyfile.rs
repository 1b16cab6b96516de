//! The master key file: one line of 64 hex digits per key, created with mode 0600 on first use
//! and refused when its mode lets group or others in. The first line is the current key; lines
//! after it are previous keys, kept only while a key rotation re-seals what they sealed.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::{KEY_LEN, MasterKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file \"{}\" does not exist", .0.display())]
    NotFound(PathBuf),
    #[error(
        "key file \"{path}\" is accessible by group or others (mode {mode:04o}); run \"chmod 600 {path}\"",
        path = .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "key file \"{}\" is not a secretfs key file (expected lines of 64 hex digits, one key each); point \
         --key-file at the key created with this store",
        .0.display()
    )]
    Malformed(PathBuf),
    #[error("key file \"{}\" already exists; refusing to overwrite a key", .0.display())]
    AlreadyExists(PathBuf),
    #[error("cannot {what} key file \"{}\": {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyFileError + 'a {
    move |source| KeyFileError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The keys of a key file: the current one, and previous ones still needed to open values.
pub struct KeyRing {
    pub current: MasterKey,
    pub previous: Vec<MasterKey>,
}

impl KeyRing {
    pub fn sealer(&self) -> crate::crypto::Sealer {
        crate::crypto::Sealer::with_previous(&self.current, &self.previous)
    }
}

/// Loads the current key at `path`.
pub fn load(path: &Path) -> Result<MasterKey, KeyFileError> {
    load_ring(path).map(|r| r.current)
}

/// Loads every key at `path`, refusing the file if group or others have any access to it.
pub fn load_ring(path: &Path) -> Result<KeyRing, KeyFileError> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyFileError::NotFound(path.to_owned()));
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    if !meta.is_file() || meta.len() > 16 * 1024 {
        return Err(KeyFileError::Malformed(path.to_owned()));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.read_to_end(&mut text).map_err(io_err("read", path))?;
    let mut keys = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse)
        .collect::<Option<Vec<MasterKey>>>()
        .ok_or_else(|| KeyFileError::Malformed(path.to_owned()))?;
    if keys.is_empty() {
        return Err(KeyFileError::Malformed(path.to_owned()));
    }
    let current = keys.remove(0);
    Ok(KeyRing {
        current,
        previous: keys,
    })
}

fn parse(hex: &[u8]) -> Option<MasterKey> {
    if hex.len() != KEY_LEN * 2 {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        key[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(MasterKey::from_bytes(*key))
}

fn encode(keys: &[&MasterKey]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(keys.len() * (KEY_LEN * 2 + 1)));
    for key in keys {
        for b in key.expose_key() {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
    }
    text
}

/// Replaces the key file at `path` with `keys` (current first), atomically: a crash leaves the
/// old file or the new one, never a mix, and the new one is synced before it replaces the old.
pub fn replace(path: &Path, keys: &[&MasterKey]) -> Result<(), KeyFileError> {
    let text = encode(keys);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".new");
    let tmp = std::path::PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("replace", path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync the directory of", path))?;
    }
    Ok(())
}

/// Creates a new random key at `path` with mode 0600, never replacing an existing file, and
/// makes it durable (file and directory entry synced) before the first value is sealed with it.
pub fn create(path: &Path) -> Result<MasterKey, KeyFileError> {
    let key = MasterKey::generate();
    let text = encode(&[&key]);
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(KeyFileError::AlreadyExists(path.to_owned()));
        }
        Err(e) => return Err(io_err("create", path)(e)),
    };
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A partial key file would be refused as malformed forever; remove it so a retry works.
        let _ = fs::remove_file(path);
        return Err(io_err("write", path)(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync the directory of", path))?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().expose_key(), key.expose_key());
        assert!(matches!(create(&path), Err(KeyFileError::AlreadyExists(_))));
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(matches!(load(&path), Err(KeyFileError::NotFound(_))));
        create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        fs::write(&path, "not a key\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed(_))));
    }
}
