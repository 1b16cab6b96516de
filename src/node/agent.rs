//! The agent's volumes and identities: a pod's token exchanged at each publish, a FUSE mount per
//! volume, and one shared cache and one long-poll per identity (the volumes whose tokens resolve
//! to the same binding and grants), so N pods of K identities cost N exchanges, K value reads
//! and K held long-polls, and one rotation reaches every volume of its identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use sha2::Digest;
use tonic::Status;

use super::publish::Publish;
use crate::auth::Token;
use crate::client::Client;
use crate::fs::memory::LockedPool;
use crate::fs::tree::Ownership;
use crate::fs::volume::{Listing, Volume};
use crate::secret::{SecretName, ValueStamp};
use crate::source::follow::{Pace, Report, Step, follow};
use crate::source::{Feed, Fetched, ServerSource, SourceError};

/// Who an exchange said the pod is: volumes with the same key share a cache and a long-poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    workspace: String,
    binding: String,
    /// The grants, sorted.
    secrets: Vec<SecretName>,
}

/// One identity's shared cache and its watch.
struct Group {
    key: Key,
    /// Always `Some` until dropped (see `Drop`).
    source: Option<ServerSource>,
    listing: RwLock<Listing>,
    /// The volumes it feeds and the driver mounts it answered lately; `None` once the last
    /// left (the group is done).
    members: Mutex<Option<Members>>,
    /// The server refused the token in use (the binding removed, or the token expired): its
    /// volumes serve nothing until a publish brings a token the server admits.
    refused: AtomicBool,
    /// Dropped to stop the watch.
    stop: Mutex<Option<mpsc::Sender<()>>>,
}

impl Group {
    /// The first read of the identity's secrets, then its watch on a thread of its own.
    fn start(
        key: Key,
        base: &Client,
        urls: &str,
        token: &Token,
        life: Duration,
    ) -> Result<Arc<Group>, SourceError> {
        let source = ServerSource::exchanged(base, urls, token, life)?;
        let mut listing = Listing::default();
        let first = source.fetch(&[], &[], None)?;
        let revision = merge(&mut listing, first)
            .map_err(|e| SourceError::Failed(format!("cannot hold secrets in memory: {e}")))?;
        let (stop, stopped) = mpsc::channel();
        let group = Arc::new(Group {
            key,
            source: Some(source),
            listing: RwLock::new(listing),
            members: Mutex::new(Some(Members::default())),
            refused: AtomicBool::new(false),
            stop: Mutex::new(Some(stop)),
        });
        let watched = group.clone();
        std::thread::Builder::new()
            .name("identity".into())
            .spawn(move || watched.watch(revision, &stopped))
            .map_err(|e| SourceError::Failed(format!("cannot start a thread: {e}")))?;
        Ok(group)
    }

    /// Keeps the cache and every volume in step through the one follow loop.
    fn watch(&self, revision: Option<String>, stopped: &mpsc::Receiver<()>) {
        let stop = |wait: Duration| {
            !matches!(
                stopped.recv_timeout(wait),
                Err(mpsc::RecvTimeoutError::Timeout)
            )
        };
        let pace = Pace {
            long_poll: Duration::from_secs(30),
            every: None,
            marks: Vec::new(),
            full_every: Duration::ZERO,
        };
        let mut round = |watch: Option<(&str, Duration)>| -> Result<Step, SourceError> {
            if self.refused.load(Ordering::Acquire) {
                // Nothing is asked with a token the server refused (each ask an audited
                // refusal): a publish that brings an admitted one wakes this within a second.
                return Ok(if stop(Duration::from_secs(1)) {
                    Step::Stop
                } else {
                    Step::Continue(None)
                });
            }
            let held = self.held();
            match self.source().fetch(&[], &held, watch) {
                Ok(fetched) => {
                    let revision = self.apply(fetched)?;
                    Ok(Step::Continue(revision))
                }
                Err(SourceError::Refused(_)) => {
                    self.refuse();
                    Ok(Step::Continue(None))
                }
                Err(e) => Err(e),
            }
        };
        follow(
            true,
            &pace,
            revision,
            &stop,
            &mut round,
            &mut Logged(&self.key),
        );
    }

    fn source(&self) -> &ServerSource {
        self.source
            .as_ref()
            .expect("a group's source lives as long as the group")
    }

    fn held(&self) -> Vec<ValueStamp> {
        let listing = self.listing.read().unwrap_or_else(|e| e.into_inner());
        listing.values.values().map(|(s, _)| s.clone()).collect()
    }

    /// A round's answer into the cache, then into every volume.
    fn apply(&self, fetched: Fetched) -> Result<Option<String>, SourceError> {
        let mut listing = self.listing.write().unwrap_or_else(|e| e.into_inner());
        let revision = merge(&mut listing, fetched)
            .map_err(|e| SourceError::Failed(format!("cannot hold secrets in memory: {e}")))?;
        for v in self.volumes().iter() {
            v.update(&listing);
        }
        Ok(revision)
    }

    /// The server refused the token: every volume of the identity stops serving at once.
    fn refuse(&self) {
        if !self.refused.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                binding = %self.key.binding,
                "the server refused this identity's token (its binding was removed, or the token \
                 expired): its volumes serve nothing until the kubelet's next republish brings a \
                 token the server admits"
            );
        }
        *self.listing.write().unwrap_or_else(|e| e.into_inner()) = Listing::default();
        for v in self.volumes().iter() {
            v.clear();
        }
    }

    /// A fresh exchange's token: used when the one in use was refused or expires sooner.
    fn adopt(&self, token: &Token, life: Duration) -> Result<(), SourceError> {
        let refused = self.refused.load(Ordering::Acquire);
        if !refused && self.source().token_left().is_some_and(|left| left >= life) {
            return Ok(());
        }
        self.source().adopt(token, life)?;
        if refused {
            // Read again now, so the volume this publish is for serves at once.
            let fetched = self.source().fetch(&[], &[], None)?;
            self.apply(fetched)?;
            self.refused.store(false, Ordering::Release);
            tracing::info!(binding = %self.key.binding, "the identity's token is admitted again; its volumes serve");
        }
        Ok(())
    }

    /// Whether the token in use is admitted and lives a while yet: a publish or a driver poll
    /// with the token it was last admitted with then needs no exchange.
    fn fresh(&self) -> bool {
        !self.done()
            && !self.refused.load(Ordering::Acquire)
            && self
                .source()
                .token_left()
                .is_some_and(|left| left >= RENEW_BEFORE)
    }

    fn volumes(&self) -> Vec<Arc<Volume>> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.volumes.clone())
            .unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Adds a volume; `false` if the group is done (its last member left meanwhile).
    fn attach(&self, v: Arc<Volume>) -> bool {
        match self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(m) => {
                m.volumes.push(v);
                true
            }
            None => false,
        }
    }

    /// Notes a driver mount of `target` answered now; `false` if the group is done.
    fn lease(&self, target: &Path) -> bool {
        match self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(m) => {
                m.leases.insert(target.to_owned(), Instant::now());
                true
            }
            None => false,
        }
    }

    /// Removes a volume; with the last member gone the group is done and its watch stops.
    fn detach(&self, v: &Arc<Volume>) -> bool {
        self.close_when(|m| m.volumes.retain(|x| !Arc::ptr_eq(x, v)))
    }

    /// Drops the driver mounts not answered for `lease`; done if nothing is left.
    fn expire(&self, lease: Duration) -> bool {
        self.close_when(|m| m.leases.retain(|_, at| at.elapsed() < lease))
    }

    /// Done if no member ever joined (a publish that failed after starting it).
    fn close_if_empty(&self) -> bool {
        self.close_when(|_| {})
    }

    /// Applies `change` to the members; closes the group (its watch stops) if none is left.
    fn close_when(&self, change: impl FnOnce(&mut Members)) -> bool {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = members.as_mut() else {
            return true;
        };
        change(m);
        if m.volumes.is_empty() && m.leases.is_empty() {
            *members = None;
            self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
            return true;
        }
        false
    }
}

impl Drop for Group {
    /// The source owns a runtime, which must not be dropped on an async worker (the last holder
    /// of a group may be a gRPC handler): it goes on a thread of its own then.
    fn drop(&mut self) {
        let source = self.source.take();
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("drop".into())
                .spawn(move || drop(source));
        }
    }
}

/// How long before the identity's workload token expires a publish or a driver poll exchanges
/// again: the kubelet republishes about once a minute, the driver polls every two.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// Who a group serves.
#[derive(Default)]
struct Members {
    volumes: Vec<Arc<Volume>>,
    /// Secrets Store CSI driver mounts answered lately (target path: when): they keep the cache
    /// and its long-poll alive between the driver's rotation polls, so a poll is answered from
    /// memory, not by reading the server again.
    leases: HashMap<PathBuf, Instant>,
}

/// A round's answer into the cache: the stamps of everything listed, new values in one locked
/// mapping, the values of secrets no longer listed dropped (wiped once no volume serves them).
fn merge(listing: &mut Listing, fetched: Fetched) -> std::io::Result<Option<String>> {
    for e in &fetched.errors {
        tracing::warn!(error = %e, "cannot fetch a changed secret; serving its last known good value");
    }
    let stamps: Vec<ValueStamp> = fetched.secrets.iter().map(|(s, _)| s.clone()).collect();
    let fresh: Vec<(ValueStamp, crate::secret::SecretValue)> = fetched
        .secrets
        .into_iter()
        .filter_map(|(s, v)| Some((s, v?)))
        .collect();
    let slots = LockedPool::store(fresh.iter().map(|(_, v)| v.expose_secret()))?;
    listing
        .values
        .retain(|name, _| stamps.iter().any(|s| &s.name == name));
    for ((stamp, _), slot) in fresh.into_iter().zip(slots) {
        listing.values.insert(stamp.name.clone(), (stamp, slot));
    }
    listing.stamps = stamps;
    listing.kinds = fetched.kinds;
    Ok(fetched.revision)
}

/// An identity's health, in the agent's log.
struct Logged<'a>(&'a Key);

impl Report<SourceError> for Logged<'_> {
    fn failing(&mut self, e: &SourceError) {
        tracing::warn!(binding = %self.0.binding, error = %e, "cannot refresh an identity's secrets; its volumes serve the last known good values");
    }

    fn recovered(&mut self) {
        tracing::info!(binding = %self.0.binding, "the server answers again; updates flow");
    }
}

/// A volume the agent serves.
struct Published {
    volume_id: String,
    volume: Arc<Volume>,
    /// The identity feeding it; `None` while it waits for a token the server admits (restored
    /// at start, or its pod's token refused).
    group: Option<Arc<Group>>,
    /// A digest of the pod token last exchanged: a republish with the same token and an
    /// identity still admitted exchanges nothing.
    token: [u8; 32],
    /// What the volume was published as (a republish that asks for something else is refused),
    /// and what the state file keeps of it.
    saved: Saved,
}

/// What the state file keeps of a volume: enough to mount it again at start, never a value or a
/// token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Saved {
    volume_id: String,
    target: PathBuf,
    pod: String,
    secrets: Vec<SecretName>,
    uid: u32,
    gid: u32,
    mode: u32,
    binding: Option<String>,
    /// The `files` attribute (templates, never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<String>,
}

impl Saved {
    fn owner(&self) -> Result<Ownership, String> {
        Ownership::new(self.uid, self.gid, self.mode)
    }
}

/// The state file's shape.
#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    version: u32,
    volumes: Vec<Saved>,
}

/// Writes the state file from a thread of its own, the latest list only: many publishes at once
/// cost one write, not one each. A publish only marks the list changed; the thread copies it
/// when it writes (a copy per publish was a thousand copies of a thousand entries at a
/// node's mass start, most of the agent's allocations then). A volume missing from it after a
/// crash costs nothing lasting: the kubelet's next republish mounts it as new.
struct Saver {
    path: PathBuf,
    changed: Mutex<bool>,
    wake: std::sync::Condvar,
}

/// The agent's volumes, by target path: shared with the state file's writer.
type Volumes = Arc<Mutex<HashMap<PathBuf, Published>>>;

impl Saver {
    fn start(path: PathBuf, volumes: Volumes) -> std::io::Result<Arc<Saver>> {
        let saver = Arc::new(Saver {
            path,
            changed: Mutex::new(false),
            wake: std::sync::Condvar::new(),
        });
        let s = saver.clone();
        std::thread::Builder::new()
            .name("state".into())
            .spawn(move || {
                loop {
                    {
                        let mut changed = s.changed.lock().unwrap_or_else(|e| e.into_inner());
                        while !*changed {
                            changed = s.wake.wait(changed).unwrap_or_else(|e| e.into_inner());
                        }
                        *changed = false;
                    }
                    let list: Vec<Saved> = volumes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .map(|p| p.saved.clone())
                        .collect();
                    if let Err(e) = write_state(&s.path, list) {
                        tracing::warn!(error = %e, path = %s.path.display(), "cannot write the state file; volumes published since are mounted again only at their next republish after a restart");
                    }
                }
            })?;
        Ok(saver)
    }

    fn changed(&self) {
        *self.changed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }
}

/// Replaces the state file whole (a temporary file renamed over it, root-only).
fn write_state(path: &Path, mut volumes: Vec<Saved>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // By bytes, not path components, and compact: at a mass start this runs back to back.
    volumes.sort_by(|a, b| a.target.as_os_str().cmp(b.target.as_os_str()));
    let text = serde_json::to_vec(&StateFile {
        version: 1,
        volumes,
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The volumes of the state file; a missing file is none, an unreadable one is said and none.
fn read_state(path: &Path) -> Vec<Saved> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(s) if s.version == 1 => s.volumes,
            Ok(s) => {
                tracing::warn!(path = %path.display(), version = s.version, "the state file is of another version; its volumes are mounted again at their next republish");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the state file cannot be read; its volumes are mounted again at their next republish");
                Vec::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the state file cannot be read; its volumes are mounted again at their next republish");
            Vec::new()
        }
    }
}

/// The node's volumes and identities.
pub struct Agent {
    urls: String,
    /// The exchange's client; the identities read over its connections.
    exchanger: Arc<Client>,
    volumes: Volumes,
    groups: Mutex<HashMap<Key, Arc<tokio::sync::OnceCell<Arc<Group>>>>>,
    /// One publish or unpublish at a time per target path (the kubelet retries while one runs).
    busy: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    saver: Option<Arc<Saver>>,
    /// The Secrets Store CSI driver's mounts answered, by target path: whose token, which
    /// identity (a poll with the same token is answered without an exchange).
    provided: Mutex<HashMap<PathBuf, Lease>>,
    metrics: super::metrics::NodeMetrics,
    /// Where a volume is mounted before it is moved onto its target (see `fs::volume`).
    staging: PathBuf,
    staged: std::sync::atomic::AtomicU64,
    unstaged: Mutex<Vec<PathBuf>>,
}

/// A driver mount answered: a digest of the pod token admitted, and its identity.
type Lease = ([u8; 32], Arc<Group>);

/// How long a driver mount keeps its identity's cache after its last poll: the driver polls
/// every two minutes by default (`--rotation-poll-interval`), and says nothing at unmount.
const LEASE: Duration = Duration::from_secs(600);

/// What the provider answers a driver's `Mount`: each secret's object id and version, and the
/// files.
pub struct Provided {
    pub versions: Vec<(String, String)>,
    pub files: Vec<crate::fs::volume::SnapshotFile>,
    /// Whether the versions are those the driver said it holds.
    pub unchanged: bool,
}

/// The mode of files whose volume names none: owner and group may read (root's unless the
/// volume names a uid and gid).
const DEFAULT_MODE: u32 = 0o440;

/// The state file's name in `--state-dir`.
pub const STATE_FILE: &str = "volumes.json";

impl Agent {
    /// An agent for the server at `urls`; with `state_dir`, the list of its volumes is kept
    /// there (created root-only).
    pub fn new(
        urls: &str,
        ca_file: Option<&Path>,
        state_dir: Option<&Path>,
    ) -> Result<Agent, String> {
        let staging = state_dir
            .map_or_else(std::env::temp_dir, Path::to_owned)
            .join("staging");
        // A mount a killed agent left here (between mounting and moving it) is taken away.
        if let Ok(dirs) = std::fs::read_dir(&staging) {
            for d in dirs.flatten() {
                crate::fs::volume::unmount_all_at(&d.path());
                let _ = std::fs::remove_dir(d.path());
            }
        }
        let volumes = Volumes::default();
        let saver = match state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .and_then(|()| {
                        std::fs::set_permissions(
                            dir,
                            std::os::unix::fs::PermissionsExt::from_mode(0o700),
                        )
                    })
                    .map_err(|e| format!("cannot use --state-dir {}: {e}", dir.display()))?;
                Some(
                    Saver::start(dir.join(STATE_FILE), volumes.clone())
                        .map_err(|e| format!("cannot start a thread: {e}"))?,
                )
            }
            None => None,
        };
        Ok(Agent {
            urls: urls.to_owned(),
            exchanger: Arc::new(Client::anonymous(urls, ca_file).map_err(|e| e.to_string())?),
            volumes,
            groups: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            saver,
            provided: Mutex::new(HashMap::new()),
            metrics: Default::default(),
            staging,
            staged: std::sync::atomic::AtomicU64::new(0),
            unstaged: Mutex::new(Vec::new()),
        })
    }

    /// A staging directory for one mount: one given back by an earlier mount, or a new one.
    /// Kept for reuse rather than made and removed per mount, which at a mass start was most of
    /// the agent's kernel time (ext4 searching a directory of a thousand recent entries).
    fn stage(&self) -> PathBuf {
        if let Some(free) = self
            .unstaged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        {
            return free;
        }
        let n = self.staged.fetch_add(1, Ordering::Relaxed);
        self.staging.join(n.to_string())
    }

    /// Gives a staging directory back once its mount was moved away (or failed and was taken
    /// away): nothing is mounted on it.
    fn unstage(&self, dir: PathBuf) {
        self.unstaged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir);
    }

    /// At start: the volumes of the state file are mounted again, each over the dead mount a
    /// stopped agent left (a reader of which got ENOTCONN, never a hang), so that a running
    /// container seeing its volume with HostToContainer propagation gets the new one; empty
    /// until the kubelet's next republish brings the pod's token (tokens are never kept).
    /// Returns how many were restored.
    pub fn restore(&self) -> usize {
        let saved = match &self.saver {
            Some(s) => read_state(&s.path),
            None => Vec::new(),
        };
        let mut restored = 0;
        for s in saved {
            let files = match &s.files {
                Some(text) => super::publish::files(text).map_err(|e| e.join("; ")),
                None => Ok(Vec::new()),
            };
            let staging = self.stage();
            let mounted = s.owner().and_then(|owner| {
                Volume::mount_waiting(&s.target, &staging, owner, s.secrets.clone(), files?)
                    .map_err(|e| e.to_string())
            });
            self.unstage(staging);
            match mounted {
                Ok(volume) => {
                    tracing::info!(volume = %s.volume_id, target = %s.target.display(), "volume restored; it serves once the kubelet's next republish brings the pod's token");
                    restored += 1;
                    self.volumes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            s.target.clone(),
                            Published {
                                volume_id: s.volume_id.clone(),
                                volume: Arc::new(volume),
                                group: None,
                                token: [0; 32],
                                saved: s,
                            },
                        );
                }
                Err(e) => {
                    tracing::warn!(volume = %s.volume_id, target = %s.target.display(), error = %e, "cannot restore a volume; it is mounted again at its next republish");
                }
            }
        }
        self.save();
        restored
    }

    /// Starts the thread that lets the driver mounts' leases expire (and with the last of an
    /// identity, its cache and long-poll).
    pub fn start_janitor(self: &Arc<Self>) -> std::io::Result<()> {
        let agent = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("leases".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(30));
                    let Some(agent) = agent.upgrade() else { return };
                    agent.expire(LEASE);
                }
            })
            .map(|_| ())
    }

    /// Lets leases older than `lease` go; forgets the identities left with nothing.
    fn expire(&self, lease: Duration) {
        let groups: Vec<Arc<Group>> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|c| c.get().cloned())
            .collect();
        for g in groups {
            if g.expire(lease) {
                self.forget(&g);
            }
        }
        self.provided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, g)| !g.done());
    }

    /// The Secrets Store CSI driver's `Mount`, checked: the pod's token exchanged (unless the
    /// same token was admitted for this mount and its identity still is), the answer made from
    /// the identity's cache (shared with the CSI volumes of the node, kept current by its one
    /// long-poll: a poll reads nothing from the server).
    pub async fn provide(
        &self,
        p: Publish,
        current: &[(String, String)],
    ) -> Result<Provided, Status> {
        let owner =
            Ownership::new(0, 0, p.mode.unwrap_or(0o444)).map_err(Status::invalid_argument)?;
        let digest: [u8; 32] = sha2::Sha256::digest(p.token.as_bytes()).into();
        let known = self
            .provided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p.target)
            .filter(|(d, g)| *d == digest && g.fresh())
            .map(|(_, g)| g.clone());
        let group = match known {
            Some(g) if g.lease(&p.target) => g,
            _ => {
                let (key, token, life) = match self.exchange(&p).await {
                    Ok(x) => x,
                    Err(status) => {
                        self.provided
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&p.target);
                        return Err(status);
                    }
                };
                let group = self.identity(key, token, life).await?;
                if !group.lease(&p.target) {
                    return Err(Status::aborted(
                        "the identity's cache closed meanwhile; the driver retries",
                    ));
                }
                self.provided
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.target.clone(), (digest, group.clone()));
                group
            }
        };
        let listing = group.listing.read().unwrap_or_else(|e| e.into_inner());
        let files = crate::fs::volume::snapshot(owner, &p.secrets, p.files, &listing)
            .map_err(|e| mount_status(e, &group.key))?;
        let versions: Vec<(String, String)> = listing
            .stamps
            .iter()
            .filter(|s| p.secrets.contains(&s.name))
            .map(|s| object_version(&group.key.workspace, s))
            .collect();
        drop(listing);
        self.metrics
            .identities
            .set(self.groups.lock().unwrap_or_else(|e| e.into_inner()).len() as i64);
        let mut said = current.to_vec();
        said.sort();
        let mut now = versions.clone();
        now.sort();
        Ok(Provided {
            unchanged: said == now,
            versions,
            files,
        })
    }

    /// Tells the state file's writer the list of volumes changed (and counts them).
    fn save(&self) {
        let (volumes, identities) = self.counts();
        self.metrics.volumes.set(volumes as i64);
        self.metrics.identities.set(identities as i64);
        if let Some(saver) = &self.saver {
            saver.changed();
        }
    }

    fn lock_target(&self, target: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target.to_owned())
            .or_default()
            .clone()
    }

    /// `NodePublishVolume`, checked: a first publish exchanges the pod's token and mounts; a
    /// republish exchanges again only when the token changed or the identity was refused, and
    /// never remounts.
    pub async fn publish(self: &Arc<Self>, p: Publish) -> Result<(), Status> {
        let saved = Saved {
            volume_id: p.volume_id.clone(),
            target: p.target.clone(),
            pod: p.pod.clone(),
            secrets: p.secrets.clone(),
            uid: p.uid.unwrap_or(0),
            gid: p.gid.unwrap_or(0),
            mode: p.mode.unwrap_or(DEFAULT_MODE),
            binding: p.binding.clone(),
            files: p.files_text.clone(),
        };
        let owner = saved.owner().map_err(Status::invalid_argument)?;
        let digest: [u8; 32] = sha2::Sha256::digest(p.token.as_bytes()).into();
        let lock = self.lock_target(&p.target);
        let _held = lock.lock().await;
        let known = {
            let volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
            volumes
                .get(&p.target)
                .map(|v| (v.saved.clone(), v.token, v.group.clone(), v.volume.clone()))
        };
        if let Some((was, token, group, volume)) = known {
            if was != saved {
                return Err(Status::already_exists(format!(
                    "{} is published already as volume {:?} with other attributes; unpublish it first",
                    p.target.display(),
                    was.volume_id
                )));
            }
            if token == digest && group.as_ref().is_some_and(|g| g.fresh()) {
                return Ok(());
            }
            return self.republish(p, digest, group, volume).await;
        }
        let (key, token, life) = self.exchange(&p).await?;
        let group = self.identity(key, token, life).await?;
        let mounted = {
            let (target, secrets, group) = (p.target.clone(), p.secrets.clone(), group.clone());
            let files = p.files.clone();
            let staging = self.stage();
            let staged = staging.clone();
            let mounted = tokio::task::spawn_blocking(move || {
                let listing = group.listing.read().unwrap_or_else(|e| e.into_inner());
                Volume::mount(&target, &staged, owner, secrets, files, &listing)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            self.unstage(staging);
            mounted
        };
        let volume = match mounted {
            Ok(v) => Arc::new(v),
            Err(e) => {
                self.forget_if_done(&group);
                return Err(mount_status(e, &group.key));
            }
        };
        if !group.attach(volume.clone()) {
            // The identity's last volume left while this one mounted: the kubelet's retry
            // starts its cache again.
            let v = volume.clone();
            tokio::task::spawn_blocking(move || v.unmount()).await.ok();
            return Err(Status::aborted(
                "the identity's cache closed while mounting; the kubelet retries",
            ));
        }
        // Values that changed between the mount's read and joining the group.
        volume.update(&group.listing.read().unwrap_or_else(|e| e.into_inner()));
        tracing::info!(volume = %p.volume_id, target = %p.target.display(), binding = %group.key.binding, secrets = volume.len(), "volume published");
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                p.target.clone(),
                Published {
                    volume_id: p.volume_id,
                    volume,
                    group: Some(group),
                    token: digest,
                    saved,
                },
            );
        self.save();
        Ok(())
    }

    /// A republish that must exchange: the same identity adopts the newer token; another one
    /// (the binding's grants changed, or a restored volume's first token) moves the volume to
    /// its cache; a refusal takes the volume out of its identity's cache and stops it serving.
    async fn republish(
        &self,
        p: Publish,
        digest: [u8; 32],
        group: Option<Arc<Group>>,
        volume: Arc<Volume>,
    ) -> Result<(), Status> {
        let (key, token, life) = match self.exchange(&p).await {
            Ok(x) => x,
            Err(status) => {
                if status.code() == tonic::Code::PermissionDenied {
                    self.leave(&p.target, group.as_ref(), &volume);
                }
                return Err(status);
            }
        };
        let target = self.identity(key, token, life).await?;
        if !group.as_ref().is_some_and(|g| Arc::ptr_eq(g, &target)) {
            let missing = target
                .listing
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .missing(volume.only());
            if !missing.is_empty() {
                self.leave(&p.target, group.as_ref(), &volume);
                self.forget_if_done(&target);
                return Err(mount_status(
                    crate::fs::mount::MountError::Missing(missing),
                    &target.key,
                ));
            }
            if !target.attach(volume.clone()) {
                return Err(Status::aborted(
                    "the identity's cache closed meanwhile; the kubelet retries",
                ));
            }
            if let Some(old) = &group
                && old.detach(&volume)
            {
                self.forget(old);
            }
            volume.update(&target.listing.read().unwrap_or_else(|e| e.into_inner()));
            tracing::info!(volume = %p.volume_id, binding = %target.key.binding, secrets = volume.len(), "volume serves its identity's secrets");
        }
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = volumes.get_mut(&p.target) {
            v.token = digest;
            v.group = Some(target);
        }
        Ok(())
    }

    /// A volume whose pod was refused: out of its identity's cache (whose other pods may still
    /// be admitted), serving nothing until its own pod's token is admitted.
    fn leave(&self, target: &Path, group: Option<&Arc<Group>>, volume: &Arc<Volume>) {
        if let Some(g) = group
            && g.detach(volume)
        {
            self.forget(g);
        }
        volume.clear();
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = volumes.get_mut(target) {
            v.group = None;
            v.token = [0; 32];
        }
    }

    /// The pod's token exchanged for a workload token: who it is, the token and its life.
    async fn exchange(&self, p: &Publish) -> Result<(Key, Token, Duration), Status> {
        let answer = self
            .exchanger
            .exchange(&p.token, p.binding.as_deref())
            .await
            .map_err(|e| {
                if e.is_transient() {
                    Status::unavailable(format!(
                        "cannot reach the secretfs server to exchange the pod's token: {e}"
                    ))
                } else {
                    Status::permission_denied(format!(
                        "the secretfs server refused the pod's token: {e}"
                    ))
                }
            })?;
        let mut secrets = answer.secrets;
        secrets.sort();
        Ok((
            Key {
                workspace: answer.workspace,
                binding: answer.binding,
                secrets,
            },
            answer.access_token,
            Duration::from_secs(answer.expires_in.max(1)),
        ))
    }

    /// The group of the identity an exchange returned, with the exchange's token adopted: the
    /// group may be one whose token the server refused (its binding removed, and added again
    /// under the same name since), which then reads again now, or its token may expire sooner.
    async fn identity(&self, key: Key, token: Token, life: Duration) -> Result<Arc<Group>, Status> {
        let group = self.group(key, token.clone(), life).await?;
        let (adopting, shown) = (group.clone(), group.key.clone());
        tokio::task::spawn_blocking(move || adopting.adopt(&token, life))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| source_status(e, &shown))?;
        Ok(group)
    }

    /// The identity's group, started (its first read) by the first publish that needs it.
    async fn group(&self, key: Key, token: Token, life: Duration) -> Result<Arc<Group>, Status> {
        loop {
            let cell = self
                .groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default()
                .clone();
            let (urls, base, k, t) = (
                self.urls.clone(),
                self.exchanger.clone(),
                key.clone(),
                token.clone(),
            );
            let shown = key.clone();
            let group = cell
                .get_or_try_init(|| async move {
                    tokio::task::spawn_blocking(move || Group::start(k, &base, &urls, &t, life))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(|e| source_status(e, &shown))
                })
                .await?
                .clone();
            if group.done() {
                // Done meanwhile: start another.
                self.forget(&group);
                continue;
            }
            return Ok(group);
        }
    }

    fn forget_if_done(&self, group: &Arc<Group>) {
        if group.close_if_empty() {
            self.forget(group);
        }
    }

    /// Takes a done group out of the map (if it is still the one there).
    fn forget(&self, group: &Arc<Group>) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups
            .get(&group.key)
            .and_then(|c| c.get())
            .is_some_and(|g| Arc::ptr_eq(g, group))
        {
            groups.remove(&group.key);
        }
        self.metrics.identities.set(groups.len() as i64);
    }

    /// `NodeUnpublishVolume`: unmounts, wipes, removes the directory it made; OK for a volume it
    /// does not hold (the spec's idempotence), after taking away a stale secretfs mount there.
    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), Status> {
        let lock = self.lock_target(target);
        let _held = lock.lock().await;
        let published = {
            let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
            match volumes.get(target) {
                Some(v) if v.volume_id != volume_id => {
                    return Err(Status::invalid_argument(format!(
                        "{} holds volume {:?}, not {volume_id:?}",
                        target.display(),
                        v.volume_id
                    )));
                }
                Some(_) => volumes.remove(target),
                None => None,
            }
        };
        let target_path = target.to_owned();
        let target = target.to_owned();
        let removed = tokio::task::spawn_blocking(move || {
            let mut done = None;
            if let Some(p) = published {
                p.volume.unmount();
                if let Some(g) = p.group
                    && g.detach(&p.volume)
                {
                    done = Some(g);
                }
            }
            // And the dead mounts of stopped agents under it.
            crate::fs::volume::unmount_all_at(&target);
            (done, remove_dir(&target))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(group) = removed.0 {
            self.forget(&group);
        }
        self.save();
        {
            // The target's lock goes with its volume, unless another call waits on it.
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::strong_count(&lock) <= 2 {
                busy.remove(&target_path);
            }
        }
        removed.1.map_err(Status::internal)?;
        tracing::info!(volume = %volume_id, "volume unpublished");
        Ok(())
    }

    /// Its metrics (`--metrics-listen`).
    pub fn metrics(&self) -> &super::metrics::NodeMetrics {
        &self.metrics
    }

    /// How many volumes and identities it holds (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        let volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner()).len();
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner()).len();
        (volumes, groups)
    }
}

/// A secret's object id and version for the driver (its `SecretProviderClassPodStatus`): the
/// version changes with every new value, a secret deleted and created again included.
fn object_version(workspace: &str, s: &ValueStamp) -> (String, String) {
    (
        format!("secretfs/{workspace}/{}", s.name),
        format!("{}-{}", s.version, s.updated_at.nanos()),
    )
}

/// Removes the target directory the publish made; gone already is fine.
fn remove_dir(target: &Path) -> Result<(), String> {
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", target.display())),
    }
}

fn source_status(e: SourceError, key: &Key) -> Status {
    match e {
        SourceError::Unavailable(m) => Status::unavailable(format!(
            "cannot read the secrets of binding {:?}: {m}",
            key.binding
        )),
        SourceError::Refused(m) => Status::permission_denied(format!(
            "the server refused binding {:?}'s token: {m}",
            key.binding
        )),
        other => Status::internal(format!(
            "cannot read the secrets of binding {:?}: {other}",
            key.binding
        )),
    }
}

fn mount_status(e: crate::fs::mount::MountError, key: &Key) -> Status {
    use crate::fs::mount::MountError;
    match e {
        MountError::Missing(names) => {
            let list: Vec<String> = names.iter().map(|n| format!("{:?}", n.as_str())).collect();
            Status::failed_precondition(format!(
                "{} {} missing or not granted to binding {:?}: grant {} to the binding (secretfs identity add --secret), or fix the volume's secrets attribute",
                if names.len() == 1 {
                    "secret"
                } else {
                    "secrets"
                },
                list.join(", "),
                key.binding,
                if names.len() == 1 { "it" } else { "them" },
            ))
        }
        MountError::Render(problems) => Status::failed_precondition(format!(
            "cannot render the volume's files: {}",
            problems.join("; ")
        )),
        other => Status::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_keeps_held_values_and_drops_what_is_no_longer_listed() {
        let stamp = |n: &str, v: u64| ValueStamp {
            name: SecretName::parse(n).unwrap(),
            version: v,
            updated_at: crate::secret::Timestamp::from_nanos(v as i64),
        };
        let value =
            |s: &str| crate::secret::SecretValue::from_slice(s.as_bytes(), Default::default()).ok();
        let mut listing = Listing::default();
        merge(
            &mut listing,
            Fetched {
                secrets: vec![(stamp("A", 1), value("a1")), (stamp("B", 1), value("b1"))],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(listing.values.len(), 2);
        // B rotated (its value sent), A held (no value sent), C new but failed (no value).
        merge(
            &mut listing,
            Fetched {
                secrets: vec![
                    (stamp("A", 1), None),
                    (stamp("B", 2), value("b2")),
                    (stamp("C", 1), None),
                ],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            listing.values[&SecretName::parse("A").unwrap()].1.bytes(),
            b"a1"
        );
        assert_eq!(
            listing.values[&SecretName::parse("B").unwrap()].1.bytes(),
            b"b2"
        );
        assert!(
            !listing
                .values
                .contains_key(&SecretName::parse("C").unwrap())
        );
        assert_eq!(listing.stamps.len(), 3);
        // A gone.
        merge(
            &mut listing,
            Fetched {
                secrets: vec![(stamp("B", 2), None)],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(listing.values.len(), 1);
        assert!(listing.missing(&[SecretName::parse("A").unwrap()]).len() == 1);
    }
}
