//! CORS for the REST API, as upstream's `rs/cors` middleware answers: preflights
//! (OPTIONS with `Access-Control-Request-Method`) are answered here, without
//! authentication, and allowed origins get the CORS headers on every answer.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::config::RestApiConfig;
use crate::http::{Body, empty};

/// The configured CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<String>,
    any_origin: bool,
    methods: Vec<String>,
    headers: Vec<String>,
    any_header: bool,
    exposed: String,
    credentials: bool,
    max_age: u64,
}

impl Cors {
    /// The policy of `cfg`'s `cors_*` keys.
    pub fn new(cfg: &RestApiConfig) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>();
        let mut headers = lower(&cfg.cors_allowed_headers);
        // rs/cors always allows `Origin`.
        headers.push("origin".into());
        Cors {
            any_origin: cfg.cors_allowed_origins.iter().any(|o| o == "*"),
            origins: lower(&cfg.cors_allowed_origins),
            methods: cfg
                .cors_allowed_methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            any_header: headers.iter().any(|h| h == "*"),
            headers,
            exposed: cfg.cors_exposed_headers.join(", "),
            credentials: cfg.cors_allow_credentials,
            max_age: cfg.cors_max_age.0.as_secs(),
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o == &origin.to_ascii_lowercase())
    }

    fn method_allowed(&self, method: &str) -> bool {
        let m = method.to_ascii_uppercase();
        m == "OPTIONS" || self.methods.contains(&m)
    }

    fn allow_origin(&self, h: &mut HeaderMap, origin: &HeaderValue) {
        let value = if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The answer to a preflight, or `None` when `req` is not one.
    pub fn preflight(&self, method: &Method, req: &HeaderMap) -> Option<Response<Body>> {
        let requested = req.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        if method != Method::OPTIONS {
            return None;
        }
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        for v in [
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers",
        ] {
            h.append(header::VARY, HeaderValue::from_static(v));
        }
        let Some(origin) = req.get(header::ORIGIN) else {
            return Some(resp);
        };
        let requested = requested.to_str().unwrap_or("");
        let asked_headers: Vec<String> = req
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let headers_ok = self.any_header || asked_headers.iter().all(|a| self.headers.contains(a));
        if !self.origin_allowed(origin.to_str().unwrap_or(""))
            || !self.method_allowed(requested)
            || !headers_ok
        {
            return Some(resp);
        }
        self.allow_origin(h, origin);
        if let Ok(m) = HeaderValue::from_str(&requested.to_ascii_uppercase()) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        if !asked_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&asked_headers.join(", "))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.max_age > 0 {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.into());
        }
        Some(resp)
    }

    /// Adds the CORS headers for `origin` to the answer of an actual request.
    pub fn decorate(&self, method: &Method, origin: Option<&HeaderValue>, resp: &mut HeaderMap) {
        resp.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin else { return };
        if !self.origin_allowed(origin.to_str().unwrap_or(""))
            || !self.method_allowed(method.as_str())
        {
            return;
        }
        self.allow_origin(resp, origin);
        if !self.exposed.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.exposed)
        {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn upstream_defaults_allow_any_origin_to_get() {
        let cors = Cors::new(&RestApiConfig::default());
        let r = cors
            .preflight(
                &Method::OPTIONS,
                &req(&[
                    ("origin", "http://app.example"),
                    ("access-control-request-method", "GET"),
                ]),
            )
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(r.headers()["access-control-allow-methods"], "GET");
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        // POST is not among the default methods; neither is an unknown header.
        let r = cors
            .preflight(
                &Method::OPTIONS,
                &req(&[
                    ("origin", "http://app.example"),
                    ("access-control-request-method", "POST"),
                ]),
            )
            .unwrap();
        assert!(!r.headers().contains_key("access-control-allow-origin"));
        let r = cors
            .preflight(
                &Method::OPTIONS,
                &req(&[
                    ("origin", "http://app.example"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "X-Custom"),
                ]),
            )
            .unwrap();
        assert!(!r.headers().contains_key("access-control-allow-origin"));
        // Not a preflight.
        assert!(cors.preflight(&Method::GET, &req(&[])).is_none());
        let mut h = HeaderMap::new();
        cors.decorate(
            &Method::GET,
            Some(&HeaderValue::from_static("http://app.example")),
            &mut h,
        );
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(
            h["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("X-Chunked-Output")
        );
    }

    #[test]
    fn listed_origins_are_echoed_and_others_get_nothing() {
        let cfg = RestApiConfig {
            cors_allowed_origins: vec!["http://app.example".into()],
            cors_allowed_methods: vec!["GET".into(), "POST".into()],
            cors_allowed_headers: vec!["Authorization".into()],
            cors_max_age: crate::config::GoDuration::secs(600),
            ..Default::default()
        };
        let cors = Cors::new(&cfg);
        let r = cors
            .preflight(
                &Method::OPTIONS,
                &req(&[
                    ("origin", "http://app.example"),
                    ("access-control-request-method", "post"),
                    ("access-control-request-headers", "authorization"),
                ]),
            )
            .unwrap();
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "http://app.example"
        );
        assert_eq!(r.headers()["access-control-allow-methods"], "POST");
        assert_eq!(r.headers()["access-control-allow-headers"], "authorization");
        assert_eq!(r.headers()["access-control-max-age"], "600");
        let mut h = HeaderMap::new();
        cors.decorate(
            &Method::POST,
            Some(&HeaderValue::from_static("http://evil.example")),
            &mut h,
        );
        assert!(!h.contains_key("access-control-allow-origin"));
        assert_eq!(h["vary"], "Origin");
    }
}
