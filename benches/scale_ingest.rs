//! Ingest at scale, next to floors measured in the same run
//! (`scripts/bench.sh scale-ingest`, or
//! `cargo bench --features fake-daemon --bench scale_ingest -- [options]`):
//!
//! - 3 release peers before kubo-shaped fake daemons (in this process); unique
//!   CIDv1 (raw, sha2-256) pinned through REST `POST /pins/{cid}` and the proxy's
//!   `pin/add` over 64 keep-alive connections spread over the peers, and over
//!   one connection to each peer in turn (the leader, and followers that
//!   forward): pins/s and p50 latency;
//! - `state import` of `--import` pins (1,000,000) into a new peer, and its start
//!   to ready;
//! - floors: the raw store writing the same pins (durable batches), with ratios.
//!
//! `--preload <n>` starts the 3 peers on a pinset of `n` pins (one export
//! imported by each, the daemons already holding them, 15 s to settle before
//! the first case): what ingest costs where the pinset is large.
//!
//! `--before <ipfs-cluster-service>` runs the same cases with another build (the
//! one before a change) and prints its figures and the ratios beside. The two
//! builds run in the order after, before, before, after, and each build's
//! figures are those of its two runs together, so that a drift of the
//! machine's load over the block weighs on both. Each cluster meets fake
//! daemons that hold only the preloaded pinset (until 2026-12-07 they kept
//! every earlier cluster's pins, which each later cluster's trackers listed
//! and compared at start: that is what made a second cluster slower than the
//! first). `--rounds <n>` runs that block n times and prints each round's
//! after/before ratios (rate, CPU a pin) beside the pooled figures: on this
//! shared machine a build against itself came out 0.95–1.06x pooled and
//! 0.88–1.08x round by round in two rounds (0.66–1.13x before the daemons
//! were reset), so a difference smaller than the spread between rounds is not
//! one. Each ingest
//! case runs for `--pins` pins or `--secs` seconds, whichever comes first. Without
//! `--bench` (`cargo test --all-targets --features fake-daemon`) a smoke pass
//! with a few hundred pins checks that it still works.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ipfs_cluster::ipfs::fake::{FakeDaemon, FakeState};
use ipfs_cluster::state::PinState;
use ipfs_cluster::store::{self, Backend};
use ipfs_cluster::types::{Cid, Pin, PinOptions};
use serde_json::Value;
use sha2::Digest;

struct Opts {
    pins: u64,
    secs: u64,
    import: u64,
    /// Pins the cluster holds before ingest starts.
    preload: u64,
    before: Option<PathBuf>,
    /// With a before: how many times the after, before, before, after block runs.
    rounds: u64,
    after: PathBuf,
    conns: Vec<usize>,
    /// Stores of the 3-peer ingest, each measured in turn (`None`: the default).
    stores: Vec<Option<Backend>>,
    smoke: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let val = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, default: u64| {
        val(name)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} wants a number"))
            })
            .unwrap_or(default)
    };
    Opts {
        pins: num("--pins", if smoke { 200 } else { 50_000 }),
        secs: num("--secs", if smoke { 20 } else { 10 }),
        import: num("--import", if smoke { 2_000 } else { 1_000_000 }),
        preload: num("--preload", 0),
        before: val("--before").map(PathBuf::from),
        rounds: num("--rounds", 1).max(1),
        after: PathBuf::from(env!("CARGO_BIN_EXE_ipfs-cluster-service")),
        conns: val("--conns")
            .map(|v| {
                v.split(',')
                    .map(|c| c.parse().expect("--conns 1,64"))
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 64]),
        stores: val("--datastore")
            .map(|v| {
                v.split(',')
                    .map(|s| match s {
                        "sled" => Some(Backend::Sled),
                        "redb" => Some(Backend::Redb),
                        "fjall" => Some(Backend::Fjall),
                        _ => panic!("--datastore sled,redb,fjall"),
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![None]),
        smoke,
    }
}

/// A unique CIDv1 (raw, sha2-256) for `n`, salted per run.
fn cid_of(salt: u64, n: u64) -> Cid {
    let mut h = sha2::Sha256::new();
    h.update(salt.to_be_bytes());
    h.update(n.to_be_bytes());
    let digest = h.finalize();
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, &digest).expect("a sha2-256 digest");
    Cid(cid::Cid::new_v1(0x55, mh))
}

#[path = "../tests/common/ports.rs"]
mod ports;
use ports::free_port;

struct Peer {
    bin: PathBuf,
    dir: PathBuf,
    node: String,
    rest: u16,
    proxy: u16,
    cluster: u16,
    child: Option<Child>,
}

impl Peer {
    fn init(bin: &Path, dir: &Path, node: &str, extra: &[&str]) -> Peer {
        let st = Command::new(bin)
            .args(["--config", &dir.to_string_lossy(), "init", "--force"])
            .args(extra)
            .stdout(Stdio::null())
            .status()
            .expect("init");
        assert!(st.success(), "init failed");
        Peer {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            node: node.to_string(),
            rest: free_port(),
            proxy: free_port(),
            cluster: free_port(),
            child: None,
        }
    }

    fn config(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("service.json")).expect("config"),
        )
        .expect("config json")
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut v = self.config();
        f(&mut v);
        std::fs::write(self.dir.join("service.json"), v.to_string()).expect("write config");
    }

    fn id(&self) -> String {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("identity.json")).expect("identity"),
        )
        .expect("identity json");
        v["id"].as_str().expect("id").to_string()
    }

    fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.cluster, self.id())
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--config", &self.dir.to_string_lossy(), "daemon"])
            .env(
                "CLUSTER_LISTENMULTIADDRESS",
                format!("/ip4/127.0.0.1/tcp/{}", self.cluster),
            )
            .env("CLUSTER_IPFSHTTP_NODEMULTIADDRESS", &self.node)
            .env("CLUSTER_IPFSPROXY_NODEMULTIADDRESS", &self.node)
            .env(
                "CLUSTER_IPFSPROXY_LISTENMULTIADDRESS",
                format!("/ip4/127.0.0.1/tcp/{}", self.proxy),
            )
            .env(
                "CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS",
                format!("/ip4/127.0.0.1/tcp/{}", self.rest),
            )
            .env("IPFS_CLUSTER_LOG_LEVEL", "error")
            .spawn()
            .expect("spawn peer");
        self.child = Some(child);
    }

    fn wait_ready(&mut self, limit: Duration) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("peer exited early: {st}");
            }
            if TcpStream::connect(("127.0.0.1", self.rest)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.proxy)).is_ok()
            {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("peer not ready after {limit:?}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three peers formed with `init --peers`, as the multi-peer tests do, on
/// `store` (`None`: the build's default).
fn start_cluster(
    bin: &Path,
    nodes: &[String],
    root: &Path,
    store: Option<Backend>,
    preload: Option<&Path>,
) -> Vec<Peer> {
    let dirs: Vec<PathBuf> = (0..nodes.len())
        .map(|i| root.join(format!("p{i}")))
        .collect();
    let store_arg = store.map(|s| s.to_string());
    let mut extra: Vec<&str> = Vec::new();
    if let Some(s) = &store_arg {
        extra.extend(["--datastore", s.as_str()]);
    }
    let mut peers: Vec<Peer> = dirs
        .iter()
        .zip(nodes)
        .map(|(d, n)| Peer::init(bin, d, n, &extra))
        .collect();
    let addrs: Vec<String> = peers.iter().map(Peer::addr).collect();
    let secret = peers[0].config()["cluster"]["secret"].clone();
    for (i, p) in peers.iter().enumerate() {
        let others: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        let identity = std::fs::read(p.dir.join("identity.json")).expect("identity");
        let others = others.join(",");
        let mut args = vec!["--peers", others.as_str()];
        args.extend(&extra);
        let _ = Peer::init(bin, &p.dir, &p.node, &args);
        std::fs::write(p.dir.join("identity.json"), identity).expect("identity");
        let secret = secret.clone();
        p.edit(|v| v["cluster"]["secret"] = secret);
        if let Some(export) = preload {
            state_import(bin, &p.dir, export);
        }
    }
    for p in peers.iter_mut() {
        p.spawn();
    }
    for p in peers.iter_mut() {
        p.wait_ready(Duration::from_secs(60));
    }
    peers
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Rest,
    Proxy,
}

struct Figures {
    rate: f64,
    p50_ms: f64,
    done: u64,
    /// CPU time the three peers spent per pin (user + system), in microseconds:
    /// steadier than pins/s on a machine that other work loads.
    cpu_us: f64,
    /// With one connection: pins/s with each peer in turn as the entry point
    /// (the leader commits at once, a follower forwards to it).
    per_peer: Vec<f64>,
    /// CIDs the trackers' `pin/add` and `pin/rm` calls to the daemons carried
    /// on average: how well they group operations.
    cids_a_call: f64,
}

/// User + system CPU time of process `pid` so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Pins unique CIDs through `api` over `conns` keep-alive connections spread
/// over `ports`, until `limit` pins or `secs` seconds.
async fn ingest(
    api: Api,
    ports: &[u16],
    conns: usize,
    salt: u64,
    limit: u64,
    secs: u64,
) -> Figures {
    let next = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let port = ports[c % ports.len()];
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= limit || Instant::now() >= stop_at {
                    break;
                }
                let cid = cid_of(salt, n);
                let uri = match api {
                    Api::Rest => format!("/pins/{cid}"),
                    Api::Proxy => format!("/api/v0/pin/add?arg={cid}"),
                };
                let req = http::Request::post(uri)
                    .header("host", "127.0.0.1")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let t = Instant::now();
                let resp = send.send_request(req).await.expect("send");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(
                    status.is_success(),
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                );
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("connection task"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort();
    Figures {
        cpu_us: 0.0,
        cids_a_call: 0.0,
        per_peer: Vec::new(),
        rate: lat.len() as f64 / elapsed,
        p50_ms: lat
            .get(lat.len() / 2)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0),
        done: lat.len() as u64,
    }
}

/// One connection to each peer in turn, for an equal share of `secs` (and of
/// `limit` pins): a client pointed at any one peer meets the leader or a
/// follower, and which one the election made differs from run to run. The
/// figures are those of all the calls together.
async fn one_conn_each(api: Api, ports: &[u16], salt: u64, limit: u64, secs: u64) -> Figures {
    let n = ports.len() as u64;
    let (mut done, mut elapsed, mut p50s, mut per_peer) = (0, 0.0, Vec::new(), Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let f = ingest(
            api,
            std::slice::from_ref(port),
            1,
            salt + 1 + i as u64,
            limit / n,
            (secs / n).max(2),
        )
        .await;
        done += f.done;
        elapsed += f.done as f64 / f.rate.max(f64::MIN_POSITIVE);
        p50s.push(f.p50_ms);
        per_peer.push(f.rate);
    }
    p50s.sort_by(f64::total_cmp);
    Figures {
        cpu_us: 0.0,
        cids_a_call: 0.0,
        rate: done as f64 / elapsed.max(f64::MIN_POSITIVE),
        p50_ms: p50s.get(p50s.len() / 2).copied().unwrap_or(0.0),
        done,
        per_peer,
    }
}

/// The raw store writing `n` pins durably in batches of `batch`: pins/s.
fn store_floor(backend: Backend, n: u64, batch: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = store::open(dir.path(), backend).expect("open store");
    let tree = db.tree("state").expect("tree");
    let t = Instant::now();
    let mut entries = Vec::with_capacity(batch as usize);
    for i in 0..n {
        let pin = Pin::new(cid_of(7, i), PinOptions::default());
        entries.push(PinState::add_entry(&pin).expect("entry"));
        if entries.len() as u64 == batch || i + 1 == n {
            tree.apply(std::mem::take(&mut entries)).expect("apply");
            tree.flush().expect("flush");
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn default_backend(bin: &Path, root: &Path) -> Backend {
    let d = root.join("probe");
    let p = Peer::init(bin, &d, "/ip4/127.0.0.1/tcp/1", &[]);
    match p.config()["consensus"]["raft"]["datastore"].as_str() {
        Some("sled") => Backend::Sled,
        Some("fjall") => Backend::Fjall,
        _ => Backend::Redb,
    }
}

/// The pinset the 3 peers start on: their export, and what each daemon holds.
struct Preload {
    export: PathBuf,
    pins: HashMap<String, String>,
}

async fn run_ingest(
    bin: &Path,
    o: &Opts,
    nodes: &[String],
    daemons: &[Arc<Mutex<FakeState>>],
    store: Option<Backend>,
    preload: Option<&Preload>,
) -> Vec<(String, Figures)> {
    // Every cluster meets daemons holding only the preloaded pinset: the pins
    // of the clusters before would make this one's trackers list and compare
    // them all at start, in its first case (a first entry peer at half its
    // rate, heartbeats timing out).
    for st in daemons {
        let mut d = st.lock().expect("fake daemon state");
        match preload {
            Some(p) => d.pins.clone_from(&p.pins),
            None => d.pins.clear(),
        }
    }
    let root = tempfile::tempdir().expect("tempdir");
    let (bin2, nodes2, rootp) = (bin.to_path_buf(), nodes.to_vec(), root.path().to_path_buf());
    let pre = preload.map(|p| p.export.clone());
    let peers = tokio::task::spawn_blocking(move || {
        start_cluster(&bin2, &nodes2, &rootp, store, pre.as_deref())
    })
    .await
    .expect("cluster");
    if preload.is_some() {
        // The trackers' first comparison of the pinset with the daemons.
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    let salt: u64 = rand::random();
    let mut offset = 0u64;
    let mut out = Vec::new();

    for api in [Api::Rest, Api::Proxy] {
        for &c in &o.conns {
            let ports: Vec<u16> = peers
                .iter()
                .map(|p| if api == Api::Rest { p.rest } else { p.proxy })
                .collect();
            let pids: Vec<u32> = peers
                .iter()
                .filter_map(|p| p.child.as_ref().map(Child::id))
                .collect();
            let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
            let cpu0 = cpu(&pids);
            let calls = || {
                daemons.iter().fold((0, 0), |(c, a), d| {
                    let d = d.lock().expect("fake daemon state");
                    (c + d.pin_calls, a + d.pin_args)
                })
            };
            let calls0 = calls();
            let mut f = if c == 1 && ports.len() > 1 {
                one_conn_each(api, &ports, salt + offset * 1000, o.pins, o.secs).await
            } else {
                ingest(api, &ports, c, salt + offset * 1000, o.pins, o.secs).await
            };
            f.cpu_us = (cpu(&pids) - cpu0) * 1e6 / f.done.max(1) as f64;
            let calls1 = calls();
            f.cids_a_call = (calls1.1 - calls0.1) as f64 / (calls1.0 - calls0.0).max(1) as f64;
            offset += 1;
            let name = format!(
                "{} {c} conn{}",
                if api == Api::Rest {
                    "REST POST /pins"
                } else {
                    "proxy pin/add"
                },
                store.map(|s| format!(" {s}")).unwrap_or_default()
            );
            out.push((name, f));
        }
    }
    drop(peers);
    out
}

/// The figures of several runs of the same cases, as one run: rates and CPU
/// weighted by pins, p50 and the other averages taken evenly.
fn pooled(runs: Vec<Vec<(String, Figures)>>) -> Vec<(String, Figures)> {
    let mut runs = runs.into_iter();
    let Some(first) = runs.next() else {
        return Vec::new();
    };
    let rest: Vec<Vec<(String, Figures)>> = runs.collect();
    first
        .into_iter()
        .enumerate()
        .map(|(i, (name, x))| {
            let all: Vec<&Figures> = std::iter::once(&x)
                .chain(rest.iter().filter_map(|r| r.get(i).map(|(_, f)| f)))
                .collect();
            let done: u64 = all.iter().map(|f| f.done).sum();
            let secs: f64 = all
                .iter()
                .map(|f| f.done as f64 / f.rate.max(f64::MIN_POSITIVE))
                .sum();
            let cpu: f64 = all.iter().map(|f| f.cpu_us * f.done as f64).sum();
            let n = all.len() as f64;
            let mean = |v: &dyn Fn(&Figures) -> f64| all.iter().map(|f| v(f)).sum::<f64>() / n;
            let f = Figures {
                rate: done as f64 / secs.max(f64::MIN_POSITIVE),
                p50_ms: mean(&|f| f.p50_ms),
                done,
                cpu_us: cpu / done.max(1) as f64,
                per_peer: (0..x.per_peer.len())
                    .map(|p| mean(&|f| f.per_peer.get(p).copied().unwrap_or(0.0)))
                    .collect(),
                cids_a_call: mean(&|f| f.cids_a_call),
            };
            (name, f)
        })
        .collect()
}

/// `state import -f export` into the stopped peer at `dir`.
fn state_import(bin: &Path, dir: &Path, export: &Path) {
    let st = Command::new(bin)
        .args(["--config", &dir.to_string_lossy(), "state", "import", "-f"])
        .arg(export)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("state import");
    assert!(st.success(), "state import failed");
}

/// `state import` of `n` pins into a new single peer, then its start to ready.
fn run_import(bin: &Path, export: &Path, node: &str, init_args: &[String]) -> (f64, f64) {
    let root = tempfile::tempdir().expect("tempdir");
    let args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let mut p = Peer::init(bin, &root.path().join("p"), node, &args);
    let t = Instant::now();
    state_import(bin, &p.dir, export);
    let import_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    p.spawn();
    p.wait_ready(Duration::from_secs(300));
    (import_s, t.elapsed().as_secs_f64())
}

fn write_export(path: &Path, n: u64, salt: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("export file"));
    for i in 0..n {
        let pin = Pin::new(cid_of(salt, i), PinOptions::default());
        serde_json::to_writer(&mut f, &pin).expect("write pin");
        f.write_all(b"\n").expect("write pin");
    }
    f.flush().expect("flush export");
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let daemons = vec![
            FakeDaemon::start().await,
            FakeDaemon::start().await,
            FakeDaemon::start().await,
        ];
        let nodes: Vec<String> = daemons.iter().map(FakeDaemon::multiaddr).collect();
        let states: Vec<_> = daemons.iter().map(|d| d.state.clone()).collect();
        let work = tempfile::tempdir().expect("tempdir");
        let backend = default_backend(&o.after, work.path());
        let floor = store_floor(backend, o.pins, 64);
        let preload = (o.preload > 0).then(|| {
            let export = work.path().join("preload.jsonl");
            write_export(&export, o.preload, 98);
            let pins = (0..o.preload)
                .map(|i| (cid_of(98, i).to_string(), "recursive".to_string()))
                .collect();
            println!("preloaded pinset: {} pins", o.preload);
            Preload { export, pins }
        });
        println!(
            "floor: raw {backend} store, {} pins in durable batches of 64: {floor:.0} pins/s",
            o.pins
        );
        // After and before alternate store by store, so that a change in the
        // machine's load shows on both; with a before, in the order after,
        // before, before, after (see the module's comment).
        let mut after = Vec::new();
        let mut before = o.before.as_ref().map(|_| Vec::new());
        // With a before, each round's after/before ratios per case (rate, CPU
        // a pin): the spread between rounds is the noise one comparison carries.
        let mut ratios: Vec<Vec<(f64, f64)>> = Vec::new();
        for &store in &o.stores {
            let pre = preload.as_ref();
            match (&o.before, before.as_mut()) {
                (Some(b), Some(out)) => {
                    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
                    for _ in 0..o.rounds {
                        let a1 = run_ingest(&o.after, &o, &nodes, &states, store, pre).await;
                        let b1 = run_ingest(b, &o, &nodes, &states, store, pre).await;
                        let b2 = run_ingest(b, &o, &nodes, &states, store, pre).await;
                        let a2 = run_ingest(&o.after, &o, &nodes, &states, store, pre).await;
                        let (round_a, round_b) = (pooled(vec![a1, a2]), pooled(vec![b1, b2]));
                        let at = after.len();
                        ratios.resize_with(at + round_a.len(), Vec::new);
                        for (i, ((_, x), (_, y))) in round_a.iter().zip(&round_b).enumerate() {
                            ratios[at + i].push((
                                x.rate / y.rate.max(f64::MIN_POSITIVE),
                                x.cpu_us / y.cpu_us.max(f64::MIN_POSITIVE),
                            ));
                        }
                        runs_a.push(round_a);
                        runs_b.push(round_b);
                    }
                    after.extend(pooled(runs_a));
                    out.extend(pooled(runs_b));
                }
                _ => after.extend(run_ingest(&o.after, &o, &nodes, &states, store, pre).await),
            }
        }
        println!(
            "{:<31} {:>10} {:>9} {:>8} {:>10} {:>11}",
            "ingest (3 peers)", "pins/s", "p50 ms", "pins", "vs floor", "CPU us/pin"
        );
        for (i, (name, f)) in after.iter().enumerate() {
            let mut line = format!(
                "{name:<31} {:>10.0} {:>9.2} {:>8} {:>9.3}x {:>11.0}",
                f.rate,
                f.p50_ms,
                f.done,
                f.rate / floor,
                f.cpu_us
            );
            if let Some(b) = &before {
                let bf = &b[i].1;
                line.push_str(&format!(
                    "   before {:>7.0}/s p50 {:>6.2} ms {:>5.0} us/pin  after/before {:>5.2}x, CPU {:>5.2}x",
                    bf.rate,
                    bf.p50_ms,
                    bf.cpu_us,
                    f.rate / bf.rate,
                    f.cpu_us / bf.cpu_us
                ));
            }
            println!("{line}");
            if let Some(r) = ratios.get(i).filter(|r| r.len() > 1) {
                let show = |pick: fn(&(f64, f64)) -> f64| {
                    let mut v: Vec<f64> = r.iter().map(pick).collect();
                    let each = v.iter().map(|x| format!("{x:.2}x")).collect::<Vec<_>>();
                    v.sort_by(f64::total_cmp);
                    format!("{} (median {:.2}x)", each.join(", "), v[v.len() / 2])
                };
                println!(
                    "{:<31} after/before by round: rate {}; CPU a pin {}",
                    "",
                    show(|x| x.0),
                    show(|x| x.1)
                );
            }
            println!(
                "{:<31} daemon calls carried {:.1} CIDs each{}",
                "",
                f.cids_a_call,
                before
                    .as_ref()
                    .map(|b| format!(" (before {:.1})", b[i].1.cids_a_call))
                    .unwrap_or_default()
            );
            if !f.per_peer.is_empty() {
                let rates = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
                let mut detail = format!("{:<31} entry peer by peer: {} pins/s", "", rates(&f.per_peer));
                if let Some(b) = &before {
                    detail.push_str(&format!("; before {}", rates(&b[i].1.per_peer)));
                }
                println!("{detail}");
            }
        }

        let export = work.path().join("export.jsonl");
        write_export(&export, o.import, 99);
        // The default store, then redb when it is not the default (the leaner
        // store for large pinsets, chosen with `init --datastore redb`).
        let mut stores = vec![backend];
        if backend != Backend::Redb {
            stores.push(Backend::Redb);
        }
        for store in stores {
            let import_floor = store_floor(store, o.import, 10_000);
            let args: Vec<String> = if store == backend {
                Vec::new()
            } else {
                vec!["--datastore".into(), store.to_string()]
            };
            let node = nodes[0].clone();
            let (bin, exp, a) = (o.after.clone(), export.clone(), args.clone());
            let (imp, start) =
                tokio::task::spawn_blocking(move || run_import(&bin, &exp, &node, &a))
                    .await
                    .expect("import");
            let floor_s = o.import as f64 / import_floor;
            println!(
                "state import of {} pins ({store}): {imp:.2} s (raw store floor {floor_s:.2} s, {:.1}x); start to ready {start:.2} s",
                o.import,
                imp / floor_s
            );
            if let Some(b) = &o.before {
                let (bin, exp, node) = (b.clone(), export.clone(), nodes[0].clone());
                let (bimp, bstart) =
                    tokio::task::spawn_blocking(move || run_import(&bin, &exp, &node, &args))
                        .await
                        .expect("import");
                println!(
                    "  before: import {bimp:.2} s, start to ready {bstart:.2} s; after/before import {:.2}x, start {:.2}x",
                    imp / bimp,
                    start / bstart
                );
            }
        }
        if o.smoke {
            assert!(after.iter().all(|(_, f)| f.done > 0));
        }
        for d in daemons {
            d.stop().await;
        }
    });
}
