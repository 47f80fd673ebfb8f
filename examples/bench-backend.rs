//! The proxy benchmark's helpers (`scripts/bench.sh proxy`), not part of the peer:
//!
//! - `bench-backend serve ADDR`: a trivial kubo stand-in answering every path with a
//!   ~90-byte `version`-style JSON, and a path ending in `/big` with 1 GiB streamed in
//!   256 KiB chunks, so that what is measured in front of it is the proxy's own cost.
//! - `bench-backend proxy ADDR UPSTREAM`: a bare hyper 1 reverse proxy (hyper-util's
//!   pooled client and nothing else), the baseline a general-purpose Rust proxy gives.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

const VERSION: &[u8] = br#"{"Version":"0.39.0","Commit":"2896aed","Repo":"16","System":"amd64/linux","Golang":"go1.25.1"}"#;
const CHUNK: usize = 256 * 1024;
const BIG: usize = 1024 * 1024 * 1024;

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

fn answer(path: &str, chunk: &Bytes) -> Response<Body> {
    if path.ends_with("/big") {
        let chunk = chunk.clone();
        let chunks = futures::stream::iter(
            (0..BIG / CHUNK).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        let mut r = Response::new(
            StreamBody::new(chunks)
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return r;
    }
    let mut r = Response::new(full(Bytes::from_static(VERSION)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let chunk = chunk.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = answer(req.uri().path(), &chunk);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn proxy(addr: SocketAddr, upstream: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("http://{upstream}{pq}").parse()?;
                    let resp = client.request(req).await?;
                    anyhow::Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, addr] if mode == "serve" => serve(addr.parse()?).await,
        [mode, addr, upstream] if mode == "proxy" => proxy(addr.parse()?, upstream.clone()).await,
        _ => anyhow::bail!("usage: bench-backend serve ADDR | proxy ADDR UPSTREAM_HOST:PORT"),
    }
}
