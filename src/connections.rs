//! The server's connections: each accepted socket (TLS or not) served as HTTP/1.1 by hyper
//! directly, the router called with the peer's address, shutdown graceful within a bound.
//!
//! Why not a server crate's loop (axum-server was used until issue 32): a held long-poll is an
//! open connection, and what each connection keeps is what 10,000 watchers cost. That loop
//! wrapped every connection in protocol detection for HTTP/2 (unused: the API is HTTP/1.1), a
//! shutdown channel, a first-request notifier and two service layers; measured with
//! `valgrind --tool=massif` on 2,000 held polls, its connection task was 2.4 KiB of the 20 KiB
//! a poll cost. Here a connection is hyper's HTTP/1 state, the TLS stream when there is one,
//! and the router with the peer's address.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests (held long-polls included) may run on after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// Connections the kernel queues for `accept` (capped at `net.core.somaxconn`, 4096 on current
/// kernels). The standard library listens with 128: when a replica restarts or a node's pods
/// start, thousands of watchers connect at once, and past 128 their SYNs are dropped and sent
/// again a second later (then three), which a 10,000-watcher reconnect measured as polls held up
/// by 1 to 4 s.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`].
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

/// The router as hyper calls it: one clone per connection, which knows its peer.
#[derive(Clone)]
struct Routed {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Routed {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        // hyper parses a request's head in place: the URI and header values are views into the
        // connection's 8 KiB read buffer, and while any of them lives, hyper's next read on the
        // connection (it reads on while a request runs, to see the client leave) cannot reuse
        // that buffer and takes a second one. Copied out here (under a microsecond for a head
        // of this API), the buffer is free again before that read: a held long-poll keeps one
        // read buffer, not two.
        parts.uri = own_uri(&parts.uri);
        parts.headers = own_headers(&parts.headers);
        parts.extensions.insert(ConnectInfo(self.peer));
        let mut app = self.app.clone();
        tower::Service::call(&mut app, Request::from_parts(parts, body))
    }
}

fn own_uri(uri: &Uri) -> Uri {
    // A URI that parsed once parses again; should it not, the original (shared) one is kept.
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

fn own_headers(headers: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy =
            axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    owned
}

/// Serves `app` on `listener` until `stop` completes; then accepts no more, lets requests in
/// flight finish for up to [`DRAIN`], and ends the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    header_read_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let tls = tls.map(TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
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
                // for connections to close rather than spin on the error.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = Routed {
            app: app.clone(),
            peer,
        };
        let watcher = graceful.watcher();
        match &tls {
            None => {
                let conn = http.serve_connection(TokioIo::new(stream), service);
                connections.spawn(async move {
                    let _ = watcher.watch(conn).await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let http = http.clone();
                connections.spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!(
                connections = connections.len(),
                "requests still running after {}s; closing their connections",
                DRAIN.as_secs()
            );
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
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
