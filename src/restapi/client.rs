//! A client of the REST API, used by `ipfs-cluster-ctl` and the tests.

use serde::de::DeserializeOwned;

use crate::multiaddr::TcpMultiaddr;
pub use crate::restapi::AddedOutput;
use crate::types::{
    Alert, ApiError, BandwidthByProtocol, Cid, ClusterId, ConnectGraph, GlobalPinInfo,
    GlobalRepoGc, Metric, Pin, PinOptions, Version,
};

/// Why a REST API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error("{code}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// The API could not be reached.
    #[error("cannot reach the cluster API at {0}")]
    Transport(String),
    /// The answer was not understood.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A bad `--host`.
    #[error("{0}")]
    Host(String),
    /// What was to be sent could not be prepared (e.g. a file to add).
    #[error("{0}")]
    Input(String),
}

/// How a [`Client`] reaches the API.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Speak HTTPS to multiaddr hosts (URL hosts say their scheme themselves).
    pub https: bool,
    /// Accept any server certificate (self-signed ones, as in upstream's samples).
    pub no_verify_cert: bool,
    /// Basic-auth user and password.
    pub auth: Option<(String, String)>,
}

/// A REST API client. With several hosts, a request that cannot reach one
/// goes to the next (upstream's failover); an answer, even an error, is final.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    auth: Option<(String, String)>,
}

fn decode_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Decode(e.to_string())
}

/// Hands each non-empty line of `resp`'s body to `f` as it arrives.
async fn each_line(
    mut resp: reqwest::Response,
    mut f: impl FnMut(&[u8]) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(decode_err)? {
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + i];
            if !line.trim_ascii().is_empty() {
                f(line)?;
            }
            start += i + 1;
        }
        buf.drain(..start);
    }
    if !buf.trim_ascii().is_empty() {
        f(&buf)?;
    }
    Ok(())
}

/// Hands each object of an NDJSON body to `f` as it arrives (an empty 204 body
/// has none).
async fn each_json<T: DeserializeOwned>(
    resp: reqwest::Response,
    mut f: impl FnMut(T),
) -> Result<(), ClientError> {
    each_line(resp, |line| {
        f(serde_json::from_slice(line).map_err(decode_err)?);
        Ok(())
    })
    .await
}

fn local_query(local: bool) -> Vec<(String, String)> {
    if local {
        vec![("local".to_string(), "true".to_string())]
    } else {
        Vec::new()
    }
}

/// The base URL of one `--host`: a multiaddr like `/ip4/127.0.0.1/tcp/9094`, or an
/// `http(s)://` URL.
fn base_url(host: &str, https: bool) -> Result<String, ClientError> {
    let host = host.trim();
    if host.starts_with("http://") || host.starts_with("https://") {
        return Ok(host.trim_end_matches('/').to_string());
    }
    let m = TcpMultiaddr::parse(host).map_err(|e| ClientError::Host(e.to_string()))?;
    let scheme = if https { "https" } else { "http" };
    Ok(format!("{scheme}://{}", m.authority()))
}

/// The error text of a request that got no answer, with its causes (reqwest's
/// own text stops at "error sending request").
fn transport_error(base: &str, e: &reqwest::Error) -> ClientError {
    let mut msg = format!("{base}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    ClientError::Transport(msg)
}

impl Client {
    /// A client of the API at `host` (comma-separated multiaddrs or URLs tried in
    /// order), over plain HTTP for multiaddrs, with optional basic-auth credentials.
    pub fn new(host: &str, auth: Option<(String, String)>) -> Result<Self, ClientError> {
        Self::with_options(
            host,
            ClientOptions {
                auth,
                ..Default::default()
            },
        )
    }

    /// A client of the API at `host` (comma-separated multiaddrs or URLs tried in
    /// order) with `opts`.
    pub fn with_options(host: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let bases = host
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| base_url(h, opts.https))
            .collect::<Result<Vec<_>, _>>()?;
        if bases.is_empty() {
            return Err(ClientError::Host("no API address given".into()));
        }
        // The system's roots only when a certificate is to be checked.
        let no_roots = opts.no_verify_cert || bases.iter().all(|b| b.starts_with("http://"));
        let builder = if no_roots {
            crate::http::plain_http_client_builder()
        } else {
            crate::http::install_crypto_provider();
            reqwest::Client::builder()
        };
        let http = builder
            .tls_danger_accept_invalid_certs(opts.no_verify_cert)
            .build()
            .map_err(|e| ClientError::Host(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            http,
            bases,
            auth: opts.auth,
        })
    }

    /// Runs `call` against each host in turn until one answers: only a request
    /// that reached no API moves on, as upstream's failover.
    async fn each_host<'a, T, Fut>(
        &'a self,
        mut call: impl FnMut(&'a str) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for base in &self.bases {
            match call(base).await {
                Err(ClientError::Transport(m)) => {
                    tracing::debug!("{m}; trying the next host");
                    last = Some(ClientError::Transport(m));
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Host("no API address given".into())))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
    ) -> Result<reqwest::Response, ClientError> {
        self.each_host(|base| {
            let req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .query(query);
            self.finish(base, req)
        })
        .await
    }

    /// Sends `req` to `base` with the credentials; a non-2xx answer is an API error.
    async fn finish(
        &self,
        base: &str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let req = req
            .build()
            .map_err(|e| ClientError::Host(format!("{base}: {e}")))?;
        tracing::debug!("{} {}", req.method(), req.url());
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| transport_error(base, &e))?;
        tracing::debug!("{base}: answered {}", resp.status());
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text)
            .map(|e| e.message)
            .unwrap_or(text);
        Err(ClientError::Api { code, message })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<T, ClientError> {
        let resp = self.send(reqwest::Method::GET, path, query).await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get_each<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
        f: impl FnMut(T),
    ) -> Result<(), ClientError> {
        let resp = self.send(reqwest::Method::GET, path, query).await?;
        each_json(resp, f).await
    }

    /// `GET /id`.
    pub async fn id(&self) -> Result<ClusterId, ClientError> {
        self.get_json("/id", &[]).await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<Version, ClientError> {
        self.get_json("/version", &[]).await
    }

    fn pin_route(arg: &str) -> String {
        // Like upstream's client, every pin goes through the path route so that
        // paths and CIDs are handled alike.
        if arg.starts_with('/') {
            format!("/pins{arg}")
        } else {
            format!("/pins/ipfs/{arg}")
        }
    }

    /// `GET /monitor/metrics`.
    pub async fn metric_names(&self) -> Result<Vec<String>, ClientError> {
        self.get_json("/monitor/metrics", &[]).await
    }

    /// `GET /monitor/metrics/<name>`.
    pub async fn metrics(&self, name: &str) -> Result<Vec<Metric>, ClientError> {
        self.get_json(&format!("/monitor/metrics/{name}"), &[])
            .await
    }

    /// `GET /health/alerts`.
    pub async fn alerts(&self) -> Result<Vec<Alert>, ClientError> {
        self.get_json("/health/alerts", &[]).await
    }

    /// `GET /peers`: each peer's ID to `f` as it arrives.
    pub async fn peers(&self, f: impl FnMut(ClusterId)) -> Result<(), ClientError> {
        self.get_each("/peers", &[], f).await
    }

    /// `DELETE /peers/<id>`.
    pub async fn peer_remove(&self, peer: &str) -> Result<(), ClientError> {
        self.send(reqwest::Method::DELETE, &format!("/peers/{peer}"), &[])
            .await
            .map(|_| ())
    }

    /// `POST /pins/ipfs/<cid-or-path>`.
    pub async fn pin(&self, arg: &str, opts: &PinOptions) -> Result<Pin, ClientError> {
        let resp = self
            .send(
                reqwest::Method::POST,
                &Self::pin_route(arg),
                &opts.to_query(),
            )
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `DELETE /pins/ipfs/<cid-or-path>`.
    pub async fn unpin(&self, arg: &str) -> Result<Pin, ClientError> {
        let resp = self
            .send(reqwest::Method::DELETE, &Self::pin_route(arg), &[])
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET /allocations?filter=…`: each pin of the comma-separated types to `f`
    /// as it arrives.
    pub async fn allocations(&self, filter: &str, f: impl FnMut(Pin)) -> Result<(), ClientError> {
        let q = [("filter".to_string(), filter.to_string())];
        self.get_each("/allocations", &q, f).await
    }

    /// `GET /allocations/<cid>`.
    pub async fn allocation(&self, cid: &Cid) -> Result<Pin, ClientError> {
        self.get_json(&format!("/allocations/{cid}"), &[]).await
    }

    /// `GET /pins/<cid>`.
    pub async fn status(&self, cid: &Cid) -> Result<GlobalPinInfo, ClientError> {
        self.status_at(cid, false).await
    }

    /// `GET /pins/<cid>[?local=true]`.
    pub async fn status_at(&self, cid: &Cid, local: bool) -> Result<GlobalPinInfo, ClientError> {
        self.get_json(&format!("/pins/{cid}"), &local_query(local))
            .await
    }

    /// `GET /pins?filter=…[&local=true]`: each status to `f` as it arrives.
    pub async fn status_all(
        &self,
        filter: &str,
        local: bool,
        f: impl FnMut(GlobalPinInfo),
    ) -> Result<(), ClientError> {
        let mut q = local_query(local);
        if !filter.is_empty() {
            q.push(("filter".to_string(), filter.to_string()));
        }
        self.get_each("/pins", &q, f).await
    }

    /// `POST /pins/<cid>/recover[?local=true]`.
    pub async fn recover(&self, cid: &Cid, local: bool) -> Result<GlobalPinInfo, ClientError> {
        let resp = self
            .send(
                reqwest::Method::POST,
                &format!("/pins/{cid}/recover"),
                &local_query(local),
            )
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /add`: uploads the form `make_form` builds (once per host tried) with
    /// the add and pin options of `query`, and hands each output to `on_output` as
    /// it arrives, the root last.
    pub async fn add<F, Fut>(
        &self,
        make_form: F,
        query: &[(String, String)],
        mut on_output: impl FnMut(AddedOutput),
    ) -> Result<(), ClientError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::multipart::Form, ClientError>>,
    {
        let make_form = &make_form;
        let resp = self
            .each_host(|base| async move {
                let req = self
                    .http
                    .post(format!("{base}/add"))
                    .query(query)
                    .multipart(make_form().await?);
                self.finish(base, req).await
            })
            .await?;
        // `stream-channels=false` answers with one list.
        each_line(resp, |line| {
            match serde_json::from_slice(line).map_err(decode_err)? {
                serde_json::Value::Array(items) => {
                    for item in items {
                        on_output(serde_json::from_value(item).map_err(decode_err)?);
                    }
                }
                one => on_output(serde_json::from_value(one).map_err(decode_err)?),
            }
            Ok(())
        })
        .await
    }

    /// `GET /health/bandwidth`.
    pub async fn bandwidth(&self) -> Result<BandwidthByProtocol, ClientError> {
        self.get_json("/health/bandwidth", &[]).await
    }

    /// `GET /health/graph`.
    pub async fn graph(&self) -> Result<ConnectGraph, ClientError> {
        self.get_json("/health/graph", &[]).await
    }

    /// `POST /ipfs/gc[?local=true]`.
    pub async fn repo_gc(&self, local: bool) -> Result<GlobalRepoGc, ClientError> {
        let resp = self
            .send(reqwest::Method::POST, "/ipfs/gc", &local_query(local))
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /pins/recover[?local=true]`: each item re-queued to `f`.
    pub async fn recover_all(
        &self,
        local: bool,
        f: impl FnMut(GlobalPinInfo),
    ) -> Result<(), ClientError> {
        let resp = self
            .send(reqwest::Method::POST, "/pins/recover", &local_query(local))
            .await?;
        each_json(resp, f).await
    }
}
