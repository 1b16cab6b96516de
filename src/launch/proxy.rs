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
//! socket's owner in `/proc/net/tcp`, whose uid the kernel records for every socket), and a
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
    /// The `Host`s a request to the broker carries (`127.0.0.1:PORT`, `localhost:PORT`).
    hosts: [String; 2],
    base: String,
    credential: RwLock<Credential>,
    client: reqwest::Client,
    /// The workload's user: the only one served.
    uid: u32,
    /// Where each forwarded call's audit record goes (none for a directory source).
    audit: Option<std::sync::mpsc::Sender<BrokeredCall>>,
}

/// The brokers of a run, serving until dropped.
pub struct Running {
    listeners: Vec<Arc<Listener>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The audit writer: told it is done when every listener is gone; says when it has
    /// written what was left.
    written: Option<std::sync::mpsc::Receiver<()>>,
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
    }
}

/// How often the audit writer sends what has gathered (the first call of a quiet spell goes
/// at once), how many calls one request carries, how many may wait through an outage, and how
/// long the end of a run waits for the last ones.
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const AUDIT_BATCH: usize = crate::protocol::BROKERED_CALLS_MAX;
const AUDIT_KEPT: usize = 100_000;
const AUDIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// 128 random bits as hex.
fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot draw random bytes: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn header_slot(route: &Route, value: &SecretValue) -> Result<LockedSlot, String> {
    let bytes = route.header.value(value.expose_secret());
    HeaderValue::from_bytes(&bytes).map_err(|_| {
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
        for (route, value) in routes.iter().zip(values) {
            let header = HeaderName::from_bytes(route.header.name.as_bytes())
                .map_err(|_| format!("broker \"{}\": bad header name", route.name));
            let slot = header_slot(route, value);
            let client = upstream_client(route);
            let socket = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| format!("broker \"{}\": cannot listen on 127.0.0.1: {e}", route.name));
            match (header, slot, client, socket, random_hex(), random_hex()) {
                (Ok(h), Ok(s), Ok(c), Ok(sock), Ok(prefix), Ok(tail)) => {
                    prepared.push((route.clone(), h, s, c, sock, prefix, tail))
                }
                (h, s, c, sock, p, t) => {
                    problems.extend(h.err());
                    problems.extend(s.err());
                    problems.extend(c.err());
                    problems.extend(sock.err());
                    problems.extend(p.err());
                    problems.extend(t.err());
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
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
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for (route, header, slot, client, socket, prefix, tail) in prepared {
            let port = socket.local_addr().map_err(|e| vec![e.to_string()])?.port();
            let prefix = format!("/{prefix}");
            let base = format!("http://127.0.0.1:{port}{prefix}");
            let placeholder = format!("secretfs-broker-placeholder-{tail}");
            let listener = Arc::new(Listener {
                header,
                prefix,
                placeholder: placeholder.clone(),
                hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
                base: base.clone(),
                credential: RwLock::new(Credential::Ready(slot)),
                client,
                uid,
                route,
                audit: audit.clone(),
            });
            socket
                .set_nonblocking(true)
                .map_err(|e| vec![e.to_string()])?;
            let accepting = {
                let _inside = runtime.enter();
                tokio::net::TcpListener::from_std(socket).map_err(|e| vec![e.to_string()])?
            };
            runtime.spawn(accept(accepting, listener.clone()));
            listeners.push(listener);
            addresses.push(Address { base, placeholder });
        }
        Ok((
            Running {
                listeners,
                runtime: Some(runtime),
                written,
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

async fn accept(socket: tokio::net::TcpListener, listener: Arc<Listener>) {
    loop {
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
            let ours = stream.local_addr().ok();
            let caller = match ours {
                // /proc reads: off the runtime's threads.
                Some(ours) => tokio::task::spawn_blocking(move || {
                    socket_owner(peer, ours).map(|(uid, inode)| (uid, pid_of_socket(inode)))
                })
                .await
                .ok()
                .flatten(),
                None => None,
            };
            let pid = caller.and_then(|(_, pid)| pid).unwrap_or(0);
            let refusal = match caller.map(|(uid, _)| uid) {
                Some(uid) if uid == listener.uid => None,
                Some(uid) => Some(format!(
                    "the caller runs as uid {uid}, not as the workload's user (uid {}): only the \
                     workload may use this broker",
                    listener.uid
                )),
                None => Some("the caller's user cannot be told; refused".to_owned()),
            };
            let _ = stream.set_nodelay(true);
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let listener = listener.clone();
                let refusal = refusal.clone();
                async move {
                    Ok::<_, Infallible>(match refusal {
                        Some(why) => refuse(StatusCode::FORBIDDEN, &why),
                        None => forward(&listener, req, pid).await,
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The uid that owns the loopback socket at `peer` connected to `ours`, and the socket's inode,
/// from `/proc/net/tcp` (the kernel prints each socket's addresses as hex of their bytes in
/// memory order, its owner's uid and its inode).
fn socket_owner(peer: SocketAddr, ours: SocketAddr) -> Option<(u32, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (local, remote) = (hex(peer)?, hex(ours)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| Some((fields.get(7)?.parse().ok()?, fields.get(9)?.parse().ok()?)))
            .flatten()
    })
}

/// The process holding the socket of `inode` (the first found: a socket inherited across a
/// fork is held by both), from the links in `/proc/PID/fd`. For the audit only: a process
/// this one may not look into is not found (pid 0 in the record).
fn pid_of_socket(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let ours = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == ours {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// Sends the calls that come in to the source's audit log: the first of a quiet spell at once,
/// the rest every [`AUDIT_EVERY`], up to [`AUDIT_BATCH`] a request; through an outage they
/// wait (the oldest dropped past [`AUDIT_KEPT`], said once); at the end (every sender gone)
/// what is left is written once more.
fn write_audit(source: &dyn Source, calls: &std::sync::mpsc::Receiver<BrokeredCall>) {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Instant;
    let mut pending: std::collections::VecDeque<BrokeredCall> = Default::default();
    let mut last = Instant::now() - AUDIT_EVERY;
    let mut failing = false;
    let mut dropped = 0usize;
    loop {
        let wait = if pending.is_empty() {
            std::time::Duration::from_secs(3600)
        } else {
            (last + AUDIT_EVERY).saturating_duration_since(Instant::now())
        };
        let ended = match calls.recv_timeout(wait) {
            Ok(call) => {
                pending.push_back(call);
                if pending.len() > AUDIT_KEPT {
                    pending.pop_front();
                    dropped += 1;
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if !ended && Instant::now() < last + AUDIT_EVERY && pending.len() < AUDIT_BATCH {
            continue;
        }
        last = Instant::now();
        while !pending.is_empty() {
            let n = pending.len().min(AUDIT_BATCH);
            let batch: Vec<BrokeredCall> = pending.iter().take(n).cloned().collect();
            match source.record_brokered(&batch) {
                Ok(()) => {
                    pending.drain(..n);
                    if failing {
                        eprintln!("secretfs run: broker: the audit log takes the calls again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        eprintln!(
                            "secretfs run: broker: cannot record calls in the audit log of {} \
                             ({e}); they wait and are sent again",
                            source.describe()
                        );
                        failing = true;
                    }
                    break;
                }
            }
        }
        if dropped > 0 {
            eprintln!(
                "secretfs run: broker: {dropped} calls were made while the audit log could not \
                 take them, more than the {AUDIT_KEPT} kept; the oldest were not recorded"
            );
            dropped = 0;
        }
        if ended {
            return;
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

async fn forward(l: &Listener, req: Request<Incoming>, pid: u32) -> Response<Body> {
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
    if !host.is_some_and(|h| l.hosts.iter().any(|ours| ours.eq_ignore_ascii_case(h))) {
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
    let method = parts.method.clone();
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
    if let Some(audit) = &l.audit {
        let _ = audit.send(BrokeredCall {
            secret: l.route.secret.as_str().to_owned(),
            upstream: l.route.upstream.as_str().to_owned(),
            method: method.as_str().to_owned(),
            path: url.path().to_owned(),
            status: u64::from(answer.status().as_u16()),
            pid: u64::from(pid),
            uid: u64::from(l.uid),
        });
    }
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
