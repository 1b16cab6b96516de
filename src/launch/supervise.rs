//! `secretfs run --watch`: the launcher stays as the workload's small parent and follows
//! rotations of the secrets it uses: in a directory (a secretfs mount, a Kubernetes or Docker
//! secret volume), the local store or on a server.
//!
//! One thread of its own, no runtime: the signals it handles are blocked and read from a
//! `signalfd`, which `poll` waits on beside a [`Follower`]'s pipe: `source::follow`'s loop, on a
//! thread, compares the used secrets' stamps and tells what changed. For a directory a stamp is
//! a used file as `stat` sees it through symlinks (device, inode, size, mtime), so a secretfs
//! rotation (a new inode) and a Kubernetes `..data` swap (new targets) are both seen, an
//! unrelated file is never looked at, and a hung mount holds up that thread, never the signals.
//! Changes are debounced; a
//! restart re-resolves everything first and never starts a workload whose secrets cannot all
//! be resolved; restarts are budgeted. Every signal it is sent goes on to the workload; it reaps
//! whatever it inherits as PID 1, and ends with the workload's status.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::exec::ExecFailure;
use super::plan::{ExecPlan, SourcePlan};
use super::resolve::{self, Fetch, Resolved};
use super::watch::{OnChange, WatchPlan};
use crate::secret::SecretName;
use crate::source::follow::{Followed, Follower};

/// What the supervisor passes on to the workload.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How changes are seen.
enum Detector {
    /// From a `source::follow` thread.
    Feed(Follower),
    /// Nothing: supervised only to mask the output.
    Nothing,
}

impl Detector {
    /// The names of what changed since the last call (`fed`: what the feed brought meanwhile;
    /// the feed tells only of used secrets: the plan's names and, for built-in rendered files,
    /// any secret of their kinds).
    fn changed(&mut self, fed: &mut Vec<SecretName>) -> Vec<SecretName> {
        match self {
            Detector::Feed(f) => {
                fed.extend(f.take());
                std::mem::take(fed)
            }
            Detector::Nothing => Vec::new(),
        }
    }
}

fn say(message: &str) {
    eprintln!("secretfs run: {message}");
}

/// The workload's status as a shell reports it: its code, or 128+N after signal N.
fn status_of(w: WaitStatus) -> Option<u8> {
    match w {
        WaitStatus::Exited(_, code) => Some(code as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as u8)),
        _ => None,
    }
}

struct Supervisor<'a, F: Fetch> {
    plan: &'a ExecPlan,
    watch: &'a WatchPlan,
    fetcher: &'a F,
    signals: SignalFd,
    detector: Detector,
    /// The mask the workload starts with: this process's before supervision blocked anything.
    child_mask: SigSet,
    child: Pid,
    /// Set once the supervisor was told to stop: no more restarts, the workload's end is ours.
    stopping: bool,
    restarts: VecDeque<Instant>,
    /// With `--mask`: the masker the relays use, every value seen so far, and the relays.
    mask: Option<Masking>,
    /// With `--process-group`, when stdin is the terminal and this process's group its
    /// foreground: that group, to give the terminal back to at the end.
    terminal: Option<Pid>,
    /// Changes the feed brought while they could not be acted on (during a stop): taken out of
    /// its pipe at once, so that `poll` does not spin on it.
    fed: Vec<SecretName>,
    /// The running brokers, told of each change of their secrets at once.
    broker: Option<Box<dyn resolve::Brokering>>,
    brokered: Vec<SecretName>,
    /// The secrets the workload was started with (`--watch` only: without it nothing else is
    /// followed), and whether a set of a kind is used too (any name may then matter).
    used: Vec<SecretName>,
    by_kind: bool,
}

struct Masking {
    shared: super::mask::Shared,
    /// Every value a workload of this run was started with: an old one may still be printed.
    seen: Vec<(SecretName, zeroize::Zeroizing<Vec<u8>>)>,
    relays: super::mask::Relays,
}

impl Masking {
    /// Masks the values of `resolved` too, from now on; warns once about each too short.
    fn learn(&mut self, resolved: &Resolved) {
        self.learn_values(resolved.values.iter().map(|(n, v)| (n, v)));
    }

    /// Masks these values too, from now on (a broker's: an upstream may echo its credential).
    fn learn_values<'v>(
        &mut self,
        values: impl Iterator<Item = (&'v SecretName, &'v crate::secret::SecretValue)>,
    ) {
        let mut grew = false;
        for (name, value) in values {
            let bytes = value.expose_secret();
            if !self
                .seen
                .iter()
                .any(|(n, v)| n == name && v.as_slice() == bytes)
            {
                self.seen
                    .push((name.clone(), zeroize::Zeroizing::new(bytes.to_vec())));
                grew = true;
            }
        }
        if grew {
            let (masker, _) =
                super::mask::Masker::new(self.seen.iter().map(|(n, v)| (n, v.as_slice())));
            *self.shared.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(masker);
        }
    }
}

/// Blocks the signals the supervisor handles (in this thread, and so in every thread it starts
/// from now on) and opens the descriptor they are read from; the mask before is the
/// workload's.
fn block_signals() -> Result<(SigSet, SignalFd), String> {
    let mut handled = SigSet::empty();
    for s in FORWARDED {
        handled.add(s);
    }
    handled.add(Signal::SIGCHLD);
    let child_mask = handled
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| format!("cannot block signals: {}", e.desc()))?;
    let signals = SignalFd::with_flags(&handled, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot read signals: {}", e.desc()))?;
    // Handing the terminal to a workload's group and back (`--process-group`) is done from
    // the background: not stopped for it.
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let _ = ttou.thread_block();
    Ok((child_mask, signals))
}

/// The plan with each one-secret built-in that names no secret given the one the source has
/// now (a missing or ambiguous one is left for the resolve to report).
fn pin_single_builtins(plan: &ExecPlan, fetcher: &impl Fetch) -> Result<ExecPlan, Vec<String>> {
    use crate::render::Recipe;
    let mut pinned = plan.clone();
    let unpinned =
        |r: &Recipe| matches!(r, Recipe::Builtin { which, secret: None } if !which.is_set());
    if !pinned.files.iter().any(|f| unpinned(&f.recipe)) {
        return Ok(pinned);
    }
    let Some(listing) = fetcher.list(&plan.source)? else {
        return Ok(pinned);
    };
    let listed: Vec<crate::render::Listed<'_>> = listing.iter().map(|(n, k)| (n, *k)).collect();
    for f in &mut pinned.files {
        if unpinned(&f.recipe)
            && let Ok(used) = f.uses(&listed)
            && let [one] = used.as_slice()
            && let Recipe::Builtin { which, .. } = f.recipe
        {
            f.recipe = Recipe::Builtin {
                which,
                secret: Some(one.clone()),
            };
        }
    }
    Ok(pinned)
}

/// The plan's brokers completed with their secrets' kinds (the source's listing; a directory
/// has none), or every problem: what `--dry-run` shows and a run starts, checked alike.
pub fn broker_routes(
    plan: &ExecPlan,
    fetcher: &impl Fetch,
) -> Result<Vec<super::broker::Route>, Vec<String>> {
    let listing = fetcher.list(&plan.source)?;
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for b in &plan.brokers {
        let kind = match &listing {
            None => None,
            Some(list) => match list.iter().find(|(n, _)| n == &b.secret) {
                Some((_, k)) => Some(*k),
                None => {
                    let suggestion = crate::secret::did_you_mean(
                        b.secret.as_str(),
                        list.iter().map(|(n, _)| n.as_str()),
                    );
                    problems.push(format!(
                        "broker \"{}\": secret \"{}\" not found{suggestion}",
                        b.name, b.secret
                    ));
                    continue;
                }
            },
        };
        match super::broker::complete(b, kind) {
            Ok(r) => routes.extend(r),
            Err(e) => problems.push(e),
        }
    }
    // A kind's variables (the plan checked those a broker names itself).
    for name in super::broker::names_set(&routes) {
        if let Some(v) = plan.vars.iter().find(|v| v.name == name) {
            problems.push(format!(
                "{name} is set by {} and by a broker; a brokered workload gets the broker's URL \
                 and placeholder, not the value: drop one",
                v.origin.label()
            ));
        }
    }
    if problems.is_empty() {
        Ok(routes)
    } else {
        Err(problems)
    }
}

/// The plan with the brokers' variables, the running brokers, and the values they started with
/// (for `--mask`).
type Brokered = (
    ExecPlan,
    Box<dyn resolve::Brokering>,
    Vec<(SecretName, crate::secret::SecretValue)>,
);

/// Starts the plan's brokers with their secrets' values now (every one must be there: a
/// broker never starts without its credential), and gives back the plan with the broker's
/// variables set for the workload (replacing inherited ones; one the plan sets itself is a
/// problem).
fn start_brokers(plan: &ExecPlan, fetcher: &impl Fetch) -> Result<Brokered, Vec<String>> {
    use super::plan::{Origin, Value, Var};
    let routes = broker_routes(plan, fetcher)?;
    let mut problems = Vec::new();
    let mut secrets: Vec<SecretName> = routes.iter().map(|r| r.secret.clone()).collect();
    secrets.sort();
    secrets.dedup();
    let answers = fetcher
        .read_each(&plan.source, &secrets)
        .map_err(|e| vec![format!("cannot read the brokered secrets: {e}")])?;
    for (name, answer) in secrets.iter().zip(&answers) {
        if let Err(e) = answer {
            problems.push(format!("broker for secret \"{name}\": {e}"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Each route's value, by its secret's place in the sorted list read.
    let ordered: Vec<&crate::secret::SecretValue> = routes
        .iter()
        .map(|r| {
            let i = secrets
                .binary_search(&r.secret)
                .expect("every route's secret was read");
            answers[i].as_ref().expect("every answer was checked above")
        })
        .collect();
    let (running, addresses) = fetcher.start_broker(&plan.source, &routes, &ordered)?;
    drop(ordered);
    let values: Vec<(SecretName, crate::secret::SecretValue)> = secrets
        .into_iter()
        .zip(answers)
        .filter_map(|(n, a)| a.ok().map(|v| (n, v)))
        .collect();
    let mut out = plan.clone();
    let existing = |name: &str| -> Option<String> {
        match plan.vars.iter().find(|v| v.name == name) {
            Some(Var {
                value: Value::Plain(p),
                ..
            }) => Some(p.to_string_lossy().into_owned()),
            Some(_) => None,
            None => plan
                .inherited
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string_lossy().into_owned()),
        }
    };
    let set = super::broker::variables(&routes, &addresses, &existing);
    // The launcher's way to the store is not the workload's business.
    out.inherited
        .retain(|(k, _)| !matches!(k.to_str(), Some("SECRETFS_STORE" | "SECRETFS_KEY_FILE")));
    if let Some(what) = readable_source(&plan.source) {
        say(&format!(
            "warning: the workload runs as this user and can read {what}, and through it the \
             brokered values themselves; to keep them out of its hands, give the launcher a \
             server token in SECRETFS_TOKEN (which the workload does not inherit) or run the \
             workload as another user"
        ));
    }
    for (name, value) in set {
        out.inherited
            .retain(|(k, _)| k.as_os_str() != name.as_str());
        out.vars.retain(|v| v.name != name);
        out.vars.push(Var {
            name,
            value: Value::Plain(value.into()),
            origin: Origin::Launcher,
        });
    }
    Ok((out, running, values))
}

/// What of the launcher's source a workload of the same user can read for itself (a
/// directory, the store and its key file, a token file), if anything: a brokered value is only
/// out of its hands when the source is not (a token in `SECRETFS_TOKEN`, which the launcher
/// reads and the workload does not inherit).
fn readable_source(source: &SourcePlan) -> Option<String> {
    use crate::source::choose::CredentialSpec;
    match source {
        SourcePlan::Dir { path, .. } => Some(format!("the directory {}", path.display())),
        SourcePlan::Store { path, .. } => Some(match path {
            Some(p) => format!("the store {} and its key file", p.display()),
            None => "the default store and its key file".to_owned(),
        }),
        SourcePlan::Server { credential, .. } => match credential {
            CredentialSpec::Token(_) => None,
            file @ (CredentialSpec::TokenFile(_) | CredentialSpec::Identity { .. }) => {
                Some(file.describe())
            }
        },
    }
}

/// Runs the plan's command under supervision until it ends; returns its status.
pub fn run(plan: &ExecPlan, fetcher: &impl Fetch) -> ExitCode {
    let unwatched = WatchPlan::unwatched();
    let watch = plan.watch.as_ref().unwrap_or(&unwatched);
    // A built-in made from one secret keeps the one it is first made from, for every restart
    // (as a mount's does): another of its kind appearing later is not a change, nor a reason
    // for the re-resolve to fail.
    let pinned = match pin_single_builtins(plan, fetcher) {
        Ok(p) => p,
        Err(problems) => return fail(&problems),
    };
    let plan = &pinned;
    let names = plan.secret_names();
    // The secrets behind built-in rendered files of a set count as used: every one of their
    // kinds, so that one added or removed is a change too.
    let mut kinds: Vec<crate::secret::SecretKind> = plan
        .files
        .iter()
        .filter_map(|f| match f.recipe {
            crate::render::Recipe::Builtin { which, .. } if which.is_set() => Some(which.kind()),
            _ => None,
        })
        .collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    // Brokered secrets are always followed (a rotated value is used by the next request);
    // the rest only with --watch.
    let mut brokered: Vec<SecretName> = plan.brokers.iter().map(|b| b.secret.clone()).collect();
    brokered.sort();
    brokered.dedup();
    let followed = if plan.watch.is_some() {
        let mut all = names.clone();
        all.extend(brokered.iter().cloned());
        all.sort();
        all.dedup();
        Followed {
            names: all,
            kinds,
            on_refusal: brokered.clone(),
        }
    } else {
        Followed {
            names: brokered.clone(),
            kinds: Vec::new(),
            on_refusal: brokered.clone(),
        }
    };
    // Changes are followed by a thread, which must start with the signals blocked: a
    // process-directed signal goes to any thread that does not block it, and there SIGCHLD
    // would be dropped and SIGTERM would end the supervisor without its workload. Opening a
    // store or a server may start threads too (a resolver's), so for them the signals are
    // blocked first. A directory's first look is a `stat` per file and starts none: its signals
    // are blocked only after the first resolve, so a TERM during `--wait` ends the launcher
    // with nothing started. Either way the first look comes before the values are read: a
    // change in between is seen by the first round.
    let mut blocked = None;
    let first_look = match &plan.source {
        _ if plan.watch.is_none() && plan.brokers.is_empty() => None,
        dir @ SourcePlan::Dir { .. } if plan.brokers.is_empty() => {
            match fetcher.first_look(dir, &followed) {
                Ok(first) => Some(first),
                Err(problems) => return fail(&problems),
            }
        }
        other => {
            match block_signals() {
                Ok(b) => blocked = Some(b),
                Err(e) => return fail(&[e]),
            }
            match fetcher.first_look(other, &followed) {
                Ok(first) => Some(first),
                Err(problems) => return fail(&problems),
            }
        }
    };
    // The brokers start on threads of their own, with the signals blocked (above).
    let brokered_plan;
    let mut broker = None;
    let mut brokered_values = Vec::new();
    let plan = if plan.brokers.is_empty() {
        plan
    } else {
        match start_brokers(plan, fetcher) {
            Ok((p, running, values)) => {
                broker = Some(running);
                brokered_plan = p;
                // Kept only for the masker to learn (below), then dropped (wiped): the broker
                // holds its copy in locked memory.
                if plan.mask {
                    brokered_values = values;
                }
                &brokered_plan
            }
            Err(problems) => return fail(&problems),
        }
    };
    if let Some(dir) = &plan.workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        return fail(&[format!("cannot change to workdir {}: {e}", dir.display())]);
    }
    let resolved = match resolve::resolve_for_child(plan, fetcher) {
        Ok(r) => r,
        Err(problems) => return fail(&problems),
    };
    // Re-resolving never waits: a supervisor inside `--wait` would be deaf to signals and to
    // its workload's end; a missing file is a failed round, retried.
    let mut replan = plan.clone();
    if let SourcePlan::Dir { wait, .. } = &mut replan.source {
        *wait = None;
    }
    let (child_mask, signals) = match blocked.map_or_else(block_signals, Ok) {
        Ok(b) => b,
        Err(e) => return fail(&[e]),
    };
    // A broker without --watch still follows its secrets' files at --watch's default pace.
    let every = if plan.watch.is_some() {
        watch.poll
    } else {
        super::watch::DEFAULT_POLL
    };
    let detector = match first_look.map(|first| first.spawn(every, say)) {
        Some(Ok(follower)) => Detector::Feed(follower),
        Some(Err(e)) => return fail(&[e]),
        None => Detector::Nothing,
    };
    // Told to stop while the secrets were read (signals already blocked): nothing is started.
    while let Ok(Some(info)) = signals.read_signal() {
        if let Ok(sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)) =
            Signal::try_from(info.ssi_signo as i32)
        {
            say(&format!(
                "told to stop (SIG{}) before the workload started",
                sig.as_str().trim_start_matches("SIG")
            ));
            return ExitCode::from(128u8.wrapping_add(sig as u8));
        }
    }
    let mask = if plan.mask {
        // Built empty here and once, with the values, by `learn`.
        let (masker, _) = super::mask::Masker::new(std::iter::empty());
        let short = resolved
            .values
            .iter()
            .filter(|(_, v)| v.expose_secret().len() < super::mask::MIN_MASKED);
        for (name, _) in short {
            eprintln!(
                "warning: secret \"{name}\" is shorter than {} bytes and is not masked \
                 (masking so short a value would mangle ordinary output)",
                super::mask::MIN_MASKED
            );
        }
        let shared = std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(masker)));
        // Started with the signals blocked, like every thread here.
        let relays = match super::mask::Relays::start(&shared) {
            Ok(r) => r,
            Err(e) => return fail(&[e]),
        };
        let mut m = Masking {
            shared,
            seen: Vec::new(),
            relays,
        };
        m.learn(&resolved);
        m.learn_values(brokered_values.iter().map(|(n, v)| (n, v)));
        drop(brokered_values);
        Some(m)
    } else {
        None
    };
    let mut s = Supervisor {
        plan: &replan,
        watch,
        fetcher,
        signals,
        detector,
        child_mask,
        child: Pid::from_raw(0),
        stopping: false,
        restarts: VecDeque::new(),
        mask,
        terminal: None,
        fed: Vec::new(),
        broker,
        brokered,
        used: if plan.watch.is_some() {
            names
        } else {
            Vec::new()
        },
        // Without --watch nothing restarts the workload, whatever its files hold: a brokered
        // secret's rotation only reaches the broker.
        by_kind: plan.watch.is_some()
            && plan.files.iter().any(|f| {
                matches!(f.recipe, crate::render::Recipe::Builtin { which, .. } if which.is_set())
            }),
    };
    if watch.process_group
        && let Ok(foreground) = nix::unistd::tcgetpgrp(std::io::stdin())
        && foreground == nix::unistd::getpgrp()
    {
        s.terminal = Some(foreground);
    }
    match s.start(resolved) {
        Ok(pid) => s.child = pid,
        Err(f) => {
            eprintln!("error: {}", f.message);
            return s.end(f.code);
        }
    }
    let status = s.supervise();
    if s.watch.process_group {
        // The workload's group ends with its leader, as at a restart: a helper it left behind
        // (one that ignores the stop signal, say) must not outlive the supervisor.
        let _ = killpg(s.child, Signal::SIGKILL);
    }
    s.end(status)
}

impl<F: Fetch> Supervisor<'_, F> {
    /// Lets the masked output drain, then ends with `status`.
    fn end(self, status: u8) -> ExitCode {
        if let Some(ours) = self.terminal {
            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), ours);
        }
        if let Some(m) = self.mask {
            m.relays.finish(Duration::from_secs(1));
        }
        ExitCode::from(status)
    }

    /// Follows changes and signals until the workload's end; its status.
    fn supervise(&mut self) -> u8 {
        let s = self;
        let watch = s.watch;

        // A change waiting for its debounce (or for a retry) to pass: which names, when it is
        // due, and when the first of them was seen.
        let mut pending: Option<(Vec<SecretName>, Instant, Instant)> = None;
        loop {
            let wait = match &pending {
                Some((_, due, _)) => due
                    .saturating_duration_since(Instant::now())
                    .min(watch.poll),
                None => watch.poll,
            };
            if let Some(status) = s.wait_for_signals(wait) {
                return status;
            }
            if s.stopping {
                // Told to stop: nothing more is due; wait (without spinning) for the workload.
                pending = None;
                continue;
            }
            let mut changed = s.detector.changed(&mut s.fed);
            s.refresh_brokers(&changed);
            // A brokered secret is the workload's cause to restart only when it also started
            // with its value.
            changed.retain(|n| s.by_kind || s.used.contains(n));
            if !changed.is_empty() {
                let at = Instant::now();
                let (mut all, first) = match pending.take() {
                    Some((c, _, first)) => (c, first),
                    None => (Vec::new(), at),
                };
                all.extend(changed);
                all.sort();
                all.dedup();
                // Every change restarts the debounce (a burst is one action, with the last values),
                // up to ten debounces after the first: a file touched without end still gets its
                // action.
                let due = (at + watch.debounce).min(first + watch.debounce * 10);
                pending = Some((all, due, first));
            }
            if let Some((changed, due, first)) = &pending
                && Instant::now() >= *due
            {
                let shown: Vec<String> = changed.iter().map(|n| format!("\"{n}\"")).collect();
                match s.act(&shown.join(", ")) {
                    Act::Done => pending = None,
                    Act::RetryAt(at) => pending = Some((changed.clone(), at, *first)),
                    Act::Exit(code) => return code,
                }
            }
        }
    }
}

impl<F: Fetch> Supervisor<'_, F> {
    /// Reads the brokered secrets among `changed` and hands them to the broker (no debounce:
    /// the next request uses the new value).
    fn refresh_brokers(&mut self, changed: &[SecretName]) {
        let Some(broker) = &self.broker else {
            return;
        };
        let names: Vec<SecretName> = changed
            .iter()
            .filter(|n| self.brokered.contains(n))
            .cloned()
            .collect();
        if names.is_empty() {
            return;
        }
        match self.fetcher.read_each(&self.plan.source, &names) {
            Ok(answers) => {
                for (name, answer) in names.iter().zip(&answers) {
                    broker.update(name, answer);
                }
                if let Some(m) = &mut self.mask {
                    m.learn_values(
                        names
                            .iter()
                            .zip(&answers)
                            .filter_map(|(n, a)| a.as_ref().ok().map(|v| (n, v))),
                    );
                }
            }
            Err(crate::source::SourceError::Refused(why)) => {
                for name in &names {
                    broker.update(name, &Err(crate::source::SourceError::Refused(why.clone())));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for name in &names {
                    broker.update(
                        name,
                        &Err(crate::source::SourceError::Unavailable(why.clone())),
                    );
                }
            }
        }
    }
}

enum Act {
    Done,
    RetryAt(Instant),
    Exit(u8),
}

impl<F: Fetch> Supervisor<'_, F> {
    /// Starts the workload with `resolved`, through the hand-over (which ties its life to this
    /// process's and names its memory files); the values then live in the workload only (this
    /// process's copies are dropped here).
    fn start(&mut self, resolved: Resolved) -> Result<Pid, ExecFailure> {
        if let Some(m) = &mut self.mask {
            m.learn(&resolved);
        }
        let redirect: Vec<(i32, std::os::fd::BorrowedFd<'_>)> = self
            .mask
            .iter()
            .flat_map(|m| m.relays.child_ends.iter())
            .map(|(n, fd)| (*n, std::os::fd::AsFd::as_fd(fd)))
            .collect();
        let command = super::exec::handover_command(
            std::process::id(),
            &resolved.memfd_vars,
            &self.plan.command,
        );
        let pid = super::exec::spawn(
            &command,
            &resolved.env,
            resolve::child_path(&resolved.env).as_deref(),
            &self.child_mask,
            self.watch.process_group,
            &redirect,
        )?;
        if self.terminal.is_some() {
            // A workload in its own group reads the terminal as its foreground, as a shell's
            // job would; stopped for reading it before this (SIGTTIN), it goes on.
            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), pid);
            let _ = killpg(pid, Signal::SIGCONT);
        }
        Ok(pid)
    }

    /// Waits up to `timeout` for signals and handles them: forwards, reaps. Returns the
    /// workload's status once it has ended on its own (or after being told to stop).
    fn wait_for_signals(&mut self, timeout: Duration) -> Option<u8> {
        // Rounded up: a remainder below a millisecond must not become a zero timeout.
        let millis = u16::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u16::MAX);
        let mut fds = vec![PollFd::new(
            std::os::fd::AsFd::as_fd(&self.signals),
            PollFlags::POLLIN,
        )];
        if let Detector::Feed(f) = &self.detector {
            fds.push(PollFd::new(f.fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let feed = fds.get(1).and_then(PollFd::revents);
        drop(fds);
        if let Some(r) = feed
            && let Detector::Feed(f) = &self.detector
        {
            self.fed.extend(f.take());
            if r.contains(PollFlags::POLLHUP) && !r.contains(PollFlags::POLLIN) {
                // The follower is gone (it ends only with a panic): say so, poll no more.
                say("error: stopped following the source's changes; the workload keeps running");
                self.detector = Detector::Nothing;
            }
        }
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if sig == Signal::SIGCHLD {
                if let Some(status) = self.reap() {
                    return Some(status);
                }
            } else {
                if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
                    self.stopping = true;
                }
                if sig == Signal::SIGWINCH
                    && let Some(m) = &self.mask
                {
                    m.relays.resized();
                }
                // Ctrl-C, Ctrl-\ and a resize are sent by the terminal to its whole foreground
                // process group: a workload in ours has had it already, and a second SIGINT
                // would cut its clean-up short. (A resize still goes on when the workload's
                // terminal is --mask's: it has its new size only now.)
                let own_terminal = self.mask.as_ref().is_some_and(|m| m.relays.has_terminal());
                // (Only when the workload is still in this group: it may have left it.)
                let same_group =
                    nix::unistd::getpgid(Some(self.child)).ok() == Some(nix::unistd::getpgrp());
                let from_terminal = info.ssi_code == libc::SI_KERNEL
                    && same_group
                    && match sig {
                        Signal::SIGINT | Signal::SIGQUIT => true,
                        Signal::SIGWINCH => !own_terminal,
                        _ => false,
                    };
                if !from_terminal || self.watch.process_group {
                    self.send(sig);
                }
            }
        }
        None
    }

    /// Reaps every child that ended (orphans too, when this is PID 1); the workload's status
    /// if it was one of them.
    fn reap(&mut self) -> Option<u8> {
        self.follow_a_stop();
        let mut workload = self.workload_ended();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Ok(w) => {
                    if w.pid() == Some(self.child) {
                        workload = workload.or(status_of(w));
                    }
                }
                // nix names only the standard signals: a child ended by a real-time one is
                // reaped all the same, and answered EINVAL. Go on reaping.
                Err(_) => {}
            }
        }
        if workload.is_none() && kill(self.child, None) == Err(nix::Error::ESRCH) {
            // Reaped above with a status nix could not decode, in the moment between the
            // check and the loop.
            say("the workload ended; its status could not be read");
            workload = Some(255);
        }
        workload
    }

    /// Job control, when the workload has the terminal (`--process-group` on a terminal): a
    /// workload stopped from it (^Z) stops the supervisor too, which first takes the terminal
    /// back for its own group, so that the shell above sees its job stopped and gets the
    /// terminal, as with any job. Continued in the foreground (`fg`), it hands the terminal to
    /// the workload again and continues it; in the background (`bg`), it only continues it.
    fn follow_a_stop(&mut self) {
        use nix::sys::wait::{Id, waitid};
        let Some(ours) = self.terminal else {
            return;
        };
        let stopped = waitid(
            Id::Pid(self.child),
            WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG,
        );
        if !matches!(stopped, Ok(WaitStatus::Stopped(..))) {
            return;
        }
        let stdin = std::io::stdin();
        let _ = nix::unistd::tcsetpgrp(&stdin, ours);
        // Stops here until the shell continues this group.
        let _ = kill(Pid::this(), Signal::SIGSTOP);
        if nix::unistd::tcgetpgrp(&stdin) == Ok(ours) {
            let _ = nix::unistd::tcsetpgrp(&stdin, self.child);
        }
        let _ = killpg(self.child, Signal::SIGCONT);
    }

    /// Whether the workload has ended, and its status; reaps it. Looked at without reaping
    /// first, so that a status nix cannot decode (a real-time signal) is read from /proc.
    fn workload_ended(&self) -> Option<u8> {
        use nix::sys::wait::{Id, waitid};
        let peek = waitid(
            Id::Pid(self.child),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let status = match peek {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return None,
            Ok(w) => status_of(w),
            Err(_) => zombie_status(self.child),
        };
        let _ = waitpid(self.child, Some(WaitPidFlag::WNOHANG));
        Some(status.unwrap_or(255))
    }

    fn send(&self, sig: Signal) {
        let _ = if self.watch.process_group {
            killpg(self.child, sig)
        } else {
            kill(self.child, sig)
        };
    }

    /// The change is due: re-resolve, then do what the policy says.
    fn act(&mut self, changed: &str) -> Act {
        let retry =
            || Act::RetryAt(Instant::now() + self.watch.debounce.max(Duration::from_secs(1)));
        let resolved = match resolve::resolve_for_child(self.plan, self.fetcher) {
            Ok(r) => r,
            Err(problems) => {
                for p in &problems {
                    say(&format!(
                        "after a change of {changed}: {p}; the workload keeps running on its \
                         old values, trying again"
                    ));
                }
                return retry();
            }
        };
        match self.watch.on_change {
            OnChange::Signal(sig) => {
                say(&format!(
                    "{changed} changed: sending SIG{} to the workload",
                    sig.as_str().trim_start_matches("SIG")
                ));
                self.send(sig);
                Act::Done
            }
            OnChange::Exit(code) => {
                say(&format!(
                    "{changed} changed: stopping the workload and exiting with {code}"
                ));
                match self.stop_workload() {
                    Ok(()) => Act::Exit(code),
                    Err(status) => Act::Exit(status),
                }
            }
            OnChange::Restart => {
                let now = Instant::now();
                while self
                    .restarts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.watch.budget.window)
                {
                    self.restarts.pop_front();
                }
                if self.restarts.len() >= self.watch.budget.count as usize {
                    let next = self.restarts[0] + self.watch.budget.window;
                    say(&format!(
                        "error: {changed} changed, but the workload was restarted {} times in the \
                         last {}: it keeps running on its old values until {} from now",
                        self.restarts.len(),
                        humantime::format_duration(self.watch.budget.window),
                        humantime::format_duration(Duration::from_secs(
                            next.saturating_duration_since(now).as_secs() + 1
                        ))
                    ));
                    return Act::RetryAt(next);
                }
                if let Err(status) = self.stop_workload() {
                    // Told to stop while restarting: the workload's end is the supervisor's.
                    return Act::Exit(status);
                }
                // The values as they are now: a rotation during the stop is not started stale
                // (and, if they cannot be read now, the ones checked before the stop serve).
                let resolved =
                    resolve::resolve_for_child(self.plan, self.fetcher).unwrap_or(resolved);
                match self.start(resolved) {
                    Ok(pid) => {
                        self.child = pid;
                        self.restarts.push_back(Instant::now());
                        say(&format!(
                            "{changed} changed: restarted the workload (pid {pid})"
                        ));
                        Act::Done
                    }
                    Err(f) => {
                        say(&format!(
                            "error: cannot start the workload again: {}",
                            f.message
                        ));
                        Act::Exit(f.code)
                    }
                }
            }
        }
    }

    /// Stops the workload with its stop signal, then SIGKILL after the timeout; signals that
    /// arrive meanwhile are handled. `Err(status)` when the supervisor was told to stop
    /// meanwhile (its status is then the workload's).
    fn stop_workload(&mut self) -> Result<(), u8> {
        self.send(self.watch.stop_signal);
        let deadline = Instant::now() + self.watch.stop_timeout;
        let mut killed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !killed {
                say("the workload did not stop in time: SIGKILL");
                self.send(Signal::SIGKILL);
                killed = true;
            }
            let wait = if killed {
                Duration::from_millis(100)
            } else {
                left
            };
            if let Some(status) = self.wait_for_signals(wait) {
                if self.watch.process_group {
                    // The leader is gone; what it left in its group goes with it.
                    let _ = killpg(self.child, Signal::SIGKILL);
                }
                return if self.stopping { Err(status) } else { Ok(()) };
            }
        }
    }
}

/// A zombie's status as the kernel keeps it (`/proc/PID/stat`, field 52: the raw wait status),
/// as a shell reports it.
fn zombie_status(pid: Pid) -> Option<u8> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let raw: i32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(49)?
        .parse()
        .ok()?;
    let signal = raw & 0x7f;
    Some(if signal == 0 {
        ((raw >> 8) & 0xff) as u8
    } else {
        128u8.wrapping_add(signal as u8)
    })
}

fn fail(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    eprintln!("secretfs run: the workload was not started");
    ExitCode::from(super::LAUNCH_FAILED)
}
