//! A fast stand-in HTTPS upstream for scripts/bench-broker: answers every request with a small
//! JSON body, and `/stream` with a server-sent event at once and a second 200 ms later (the
//! first byte's timing). Rust, so that the upstream is not what the benchmark measures (a
//! Python stand-in tops out far below the broker).
//!
//!   broker_upstream CERT KEY     (prints its port, then serves until killed)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key] = args.as_slice() else {
        eprintln!("usage: broker_upstream CERT KEY");
        std::process::exit(2);
    };
    let tls = secretfs::connections::tls_config(&std::fs::read(cert)?, &std::fs::read(key)?)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(answer(req.uri().path()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}

fn answer(path: &str) -> hyper::Response<Body> {
    if path.ends_with("/stream") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
                .await;
        });
        let stream = futures_util_stream(rx);
        return hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(stream).boxed())
            .unwrap();
    }
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"object\":\"list\",\"data\":[]}")).boxed())
        .unwrap()
}

/// The receiver as a stream of frames.
fn futures_util_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>> {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
