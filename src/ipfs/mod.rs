//! The IPFS connector: the peer's client of its daemon's kubo RPC API
//! (`/api/v0`), used by the tracker to pin and unpin and by the APIs to resolve
//! paths and identify the daemon.

#[cfg(any(test, feature = "fake-daemon"))]
pub mod fake;
mod ndjson;

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use ndjson::NdjsonReader;

use crate::config::IpfsHttpConfig;
use crate::multiaddr::TcpMultiaddr;
use crate::types::{Cid, IpfsId, PinMode};

/// The error text kubo (boxo) gives when unpinning something not pinned.
pub const ERR_NOT_PINNED: &str = "not pinned or pinned indirectly";

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum IpfsError {
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// HTTP status.
        status: u16,
        /// The daemon's `Message`.
        message: String,
    },
    /// The daemon could not be reached.
    #[error("the IPFS daemon at {addr} is unreachable: {reason}")]
    Unreachable {
        /// Its address.
        addr: String,
        /// The transport error.
        reason: String,
    },
    /// The call took too long.
    #[error("{0}")]
    Timeout(String),
    /// The operation was cancelled.
    #[error("operation cancelled")]
    Cancelled,
    /// The daemon's answer could not be understood.
    #[error("unexpected answer from the IPFS daemon: {0}")]
    Protocol(String),
}

impl IpfsError {
    /// True for kubo's "not pinned" answers (`pin/rm`, `pin/ls?arg=`).
    pub fn is_not_pinned(&self) -> bool {
        matches!(self, IpfsError::Daemon { message, .. }
            if message.ends_with("not pinned") || message.contains(ERR_NOT_PINNED))
    }
}

#[derive(Deserialize)]
struct DaemonError {
    #[serde(rename = "Message")]
    message: String,
}

/// A call for many CIDs must report as many: a daemon that took only some of
/// the `arg`s has not done the others.
fn check_count(cmd: &str, sent: usize, reported: usize) -> Result<(), IpfsError> {
    if sent > 1 && reported != sent {
        return Err(IpfsError::Protocol(format!(
            "{cmd} of {sent} CIDs reported {reported}"
        )));
    }
    Ok(())
}

/// A client of one daemon's RPC API.
#[derive(Clone)]
pub struct IpfsConnector {
    client: reqwest::Client,
    /// `http://<daemon>/api/v0`, parsed once: each call's URL is this with its
    /// command's segments and query appended (parsing a URL string per call was
    /// ~1% of all CPU at 64 ingest connections).
    base: url::Url,
    addr: String,
    request_timeout: Duration,
    pin_timeout: Duration,
    unpin_timeout: Duration,
    auth: Option<(String, String)>,
}

/// The daemon's recursive and direct pins, as the tracker compares them with the
/// pinset: sorted 16-byte digests of the CID bytes (16 bytes a pin and 1–2 of
/// index, instead of a map of CIDs or of the JSON listing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonPins {
    recursive: Vec<[u8; 16]>,
    direct: Vec<[u8; 16]>,
    /// Where the recursive digests whose first `bits` bits are `i` start (the
    /// digests are uniform: a lookup reads a few entries, not all of them).
    index: Vec<u32>,
    /// The leading bits of a digest that pick its bucket in `index`.
    bits: u32,
}

impl DaemonPins {
    /// What the set keeps of `cid`: 16 bytes of the SHA-256 of its bytes.
    pub(crate) fn digest(cid: &Cid) -> [u8; 16] {
        use sha2::Digest;
        let h = sha2::Sha256::digest(cid.to_bytes());
        let mut d = [0u8; 16];
        d.copy_from_slice(&h[..16]);
        d
    }

    /// Adds a pin (call [`DaemonPins::seal`] once done).
    pub fn insert(&mut self, cid: &Cid, mode: PinMode) {
        let d = Self::digest(cid);
        match mode {
            PinMode::Recursive => self.recursive.push(d),
            PinMode::Direct => self.direct.push(d),
        }
    }

    /// Sorts the set for lookups and frees what it does not use.
    pub fn seal(&mut self) {
        for v in [&mut self.recursive, &mut self.direct] {
            v.sort_unstable();
            v.dedup();
            v.shrink_to_fit();
        }
        // Only worth it beside many pins. Two to four digests a bucket, so a
        // lookup reads the index and then one cache line or two, where a binary
        // search of the whole set (or of buckets of fixed size, as large as the
        // set grows) takes a cache miss at each step: a start's comparison of a
        // million pins makes a million of these lookups, in no order.
        self.index.clear();
        let n = self.recursive.len();
        if n >= 1 << 16 {
            self.bits = (n.ilog2() - 1).min(28);
            let buckets = 1usize << self.bits;
            let mut index = Vec::with_capacity(buckets + 1);
            let mut at = 0usize;
            for b in 0..buckets {
                while at < n && self.bucket(&self.recursive[at]) < b {
                    at += 1;
                }
                index.push(at as u32);
            }
            index.push(n as u32);
            self.index = index;
        }
    }

    fn bucket(&self, d: &[u8; 16]) -> usize {
        let mut head = [0u8; 8];
        head.copy_from_slice(&d[..8]);
        (u64::from_be_bytes(head) >> (64 - self.bits)) as usize
    }

    fn has_recursive(&self, d: &[u8; 16]) -> bool {
        if self.index.is_empty() {
            return self.recursive.binary_search(d).is_ok();
        }
        let b = self.bucket(d);
        let (from, to) = (self.index[b] as usize, self.index[b + 1] as usize);
        self.recursive[from..to].binary_search(d).is_ok()
    }

    /// How `cid` is pinned (a recursive pin wins over a direct one).
    pub fn get(&self, cid: &Cid) -> Option<PinMode> {
        let d = Self::digest(cid);
        if self.has_recursive(&d) {
            Some(PinMode::Recursive)
        } else if self.direct.binary_search(&d).is_ok() {
            Some(PinMode::Direct)
        } else {
            None
        }
    }

    /// How many pins.
    pub fn len(&self) -> usize {
        self.recursive.len() + self.direct.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<(Cid, PinMode)> for DaemonPins {
    fn from_iter<I: IntoIterator<Item = (Cid, PinMode)>>(iter: I) -> Self {
        let mut d = DaemonPins::default();
        for (c, m) in iter {
            d.insert(&c, m);
        }
        d.seal();
        d
    }
}

impl IpfsConnector {
    /// A connector for the daemon at `cfg.node_multiaddress`.
    pub fn new(cfg: &IpfsHttpConfig) -> Result<Self, crate::multiaddr::MultiaddrError> {
        let addr = TcpMultiaddr::parse(&cfg.node_multiaddress)?;
        let client = crate::http::plain_http_client_builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Ok(IpfsConnector {
            client,
            base: addr.http_url("/api/v0")?,
            addr: addr.to_string(),
            request_timeout: nonzero(cfg.ipfs_request_timeout.0),
            pin_timeout: nonzero(cfg.pin_timeout.0),
            unpin_timeout: nonzero(cfg.unpin_timeout.0),
            auth: cfg.basic_auth_credentials.as_deref().map(|c| {
                let (u, p) = c.split_once(':').unwrap_or((c, ""));
                (u.to_string(), p.to_string())
            }),
        })
    }

    fn transport_err(&self, e: reqwest::Error) -> IpfsError {
        if e.is_timeout() {
            IpfsError::Timeout(format!("request to the IPFS daemon timed out: {e}"))
        } else if e.is_connect() || e.is_request() {
            IpfsError::Unreachable {
                addr: self.addr.clone(),
                reason: error_chain(&e),
            }
        } else {
            IpfsError::Protocol(error_chain(&e))
        }
    }

    fn ndjson_err(&self, e: ndjson::NdjsonError) -> IpfsError {
        match e {
            ndjson::NdjsonError::Transport(e) => self.transport_err(e),
            too_long => IpfsError::Protocol(too_long.to_string()),
        }
    }

    async fn post(
        &self,
        cmd: &str,
        query: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, IpfsError> {
        let mut req = self.client.post(self.url(cmd, query));
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        self.send(req).await
    }

    /// The URL of `cmd` (`pin/add`) with `query`.
    fn url(&self, cmd: &str, query: &[(&str, &str)]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(cmd.split('/'));
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends `req` with the daemon's credentials; a non-2xx answer is an error
    /// carrying the daemon's message.
    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<reqwest::Response, IpfsError> {
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| self.transport_err(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.transport_err(e))?;
        let message = serde_json::from_slice::<DaemonError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        Err(IpfsError::Daemon { status, message })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        cmd: &str,
        query: &[(&str, &str)],
    ) -> Result<T, IpfsError> {
        let resp = self.post(cmd, query, Some(self.request_timeout)).await?;
        let body = resp.bytes().await.map_err(|e| self.transport_err(e))?;
        serde_json::from_slice(&body).map_err(|e| IpfsError::Protocol(format!("{cmd}: {e}")))
    }

    /// Streams a multipart upload (`content_type` carries its boundary) to the
    /// daemon's `add` with `query`, told not to pin, and reads its answer
    /// objects as they come. No timeout: an upload takes as long as it takes.
    pub async fn add(
        &self,
        query: &[(String, String)],
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<NdjsonReader, IpfsError> {
        let mut pairs: Vec<(&str, &str)> = query
            .iter()
            .filter(|(k, _)| k != "pin")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.push(("pin", "false"));
        let req = self
            .client
            .post(self.url("add", &pairs))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Ok(NdjsonReader::new(self.send(req).await?))
    }

    /// Streams a multipart upload of a CAR file to the daemon's `dag/import`, told
    /// not to pin its roots (the cluster pins), and reads its answer objects. No
    /// timeout: an upload takes as long as it takes.
    pub async fn dag_import(
        &self,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<NdjsonReader, IpfsError> {
        let req = self
            .client
            .post(self.url("dag/import", &[("pin-roots", "false"), ("stats", "true")]))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Ok(NdjsonReader::new(self.send(req).await?))
    }

    /// The daemon's identity.
    pub async fn id(&self) -> Result<IpfsId, IpfsError> {
        #[derive(Deserialize)]
        struct Id {
            #[serde(rename = "ID")]
            id: String,
            #[serde(rename = "Addresses", default)]
            addresses: Option<Vec<String>>,
        }
        let id: Id = self.call("id", &[]).await?;
        Ok(IpfsId {
            id: id.id,
            addresses: id.addresses.unwrap_or_default(),
            error: String::new(),
        })
    }

    /// Resolves an IPFS/IPNS path to the CID it points at.
    pub async fn resolve(&self, path: &str) -> Result<Cid, IpfsError> {
        #[derive(Deserialize)]
        struct Resolved {
            #[serde(rename = "Path")]
            path: String,
        }
        let r: Resolved = self.call("resolve", &[("arg", path)]).await?;
        let root = r
            .path
            .trim_start_matches("/ipfs/")
            .split('/')
            .next()
            .unwrap_or_default();
        root.parse()
            .map_err(|e| IpfsError::Protocol(format!("resolve returned {:?}: {e}", r.path)))
    }

    /// Runs the daemon's garbage collection; returns the removed CIDs and the errors
    /// it reported along the way.
    pub async fn repo_gc(&self) -> Result<(Vec<String>, Vec<String>), IpfsError> {
        #[derive(Deserialize)]
        struct GcLine {
            #[serde(rename = "Key", default)]
            key: Option<serde_json::Value>,
            #[serde(rename = "Error", default)]
            error: Option<String>,
        }
        let resp = self
            .post("repo/gc", &[("stream-errors", "true")], None)
            .await?;
        let mut reader = NdjsonReader::new(resp);
        let (mut keys, mut errors) = (Vec::new(), Vec::new());
        while let Some(line) = reader.next_line().await.map_err(|e| self.ndjson_err(e))? {
            let l: GcLine = serde_json::from_slice(&line)
                .map_err(|e| IpfsError::Protocol(format!("repo/gc: {e}")))?;
            if let Some(e) = l.error.filter(|e| !e.is_empty()) {
                errors.push(e);
            }
            let key = match l.key {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Object(o)) => {
                    o.get("/").and_then(|v| v.as_str()).map(String::from)
                }
                _ => None,
            };
            keys.extend(key);
        }
        Ok((keys, errors))
    }

    /// The peer IDs the daemon is connected to (`swarm/peers`).
    pub async fn swarm_peers(&self) -> Result<Vec<String>, IpfsError> {
        #[derive(Deserialize)]
        struct SwarmPeer {
            #[serde(rename = "Peer")]
            peer: String,
        }
        #[derive(Deserialize)]
        struct SwarmPeers {
            #[serde(rename = "Peers", default)]
            peers: Option<Vec<SwarmPeer>>,
        }
        let r: SwarmPeers = self.call("swarm/peers", &[]).await?;
        Ok(r.peers
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.peer)
            .collect())
    }

    /// Asks the daemon to connect to `addr` (`swarm/connect`), a multiaddr
    /// ending in `/p2p/<id>`.
    pub async fn swarm_connect(&self, addr: &str) -> Result<(), IpfsError> {
        self.post(
            "swarm/connect",
            &[("arg", addr)],
            Some(self.request_timeout),
        )
        .await
        .map(drop)
    }

    /// [`Self::pin`], dialling up to 10 of the pin's `origins` meanwhile, as
    /// upstream's connector does: a daemon that cannot find the content by
    /// itself (a private network, no DHT) gets it from where it was added. The
    /// dials are best effort and end with the pin.
    pub async fn pin_with_origins(
        &self,
        cid: &Cid,
        mode: PinMode,
        origins: &[String],
        cancel: &CancellationToken,
        progress: impl FnMut(u64) + Send,
    ) -> Result<(), IpfsError> {
        let dials = futures::future::join_all(origins.iter().take(10).map(|o| async move {
            match self.swarm_connect(o).await {
                Ok(()) => tracing::debug!(origin = %o, "connected the daemon to a pin origin"),
                Err(e) => tracing::debug!(origin = %o, "swarm connect to a pin origin: {e}"),
            }
        }));
        let pin = self.pin(cid, mode, cancel, progress);
        tokio::pin!(pin);
        tokio::select! {
            r = &mut pin => return r,
            _ = dials => {}
        }
        pin.await
    }

    /// The repository's size and capacity (`repo/stat?size-only=true`), in bytes.
    pub async fn repo_stat(&self) -> Result<(u64, u64), IpfsError> {
        #[derive(Deserialize)]
        struct RepoStat {
            #[serde(rename = "RepoSize", deserialize_with = "number_or_string")]
            repo_size: u64,
            #[serde(rename = "StorageMax", deserialize_with = "number_or_string")]
            storage_max: u64,
        }
        let r: RepoStat = self.call("repo/stat", &[("size-only", "true")]).await?;
        Ok((r.repo_size, r.storage_max))
    }

    /// Pins `cid` on the daemon. The call fails if no progress is reported for
    /// `pin_timeout`; `progress` hears of the blocks fetched so far.
    pub async fn pin(
        &self,
        cid: &Cid,
        mode: PinMode,
        cancel: &CancellationToken,
        progress: impl FnMut(u64) + Send,
    ) -> Result<(), IpfsError> {
        tokio::select! {
            r = self.pin_args(std::slice::from_ref(cid), mode, progress) => r,
            _ = cancel.cancelled() => Err(IpfsError::Cancelled),
        }
    }

    /// Pins all of `cids` in one `pin/add` call (kubo takes many `arg`s and
    /// pins them one after the other). The daemon fails the whole call at the
    /// first CID it cannot pin, keeping those pinned before it: the caller
    /// learns only that some failed. Dropping the future cancels the call.
    /// `progress` hears of the blocks fetched so far for the whole call.
    pub async fn pin_many(
        &self,
        cids: &[Cid],
        mode: PinMode,
        progress: impl FnMut(u64) + Send,
    ) -> Result<(), IpfsError> {
        self.pin_args(cids, mode, progress).await
    }

    async fn pin_args(
        &self,
        cids: &[Cid],
        mode: PinMode,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<(), IpfsError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct PinEvent {
            #[serde(rename = "Pins")]
            pins: Option<Vec<String>>,
            #[serde(rename = "Progress")]
            progress: Option<u64>,
        }
        let args: Vec<String> = cids.iter().map(Cid::to_string).collect();
        let recursive = if mode == PinMode::Recursive {
            "true"
        } else {
            "false"
        };
        let stalled = || {
            let what = match args.as_slice() {
                [one] => one.clone(),
                many => format!("{} CIDs", many.len()),
            };
            IpfsError::Timeout(format!(
                "pin of {what} made no progress for {}",
                crate::config::format_duration(self.pin_timeout)
            ))
        };
        let mut query: Vec<(&str, &str)> = args.iter().map(|a| ("arg", a.as_str())).collect();
        query.extend([("recursive", recursive), ("progress", "true")]);
        // A daemon that cannot find the blocks may not even send headers: the
        // no-progress timeout covers the wait for them too.
        let resp = tokio::time::timeout(self.pin_timeout, self.post("pin/add", &query, None))
            .await
            .map_err(|_| stalled())??;
        let mut reader = NdjsonReader::new(resp);
        loop {
            let line = tokio::time::timeout(self.pin_timeout, reader.next_line())
                .await
                .map_err(|_| stalled())?
                .map_err(|e| self.ndjson_err(e))?;
            let Some(line) = line else {
                return Err(IpfsError::Protocol(
                    "pin/add ended without reporting the pin".into(),
                ));
            };
            let ev: PinEvent = serde_json::from_slice(&line)
                .map_err(|e| IpfsError::Protocol(format!("pin/add: {e}")))?;
            if let Some(p) = ev.progress {
                progress(p);
            }
            if let Some(pins) = ev.pins {
                return check_count("pin/add", args.len(), pins.len());
            }
        }
    }

    /// Unpins all of `cids` in one `pin/rm` call. The daemon fails the whole
    /// call at the first CID it cannot unpin (one not pinned included), keeping
    /// those unpinned before it. Dropping the future cancels the call.
    pub async fn unpin_many(&self, cids: &[Cid]) -> Result<(), IpfsError> {
        #[derive(Deserialize)]
        struct Removed {
            #[serde(rename = "Pins", default)]
            pins: Option<Vec<String>>,
        }
        let args: Vec<String> = cids.iter().map(Cid::to_string).collect();
        let query: Vec<(&str, &str)> = args.iter().map(|a| ("arg", a.as_str())).collect();
        let resp = self
            .post("pin/rm", &query, Some(self.unpin_timeout))
            .await?;
        let body = resp.bytes().await.map_err(|e| self.transport_err(e))?;
        let r: Removed = serde_json::from_slice(&body)
            .map_err(|e| IpfsError::Protocol(format!("pin/rm: {e}")))?;
        check_count("pin/rm", args.len(), r.pins.map_or(0, |p| p.len()))
    }

    /// Unpins `cid`; a CID that is not pinned counts as unpinned.
    pub async fn unpin(&self, cid: &Cid, cancel: &CancellationToken) -> Result<(), IpfsError> {
        let arg = cid.to_string();
        let query = [("arg", arg.as_str())];
        let fut = self.post("pin/rm", &query, Some(self.unpin_timeout));
        let res = tokio::select! {
            r = fut => r,
            _ = cancel.cancelled() => return Err(IpfsError::Cancelled),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_pinned() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// How `cid` is pinned on the daemon (`None`: not pinned, or only indirectly).
    pub async fn pin_ls_cid(&self, cid: &Cid) -> Result<Option<PinMode>, IpfsError> {
        #[derive(Deserialize)]
        struct PinLs {
            #[serde(rename = "Keys")]
            keys: HashMap<String, PinLsType>,
        }
        let arg = cid.to_string();
        match self.call::<PinLs>("pin/ls", &[("arg", &arg)]).await {
            Ok(ls) => Ok(ls.keys.values().find_map(|t| mode_of(&t.pin_type))),
            Err(e) if e.is_not_pinned() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The daemon's pins of type `t`, one JSON object a line as they stream.
    async fn pin_ls_stream(&self, t: &str) -> Result<NdjsonReader, IpfsError> {
        let resp = self
            .post(
                "pin/ls",
                &[("type", t), ("stream", "true")],
                Some(self.request_timeout),
            )
            .await?;
        Ok(NdjsonReader::new(resp))
    }

    /// Every recursive and direct pin on the daemon, streamed and kept as a
    /// compact set (never the listing itself).
    pub async fn pin_ls(&self) -> Result<DaemonPins, IpfsError> {
        #[derive(Deserialize)]
        struct Item<'a> {
            #[serde(rename = "Cid", borrow)]
            cid: std::borrow::Cow<'a, str>,
            #[serde(rename = "Type", borrow)]
            pin_type: std::borrow::Cow<'a, str>,
        }
        let mut pins = DaemonPins::default();
        for t in ["recursive", "direct"] {
            let mut reader = self.pin_ls_stream(t).await?;
            while let Some(line) = reader.next_line().await.map_err(|e| self.ndjson_err(e))? {
                let item: Item = serde_json::from_slice(&line)
                    .map_err(|e| IpfsError::Protocol(format!("pin/ls: {e}")))?;
                if let (Ok(cid), Some(mode)) = (item.cid.parse::<Cid>(), mode_of(&item.pin_type)) {
                    // A CIDv1 the daemon prints in another base still names the same pin.
                    pins.insert(&cid, mode);
                }
            }
        }
        pins.seal();
        Ok(pins)
    }

    /// How many recursive and direct pins the daemon holds, counted as the
    /// listing streams by: nothing of it is kept, and a line is parsed only
    /// when it is not in the daemon's usual form. For the `numpin` metric and
    /// the `pins_ipfs_pins` gauge, at millions of pins.
    pub async fn pin_count(&self) -> Result<u64, IpfsError> {
        let mut n = 0u64;
        for (t, usual) in [
            ("recursive", &b"\"Type\":\"recursive\""[..]),
            ("direct", &b"\"Type\":\"direct\""[..]),
        ] {
            let mut reader = self.pin_ls_stream(t).await?;
            while let Some(line) = reader.next_line().await.map_err(|e| self.ndjson_err(e))? {
                if memchr::memmem::find(&line, usual).is_some() {
                    n += 1;
                    continue;
                }
                #[derive(Deserialize)]
                struct Item<'a> {
                    #[serde(rename = "Type", borrow)]
                    pin_type: std::borrow::Cow<'a, str>,
                }
                let item: Item = serde_json::from_slice(&line)
                    .map_err(|e| IpfsError::Protocol(format!("pin/ls: {e}")))?;
                if mode_of(&item.pin_type).is_some() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[derive(Deserialize)]
struct PinLsType {
    #[serde(rename = "Type")]
    pin_type: String,
}

fn mode_of(t: &str) -> Option<PinMode> {
    match t {
        "recursive" => Some(PinMode::Recursive),
        "direct" => Some(PinMode::Direct),
        _ => None,
    }
}

/// kubo sends numbers; some daemons (js-ipfs) send them as strings.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Text(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

fn nonzero(d: Duration) -> Duration {
    if d.is_zero() { Duration::MAX / 4 } else { d }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod daemon_pins_tests {
    use super::*;

    /// A daemon whose `pin/ls?type=T&stream=true` answers `listing(T)`, one
    /// connection at a time.
    async fn listing_daemon(listing: fn(&str) -> String) -> IpfsConnector {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let t = if head.contains("type=direct") {
                    "direct"
                } else {
                    "recursive"
                };
                let body = listing(t);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let cfg = crate::config::IpfsHttpConfig {
            node_multiaddress: format!("/ip4/127.0.0.1/tcp/{port}"),
            ..Default::default()
        };
        IpfsConnector::new(&cfg).unwrap()
    }

    /// The count streams the listings without keeping them and agrees with the
    /// full listing, lines in another JSON layout and pins of other kinds
    /// included.
    #[tokio::test]
    async fn pin_count_agrees_with_the_listing() {
        fn listing(t: &str) -> String {
            let cid = |i: u32| {
                let mut b = vec![0x01, 0x55, 0x00, 0x04];
                b.extend_from_slice(&i.to_be_bytes());
                Cid::from_bytes(&b).unwrap().to_string()
            };
            let mut out = String::new();
            let (from, n) = if t == "direct" { (1000, 7) } else { (0, 300) };
            for i in from..from + n {
                if i % 10 == 3 {
                    // Spaced as another daemon might write it.
                    out.push_str(&format!(
                        "{{ \"Cid\": \"{}\", \"Type\": \"{t}\" }}\n",
                        cid(i)
                    ));
                } else {
                    out.push_str(&format!(
                        "{{\"Cid\":\"{}\",\"Type\":\"{t}\",\"Name\":\"\"}}\n",
                        cid(i)
                    ));
                }
            }
            // Never counted: not a recursive or direct pin.
            out.push_str(&format!(
                "{{\"Cid\":\"{}\",\"Type\":\"indirect\"}}\n\n",
                cid(5000)
            ));
            out
        }
        let ipfs = listing_daemon(listing).await;
        assert_eq!(ipfs.pin_count().await.unwrap(), 307);
        assert_eq!(ipfs.pin_ls().await.unwrap().len(), 307);
    }

    /// A line that is not JSON is an error, not a pin.
    #[tokio::test]
    async fn pin_count_refuses_a_malformed_listing() {
        let ipfs = listing_daemon(|_| "{\"Cid\":\"x\"}\nnot json\n".to_string()).await;
        assert!(matches!(
            ipfs.pin_count().await,
            Err(IpfsError::Protocol(_))
        ));
    }

    /// Large sets look pins up through the bucket index, small ones by a plain
    /// search; both find exactly what was inserted.
    #[test]
    fn lookups_with_and_without_the_index() {
        let cid = |i: u32| {
            let mut b = vec![0x01, 0x55, 0x00, 0x04];
            b.extend_from_slice(&i.to_be_bytes());
            Cid::from_bytes(&b).unwrap()
        };
        for n in [10u32, 70_000] {
            let pins: DaemonPins = (0..n)
                .map(|i| {
                    let mode = if i % 50 == 0 {
                        PinMode::Direct
                    } else {
                        PinMode::Recursive
                    };
                    (cid(i * 2), mode)
                })
                .collect();
            assert_eq!(pins.index.is_empty(), n < 1 << 16);
            for i in (0..n).step_by(1 + n as usize / 3000) {
                let want = if i % 50 == 0 {
                    PinMode::Direct
                } else {
                    PinMode::Recursive
                };
                assert_eq!(pins.get(&cid(i * 2)), Some(want), "{i}");
                assert_eq!(pins.get(&cid(i * 2 + 1)), None, "{i}");
            }
            assert_eq!(pins.len(), n as usize);
        }
    }
}
