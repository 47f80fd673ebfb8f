//! Headers the daemon would have sent, copied onto the answers the cluster gives
//! itself (upstream's `headers.go`): the CORS answer for the request's origin and
//! method, and a few headers the daemon always sends, cached for a while.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

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
            client: reqwest::Client::builder()
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

    async fn extracted(&self) -> HeaderMap {
        if let Some((at, h)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
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
                *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), h.clone()));
            }
            Err(e) => tracing::debug!("extracting the daemon's headers: {e}"),
        }
        h
    }
}
