//! The in-memory tree the FUSE adapter serves: one flat directory of files, one file per secret.
//!
//! Pure: no IO, no fuser types. The value type is a parameter, so the daemon stores locked
//! memory and the tests store `Vec<u8>`.
//!
//! Every (secret, version) gets its own inode, whose content never changes. A rotation makes the
//! name point at a new inode, like `mv new-file name`: the kernel's page cache of an inode is
//! therefore always valid, a single `read` can never mix two versions, and a descriptor opened
//! before a rotation keeps reading the version it opened. A superseded inode lives on until the
//! kernel forgets it (its lookup count drops to zero), then its value is dropped and zeroed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::secret::{SecretName, Timestamp, ValueStamp};

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;

/// Why an operation on the tree failed; the FUSE adapter maps each to an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
}

/// Owner, group and file mode of every secret file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of the files, e.g. 0o400; only read bits are allowed.
    pub mode: u16,
}

impl Ownership {
    /// Checks `mode` holds only read bits (write and execute make no sense on a read-only file of
    /// secrets, and setuid/sticky bits even less).
    pub fn new(uid: u32, gid: u32, mode: u32) -> Result<Self, String> {
        Ok(Ownership {
            uid,
            gid,
            mode: crate::secret::file_mode(mode)?,
        })
    }

    /// The directory's mode: each class that may read files may also list and enter the
    /// directory (0400 -> 0500, 0440 -> 0550, 0444 -> 0555).
    pub fn dir_mode(&self) -> u16 {
        self.mode | ((self.mode & 0o444) >> 2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

/// The attributes of one inode, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry, with the offset of the entry after it (readdir's resume cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub next_offset: u64,
    pub kind: Kind,
    pub name: String,
}

/// What identifies one value of a secret: its version and when it was written (a secret deleted
/// and created again starts over at version 1, but not at the same time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    version: u64,
    updated_ns: i64,
}

impl Stamp {
    fn of(meta: &ValueStamp) -> Self {
        Stamp {
            version: meta.version,
            updated_ns: meta.updated_at.nanos(),
        }
    }
}

struct Node<V> {
    name: String,
    stamp: Stamp,
    mtime: SystemTime,
    value: V,
    /// The kernel's lookup count for this inode.
    lookups: AtomicU64,
    /// Whether the name still points here (false once replaced or removed).
    current: bool,
    /// For a rendered file: its own mode, and the secrets it was built from.
    rendered: Option<(Option<u16>, Contents)>,
}

/// The secrets a rendered file holds: (name, version) each.
pub type Contents = Vec<(String, u64)>;

/// What a refresh changed, for the adapter to tell the kernel about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// New names.
    pub added: Vec<String>,
    /// Names whose value changed: (name, the inode it used to point at).
    pub replaced: Vec<(String, u64)>,
    /// Names that are gone: (name, their last inode).
    pub removed: Vec<(String, u64)>,
    /// Secrets newly left out because a rendered file has their name.
    pub shadowed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }

    /// Adds `other`'s changes to these.
    pub fn extend(&mut self, other: Changes) {
        self.added.extend(other.added);
        self.replaced.extend(other.replaced);
        self.removed.extend(other.removed);
        self.shadowed.extend(other.shadowed);
    }
}

/// The flat directory of secret files.
pub struct Tree<V> {
    owner: Ownership,
    /// Current names, sorted (readdir order), to their inode.
    entries: BTreeMap<String, u64>,
    nodes: HashMap<u64, Node<V>>,
    next_ino: u64,
    dir_mtime: SystemTime,
    /// The names of rendered files: never a secret's, whether rendered yet or not.
    rendered: std::collections::BTreeSet<String>,
    /// Secrets not served because a rendered file has their name (reported once), with the
    /// stamp they had: held, so the source does not send their value every round.
    shadowed: BTreeMap<String, Stamp>,
}

impl<V: AsRef<[u8]>> Tree<V> {
    pub fn new(owner: Ownership, now: SystemTime) -> Self {
        Tree {
            owner,
            entries: BTreeMap::new(),
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            dir_mtime: now,
            rendered: Default::default(),
            shadowed: Default::default(),
        }
    }

    /// Number of secret files (rendered files not counted).
    pub fn len(&self) -> usize {
        self.secret_entries().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current secrets (not rendered files), by name, to their inode.
    fn secret_entries(&self) -> impl Iterator<Item = (&String, &u64)> {
        self.entries
            .iter()
            .filter(|(name, _)| !self.rendered.contains(*name))
    }

    /// Sets the names of the rendered files aside: no secret is served under them.
    pub fn reserve_rendered(&mut self, names: impl IntoIterator<Item = String>) {
        self.rendered.extend(names);
    }

    /// The value and version a secret has now (not a rendered file's).
    pub fn secret_value(&self, name: &str) -> Option<(&V, u64)> {
        if self.rendered.contains(name) {
            return None;
        }
        let node = &self.nodes[self.entries.get(name)?];
        Some((&node.value, node.stamp.version))
    }

    /// Which value a secret has now, exactly: its version and when it was written (a secret
    /// deleted and created again starts over at version 1, at another time).
    pub fn secret_stamp(&self, name: &str) -> Option<(u64, i64)> {
        if self.rendered.contains(name) {
            return None;
        }
        let stamp = self.nodes[self.entries.get(name)?].stamp;
        Some((stamp.version, stamp.updated_ns))
    }

    /// A rendered file's contents as it is served now.
    pub fn rendered_value(&self, name: &str) -> Option<&V> {
        if !self.rendered.contains(name) {
            return None;
        }
        Some(&self.nodes[self.entries.get(name)?].value)
    }

    /// Serves `value` as the rendered file `name` (reserved before): a new inode, as a rotation
    /// makes, so that a reader holding the old one keeps reading the old rendering.
    pub fn put_rendered(
        &mut self,
        name: &str,
        value: V,
        perm: Option<u16>,
        contains: Contents,
        now: SystemTime,
    ) -> Changes {
        debug_assert!(self.rendered.contains(name));
        let ino = self.next_ino;
        self.next_ino += 1;
        let generation = self
            .entries
            .get(name)
            .map_or(1, |old| self.nodes[old].stamp.version + 1);
        self.nodes.insert(
            ino,
            Node {
                name: name.to_owned(),
                stamp: Stamp {
                    version: generation,
                    updated_ns: 0,
                },
                mtime: now,
                value,
                lookups: AtomicU64::new(0),
                current: true,
                rendered: Some((perm, contains)),
            },
        );
        let mut changes = Changes::default();
        match self.entries.insert(name.to_owned(), ino) {
            Some(old) => {
                self.retire(old);
                changes.replaced.push((name.to_owned(), old));
            }
            None => changes.added.push(name.to_owned()),
        }
        self.dir_mtime = now;
        changes
    }

    /// Stops serving every rendered file (their names stay reserved): what a volume whose
    /// identity was refused does, so no rendering of a value outlives the right to it.
    pub fn drop_rendered(&mut self, now: SystemTime) -> Changes {
        let mut changes = Changes::default();
        let names: Vec<String> = self
            .entries
            .keys()
            .filter(|n| self.rendered.contains(*n))
            .cloned()
            .collect();
        for name in names {
            let ino = self.entries.remove(&name).expect("listed above");
            self.retire(ino);
            changes.removed.push((name, ino));
        }
        if !changes.is_empty() {
            self.dir_mtime = now;
        }
        changes
    }

    /// For a rendered file's inode: the secrets (name, version) it holds.
    pub fn rendered_contents(&self, ino: u64) -> Option<&[(String, u64)]> {
        Some(self.nodes.get(&ino)?.rendered.as_ref()?.1.as_slice())
    }

    /// Number of inodes held, superseded ones included.
    pub fn inodes(&self) -> usize {
        self.nodes.len()
    }

    /// Names and versions currently served.
    pub fn versions(&self) -> Vec<(String, u64)> {
        self.secret_entries()
            .map(|(name, ino)| (name.clone(), self.nodes[ino].stamp.version))
            .collect()
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT,
            kind: Kind::Directory,
            size: 0,
            mtime: self.dir_mtime,
            perm: self.owner.dir_mode(),
            nlink: 2,
            uid: self.owner.uid,
            gid: self.owner.gid,
        }
    }

    fn file_attr(&self, ino: u64, node: &Node<V>) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size: node.value.as_ref().len() as u64,
            mtime: node.mtime,
            perm: node
                .rendered
                .as_ref()
                .and_then(|r| r.0)
                .unwrap_or(self.owner.mode),
            // A superseded inode has no name any more, like an unlinked file that is still open.
            nlink: u32::from(node.current),
            uid: self.owner.uid,
            gid: self.owner.gid,
        }
    }

    /// Looks `name` up in `parent` and counts the lookup (the kernel will `forget` it later).
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        if parent != ROOT {
            return Err(if self.nodes.contains_key(&parent) {
                FsError::NotADirectory
            } else {
                FsError::NotFound
            });
        }
        let ino = *self.entries.get(name).ok_or(FsError::NotFound)?;
        let node = &self.nodes[&ino];
        node.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(self.file_attr(ino, node))
    }

    /// The kernel dropped `n` lookups of `ino`; a superseded inode with none left is freed.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        let before = node.lookups.load(Ordering::Relaxed);
        let left = before.saturating_sub(n);
        node.lookups.store(left, Ordering::Relaxed);
        if left == 0 && !node.current {
            self.nodes.remove(&ino);
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT {
            return Ok(self.root_attr());
        }
        let node = self.nodes.get(&ino).ok_or(FsError::NotFound)?;
        Ok(self.file_attr(ino, node))
    }

    /// Up to `size` bytes of `ino` from `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], FsError> {
        if ino == ROOT {
            return Err(FsError::IsADirectory);
        }
        let bytes = self
            .nodes
            .get(&ino)
            .ok_or(FsError::NotFound)?
            .value
            .as_ref();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        Ok(&bytes[start..end])
    }

    /// The name and version behind an inode (for audit lines).
    pub fn describe(&self, ino: u64) -> Option<(&str, u64)> {
        self.nodes
            .get(&ino)
            .map(|n| (n.name.as_str(), n.stamp.version))
    }

    /// Directory entries from `offset` on: `.`, `..`, then the files in name order.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        if ino != ROOT {
            return Err(if self.nodes.contains_key(&ino) {
                FsError::NotADirectory
            } else {
                FsError::NotFound
            });
        }
        let dots = [(ROOT, "."), (ROOT, "..")];
        let files = self.entries.iter().map(|(name, ino)| (*ino, name.as_str()));
        Ok(dots
            .into_iter()
            .map(|(ino, name)| (ino, name, Kind::Directory))
            .chain(files.map(|(ino, name)| (ino, name, Kind::File)))
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (ino, name, kind))| DirEntry {
                ino,
                next_offset: i as u64 + 1,
                kind,
                name: name.to_owned(),
            })
            .collect())
    }

    /// Every value held: what a refresh need not fetch again (the secrets a rendered file's name
    /// shadows included, so their values are not sent every round).
    pub fn held(&self) -> Vec<ValueStamp> {
        let shadowed = self.shadowed.iter().map(|(name, stamp)| (name, *stamp));
        Self::stamps(self.served_stamps().chain(shadowed))
    }

    /// The secrets served now (not rendered files, not the secrets they shadow).
    pub fn served(&self) -> Vec<ValueStamp> {
        Self::stamps(self.served_stamps())
    }

    fn served_stamps(&self) -> impl Iterator<Item = (&String, Stamp)> {
        self.secret_entries()
            .map(|(name, ino)| (name, self.nodes[ino].stamp))
    }

    fn stamps<'a>(named: impl Iterator<Item = (&'a String, Stamp)>) -> Vec<ValueStamp> {
        named
            .filter_map(|(name, stamp)| {
                Some(ValueStamp {
                    name: SecretName::parse(name).ok()?,
                    version: stamp.version,
                    updated_at: Timestamp::from_nanos(stamp.updated_ns),
                })
            })
            .collect()
    }

    /// Makes the tree serve exactly `metas`, taking new values from `fresh`. A stale name with no
    /// fresh value keeps its last known good value (or, if new, is left out until it can be
    /// fetched). Returns what changed.
    pub fn apply(
        &mut self,
        metas: &[ValueStamp],
        fresh: Vec<(SecretName, V)>,
        now: SystemTime,
    ) -> Changes {
        let mut fresh: HashMap<SecretName, V> = fresh.into_iter().collect();
        let mut changes = Changes::default();
        let wanted: HashMap<&str, &ValueStamp> =
            metas.iter().map(|m| (m.name.as_str(), m)).collect();

        let gone: Vec<String> = self
            .secret_entries()
            .map(|(name, _)| name)
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        self.shadowed.retain(|n, _| wanted.contains_key(n.as_str()));
        for name in gone {
            let ino = self.entries.remove(&name).expect("listed above");
            self.retire(ino);
            changes.removed.push((name, ino));
        }

        for meta in metas {
            let name = meta.name.as_str();
            if self.rendered.contains(name) {
                if self
                    .shadowed
                    .insert(name.to_owned(), Stamp::of(meta))
                    .is_none()
                {
                    changes.shadowed.push(name.to_owned());
                }
                continue;
            }
            let old = self.entries.get(name).copied();
            if old.is_some_and(|ino| self.nodes[&ino].stamp == Stamp::of(meta)) {
                continue;
            }
            let Some(value) = fresh.remove(&meta.name) else {
                continue;
            };
            let ino = self.next_ino;
            self.next_ino += 1;
            self.nodes.insert(
                ino,
                Node {
                    name: name.to_owned(),
                    stamp: Stamp::of(meta),
                    mtime: meta.updated_at.to_system_time(),
                    value,
                    lookups: AtomicU64::new(0),
                    current: true,
                    rendered: None,
                },
            );
            self.entries.insert(name.to_owned(), ino);
            match old {
                Some(old) => {
                    self.retire(old);
                    changes.replaced.push((name.to_owned(), old));
                }
                None => changes.added.push(name.to_owned()),
            }
        }
        if !changes.is_empty() {
            self.dir_mtime = now;
        }
        changes
    }

    /// Unlinks an inode from its name; frees it now if the kernel holds no lookup of it.
    fn retire(&mut self, ino: u64) {
        let node = self.nodes.get_mut(&ino).expect("retiring a known inode");
        node.current = false;
        if node.lookups.load(Ordering::Relaxed) == 0 {
            self.nodes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests;
