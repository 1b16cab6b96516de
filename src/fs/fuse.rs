//! The fuser adapter: converts FUSE requests into calls on the [`Tree`] and maps its errors to
//! errnos, once, here.
//!
//! The fast path is the absence of messages. In the default mode `open`, `opendir` and `flush`
//! answer `ENOSYS`, which tells the kernel to stop sending them for the life of the mount; entry
//! and attribute timeouts are long; data and listings stay in the page cache (an inode's content
//! never changes, see `tree`). After the first access, an open+read+close never reaches the
//! daemon. `--audit` mode answers `open` so it can log every one, with the caller's uid, gid and
//! pid.

use std::ffi::OsStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen,
    ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::memory::LockedSlot;
use super::tree::{Attr, FsError, Kind, Tree};

/// How long the kernel may trust entries and attributes. Content never changes under an inode,
/// and every change of names or of the directory is pushed to the kernel as an invalidation, so
/// the only bound needed is a finite one.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The tree as the daemon holds it: values in locked memory, shared with the refresh thread.
pub type SharedTree = Arc<RwLock<Tree<LockedSlot>>>;

/// The filesystem fuser drives.
pub struct SecretFs {
    tree: SharedTree,
    audit: bool,
}

impl SecretFs {
    pub fn new(tree: SharedTree, audit: bool) -> Self {
        SecretFs { tree, audit }
    }

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, Tree<LockedSlot>> {
        // A panic while holding the lock cannot leave the tree half-updated in a way readers
        // could observe (updates are built first, then swapped in), so poisoning is ignored.
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn errno(e: FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotADirectory => Errno::ENOTDIR,
        FsError::IsADirectory => Errno::EISDIR,
    }
}

fn file_attr(a: Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Directory => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for SecretFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Lookups of different names may run in parallel; a value of up to 1 MiB is read ahead
        // in one request.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.tree().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &file_attr(attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tree
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree().getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !self.audit {
            // Tells the kernel that opens need no daemon at all; it stops sending them.
            return reply.error(Errno::ENOSYS);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let tree = self.tree();
        if let (Some((name, _)), Some(contents)) =
            (tree.describe(ino.0), tree.rendered_contents(ino.0))
        {
            // A rendered file: the secrets it holds, each with its version.
            let secrets: Vec<String> = contents.iter().map(|(n, v)| format!("{n}@{v}")).collect();
            tracing::info!(
                target: "secretfs::audit",
                file = %name,
                secrets = %secrets.join(","),
                uid = req.uid(),
                gid = req.gid(),
                pid = req.pid(),
                "open"
            );
            return reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE);
        }
        match tree.describe(ino.0) {
            Some((name, version)) => {
                tracing::info!(
                    target: "secretfs::audit",
                    secret = %name,
                    version,
                    uid = req.uid(),
                    gid = req.gid(),
                    pid = req.pid(),
                    "open"
                );
                // The inode's bytes never change, so its page cache stays valid across opens.
                reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree().read(ino.0, offset, size) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so close needs no round trip; ENOSYS stops them for good.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if !self.audit {
            return reply.error(Errno::ENOSYS);
        }
        match self.tree().getattr(ino.0) {
            Ok(a) if a.kind == Kind::Directory => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.tree().readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    let kind = match e.kind {
                        Kind::Directory => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(e.ino), e.next_offset, kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree().len() as u64;
        // No free space and no free inodes: nothing can be written here.
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        // No extended attributes exist; ENOSYS makes the kernel stop asking (EOPNOTSUPP to
        // callers) instead of paying a round trip for every `ls -l`.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // The requests below have no meaning here. Each is answered as a regular file on a
    // read-only filesystem would answer it, and silently: fuser's defaults log a warning per
    // request, and some arrive on every open (Python asks `isatty()`, an ioctl, for each file it
    // opens in text mode), so a default would write a log line per read of a secret.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // What tmpfs answers to a terminal ioctl on a regular file. The kernel does not
        // remember this answer (unlike ENOSYS for open), so every ioctl costs one round trip.
        reply.error(Errno::ENOTTY);
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // There are no symbolic links.
        reply.error(Errno::EINVAL);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel decides access itself; ENOSYS makes that permanent.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        // Nothing is ever dirty; ENOSYS tells the kernel fsync always succeeds here.
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        // Locks are the kernel's own (no FUSE_POSIX_LOCKS); this is never asked.
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _bs: u32, _idx: u64, reply: ReplyBmap) {
        // No block device behind the files.
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // ENOSYS: the kernel then reports regular files as always ready, as for any file.
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // ENOSYS: the kernel seeks by itself (SEEK_DATA/SEEK_HOLE as for a file without holes).
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Copying into this filesystem is a write; copying out of it falls back to read
        // (ENOSYS makes the kernel stop asking).
        reply.error(Errno::ENOSYS);
    }

    // Every mutation is refused. The mount is read-only (`ro`), so the kernel refuses most of
    // them before they get here; these answers are the second line.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
