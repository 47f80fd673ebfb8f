//! Authentication matrix: every REST API route and every route the proxy
//! intercepts, called with no, wrong and right credentials (HTTP Basic and,
//! for the REST API, JWT bearer tokens, also expired and forged ones), plus CORS
//! preflights, which need no credentials as upstream's. The routes are read
//! from the sources, so a route added without a row here fails the test. A peer
//! run at debug level must not write any password, token or the cluster secret
//! to its log, and `identity.json` must be private to its owner.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use reqwest::blocking::RequestBuilder;

const REST_USER: &str = "alice";
const REST_PASS: &str = "rest-pass-Zq81xv";
const PROXY_USER: &str = "bob";
const PROXY_PASS: &str = "proxy-pass-Lm42wy";

/// What a call with valid credentials must get.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// A 2xx answer.
    Success,
    /// Anything but 401: the call itself may be refused (e.g. removing a peer
    /// that is not a member), just not for want of credentials.
    Authorized,
}

/// A REST route as it is matched in `src/restapi/mod.rs`, and a concrete call.
struct RestRow {
    /// The match pattern, whitespace removed, e.g. `GET["pins",cid]`.
    pattern: &'static str,
    method: Method,
    /// The path, with `{A}` and `{PEER}` filled in at run time.
    path: &'static str,
    multipart: bool,
    want: Want,
}

fn rest_rows() -> Vec<RestRow> {
    use Want::*;
    let row = |pattern, method, path, want| RestRow {
        pattern,
        method,
        path,
        multipart: false,
        want,
    };
    vec![
        row(r#"GET["id"]"#, Method::GET, "/id", Success),
        row(r#"GET["version"]"#, Method::GET, "/version", Success),
        row(r#"GET["health"]"#, Method::GET, "/health", Success),
        row(
            r#"GET["monitor","metrics"]"#,
            Method::GET,
            "/monitor/metrics",
            Success,
        ),
        row(
            r#"GET["monitor","metrics",name]"#,
            Method::GET,
            "/monitor/metrics/ping",
            Success,
        ),
        row(
            r#"GET["health","graph"]"#,
            Method::GET,
            "/health/graph",
            Success,
        ),
        row(
            r#"GET["health","bandwidth"]"#,
            Method::GET,
            "/health/bandwidth",
            Success,
        ),
        row(
            r#"GET["health","alerts"]"#,
            Method::GET,
            "/health/alerts",
            Success,
        ),
        RestRow {
            pattern: r#"POST["add"]"#,
            method: Method::POST,
            path: "/add",
            multipart: true,
            want: Success,
        },
        row(r#"POST["token"]"#, Method::POST, "/token", Success),
        row(r#"POST["ipfs","gc"]"#, Method::POST, "/ipfs/gc", Success),
        row(r#"GET["raft"]"#, Method::GET, "/raft", Success),
        row(r#"GET["peers"]"#, Method::GET, "/peers", Success),
        // Pins first, so the reads and the unpins below have something to see.
        row(r#"POST["pins",cid]"#, Method::POST, "/pins/{A}", Success),
        row(
            r#"POST["pins",ns@("ipfs"|"ipns"|"ipld"),rest@..]"#,
            Method::POST,
            "/pins/ipfs/{B}",
            Success,
        ),
        row(
            r#"GET["allocations"]"#,
            Method::GET,
            "/allocations",
            Success,
        ),
        row(
            r#"GET["allocations",cid]"#,
            Method::GET,
            "/allocations/{A}",
            Success,
        ),
        row(r#"GET["pins"]"#, Method::GET, "/pins", Success),
        row(r#"GET["pins",cid]"#, Method::GET, "/pins/{A}", Success),
        row(
            r#"POST["pins","recover"]"#,
            Method::POST,
            "/pins/recover",
            Success,
        ),
        row(
            r#"POST["pins",cid,"recover"]"#,
            Method::POST,
            "/pins/{A}/recover",
            Success,
        ),
        row(
            r#"DELETE["pins",cid]"#,
            Method::DELETE,
            "/pins/{A}",
            Success,
        ),
        row(
            r#"DELETE["pins",ns@("ipfs"|"ipns"|"ipld"),rest@..]"#,
            Method::DELETE,
            "/pins/ipfs/{B}",
            Success,
        ),
        // Not a member: refused, but past authentication.
        row(
            r#"DELETE["peers",peer]"#,
            Method::DELETE,
            "/peers/{PEER}",
            Authorized,
        ),
    ]
}

/// A route the proxy intercepts, as named in `src/proxy/mod.rs`'s `route`.
struct ProxyRow {
    command: &'static str,
    /// Path and query after `/api/v0/`.
    call: &'static str,
    multipart: Option<&'static [u8]>,
}

fn proxy_rows() -> Vec<ProxyRow> {
    let row = |command, call| ProxyRow {
        command,
        call,
        multipart: None,
    };
    vec![
        row("pin/add", "pin/add?arg={C}"),
        row("pin/ls", "pin/ls"),
        row("pin/update", "pin/update?arg={C}&arg={D}"),
        row("pin/rm", "pin/rm?arg={D}"),
        ProxyRow {
            command: "add",
            call: "add?pin=false",
            multipart: Some(b"added in the auth matrix\n"),
        },
        row("repo/stat", "repo/stat"),
        row("repo/gc", "repo/gc"),
        ProxyRow {
            command: "block/put",
            call: "block/put",
            multipart: Some(b"a block in the auth matrix"),
        },
        ProxyRow {
            command: "dag/put",
            call: "dag/put",
            multipart: Some(br#"{"auth":"matrix"}"#),
        },
    ]
}

/// The `(&Method::X, [...])` patterns of the REST API's router, whitespace removed.
fn rest_routes_in_source() -> BTreeSet<String> {
    let src = include_str!("../src/restapi/mod.rs");
    src.lines()
        .filter_map(|l| {
            let start = l.find("(&Method::")?;
            let rest = &l[start + "(&Method::".len()..];
            let end = rest.find("])")?;
            let pattern: String = rest[..=end]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            Some(pattern.replacen(',', "", 1))
        })
        .collect()
}

/// The commands the proxy's `route` intercepts (`pin/<sub>` for the pin ones).
fn proxy_routes_in_source() -> BTreeSet<String> {
    let src = include_str!("../src/proxy/mod.rs");
    let start = src.find("fn route(").expect("the proxy's route function");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("end of route")];
    body.lines()
        .filter_map(|l| {
            // Patterns are byte strings: `b"pin/update" => Hijack::PinUpdate,`.
            let l = l.trim();
            let name = l.strip_prefix("b\"")?.split('"').next()?;
            if l.contains("Hijack::") {
                Some(name.to_string())
            } else if l.contains("PinCommand::") {
                Some(format!("pin/{name}"))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn every_route_is_in_the_matrix() {
    let listed: BTreeSet<String> = rest_rows().iter().map(|r| r.pattern.to_string()).collect();
    assert_eq!(
        rest_routes_in_source(),
        listed,
        "the REST routes in src/restapi/mod.rs and the auth matrix differ"
    );
    let listed: BTreeSet<String> = proxy_rows().iter().map(|r| r.command.to_string()).collect();
    assert_eq!(
        proxy_routes_in_source(),
        listed,
        "the proxy's intercepted routes and the auth matrix differ"
    );
}

/// An HS256 token with `claims`, signed with `key`.
fn token(claims: &str, key: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("hmac key");
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

/// How a call authenticates.
#[derive(Clone, Debug)]
enum Cred {
    None,
    Basic(&'static str, &'static str),
    /// A raw `Authorization` header value.
    Raw(String),
    Bearer(String),
}

impl Cred {
    fn apply(&self, req: RequestBuilder) -> RequestBuilder {
        match self {
            Cred::None => req,
            Cred::Basic(u, p) => req.basic_auth(u, Some(p)),
            Cred::Raw(v) => req.header("authorization", v),
            Cred::Bearer(t) => req.bearer_auth(t),
        }
    }
}

fn fill(s: &str, subs: &[(&str, &str)]) -> String {
    let mut out = s.to_string();
    for (k, v) in subs {
        out = out.replace(k, v);
    }
    out
}

fn send(
    method: Method,
    url: &str,
    multipart: Option<&[u8]>,
    cred: &Cred,
) -> (u16, String, Vec<String>) {
    let mut req = cred.apply(http().request(method, url));
    if let Some(data) = multipart {
        let part = reqwest::blocking::multipart::Part::bytes(data.to_vec())
            .file_name("f")
            .mime_str("application/octet-stream")
            .expect("mime");
        req = req.multipart(reqwest::blocking::multipart::Form::new().part("file", part));
    }
    let r = req.send().expect("request");
    let st = r.status().as_u16();
    let realms = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    (st, r.text().unwrap_or_default(), realms)
}

#[test]
fn rest_and_proxy_routes_by_credentials_tokens_and_cors() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().expect("tempdir");
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());

    // identity.json holds the private key, service.json the cluster secret.
    for f in ["identity.json", "service.json"] {
        let mode = std::fs::metadata(cfg.path().join(f))
            .expect("config file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f} has mode {:o}", mode & 0o777);
    }
    let mut secret = String::new();
    peer.edit_config(|v| {
        secret = v["cluster"]["secret"].as_str().expect("secret").to_string();
        let r = &mut v["api"]["restapi"];
        r["basic_auth_credentials"] = serde_json::json!({ REST_USER: REST_PASS });
        r["cors_allowed_origins"] = serde_json::json!(["http://app.example"]);
        r["cors_allowed_methods"] = serde_json::json!(["GET", "POST", "DELETE"]);
        r["cors_allowed_headers"] = serde_json::json!(["Authorization"]);
        v["api"]["ipfsproxy"]["basic_auth_credentials"] =
            serde_json::json!({ PROXY_USER: PROXY_PASS });
    });
    assert_eq!(secret.len(), 64, "a hex cluster secret");
    let log = cfg.path().join("peer.log");
    peer.start_logging_to("debug,ipfs_cluster::access=debug,openraft=info", &log);
    let rest = peer.rest();
    let proxy = peer.proxy();

    // A token from the API, and tokens it must refuse.
    let issued: serde_json::Value = http()
        .post(format!("{rest}/token"))
        .basic_auth(REST_USER, Some(REST_PASS))
        .send()
        .expect("token")
        .json()
        .expect("token json");
    let issued = issued["token"].as_str().expect("token").to_string();
    let far = chrono::Utc::now().timestamp() + 3600;
    let past = chrono::Utc::now().timestamp() - 60;
    let expired = token(
        &format!(r#"{{"iss":"{REST_USER}","exp":{past}}}"#),
        REST_PASS,
    );
    let valid_exp = token(
        &format!(r#"{{"iss":"{REST_USER}","exp":{far}}}"#),
        REST_PASS,
    );
    let not_yet = token(
        &format!(r#"{{"iss":"{REST_USER}","nbf":{far}}}"#),
        REST_PASS,
    );
    let forged = token(&format!(r#"{{"iss":"{REST_USER}"}}"#), "guessed-password");
    let stranger = token(r#"{"iss":"mallory"}"#, REST_PASS);
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{REST_USER}"}}"#))
    );
    let mut tampered = issued.clone();
    tampered.push('A');

    let rights = vec![
        Cred::Basic(REST_USER, REST_PASS),
        Cred::Bearer(issued.clone()),
        Cred::Bearer(valid_exp.clone()),
    ];
    let wrongs = vec![
        Cred::None,
        Cred::Basic(REST_USER, "wrong"),
        Cred::Basic("mallory", REST_PASS),
        Cred::Basic(PROXY_USER, PROXY_PASS),
        Cred::Raw("Basic !!!not-base64".into()),
        Cred::Raw(format!(
            "Basic {}",
            STANDARD.encode(format!("{REST_USER}{REST_PASS}"))
        )),
        Cred::Raw(format!("Digest username=\"{REST_USER}\"")),
        Cred::Bearer(expired.clone()),
        Cred::Bearer(not_yet.clone()),
        Cred::Bearer(forged.clone()),
        Cred::Bearer(stranger.clone()),
        Cred::Bearer(alg_none.clone()),
        Cred::Bearer(tampered.clone()),
        Cred::Bearer(String::new()),
        Cred::Bearer("not.a.token".into()),
    ];

    let a = id_cid(7001);
    let b = id_cid(7002);
    let stranger_peer = {
        let k = libp2p_identity::Keypair::generate_ed25519();
        k.public().to_peer_id().to_string()
    };
    let subs = [
        ("{A}", a.as_str()),
        ("{B}", b.as_str()),
        ("{PEER}", &stranger_peer),
    ];
    let mut calls = 0;
    for cred in &wrongs {
        for row in rest_rows() {
            let url = format!("{rest}{}", fill(row.path, &subs));
            let data = row.multipart.then_some(&b"x"[..]);
            let (st, body, realms) = send(row.method.clone(), &url, data, cred);
            calls += 1;
            if row.path == "/health" && row.method == Method::GET {
                // As upstream: the health check is open.
                assert_eq!(st, 204, "GET /health with {cred:?}: {body}");
                continue;
            }
            assert_eq!(st, 401, "{} {} with {cred:?}: {body}", row.method, row.path);
            assert_eq!(realms.len(), 2, "{realms:?}");
        }
    }
    for cred in &rights {
        for row in rest_rows() {
            let url = format!("{rest}{}", fill(row.path, &subs));
            let data = row.multipart.then_some(&b"added through the REST API"[..]);
            let (st, body, _) = send(row.method.clone(), &url, data, cred);
            calls += 1;
            match row.want {
                Want::Success => assert!(
                    (200..300).contains(&st),
                    "{} {} with {cred:?}: {st} {body}",
                    row.method,
                    row.path
                ),
                Want::Authorized => assert_ne!(st, 401, "{} {}: {body}", row.method, row.path),
            }
        }
    }

    // The proxy: HTTP Basic with its own users only (upstream's proxy takes no
    // tokens), on intercepted and forwarded routes alike.
    let c = id_cid(7003);
    let dd = id_cid(7004);
    let psubs = [("{C}", c.as_str()), ("{D}", dd.as_str())];
    let proxy_wrongs = vec![
        Cred::None,
        Cred::Basic(PROXY_USER, "wrong"),
        Cred::Basic(REST_USER, REST_PASS),
        Cred::Raw("Basic !!!".into()),
        Cred::Bearer(issued.clone()),
        Cred::Bearer(token(&format!(r#"{{"iss":"{PROXY_USER}"}}"#), PROXY_PASS)),
    ];
    let mut proxy_calls: Vec<(String, Option<&[u8]>)> = proxy_rows()
        .iter()
        .map(|r| (fill(r.call, &psubs), r.multipart))
        .collect();
    proxy_calls.push(("version".into(), None));
    proxy_calls.push(("id".into(), None));
    for cred in &proxy_wrongs {
        for (call, data) in &proxy_calls {
            let (st, body, realms) = send(Method::POST, &format!("{proxy}/{call}"), *data, cred);
            calls += 1;
            assert_eq!(st, 401, "proxy {call} with {cred:?}: {body}");
            assert_eq!(realms, ["Basic realm=\"IPFS Cluster proxy\""]);
        }
    }
    for (call, data) in &proxy_calls {
        let cred = Cred::Basic(PROXY_USER, PROXY_PASS);
        let (st, body, _) = send(Method::POST, &format!("{proxy}/{call}"), *data, &cred);
        calls += 1;
        assert!(
            (200..300).contains(&st),
            "proxy {call} with the right credentials: {st} {body}"
        );
    }

    // CORS preflights carry no credentials: answered, not refused.
    for path in ["/pins", "/id", "/add", &format!("/pins/{a}")] {
        let r = http()
            .request(Method::OPTIONS, format!("{rest}{path}"))
            .header("origin", "http://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .expect("preflight");
        assert_eq!(r.status().as_u16(), 204, "preflight of {path}");
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "http://app.example"
        );
    }
    let r = http()
        .request(Method::OPTIONS, format!("{proxy}/pin/add"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .expect("proxy preflight");
    assert_ne!(r.status().as_u16(), 401, "a preflight to the proxy");

    peer.stop();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("\"GET /id\" 200"),
        "the access log was not at debug level: {}",
        &text[..text.len().min(2000)]
    );
    let basic_rest = STANDARD.encode(format!("{REST_USER}:{REST_PASS}"));
    let basic_proxy = STANDARD.encode(format!("{PROXY_USER}:{PROXY_PASS}"));
    for (what, s) in [
        ("the REST password", REST_PASS),
        ("the proxy password", PROXY_PASS),
        ("the REST Basic header", basic_rest.as_str()),
        ("the proxy Basic header", basic_proxy.as_str()),
        ("the issued token", issued.as_str()),
        ("a token signature", issued.rsplit('.').next().unwrap_or("")),
        ("a refused token", forged.as_str()),
        ("an expired token", expired.as_str()),
        ("the cluster secret", secret.as_str()),
    ] {
        assert!(!s.is_empty());
        assert!(
            !text.contains(s),
            "{what} is in the peer's debug log ({calls} calls)"
        );
    }
}
