//! The running broker: one loopback listener per [`Route`], in the supervising launcher, that
//! forwards the workload's calls to the route's upstream over TLS with the credential header
//! added.
//!
//! HTTP on both sides is hyper's (the listener) and reqwest's (the upstream): both stream, so a
//! server-sent event or a chunk of an answer reaches the workload as the upstream produces it,
//! and an upload goes on as the workload writes it. Nothing is intercepted: the workload speaks
//! plain HTTP to a base URL it was given, and the broker alone speaks TLS to the upstream, with
//! the system's roots (plus `ca_file`).
//!
//! Who may call: a connection is served only when it comes from the workload's user (the
//! socket's owner as the kernel records it: `peer`, or `SO_PEERCRED` on a Unix socket), and a
//! request only under the route's per-run prefix (128 random bits, in the base URL the
//! workload alone was given) with the broker's own address as its `Host` (a request meant for
//! another host, or sent as to a proxy, is refused: the broker is no general proxy).
//!
//! The credential lives in a locked, non-dumpable page (`fs::memory`) as the header's value;
//! each request copies it into the request it sends, and that copy goes with the request.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::broker::{Address, Route};
use crate::fs::memory::{LockedPool, LockedSlot};
use crate::protocol::BrokeredCall;
use crate::secret::{SecretName, SecretValue};
use crate::source::Source;
use crate::source::SourceError;

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The calling process of a connection, for its calls' audit records: found beside the
/// connection's first requests (a scan of `/proc/*/fd` takes milliseconds: before serving, it
/// delayed every new connection's first byte by 9 ms in `scripts/bench-broker`), 0 when not
/// found.
type Pid = Arc<std::sync::OnceLock<u32>>;

/// Connections a run's brokers hold open at once, and how long a request's head may take.
const MAX_CONNECTIONS: usize = 256;
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the audit writer waits for a call's pid to be found before it records 0.
const PID_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// What a listener sends with each request now.
enum Credential {
    /// The header's value, in locked memory.
    Ready(LockedSlot),
    /// The secret is gone or the source refused the launcher: every request is answered with
    /// this status and reason, until a value comes back.
    Refused(StatusCode, String),
}

struct Listener {
    route: Route,
    header: HeaderName,
    /// `/` and 32 hex digits.
    prefix: String,
    placeholder: String,
    /// The `Host`s a request to the broker carries (`127.0.0.1:PORT`, `localhost:PORT`); empty
    /// on a Unix socket, which no browser or proxy reaches: any `Host` is its own.
    hosts: Vec<String>,
    base: String,
    credential: RwLock<Credential>,
    client: reqwest::Client,
    /// The workload's user: the only one served.
    uid: u32,
    /// Where each forwarded call's audit record goes (none for a directory source).
    audit: Option<std::sync::mpsc::Sender<(BrokeredCall, Pid)>>,
    /// Connections open at once, every listener of the run together: past it, new ones wait
    /// in the kernel's queue (the launcher's descriptors stay for its own work).
    connections: Arc<tokio::sync::Semaphore>,
}

/// The brokers of a run, serving until dropped.
pub struct Running {
    listeners: Vec<Arc<Listener>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The audit writer: told it is done when every listener is gone; says when it has
    /// written what was left.
    written: Option<std::sync::mpsc::Receiver<()>>,
    /// The 0700 directory of the Unix sockets, removed at the end.
    socket_dir: Option<std::path::PathBuf>,
}

impl Drop for Running {
    /// Stops serving, then gives the audit writer a moment to write the last calls.
    fn drop(&mut self) {
        self.listeners.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
        }
        if let Some(written) = self.written.take() {
            let _ = written.recv_timeout(AUDIT_DRAIN);
        }
        if let Some(dir) = self.socket_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A listener's socket before the runtime takes it.
enum Socket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, String),
}

/// A directory only this user may enter, for the brokers' Unix sockets: under
/// `$XDG_RUNTIME_DIR` when there is one, else the temporary directory.
fn socket_dir() -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = parent.join(format!("secretfs-broker-{}", crate::auth::new_id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            format!(
                "cannot make the brokers' socket directory {}: {e}",
                dir.display()
            )
        })?;
    Ok(dir)
}

/// How often the audit writer sends what has gathered (the first call of a quiet spell goes
/// at once), how many calls one request carries, how many may wait through an outage, and how
/// long the end of a run waits for the last ones.
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const AUDIT_BATCH: usize = crate::protocol::BROKERED_CALLS_MAX;
const AUDIT_KEPT: usize = 100_000;
const AUDIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

fn header_slot(route: &Route, value: &SecretValue) -> Result<LockedSlot, String> {
    let bytes = route.header.value(value.expose_secret());
    // HeaderValue's own rule (tab, visible bytes, obs-text), checked in place: building one
    // would copy the credential into a buffer nothing wipes.
    let fits = bytes
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    fits.then_some(()).ok_or_else(|| {
        format!(
            "secret \"{}\" holds bytes an HTTP header cannot carry (a line break or a control \
             character); broker \"{}\" cannot send it",
            route.secret, route.name
        )
    })?;
    let mut slots = LockedPool::store([bytes.as_slice()])
        .map_err(|e| format!("cannot map memory for broker \"{}\": {e}", route.name))?;
    Ok(slots.remove(0))
}

impl Running {
    /// Starts a listener per route (`values[i]` is `routes[i]`'s secret's value) on a runtime
    /// of its own; its threads start with the caller's signal mask. The addresses are in the
    /// routes' order.
    ///
    /// `audit`: the source whose audit log records every forwarded call (in batches, from a
    /// thread of its own).
    pub fn start(
        routes: &[Route],
        values: &[&SecretValue],
        audit: Option<Box<dyn Source>>,
    ) -> Result<(Running, Vec<Address>), Vec<String>> {
        crate::client::install_crypto_provider();
        let mut problems = Vec::new();
        let uid = nix::unistd::getuid().as_raw();
        let mut prepared = Vec::new();
        let dir = if routes.iter().any(|r| r.socket_env.is_some()) {
            Some(socket_dir().map_err(|e| vec![e])?)
        } else {
            None
        };
        for (route, value) in routes.iter().zip(values) {
            let header = HeaderName::from_bytes(route.header.name.as_bytes())
                .map_err(|_| format!("broker \"{}\": bad header name", route.name));
            let slot = header_slot(route, value);
            let client = upstream_client(route);
            let socket = match (&dir, &route.socket_env) {
                (Some(dir), Some(_)) => {
                    let path = dir.join(format!("{}.sock", route.name.replace('/', "-")));
                    std::os::unix::net::UnixListener::bind(&path)
                        .map(|l| Socket::Unix(l, path.display().to_string()))
                        .map_err(|e| {
                            format!(
                                "broker \"{}\": cannot listen on {}: {e}",
                                route.name,
                                path.display()
                            )
                        })
                }
                _ => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .map(Socket::Tcp)
                    .map_err(|e| {
                        format!("broker \"{}\": cannot listen on 127.0.0.1: {e}", route.name)
                    }),
            };
            match (header, slot, client, socket) {
                (Ok(h), Ok(s), Ok(c), Ok(sock)) => prepared.push((
                    route.clone(),
                    h,
                    s,
                    c,
                    sock,
                    crate::auth::new_id(),
                    crate::auth::new_id(),
                )),
                (h, s, c, sock) => {
                    problems.extend(h.err());
                    problems.extend(s.err());
                    problems.extend(c.err());
                    problems.extend(sock.err());
                }
            }
        }
        if !problems.is_empty() {
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(problems);
        }
        // Two malloc arenas, not one per thread: a thread each that allocates would hold its
        // own pages (the workload, exec'd, is not affected).
        crate::fs::memory::limit_malloc_arenas();
        // One worker: a request hops between the listener's task, the request's and the
        // upstream connection's, and on two workers each hop could wake the other thread (21,974
        // against 19,175 requests/s at 32 connections on this 2-core machine,
        // `scripts/bench-broker`); the workload and the upstream need the other core anyway.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            // The /proc scans of new connections (their callers' pids); a burst of connections
            // must not start a thread each.
            .max_blocking_threads(2)
            .thread_name("broker")
            .enable_all()
            .build()
            .map_err(|e| vec![format!("cannot start the broker: {e}")])?;
        let (audit, written) = match audit {
            Some(source) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let (done, written) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("broker-audit".into())
                    .spawn(move || {
                        write_audit(source.as_ref(), &rx);
                        let _ = done.send(());
                    })
                    .map_err(|e| vec![format!("cannot start the broker's audit: {e}")])?;
                (Some(tx), Some(written))
            }
            None => (None, None),
        };
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for (route, header, slot, client, socket, prefix, tail) in prepared {
            let prefix = format!("/{prefix}");
            let placeholder = format!("secretfs-broker-placeholder-{tail}");
            let (base, hosts, path) = match &socket {
                Socket::Tcp(l) => {
                    let port = l.local_addr().map_err(|e| vec![e.to_string()])?.port();
                    (
                        format!("http://127.0.0.1:{port}{prefix}"),
                        vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")],
                        None,
                    )
                }
                Socket::Unix(_, path) => (
                    format!("http://localhost{prefix}"),
                    Vec::new(),
                    Some(path.clone()),
                ),
            };
            let listener = Arc::new(Listener {
                header,
                prefix,
                placeholder: placeholder.clone(),
                hosts,
                base: base.clone(),
                credential: RwLock::new(Credential::Ready(slot)),
                client,
                uid,
                route,
                audit: audit.clone(),
                connections: connections.clone(),
            });
            let _inside = runtime.enter();
            match socket {
                Socket::Tcp(l) => {
                    l.set_nonblocking(true).map_err(|e| vec![e.to_string()])?;
                    let l =
                        tokio::net::TcpListener::from_std(l).map_err(|e| vec![e.to_string()])?;
                    runtime.spawn(accept_tcp(l, listener.clone()));
                }
                Socket::Unix(l, _) => {
                    l.set_nonblocking(true).map_err(|e| vec![e.to_string()])?;
                    let l =
                        tokio::net::UnixListener::from_std(l).map_err(|e| vec![e.to_string()])?;
                    runtime.spawn(accept_unix(l, listener.clone()));
                }
            }
            listeners.push(listener);
            addresses.push(Address {
                base,
                socket: path,
                placeholder,
            });
        }
        Ok((
            Running {
                listeners,
                runtime: Some(runtime),
                written,
                socket_dir: dir,
            },
            addresses,
        ))
    }

    /// Takes what the source says of `secret` now: a value is used from the next request on;
    /// a secret gone or a credential refused is answered to every request with the reason; an
    /// outage keeps the last value.
    pub fn update(&self, secret: &SecretName, now: &Result<SecretValue, SourceError>) {
        for l in self.listeners.iter().filter(|l| &l.route.secret == secret) {
            let next = match now {
                Ok(value) => match header_slot(&l.route, value) {
                    Ok(slot) => Credential::Ready(slot),
                    Err(e) => Credential::Refused(StatusCode::FORBIDDEN, e),
                },
                Err(SourceError::NotFound(_)) => Credential::Refused(
                    StatusCode::FORBIDDEN,
                    format!(
                        "secret \"{secret}\" was deleted, or this run may no longer use it; \
                         broker \"{}\" refuses until it is back",
                        l.route.name
                    ),
                ),
                Err(SourceError::Refused(why)) => Credential::Refused(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "the source refused the launcher's credential ({why}); broker \"{}\" \
                         refuses until it is accepted again",
                        l.route.name
                    ),
                ),
                Err(e @ (SourceError::Unavailable(_) | SourceError::Failed(_))) => {
                    eprintln!(
                        "secretfs run: broker \"{}\": cannot read secret \"{secret}\" ({e}); \
                         the last value stays in use",
                        l.route.name
                    );
                    continue;
                }
            };
            *l.credential.write().unwrap_or_else(|e| e.into_inner()) = next;
        }
    }
}

/// The upstream's client: TLS with the system's roots plus the route's CA file; no redirect
/// followed (a redirect goes back to the workload, which follows it without the credential);
/// the launcher's `HTTPS_PROXY`/`NO_PROXY` honoured.
fn upstream_client(route: &Route) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(std::time::Duration::from_secs(60));
    let builder = crate::client::trust_ca_file(builder, route.ca_file.as_deref())
        .map_err(|e| format!("broker \"{}\": {e}", route.name))?;
    builder
        .build()
        .map_err(|e| format!("broker \"{}\": cannot set up HTTPS: {e}", route.name))
}

async fn accept_tcp(socket: tokio::net::TcpListener, listener: Arc<Listener>) {
    loop {
        let Ok(permit) = listener.connections.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "broker: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let listener = listener.clone();
        tokio::spawn(async move {
            // The owner before a byte is served (one netlink lookup); the process only for the
            // audit, beside the serving (a scan of /proc: off the runtime's threads).
            let owner = match (peer, stream.local_addr()) {
                (SocketAddr::V4(client), Ok(SocketAddr::V4(server))) => {
                    super::peer::owner(client, server)
                }
                _ => None,
            };
            let pid = Pid::default();
            if let Some((uid, inode)) = owner
                && uid == listener.uid
            {
                let slot = pid.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = slot.set(super::peer::pid_of_socket(inode).unwrap_or(0));
                });
            }
            let _ = stream.set_nodelay(true);
            serve(stream, listener, owner.map(|(uid, _)| uid), pid, permit).await;
        });
    }
}

/// On a Unix socket the kernel says who connected (`SO_PEERCRED`).
async fn accept_unix(socket: tokio::net::UnixListener, listener: Arc<Listener>) {
    loop {
        let Ok(permit) = listener.connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match socket.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "broker: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let caller = stream.peer_cred().ok();
        let pid = Pid::default();
        let _ = pid.set(
            caller
                .and_then(|c| c.pid())
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
        );
        tokio::spawn(serve(
            stream,
            listener.clone(),
            caller.map(|c| c.uid()),
            pid,
            permit,
        ));
    }
}

/// Serves one connection whose caller runs as `uid` (its process: `pid`, once found):
/// forwarded when it is the workload's user, else every request refused with the reason.
async fn serve<IO>(
    stream: IO,
    listener: Arc<Listener>,
    uid: Option<u32>,
    pid: Pid,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let refusal = match uid {
        Some(uid) if uid == listener.uid => None,
        Some(uid) => Some(format!(
            "the caller runs as uid {uid}, not as the workload's user (uid {}): only the \
             workload may use this broker",
            listener.uid
        )),
        None => Some("the caller's user cannot be told; refused".to_owned()),
    };
    let refused = refusal.is_some();
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let listener = listener.clone();
        let refusal = refusal.clone();
        let pid = pid.clone();
        async move {
            Ok::<_, Infallible>(match refusal {
                Some(why) => refuse(StatusCode::FORBIDDEN, &why),
                None => forward(&listener, req, pid).await,
            })
        }
    });
    // A head must arrive within HEAD_TIMEOUT (hyper needs a timer for it), and another
    // user's connection gets its one answer and is closed.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(!refused)
        .serve_connection(io, service)
        .await;
    drop(permit);
}

/// Sends the calls that come in to the source's audit log: the first of a quiet spell at once,
/// the rest every [`AUDIT_EVERY`], up to [`AUDIT_BATCH`] a request; through an outage they
/// wait (the oldest dropped past [`AUDIT_KEPT`], said once); at the end (every sender gone)
/// what is left is written once more.
fn write_audit(source: &dyn Source, calls: &std::sync::mpsc::Receiver<(BrokeredCall, Pid)>) {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Instant;
    let mut pending: std::collections::VecDeque<(BrokeredCall, Pid)> = Default::default();
    let mut last = Instant::now() - AUDIT_EVERY;
    let mut failing = false;
    let mut dropped = 0usize;
    let keep = |pending: &mut std::collections::VecDeque<_>, dropped: &mut usize, call| {
        pending.push_back(call);
        if pending.len() > AUDIT_KEPT {
            pending.pop_front();
            *dropped += 1;
        }
    };
    loop {
        // Waiting on the channel only when nothing is due: a receiver blocked on it is woken by
        // every send (a context switch per forwarded call, a fifth of the broker's time at 32
        // connections in `scripts/bench-broker`); otherwise it sleeps until the batch is due
        // and takes what came meanwhile at once.
        let ended = if pending.is_empty() {
            match calls.recv_timeout(std::time::Duration::from_secs(3600)) {
                Ok(call) => {
                    keep(&mut pending, &mut dropped, call);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            }
        } else {
            std::thread::sleep((last + AUDIT_EVERY).saturating_duration_since(Instant::now()));
            false
        };
        let mut ended = ended;
        loop {
            match calls.try_recv() {
                Ok(call) => keep(&mut pending, &mut dropped, call),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        if !ended && Instant::now() < last + AUDIT_EVERY {
            continue;
        }
        last = Instant::now();
        send_pending(source, &mut pending, &mut failing);
        if dropped > 0 {
            eprintln!(
                "secretfs run: broker: {dropped} calls were made while the audit log could not \
                 take them, more than the {AUDIT_KEPT} kept; the oldest were not recorded"
            );
            dropped = 0;
        }
        if ended {
            // The run is over: what the log could not take yet is tried again a few times
            // (a server just back, a connection of the outage to drop) before it is given up.
            let deadline = Instant::now() + AUDIT_DRAIN - std::time::Duration::from_secs(1);
            while !pending.is_empty() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(250));
                send_pending(source, &mut pending, &mut failing);
            }
            if !pending.is_empty() {
                eprintln!(
                    "secretfs run: broker: {} calls could not be recorded in the audit log of {} \
                     before the end of the run",
                    pending.len(),
                    source.describe()
                );
            }
            return;
        }
    }
}

/// Sends what is pending, a batch per request, each call with its pid (waited for up to
/// [`PID_WAIT`]); stops at an outage (the rest waits), sends a refused batch's calls one by
/// one (a secret deleted since its calls holds back only its own).
fn send_pending(
    source: &dyn Source,
    pending: &mut std::collections::VecDeque<(BrokeredCall, Pid)>,
    failing: &mut bool,
) {
    use std::time::Instant;
    while !pending.is_empty() {
        let n = pending.len().min(AUDIT_BATCH);
        let waited = Instant::now();
        let batch: Vec<BrokeredCall> = pending
            .iter()
            .take(n)
            .map(|(call, pid)| {
                while pid.get().is_none() && waited.elapsed() < PID_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                BrokeredCall {
                    pid: u64::from(pid.get().copied().unwrap_or(0)),
                    ..call.clone()
                }
            })
            .collect();
        match source.record_brokered(&batch) {
            Ok(()) => {
                pending.drain(..n);
                if *failing {
                    eprintln!("secretfs run: broker: the audit log takes the calls again");
                    *failing = false;
                }
            }
            Err(crate::source::SourceError::Failed(_)) => {
                pending.drain(..n);
                for call in &batch {
                    if let Err(e) = source.record_brokered(std::slice::from_ref(call)) {
                        eprintln!(
                            "secretfs run: broker: a call to {} with secret \"{}\" could not \
                             be recorded in the audit log: {e}",
                            call.upstream, call.secret
                        );
                    }
                }
            }
            Err(e) => {
                if !*failing {
                    eprintln!(
                        "secretfs run: broker: cannot record calls in the audit log of {} \
                         ({e}); they wait and are sent again",
                        source.describe()
                    );
                    *failing = true;
                }
                return;
            }
        }
    }
}

fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("secretfs broker: {why}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut answer = Response::new(body);
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

/// Headers of one connection only (RFC 9110 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove(hyper::header::TRANSFER_ENCODING);
}

async fn forward(l: &Listener, req: Request<Incoming>, pid: Pid) -> Response<Body> {
    if req.method() == hyper::Method::TRACE {
        // TRACE echoes the request, credential and all.
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "TRACE is not forwarded: its answer would echo the credential",
        );
    }
    // What the audit log takes, checked before anything is sent.
    if !crate::protocol::brokered_method(req.method().as_str()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the method must be 1 to 16 capital letters (GET, POST, ...)",
        );
    }
    if req.method() == hyper::Method::CONNECT || req.uri().authority().is_some() {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "this broker is not a proxy: it forwards only to {} under the base URL the \
                 workload was given",
                l.route.upstream
            ),
        );
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    if !l.hosts.is_empty()
        && !host.is_some_and(|h| l.hosts.iter().any(|ours| ours.eq_ignore_ascii_case(h)))
    {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "a request for host {:?}: this broker answers only requests for {}",
                host.unwrap_or(""),
                l.hosts[0]
            ),
        );
    }
    let path = req.uri().path();
    let rest = match path.strip_prefix(l.prefix.as_str()) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not a path of this broker: requests go under the base URL the workload was \
                 given (its url_env variable)",
            );
        }
    };
    let header = match &*l.credential.read().unwrap_or_else(|e| e.into_inner()) {
        Credential::Ready(slot) => {
            let mut v = HeaderValue::from_bytes(slot.bytes()).expect("checked when stored");
            v.set_sensitive(true);
            v
        }
        Credential::Refused(status, why) => return refuse(*status, why),
    };
    let mut target = l.route.upstream.as_str().trim_end_matches('/').to_owned();
    target.push_str(rest);
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let Ok(url) = reqwest::Url::parse(&target) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the request's path is not a valid URL path",
        );
    };
    // Dot segments (`..`, `%2e%2e`) are resolved by the parse: the path must still be under the
    // upstream's base path, where the credential is meant to go.
    let base = l.route.upstream.path().trim_end_matches('/');
    if url
        .path()
        .strip_prefix(base)
        .is_none_or(|rest| !(rest.is_empty() || rest.starts_with('/')))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("the path leaves the upstream's base path {base:?}"),
        );
    }
    if url.path().len() > crate::protocol::BROKERED_PATH_MAX {
        return refuse(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the path is longer than {} bytes",
                crate::protocol::BROKERED_PATH_MAX
            ),
        );
    }
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(hyper::header::HOST);
    headers.remove(&l.header);
    // The placeholder goes nowhere: whatever header the client put it in is dropped.
    let carrying: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| memchr::memmem::find(v.as_bytes(), l.placeholder.as_bytes()).is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for n in carrying {
        headers.remove(n);
    }
    headers.insert(l.header.clone(), header);
    // Recorded however the call ends: answered (its status), or abandoned by the client or
    // failed after the upstream may have had it (status 0).
    let mut audited = l.audit.as_ref().map(|tx| Audited {
        tx: tx.clone(),
        call: Some(BrokeredCall {
            secret: l.route.secret.as_str().to_owned(),
            upstream: l.route.upstream.as_str().to_owned(),
            method: parts.method.as_str().to_owned(),
            path: url.path().to_owned(),
            status: 0,
            pid: 0,
            uid: u64::from(l.uid),
        }),
        pid,
    });
    let sent = l
        .client
        .request(parts.method, url.clone())
        .headers(headers)
        .body(reqwest::Body::wrap(body))
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "upstream {} did not answer: {}",
                    l.route.upstream,
                    error_chain(&e)
                ),
            );
        }
    };
    if let Some(call) = audited.as_mut().and_then(|a| a.call.as_mut()) {
        call.status = u64::from(answer.status().as_u16());
    }
    drop(audited);
    let answer: Response<reqwest::Body> = answer.into();
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(loc) = parts.headers.get(hyper::header::LOCATION)
        && let Some(ours) = l.relocate(&url, loc)
    {
        parts.headers.insert(hyper::header::LOCATION, ours);
    }
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// A call's audit record, sent when dropped.
struct Audited {
    tx: std::sync::mpsc::Sender<(BrokeredCall, Pid)>,
    call: Option<BrokeredCall>,
    pid: Pid,
}

impl Drop for Audited {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let _ = self.tx.send((call, self.pid.clone()));
        }
    }
}

impl Listener {
    /// A redirect to a place under the upstream becomes the same place under the broker (the
    /// workload follows it through the broker again); any other stays as it is, and the
    /// workload follows it without the credential.
    fn relocate(&self, from: &reqwest::Url, location: &HeaderValue) -> Option<HeaderValue> {
        let target = from.join(location.to_str().ok()?).ok()?;
        let up = &self.route.upstream;
        if target.scheme() != up.scheme()
            || target.host_str() != up.host_str()
            || target.port_or_known_default() != up.port_or_known_default()
        {
            return None;
        }
        let base = up.path().trim_end_matches('/');
        let rest = target.path().strip_prefix(base)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let mut ours = format!("{}{rest}", self.base);
        if let Some(q) = target.query() {
            ours.push('?');
            ours.push_str(q);
        }
        HeaderValue::from_str(&ours).ok()
    }
}

/// An error and its causes on one line (reqwest's top level says only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
