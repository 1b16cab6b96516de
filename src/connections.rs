//! The server's connections: HTTP/1.1 on each accepted socket (TLS or not), read and written
//! here, every request answered by the router.
//!
//! Why by hand, on `httparse` (issue 32): a held long-poll is an open connection, and what a
//! connection keeps while its request waits is what 10,000 watchers cost. hyper keeps an 8 KiB
//! read buffer and an 8 KiB write buffer for a connection's whole life (no setting lowers
//! either), and a server crate's loop around it added protocol detection and service layers:
//! measured with `valgrind --tool=massif` on 2,000 held polls, 16.4 of the 22.6 KiB a held poll
//! had allocated were those two buffers, and the replica's memory grew by 20.5 KB per held poll
//! (10,000 polls, VmRSS; 17.4 KB with hyper served directly). This loop holds no buffer while a
//! request waits: a head is read into a buffer that is released once parsed when nothing follows
//! it, a body (bounded: the API's largest) is read whole before the router is called, and an
//! answer's bytes exist only while they are written: 7.3 KB per held poll, the same fan-out
//! (`scripts/bench-scale` has the figures beside the previous build). The workload read's rate
//! under `wrk` is hyper's (`scripts/bench-server`, 41,812 against 39,830 requests/s, same
//! machine and hour). What the API's clients need of HTTP/1.1 is here and tested
//! (`tests/it/http1.rs`): keep-alive and `close`, HTTP/1.0, pipelined requests, chunked
//! request bodies, `Expect: 100-continue`, HEAD, answers of unknown length sent chunked; and what
//! it refuses is refused before the router: a head over 16 KiB (431), a body over the limit
//! (413), framing a proxy could read another way (both Content-Length and Transfer-Encoding,
//! differing lengths, a coding other than chunked, chunks from HTTP/1.0, a control byte in a
//! chunk line: 400, then close). A head must come within the header timeout, a body within
//! 30 s, an answer be taken within 60 s. As with hyper's defaults, a client that half-closes
//! its side is taken to have left; an answer of unknown length is sent chunked whatever the
//! request's version (no route streams one today).

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use zeroize::{Zeroize, Zeroizing};

use crate::api::error::ApiError;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown begins (held long-polls answer at
/// once: `Service::stop_waiting`).
const DRAIN: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read; larger is 431.
const MAX_HEAD: usize = 16 * 1024;
/// The most header lines a request may have.
const MAX_HEADERS: usize = 64;
/// The largest request body read: the API's largest ([`crate::api::BODY_LIMIT`]).
const MAX_BODY: usize = crate::api::BODY_LIMIT;
/// How long a request's body may take to arrive, whole (each read also within the header
/// timeout): a client trickling a byte at a time must not hold a connection and its buffer.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an answer may take to be written: a client that never reads must not hold its
/// connection, and the answer it asked for, for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// Answers up to this size are written with their head in one write.
const ONE_WRITE: usize = 16 * 1024;

/// Connections the kernel queues for `accept` (capped at `net.core.somaxconn`, 4096 on current
/// kernels). The standard library listens with 128: when a replica restarts or a node's pods
/// start, thousands of watchers connect at once, and past 128 their SYNs are dropped and sent
/// again a second later (then three), which a 10,000-watcher reconnect measured as polls held up
/// by 1 to 4 s.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with a backlog of 4096 (`LISTEN_BACKLOG`).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As the standard library does: a restarted server binds its port while the last one's
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What every connection shares.
struct Shared {
    app: Router,
    header_read_timeout: Duration,
    /// `true` once shutdown begins: idle connections close, busy ones after their answer.
    stopping: watch::Receiver<bool>,
}

/// Serves `app` on `listener` until `stop` completes; then accepts no more, closes idle
/// connections, lets requests in flight finish for up to 10 s (`DRAIN`), and ends the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    header_read_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let (stopping_tx, stopping) = watch::channel(false);
    let shared = Arc::new(Shared {
        app,
        header_read_timeout,
        stopping,
    });
    let tls = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    let mut refused_since = None;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        // Finished connections leave the set as new ones come.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE) or memory: the socket stays in the backlog; wait
                // for connections to close rather than spin on the error, and say so once a
                // minute, not twenty times a second.
                if refused_since
                    .is_none_or(|at: tokio::time::Instant| at.elapsed() >= Duration::from_secs(60))
                {
                    tracing::warn!(error = %e, "cannot accept connections; waiting for some to close");
                    refused_since = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        match &tls {
            None => {
                connections.spawn(connection(stream, peer, shared));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        connection(stream, peer, shared).await;
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "requests still running after {}s; closing their connections",
            DRAIN.as_secs()
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// A TLS configuration from PEM files: the certificate chain and its private key, HTTP/1.1
/// offered by ALPN (the only protocol served).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no CERTIFICATE block".into());
    }
    // The key's own error could quote it; say only what is wrong.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| "the key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned())?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A connection's byte stream: TCP, or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Completes when a read would find bytes (or the end): TCP says so without a buffer, so
    /// that an idle connection holds none. A TLS stream keeps buffers of its own whatever this
    /// does, and reads at once.
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl Transport for tokio::net::TcpStream {
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

/// Why a connection stops reading requests.
enum Stop {
    /// The client closed, went quiet past a limit, or the server is stopping.
    Quietly,
    /// The request cannot be read: answer this, then close.
    Answer(Box<Response>),
}

/// A request's head as parsed, owned.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// Bytes of the head, to consume from the buffer.
    len: usize,
}

/// How the request's body is framed.
enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

/// Serves one connection: requests read, answered and written in order until either side
/// closes.
async fn connection<S>(mut io: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: Transport,
{
    // Bytes read and not yet used: empty (no allocation) whenever nothing is pending.
    let mut pending = BytesMut::new();
    let mut stopping = shared.stopping.clone();
    loop {
        let head = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => return,
            head = tokio::time::timeout(shared.header_read_timeout, read_head(&mut io, &mut pending)) => head,
        };
        let head = match head {
            Ok(Ok(Some(head))) => head,
            // End of file between requests, or the headers did not come in time.
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(Stop::Quietly)) => return,
            Ok(Err(Stop::Answer(answer))) => return refuse_and_close(&mut io, *answer).await,
        };
        consume(&mut pending, head.len);
        let keep_alive = wants_keep_alive(&head);
        let reading = read_body(&mut io, &mut pending, &head, shared.header_read_timeout);
        let body = match tokio::time::timeout(BODY_TIMEOUT, reading).await {
            Err(_) => return,
            Ok(Ok(body)) => body,
            Ok(Err(Stop::Quietly)) => return,
            Ok(Err(Stop::Answer(answer))) => return refuse_and_close(&mut io, *answer).await,
        };
        if pending.is_empty() {
            // Nothing pipelined behind this request: hold no buffer while it is answered.
            pending = BytesMut::new();
        }
        let head_only = head.method == Method::HEAD;
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers;
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = shared.app.clone();
        let answering = tower::Service::call(&mut app, request);
        let Some(answer) = answer_or_hang_up(&mut io, &mut pending, answering).await else {
            // The client left while its request was being answered: the answer is dropped
            // (a held long-poll ends here).
            return;
        };
        let close = !keep_alive
            || *stopping.borrow()
            || answer
                .headers()
                .get(axum::http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if !write_within(&mut io, answer, head_only, !close).await || close {
            return;
        }
    }
}

/// Reads until `pending` holds a whole request head; `None` at end of file before any byte of
/// one.
async fn read_head<S>(io: &mut S, pending: &mut BytesMut) -> Result<Option<Head>, Stop>
where
    S: Transport,
{
    loop {
        if pending.is_empty() {
            // A kept-alive connection between requests (thousands of them after a fan-out):
            // no buffer until the next request's first bytes are there to read.
            io.ready().await.map_err(|_| Stop::Quietly)?;
        }
        if !pending.is_empty() {
            if let Some(head) = parse_head(pending)? {
                return Ok(Some(head));
            }
            if pending.len() >= MAX_HEAD {
                return Err(refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "head_too_large",
                    format!("the request line and headers are over {MAX_HEAD} bytes"),
                ));
            }
        }
        grow(pending, READ_CHUNK);
        match io.read_buf(pending).await {
            Ok(0) if pending.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(Stop::Quietly),
            Ok(_) => {}
        }
    }
}

/// A whole head at the start of `buf`, copied into owned values; `None` if more must be read.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Stop> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut lines);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large",
                format!("a request may have at most {MAX_HEADERS} headers"),
            ));
        }
        Err(e) => return Err(bad_request(format!("not an HTTP/1 request: {e}"))),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad_request("the request's method is not a token".into()))?;
    let uri: Uri = parsed
        .path
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad_request("the request's target is not a URI".into()))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad_request("a header's name is not a token".into()))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| bad_request("a header's value has a control byte".into()))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        len,
    }))
}

fn wants_keep_alive(head: &Head) -> bool {
    let says = |token: &str| {
        head.headers
            .get_all(axum::http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match head.version {
        Version::HTTP_10 => says("keep-alive"),
        _ => !says("close"),
    }
}

/// The body's framing by RFC 9112 section 6: anything a proxy in front could read differently
/// is refused.
fn framing(headers: &HeaderMap) -> Result<Framing, Stop> {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let codings: Vec<&HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    let lengths: Vec<&HeaderValue> = headers.get_all(CONTENT_LENGTH).iter().collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(bad_request(
                "a request has Content-Length or Transfer-Encoding, not both".into(),
            ));
        }
        let chunked_only = codings.len() == 1
            && codings[0]
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_only {
            return Err(refuse(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_coding",
                "the only transfer coding taken is chunked",
            ));
        }
        return Ok(Framing::Chunked);
    }
    let mut length = None;
    for value in lengths {
        for part in value.to_str().unwrap_or("x").split(',') {
            let part = part.trim();
            let n: usize = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse().ok())
                .flatten()
                .ok_or_else(|| bad_request("Content-Length is not a length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad_request(
                    "the request has differing Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Reads the request's body whole (at most [`MAX_BODY`]), answering `Expect: 100-continue`
/// first when the client waits for it.
async fn read_body<S>(
    io: &mut S,
    pending: &mut BytesMut,
    head: &Head,
    idle: Duration,
) -> Result<Bytes, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let framing = framing(&head.headers)?;
    if head.version == Version::HTTP_10 && matches!(framing, Framing::Chunked) {
        // RFC 9112 section 6.1: an HTTP/1.0 reader in front would take the chunks for the next
        // request.
        return Err(bad_request(
            "an HTTP/1.0 request cannot have Transfer-Encoding".into(),
        ));
    }
    // The length when known; `None`: chunked.
    let length = match framing {
        Framing::Empty => return Ok(Bytes::new()),
        Framing::Length(n) if n > MAX_BODY => return Err(too_large()),
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    let expects = head
        .headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects && head.version == Version::HTTP_11 && pending.is_empty() {
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Stop::Quietly)?;
    }
    match length {
        Some(n) => {
            fill(io, pending, n, idle).await?;
            Ok(take(pending, n))
        }
        None => read_chunked(io, pending, idle).await,
    }
}

/// Reads until `pending` holds at least `n` bytes; each read must come within `idle`.
async fn fill<S>(io: &mut S, pending: &mut BytesMut, n: usize, idle: Duration) -> Result<(), Stop>
where
    S: AsyncRead + Unpin,
{
    while pending.len() < n {
        // All that is missing at once (a body's length is known): one buffer of its size, not
        // one doubled past it.
        grow(pending, (n - pending.len()).max(READ_CHUNK));
        match tokio::time::timeout(idle, io.read_buf(pending)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(Stop::Quietly),
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

/// Reads a line ending in CRLF at the start of `pending` (at most `max` bytes before it) and
/// returns it without the CRLF, consumed.
async fn read_line<S>(
    io: &mut S,
    pending: &mut BytesMut,
    max: usize,
    idle: Duration,
) -> Result<Bytes, Stop>
where
    S: AsyncRead + Unpin,
{
    // Where the search goes on from: what was searched is not searched again as bytes come.
    let mut searched = 0;
    loop {
        if let Some(at) = memchr::memmem::find(&pending[searched..], b"\r\n") {
            let line = take(pending, searched + at);
            consume(pending, 2);
            // A bare CR or LF, or any other control byte but tab, is a line end to some reader
            // in front: refused, so that no two readers split the body differently.
            if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(bad_request(
                    "a chunk line or trailer holds a control byte".into(),
                ));
            }
            return Ok(line);
        }
        if pending.len() > max {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large",
                format!("a chunk line or trailer is over {max} bytes"),
            ));
        }
        searched = pending.len().saturating_sub(1);
        let want = pending.len() + 1;
        fill(io, pending, want, idle).await?;
    }
}

/// A chunked body (RFC 9112 section 7.1): a size of hexadecimal digits, extensions ignored,
/// trailers (at most a head's worth) read and dropped.
async fn read_chunked<S>(io: &mut S, pending: &mut BytesMut, idle: Duration) -> Result<Bytes, Stop>
where
    S: AsyncRead + Unpin,
{
    let mut body = Zeroizing::new(Vec::new());
    loop {
        let line = read_line(io, pending, 1024, idle).await?;
        let digits = line.split(|b| *b == b';').next().unwrap_or_default();
        let size =
            (!digits.is_empty() && digits.len() <= 15 && digits.iter().all(u8::is_ascii_hexdigit))
                .then(|| std::str::from_utf8(digits).ok())
                .flatten()
                .and_then(|d| usize::from_str_radix(d, 16).ok())
                .ok_or_else(|| bad_request("a chunk's size is not hexadecimal".into()))?;
        if size == 0 {
            // Trailer lines up to the empty one, a head's worth at most in all.
            let mut trailers = 0;
            loop {
                let trailer = read_line(io, pending, MAX_HEAD, idle).await?;
                if trailer.is_empty() {
                    return Ok(Bytes::from_owner(std::mem::take(&mut body)));
                }
                trailers += trailer.len() + 2;
                if trailers > MAX_HEAD {
                    return Err(refuse(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "head_too_large",
                        format!("the trailers are over {MAX_HEAD} bytes"),
                    ));
                }
            }
        }
        if size > MAX_BODY - body.len() {
            return Err(too_large());
        }
        fill(io, pending, size + 2, idle).await?;
        crate::secret::reserve_zeroized(&mut body, size);
        body.extend_from_slice(&pending[..size]);
        if &pending[size..size + 2] != b"\r\n" {
            return Err(bad_request(
                "a chunk does not end where its size says".into(),
            ));
        }
        consume(pending, size + 2);
    }
}

/// Request bytes are wiped as they are used (a head holds a token, a body may hold a value), so
/// that no freed buffer keeps them.
fn consume(pending: &mut BytesMut, n: usize) {
    pending[..n].zeroize();
    pending.advance(n);
}

/// The first `n` bytes, copied out and wiped where they were.
fn take(pending: &mut BytesMut, n: usize) -> Bytes {
    // Owned by a wiping buffer: the router drops a body unread when it refuses the request.
    let out = Bytes::from_owner(Zeroizing::new(pending[..n].to_vec()));
    consume(pending, n);
    out
}

/// Room for `more` bytes: a bigger buffer when needed, the old one wiped (the allocator's own
/// reallocation would leave a copy behind).
fn grow(pending: &mut BytesMut, more: usize) {
    if pending.capacity() - pending.len() >= more {
        return;
    }
    let mut bigger = BytesMut::with_capacity((pending.len() + more).max(pending.capacity() * 2));
    bigger.extend_from_slice(pending);
    pending.zeroize_all();
    *pending = bigger;
}

/// Wipes what a buffer holds.
trait ZeroizeAll {
    fn zeroize_all(&mut self);
}

impl ZeroizeAll for BytesMut {
    fn zeroize_all(&mut self) {
        self[..].zeroize();
    }
}

/// The router's answer, watching the socket meanwhile: `None` if the client closes first.
/// Bytes a client sends meanwhile (its next request, pipelined) are kept in `pending`, up to a
/// head's worth; past that the socket is left unread until the answer is written.
async fn answer_or_hang_up<S, F>(
    io: &mut S,
    pending: &mut BytesMut,
    answering: F,
) -> Option<Response>
where
    S: AsyncRead + Unpin,
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    tokio::pin!(answering);
    // A few bytes at a time: this buffer is part of every held request's state.
    let mut peek = [0u8; 64];
    loop {
        if pending.len() >= MAX_HEAD {
            return answering.await.ok();
        }
        tokio::select! {
            biased;
            answer = &mut answering => return answer.ok(),
            read = io.read(&mut peek) => match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    grow(pending, n);
                    pending.extend_from_slice(&peek[..n]);
                    peek[..n].zeroize();
                }
            },
        }
    }
}

/// [`write_answer`] within [`WRITE_TIMEOUT`]: `false` if it failed or took longer.
async fn write_within<S>(io: &mut S, answer: Response, head_only: bool, keep_alive: bool) -> bool
where
    S: AsyncWrite + Unpin,
{
    matches!(
        tokio::time::timeout(
            WRITE_TIMEOUT,
            write_answer(io, answer, head_only, keep_alive)
        )
        .await,
        Ok(Ok(()))
    )
}

/// Writes an answer: its head, then its body with its length, or chunked when the length is
/// not known beforehand. `head_only` for HEAD (the length is still said).
async fn write_answer<S>(
    io: &mut S,
    answer: Response,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let (parts, body) = answer.into_parts();
    // Statuses that never have a body, nor a length (RFC 9112 section 6.3).
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let no_body = head_only || bodiless;
    // The router answers HEAD with the GET's length in the header and an empty body.
    let said = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let known = match said {
        Some(n) if head_only => Some(n),
        _ => http_body::Body::size_hint(&body).exact(),
    };
    // Wiped when written: for a workload read it holds the values.
    let mut out = Zeroizing::new(Vec::with_capacity(256));
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(
            name,
            &axum::http::header::CONTENT_LENGTH
                | &axum::http::header::TRANSFER_ENCODING
                | &axum::http::header::CONNECTION
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(axum::http::header::DATE) {
        out.extend_from_slice(b"date: ");
        date(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    match known {
        Some(n) if !bodiless => {
            let _ = write!(&mut *out, "content-length: {n}\r\n\r\n");
            if no_body {
                return write_all(io, &out).await;
            }
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(std::io::Error::other)?;
            if out.len() + bytes.len() <= ONE_WRITE {
                // Grown before the body goes in: a reallocation would leave a copy of it.
                out.reserve(bytes.len());
                out.extend_from_slice(&bytes);
                write_all(io, &out).await
            } else {
                io.write_all(&out).await?;
                write_all(io, &bytes).await
            }
        }
        _ if no_body => {
            out.extend_from_slice(b"\r\n");
            write_all(io, &out).await
        }
        _ => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            io.write_all(&out).await?;
            drop(out);
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(std::io::Error::other)?;
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    io.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                        .await?;
                    io.write_all(&data).await?;
                    io.write_all(b"\r\n").await?;
                }
            }
            write_all(io, b"0\r\n\r\n").await
        }
    }
}

/// Answers a request refused before the router, then closes.
async fn refuse_and_close<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, answer: Response) {
    if write_within(io, answer, false, false).await {
        linger(io).await;
    }
}

/// Closes after a refusal. The client may still be sending what was refused, and a socket
/// closed with bytes unread is reset, which can discard the answer before the client reads it:
/// say the end (FIN), then read and drop what still comes, for a while and a bounded amount.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    let _ = io.shutdown().await;
    // A refused body can be larger than any the server takes (a 413 is answered before it is
    // read): drained up to a few times the limit, so that a client still sending it reads the
    // answer instead of a reset. The time bounds what an attacker gets from it.
    let mut sink = vec![0u8; 8 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut dropped = 0usize;
        while dropped < 8 * MAX_BODY {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sink[..n].zeroize();
                    dropped += n;
                }
            }
        }
    })
    .await;
}

/// Appends the `Date` header's value: formatted once a second, not once an answer (a fan-out
/// writes thousands of answers in the same second).
fn date(out: &mut Vec<u8>) {
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};
    static LAST: Mutex<(u64, [u8; 29])> = Mutex::new((0, [0; 29]));
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.0 != second {
        let text = httpdate::fmt_http_date(now);
        if text.len() == 29 {
            last.1.copy_from_slice(text.as_bytes());
            last.0 = second;
        } else {
            out.extend_from_slice(text.as_bytes());
            return;
        }
    }
    out.extend_from_slice(&last.1);
}

/// Writes and flushes (a TLS stream holds what it encrypted until flushed).
async fn write_all<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Refused before the router: answered with the API's error body, then the connection closes.
fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Stop {
    Stop::Answer(Box::new(
        ApiError::new(status, code, message).into_response(),
    ))
}

fn bad_request(message: String) -> Stop {
    refuse(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn too_large() -> Stop {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body is larger than the limit of {MAX_BODY} bytes"),
    )
}
