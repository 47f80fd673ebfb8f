//! Headers the daemon would have sent, copied onto the answers the cluster gives
//! itself (upstream's `headers.go`): the CORS answer for the request's origin and
//! method, and a few headers the daemon always sends, cached for a while. Also
//! the daemon's refusal of cross-site requests, which upstream does not apply to
//! the calls it answers itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use super::error::{ErrorCode, kubo_error};
use crate::http::{Body, full};

use crate::config::ProxyConfig;
use crate::multiaddr::TcpMultiaddr;

/// CORS headers taken from the daemon's answer to a preflight.
const CORS: [&str; 3] = [
    "access-control-allow-origin",
    "vary",
    "access-control-allow-credentials",
];

/// Fetches and caches the daemon's headers.
#[derive(Clone)]
pub struct DaemonHeaders {
    client: reqwest::Client,
    base: String,
    extract: Vec<HeaderName>,
    extract_path: String,
    ttl: Duration,
    authorization: Option<HeaderValue>,
    cached: Arc<Mutex<Option<(Instant, HeaderMap)>>>,
}

impl DaemonHeaders {
    /// For the daemon at `node`, as configured, asked with `authorization` if any.
    pub fn new(cfg: &ProxyConfig, node: &TcpMultiaddr, authorization: Option<HeaderValue>) -> Self {
        let mut extract = vec![HeaderName::from_static("access-control-expose-headers")];
        extract.extend(
            cfg.extract_headers_extra
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        );
        DaemonHeaders {
            client: crate::http::plain_http_client_builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            base: format!("http://{}", node.authority()),
            extract,
            extract_path: cfg.extract_headers_path.clone(),
            ttl: cfg.extract_headers_ttl.0,
            authorization,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// The headers to add to an intercepted answer to `method path` from `origin`.
    /// Failures only cost the headers (and are logged), as upstream.
    pub async fn for_answer(
        &self,
        path: &str,
        method: &Method,
        origin: Option<&HeaderValue>,
    ) -> HeaderMap {
        let mut out = self.extracted().await;
        if let Some(origin) = origin {
            let preflight = self
                .authorized(
                    self.client
                        .request(reqwest::Method::OPTIONS, format!("{}{path}", self.base)),
                )
                .header("origin", origin.as_bytes())
                .header("access-control-request-method", method.as_str())
                .send()
                .await;
            match preflight {
                Ok(r) => {
                    for name in CORS {
                        for v in r.headers().get_all(name) {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_bytes(v.as_bytes()),
                            ) {
                                out.append(n, v);
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!("CORS preflight to the daemon: {e}"),
            }
        }
        out
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a.as_bytes()),
            None => req,
        }
    }

    /// The daemon's answer to a browser's request (one with an `Origin`, a
    /// `Referer` or a browser's `User-Agent`) that it would refuse, asked with
    /// those headers on its `extract_headers_path`. Without this a page from
    /// any site could pin and unpin through the proxy where the daemon itself
    /// answers 403 (kubo's and js-ipfs's guard against cross-site requests).
    pub async fn refusal(&self, req: &HeaderMap) -> Option<Response<Body>> {
        const BROWSER: [HeaderName; 3] = [header::ORIGIN, header::REFERER, header::USER_AGENT];
        let browser_like = req.contains_key(header::ORIGIN)
            || req.contains_key(header::REFERER)
            || req
                .get(header::USER_AGENT)
                .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla"));
        if !browser_like {
            return None;
        }
        let mut probe = self.authorized(
            self.client
                .post(format!("{}{}", self.base, self.extract_path)),
        );
        for name in BROWSER {
            if let Some(v) = req.get(&name) {
                probe = probe.header(name.as_str(), v.as_bytes());
            }
        }
        match probe.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => {
                let ctype = r.headers().get(reqwest::header::CONTENT_TYPE).cloned();
                let body = r.bytes().await.unwrap_or_default();
                let mut resp = Response::new(full(body));
                *resp.status_mut() = StatusCode::FORBIDDEN;
                if let Some(v) = ctype.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                Some(resp)
            }
            Ok(_) => None,
            // The daemon holds the policy: without it a browser's call is not
            // answered rather than answered unchecked.
            Err(e) => Some(kubo_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Normal,
                &format!("cannot check this request's origin with the IPFS daemon: {e}"),
            )),
        }
    }

    async fn extracted(&self) -> HeaderMap {
        if let Some((at, h)) = crate::sync::lock(&self.cached).as_ref()
            && (self.ttl.is_zero() || at.elapsed() < self.ttl)
        {
            return h.clone();
        }
        let mut h = HeaderMap::new();
        match self
            .authorized(
                self.client
                    .post(format!("{}{}", self.base, self.extract_path)),
            )
            .send()
            .await
        {
            Ok(r) => {
                for name in &self.extract {
                    for v in r.headers().get_all(name.as_str()) {
                        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                            h.append(name.clone(), v);
                        }
                    }
                }
                *crate::sync::lock(&self.cached) = Some((Instant::now(), h.clone()));
            }
            Err(e) => tracing::debug!("extracting the daemon's headers: {e}"),
        }
        h
    }
}
