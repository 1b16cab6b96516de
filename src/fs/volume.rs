//! One mount among many in a process: what the node agent holds per published volume. The
//! daemon (`mount.rs`) owns its process (signals, the unmount guard, metrics); a `Volume` owns
//! only its tree, its FUSE session and its rendered files, and is fed from outside with the
//! values its identity's shared cache holds, so that a rotation read once reaches every volume.
//!
//! Semantics are the daemon's: read-only, kernel-enforced owner and mode, a rotation swaps the
//! inode (a reader holding the old one keeps it), a secret the listing drops disappears.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::error::MountError;
use super::fuse::{SecretFs, SharedTree};
use super::memory::LockedSlot;
use super::mount::session_config;
use super::refresh::notify;
use super::rendered::Renderer;
use super::tree::{Changes, Ownership, Tree};
use crate::render::RenderedFile;
use crate::secret::{SecretKind, SecretName, ValueStamp};

/// What an identity may read now, as one shared cache holds it: every secret's stamp, the values
/// held (in locked memory, shared by every volume's tree), and the kinds (for built-in files).
#[derive(Default)]
pub struct Listing {
    pub stamps: Vec<ValueStamp>,
    /// The values held, each with the stamp it was read at (it may lag the listed stamp while
    /// a changed value cannot be fetched: the volumes keep serving it, the last known good).
    pub values: HashMap<SecretName, (ValueStamp, LockedSlot)>,
    pub kinds: BTreeMap<SecretName, SecretKind>,
}

impl Listing {
    /// The secrets of `only` that the listing lacks (not granted, or not there).
    pub fn missing(&self, only: &[SecretName]) -> Vec<SecretName> {
        only.iter()
            .filter(|n| !self.stamps.iter().any(|s| &s.name == *n))
            .cloned()
            .collect()
    }
}

/// A mounted volume.
pub struct Volume {
    dir: PathBuf,
    only: Vec<SecretName>,
    tree: SharedTree,
    renderer: Mutex<Renderer>,
    notifier: fuser::Notifier,
    unmounter: Mutex<fuser::SessionUnmounter>,
    session: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("dir", &self.dir)
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Mounts `only` of `listing` at `dir` (created if missing; a stale mount there is taken
    /// away first), through `staging`: a directory (created if missing) nothing is mounted on,
    /// left as it was for the caller to use again. Fails closed: a name of `only` the listing lacks, or a rendered file that
    /// cannot be built, mounts nothing.
    pub fn mount(
        dir: &Path,
        staging: &Path,
        owner: Ownership,
        only: Vec<SecretName>,
        files: Vec<RenderedFile>,
        listing: &Listing,
    ) -> Result<Volume, MountError> {
        let missing = listing.missing(&only);
        if !missing.is_empty() {
            return Err(MountError::Missing(missing));
        }
        Self::mount_with(dir, staging, owner, only, files, listing, true)
    }

    /// Mounts an empty volume at `dir` that serves once it is [updated](Self::update): one
    /// restored at the node agent's start, before its pod's token comes again. A reader sees an
    /// empty directory meanwhile, not a dead mount.
    pub fn mount_waiting(
        dir: &Path,
        staging: &Path,
        owner: Ownership,
        only: Vec<SecretName>,
        files: Vec<RenderedFile>,
    ) -> Result<Volume, MountError> {
        Self::mount_with(dir, staging, owner, only, files, &Listing::default(), false)
    }

    fn mount_with(
        dir: &Path,
        staging: &Path,
        owner: Ownership,
        only: Vec<SecretName>,
        files: Vec<RenderedFile>,
        listing: &Listing,
        strict: bool,
    ) -> Result<Volume, MountError> {
        let dir = target_dir(dir)?;
        let mut renderer = Renderer::new(files);
        let mut problems = renderer.collisions(&only);
        let mut tree = Tree::new(owner, SystemTime::now());
        tree.reserve_rendered(renderer.names());
        let tree: SharedTree = Arc::new(RwLock::new(tree));
        fill(&tree, &only, listing);
        renderer.set_kinds(listing.kinds.clone());
        // Not strict while waiting: the files render once the values come.
        if let Err(more) = renderer.refresh(&tree, strict) {
            problems.extend(more);
        }
        if !problems.is_empty() {
            return Err(MountError::Render(problems));
        }
        // No fusermount3 helper per volume (a process each) and no guard: an agent killed
        // leaves its mounts disconnected (a reader gets ENOTCONN at once, never a hang) until the
        // next start stacks a live one over each.
        let config = session_config(false, false);
        let fs = SecretFs::new(tree.clone(), false);
        std::fs::create_dir_all(staging).map_err(|cause| MountError::Inspect {
            path: staging.to_owned(),
            cause,
        })?;
        let mut session =
            fuser::Session::new(fs, staging, &config).map_err(|cause| MountError::Mount {
                dir: dir.clone(),
                cause,
                problems: super::doctor::problems(),
            })?;
        // Mounted aside, then moved onto the target: a move needs nothing from what is at the
        // target (a dead mount there, whose root no one can open, included), and the move
        // propagates to the containers that see the target with HostToContainer.
        if let Err(e) = nix::mount::mount(
            Some(staging),
            &dir,
            None::<&str>,
            nix::mount::MsFlags::MS_MOVE,
            None::<&str>,
        ) {
            let _ = nix::mount::umount2(staging, nix::mount::MntFlags::MNT_DETACH);
            return Err(MountError::Mount {
                dir: dir.clone(),
                cause: e.into(),
                problems: Vec::new(),
            });
        }
        let notifier = session.notifier();
        let unmounter = session.unmount_callable();
        // This thread only waits for fuser's own event-loop thread: a small stack.
        let thread = std::thread::Builder::new()
            .name("volume".into())
            .stack_size(64 * 1024)
            .spawn(move || session.run())
            .map_err(MountError::Thread)?;
        Ok(Volume {
            dir,
            only,
            tree,
            renderer: Mutex::new(renderer),
            notifier,
            unmounter: Mutex::new(unmounter),
            session: Mutex::new(Some(thread)),
        })
    }

    /// Where the volume is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The secrets the volume serves.
    pub fn only(&self) -> &[SecretName] {
        &self.only
    }

    /// Serves what `listing` holds now (a rotation, a secret gone) and tells the kernel. A
    /// rendered file that cannot be built keeps its last good rendering.
    pub fn update(&self, listing: &Listing) -> Changes {
        let mut changes = fill(&self.tree, &self.only, listing);
        let mut renderer = self.renderer.lock().unwrap_or_else(|e| e.into_inner());
        renderer.set_kinds(listing.kinds.clone());
        match renderer.refresh(&self.tree, false) {
            Ok(rendered) => {
                notify(&self.notifier, &changes);
                notify(&self.notifier, &rendered);
                changes.extend(rendered);
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), problem = %e.join("; "), "cannot render the files");
                notify(&self.notifier, &changes);
            }
        }
        changes
    }

    /// Serves nothing (the identity was refused): every file goes, rendered ones too, its value
    /// with it once no reader holds it open.
    pub fn clear(&self) {
        let mut changes = fill(&self.tree, &self.only, &Listing::default());
        changes.extend(
            self.tree
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .drop_rendered(SystemTime::now()),
        );
        self.renderer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget();
        notify(&self.notifier, &changes);
    }

    /// How many secret files it serves now.
    pub fn len(&self) -> usize {
        self.tree.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unmounts (lazily, if a reader holds it busy) and waits briefly for the session to end;
    /// the values go with the tree.
    pub fn unmount(&self) {
        if let Err(e) = super::probe::unmount(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "unmount failed; asking the session");
            let _ = self
                .unmounter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unmount();
        }
        let thread = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            // A lazy unmount ends the session once its last reader lets go: not waited for
            // beyond a moment.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        // Values are wiped as soon as no reader holds them: the tree serves nothing from now.
        self.tree.write().unwrap_or_else(|e| e.into_inner()).apply(
            &[],
            Vec::new(),
            SystemTime::now(),
        );
    }
}

/// One file of a [`snapshot`]: its name, mode and contents (wiped when dropped).
pub struct SnapshotFile {
    pub name: String,
    pub mode: u16,
    pub contents: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What a volume of `only` and `files` would serve from `listing`, as files to hand over (the
/// Secrets Store CSI driver's provider answer): each secret by name, each rendered file, with
/// their modes; fails closed as a mount does (a secret missing, a file that cannot render).
pub fn snapshot(
    owner: Ownership,
    only: &[SecretName],
    files: Vec<RenderedFile>,
    listing: &Listing,
) -> Result<Vec<SnapshotFile>, MountError> {
    let missing = listing.missing(only);
    if !missing.is_empty() {
        return Err(MountError::Missing(missing));
    }
    let mut renderer = Renderer::new(files);
    let mut problems = renderer.collisions(only);
    let mut tree = Tree::new(owner, SystemTime::now());
    tree.reserve_rendered(renderer.names());
    let tree: SharedTree = Arc::new(RwLock::new(tree));
    fill(&tree, only, listing);
    renderer.set_kinds(listing.kinds.clone());
    if let Err(more) = renderer.refresh(&tree, true) {
        problems.extend(more);
    }
    if !problems.is_empty() {
        return Err(MountError::Render(problems));
    }
    let tree = tree.read().unwrap_or_else(|e| e.into_inner());
    // A secret listed whose value could not be fetched yet: no partial answer.
    let absent: Vec<&str> = only
        .iter()
        .map(SecretName::as_str)
        .filter(|n| tree.secret_value(n).is_none())
        .collect();
    if !absent.is_empty() {
        return Err(MountError::Source(crate::source::SourceError::Unavailable(
            format!(
                "no value fetched yet for {}; asked again at the next mount",
                absent.join(", ")
            ),
        )));
    }
    let mut out = Vec::new();
    for name in only {
        if let Some((value, _)) = tree.secret_value(name.as_str()) {
            out.push(SnapshotFile {
                name: name.as_str().to_owned(),
                mode: owner.mode,
                contents: zeroize::Zeroizing::new(value.bytes().to_vec()),
            });
        }
    }
    for (name, mode) in renderer.names_and_modes() {
        if let Some(value) = tree.rendered_value(&name) {
            out.push(SnapshotFile {
                name,
                mode: mode.unwrap_or(owner.mode),
                contents: zeroize::Zeroizing::new(value.bytes().to_vec()),
            });
        }
    }
    Ok(out)
}

/// The target directory, made if missing. A dead mount there (an agent killed) is fine: the new
/// mount goes over it. Anything but a directory is refused.
fn target_dir(dir: &Path) -> Result<PathBuf, MountError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(dir.to_owned()),
        Ok(_) => Err(MountError::NotADirectory(dir.to_owned())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(dir.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|cause| MountError::Inspect {
                path: dir.to_owned(),
                cause,
            })?;
            Ok(dir.to_owned())
        }
        Err(cause) => Err(MountError::Inspect {
            path: dir.to_owned(),
            cause,
        }),
    }
}

/// Takes away every secretfs mount stacked at `dir` (a live one and the dead ones of killed
/// agents under it), lazily; how many.
pub fn unmount_all_at(dir: &Path) -> usize {
    let mut n = 0;
    // Bounded: each pass removes the top one; a restart adds at most one.
    while n < 64 && super::mount::is_secretfs_mount(dir) {
        if nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Makes `tree` serve `only` of `listing` (the values shared, not copied).
fn fill(tree: &SharedTree, only: &[SecretName], listing: &Listing) -> Changes {
    let metas: Vec<ValueStamp> = listing
        .stamps
        .iter()
        .filter(|s| only.contains(&s.name))
        .cloned()
        .collect();
    let fresh = metas
        .iter()
        .filter_map(|m| {
            let (stamp, slot) = listing.values.get(&m.name)?;
            (stamp == m).then(|| (m.name.clone(), slot.clone()))
        })
        .collect();
    tree.write()
        .unwrap_or_else(|e| e.into_inner())
        .apply(&metas, fresh, SystemTime::now())
}
