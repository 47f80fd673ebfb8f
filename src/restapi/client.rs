//! A client of the REST API, used by `ipfs-cluster-ctl` and the tests.

use serde::de::DeserializeOwned;

use crate::multiaddr::TcpMultiaddr;
pub use crate::restapi::AddedOutput;
use crate::types::{
    Alert, ApiError, Cid, ClusterId, ConnectGraph, GlobalPinInfo, GlobalRepoGc, Metric, Pin,
    PinOptions, Version,
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
}

/// A REST API client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
}

/// Reads an NDJSON body (an empty 204 body is an empty list).
async fn ndjson<T: DeserializeOwned>(resp: reqwest::Response) -> Result<Vec<T>, ClientError> {
    let text = resp
        .text()
        .await
        .map_err(|e| ClientError::Decode(e.to_string()))?;
    parse_ndjson(&text)
}

fn parse_ndjson<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, ClientError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| ClientError::Decode(e.to_string())))
        .collect()
}

fn local_query(local: bool) -> Vec<(String, String)> {
    if local {
        vec![("local".to_string(), "true".to_string())]
    } else {
        Vec::new()
    }
}

impl Client {
    /// A client of the API at `host` (a multiaddr like `/ip4/127.0.0.1/tcp/9094`
    /// or an `http://` URL), with optional basic-auth credentials.
    pub fn new(host: &str, auth: Option<(String, String)>) -> Result<Self, ClientError> {
        let base = if host.starts_with("http://") || host.starts_with("https://") {
            host.trim_end_matches('/').to_string()
        } else {
            let m = TcpMultiaddr::parse(host).map_err(|e| ClientError::Host(e.to_string()))?;
            format!("http://{}", m.authority())
        };
        Ok(Client {
            http: reqwest::Client::new(),
            base,
            auth,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
    ) -> Result<reqwest::Response, ClientError> {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query);
        self.finish(req).await
    }

    /// Sends `req` with the credentials; a non-2xx answer is an API error.
    async fn finish(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(format!("{}: {e}", self.base)))?;
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

    async fn get_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Vec<T>, ClientError> {
        let resp = self.send(reqwest::Method::GET, path, query).await?;
        ndjson(resp).await
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

    /// `GET /peers`.
    pub async fn peers(&self) -> Result<Vec<ClusterId>, ClientError> {
        self.get_stream("/peers", &[]).await
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

    /// `GET /allocations`.
    pub async fn allocations(&self) -> Result<Vec<Pin>, ClientError> {
        self.get_stream("/allocations", &[]).await
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

    /// `GET /pins?filter=…[&local=true]`.
    pub async fn status_all(
        &self,
        filter: &str,
        local: bool,
    ) -> Result<Vec<GlobalPinInfo>, ClientError> {
        let mut q = local_query(local);
        if !filter.is_empty() {
            q.push(("filter".to_string(), filter.to_string()));
        }
        self.get_stream("/pins", &q).await
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

    /// `POST /add`: uploads `form` (kubo's multipart layout) with the add and
    /// pin options of `query`; the outputs, the root last.
    pub async fn add(
        &self,
        form: reqwest::multipart::Form,
        query: &[(String, String)],
    ) -> Result<Vec<AddedOutput>, ClientError> {
        let req = self
            .http
            .post(format!("{}/add", self.base))
            .query(query)
            .multipart(form);
        let text = self
            .finish(req)
            .await?
            .text()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        // `stream-channels=false` answers with one list.
        if text.trim_start().starts_with('[') {
            return serde_json::from_str(&text).map_err(|e| ClientError::Decode(e.to_string()));
        }
        parse_ndjson(&text)
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

    /// `POST /pins/recover[?local=true]`: the items re-queued.
    pub async fn recover_all(&self, local: bool) -> Result<Vec<GlobalPinInfo>, ClientError> {
        let resp = self
            .send(reqwest::Method::POST, "/pins/recover", &local_query(local))
            .await?;
        ndjson(resp).await
    }
}
