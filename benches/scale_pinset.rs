//! The read side at scale (`scripts/bench.sh scale-pinset`): one release peer
//! loaded with N pins (`state import -f` of an upstream-format export) before a
//! kubo-shaped fake daemon that holds them all. Prints import and start times,
//! the listings (`GET /allocations`, proxy `pin/ls` streamed and not, `GET /pins`),
//! point-read latencies at 10k and at N pins (once settled, before any listing,
//! and again after the listings), and RSS per pin, each next to a
//! floor measured in the same run (a raw scan of the same store, an in-process
//! render of the same JSON) with the ratio.
//!
//! `SCALE_PINS` sets N (default 1,000,000); `SCALE_BASELINE_BIN` runs the same
//! measurements with another build of `ipfs-cluster-service` as well, for a
//! before/after (`SCALE_BIN`: that other build alone); `SCALE_DATASTORE`: the
//! store given to `init --datastore`. Ports: free ones below the ephemeral range
//! (`SCALE_PORT_BASE` for 20 fixed ones from there).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipfs_cluster::state::{PageFrom, PinState};
use scale_common::{cid_of, fake_daemon, run, write_export};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[path = "../tests/common/ports.rs"]
mod ports;
use ports::free_port;

mod scale_common;

const SMALL: u64 = 10_000;
const POINT_READS: u64 = 3000;

struct Ports {
    daemon: u16,
    p2p: u16,
    rest: u16,
    proxy: u16,
}

/// The floors, read from the imported store before the peer opens it (CPU time
/// of this process, second of two passes so that the store is warm).
#[derive(Clone, Copy)]
struct Floors {
    scan: Duration,
    render_rest: Duration,
    render_kubo: Duration,
    /// p50 of the store's own point read (`PinState::get`, decoding the pin as
    /// `GET /allocations/{cid}` does) of the CIDs the HTTP point reads ask for.
    get: Duration,
}

/// Which pin the `j`th point read asks for: spread over the whole pinset, in
/// no order.
fn read_index(j: u64, n: u64) -> u64 {
    j.wrapping_mul(2_654_435_761) % n
}

/// CPU time (user + system) of a process so far.
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn floors(dir: &Path, n: u64, reads: u64) -> Floors {
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("service.json")).expect("read service.json"),
    )
    .expect("parse service.json");
    let backend: ipfs_cluster::store::Backend =
        serde_json::from_value(cfg["consensus"]["raft"]["datastore"].clone()).unwrap_or_default();
    let store = ipfs_cluster::store::open(&dir.join(ipfs_cluster::config::RAFT_DIR), backend)
        .expect("open the store");
    let state = PinState::new(store.tree("state").expect("state tree"));
    let mut floors = Floors {
        scan: Duration::ZERO,
        render_rest: Duration::ZERO,
        render_kubo: Duration::ZERO,
        get: Duration::ZERO,
    };
    for _ in 0..2 {
        // A raw scan: every key and value visited under batched read views.
        let t = cpu("self");
        let (mut seen, mut bytes) = (0u64, 0usize);
        let mut from = Some(PageFrom::start());
        while let Some(f) = from {
            from = state
                .scan(&f, 4096, &mut |k, v| {
                    seen += 1;
                    bytes += k.len() + v.len();
                    true
                })
                .expect("scan");
        }
        floors.scan = cpu("self") - t;
        // In-process renders of the same pins, REST NDJSON and kubo's pin/ls
        // stream, with the peer's own decoding and JSON writers.
        let t = cpu("self");
        let mut out = Vec::with_capacity(1 << 20);
        let mut total = 0usize;
        let mut from = Some(PageFrom::start());
        while let Some(f) = from {
            from = state
                .scan(&f, 2048, &mut |k, v| {
                    ipfs_cluster::listing::pin_line(k, v, &mut out).expect("render");
                    true
                })
                .expect("scan");
            total += out.len();
            out.clear();
        }
        floors.render_rest = cpu("self") - t;
        let t = cpu("self");
        let mut from = Some(PageFrom::start());
        while let Some(f) = from {
            from = state
                .scan(&f, 2048, &mut |k, v| {
                    let (depth, _) =
                        ipfs_cluster::state::codec::read_depth_and_name(v).expect("decode");
                    out.extend_from_slice(br#"{"Cid":""#);
                    ipfs_cluster::listing::json::cid_text(&mut out, k).expect("a CID");
                    out.extend_from_slice(b"\",\"Type\":\"");
                    out.extend_from_slice(if depth == 0 { b"direct" } else { b"recursive" });
                    out.extend_from_slice(b"\"}\n");
                    true
                })
                .expect("scan");
            out.clear();
        }
        floors.render_kubo = cpu("self") - t;
        eprintln!("  store: {seen} pins, {bytes} bytes; REST rendering {total} bytes");
    }
    for _ in 0..2 {
        let mut times: Vec<Duration> = (0..reads)
            .map(|j| {
                let cid = cid_of(read_index(j, n));
                let t = Instant::now();
                let pin = state.get(&cid).expect("get");
                let took = t.elapsed();
                assert!(pin.is_some(), "{cid} is in the pinset");
                took
            })
            .collect();
        times.sort();
        floors.get = times[times.len() / 2];
    }
    floors
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A timed request: wall time, the peer's CPU time, bytes, lines.
struct Timed {
    wall: Duration,
    cpu: Duration,
    bytes: usize,
    lines: usize,
    rss_kb: u64,
}

/// Streams a response to its end.
async fn fetch(pid: u32, req: reqwest::RequestBuilder) -> Timed {
    let (t, c) = (Instant::now(), cpu(&pid.to_string()));
    let resp = req.send().await.expect("request");
    let mut stream = resp.bytes_stream();
    let (mut bytes, mut lines) = (0, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("body");
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    Timed {
        wall: t.elapsed(),
        cpu: cpu(&pid.to_string()) - c,
        bytes,
        lines,
        rss_kb: rss_kb(pid),
    }
}

/// A started peer before its fake daemon.
struct Running {
    child: Child,
    pid: u32,
    rest: String,
    proxy: String,
    n: u64,
    started: Instant,
    import: Duration,
    ready: Duration,
    floors: Floors,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

async fn start(
    bin: &str,
    n: u64,
    reads: u64,
    root: &Path,
    ports: &Ports,
    export: &Path,
) -> Running {
    let dir = root.join(format!("peer-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_string_lossy().to_string();
    let mut init = vec!["--config", &d, "init", "--force"];
    let datastore = std::env::var("SCALE_DATASTORE").unwrap_or_default();
    if !datastore.is_empty() {
        init.extend(["--datastore", &datastore]);
    }
    run(bin, &init);
    let export = export.to_string_lossy().to_string();
    let import = run(bin, &["--config", &d, "state", "import", "-f", &export]);
    let floors = floors(&dir, n, reads);

    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    fake_daemon(n, ports.daemon, &tasks, cancel.clone()).await;
    let addr = |p: u16| format!("/ip4/127.0.0.1/tcp/{p}");
    let started = Instant::now();
    let child: Child = Command::new(bin)
        .args(["--config", &d, "daemon"])
        .env("CLUSTER_LISTENMULTIADDRESS", addr(ports.p2p))
        .env("CLUSTER_IPFSHTTP_NODEMULTIADDRESS", addr(ports.daemon))
        .env("CLUSTER_IPFSPROXY_NODEMULTIADDRESS", addr(ports.daemon))
        .env("CLUSTER_IPFSPROXY_LISTENMULTIADDRESS", addr(ports.proxy))
        .env("CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS", addr(ports.rest))
        .env("IPFS_CLUSTER_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("peer.log")).expect("peer log"))
        .spawn()
        .expect("start the peer");
    let mut child = child;
    let rest = format!("http://127.0.0.1:{}", ports.rest);
    let client = ipfs_cluster::http::plain_http_client_builder()
        .build()
        .expect("HTTP client");
    let ready = loop {
        if let Ok(r) = client.get(format!("{rest}/id")).send().await
            && r.status().is_success()
        {
            break started.elapsed();
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("peer.log")).unwrap_or_default();
            panic!("the peer did not start ({exited:?}):\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Running {
        pid: child.id(),
        child,
        rest,
        proxy: format!("http://127.0.0.1:{}/api/v0", ports.proxy),
        n,
        started,
        import,
        ready,
        floors,
        tasks,
        cancel,
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed measurement must not leave the peer behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = self.child.wait();
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

struct Figures {
    import: Duration,
    ready: Duration,
    rss_20s_kb: u64,
    allocations: Timed,
    pin_ls_stream: Timed,
    pin_ls: Timed,
    status: Timed,
    /// p50 at 10k and at N: GET /allocations/{cid}, then pin/ls?arg=; after
    /// the listings.
    p50: [(Duration, Duration); 2],
    /// The same once the peer has settled, before any listing.
    p50_settled: [(Duration, Duration); 2],
    floors: Floors,
    /// The store's own point read at 10k (`floors.get` is at N).
    small_get: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Point reads on both peers, one call to each in turn, so that both see the
/// same load: the machine's noise moves a p50 of a few hundred microseconds by
/// more than the difference measured, and alternating rounds of many calls let
/// a burst of other work land on one peer's round only.
async fn point_reads(small: &Running, big: &Running, reads: u64) -> [(Duration, Duration); 2] {
    let client = ipfs_cluster::http::plain_http_client_builder()
        .build()
        .expect("HTTP client");
    let mut out = [(Duration::ZERO, Duration::ZERO); 2];
    for (k, slot) in out.iter_mut().enumerate() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for j in 0..reads {
            for (peer, times) in [(small, &mut a), (big, &mut b)] {
                let i = read_index(j, peer.n);
                let req = if k == 0 {
                    client.get(format!("{}/allocations/{}", peer.rest, cid_of(i)))
                } else {
                    client.post(format!("{}/pin/ls?arg={}", peer.proxy, cid_of(i)))
                };
                let t = Instant::now();
                let r = req.send().await.expect("point read");
                assert!(r.status().is_success());
                r.bytes().await.expect("body");
                times.push(t.elapsed());
            }
        }
        a.sort();
        b.sort();
        *slot = (a[a.len() / 2], b[b.len() / 2]);
    }
    out
}

async fn measure(bin: &str, n: u64, reads: u64, root: &Path, exports: (&Path, &Path)) -> Figures {
    let base: Option<u16> = std::env::var("SCALE_PORT_BASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let port = |k: u16| base.map(|b| b + k).unwrap_or_else(free_port);
    let ports = |o: u16| Ports {
        daemon: port(o + 1),
        p2p: port(o + 2),
        rest: port(o + 3),
        proxy: port(o + 4),
    };
    let small = start(bin, SMALL.min(n), reads, root, &ports(0), exports.0).await;
    let big = start(bin, n, reads, root, &ports(10), exports.1).await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(big.started.elapsed())).await;
    let rss_20s_kb = rss_kb(big.pid);
    let p50_settled = point_reads(&small, &big, reads).await;
    let client = ipfs_cluster::http::plain_http_client_builder()
        .build()
        .expect("HTTP client");
    let (rest, proxy, pid) = (&big.rest, &big.proxy, big.pid);
    let allocations = fetch(pid, client.get(format!("{rest}/allocations"))).await;
    assert_eq!(allocations.lines as u64, n, "/allocations");
    let pin_ls_stream = fetch(
        pid,
        client.post(format!("{proxy}/pin/ls?stream=true&type=recursive")),
    )
    .await;
    assert_eq!(pin_ls_stream.lines as u64, n, "pin/ls?stream=true");
    let pin_ls = fetch(pid, client.post(format!("{proxy}/pin/ls"))).await;
    assert!(
        pin_ls.bytes as u64 > n * 40,
        "pin/ls: {} bytes",
        pin_ls.bytes
    );
    let status = fetch(pid, client.get(format!("{rest}/pins"))).await;
    assert_eq!(status.lines as u64, n, "GET /pins");
    let p50 = point_reads(&small, &big, reads).await;
    let figures = Figures {
        import: big.import,
        ready: big.ready,
        rss_20s_kb,
        allocations,
        pin_ls_stream,
        pin_ls,
        status,
        p50,
        p50_settled,
        floors: big.floors,
        small_get: small.floors.get,
    };
    small.stop().await;
    big.stop().await;
    figures
}

fn report(label: &str, n: u64, big: &Figures) {
    let f = &big.floors;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    let per_pin = |kb: u64| kb as f64 * 1024.0 / n as f64;
    println!("== {label}: one peer, {n} pins (wall time; the peer's CPU time; its RSS after) ==");
    println!("import:               {}", secs(big.import));
    println!("start to ready:       {}", secs(big.ready));
    println!(
        "floors (CPU): raw store scan {} ; REST render {} ; kubo render {}",
        secs(f.scan),
        secs(f.render_rest),
        secs(f.render_kubo)
    );
    for (name, t, floor) in [
        ("GET /allocations", &big.allocations, f.render_rest),
        ("pin/ls?stream=true", &big.pin_ls_stream, f.render_kubo),
        ("pin/ls (one object)", &big.pin_ls, f.render_kubo),
        ("GET /pins (status)", &big.status, f.render_rest),
    ] {
        println!(
            "{name:<21} {} ; CPU {} (x{:.2} its render floor, x{:.2} the scan floor) ; {} lines, {} MB ; RSS {} MiB",
            secs(t.wall),
            secs(t.cpu),
            ratio(t.cpu, floor),
            ratio(t.cpu, f.scan),
            t.lines,
            t.bytes / 1_000_000,
            t.rss_kb / 1024
        );
    }
    for (when, p50) in [
        ("before the listings", big.p50_settled),
        ("after the listings", big.p50),
    ] {
        for (name, (a, b)) in ["GET /allocations/{cid}", "pin/ls?arg="].iter().zip(p50) {
            println!(
                "p50 {name:<22} {:.3} ms at {SMALL}, {:.3} ms at {n} (x{:.2}), {when}",
                a.as_secs_f64() * 1e3,
                b.as_secs_f64() * 1e3,
                ratio(b, a)
            );
        }
    }
    println!(
        "floor: the store's own point read (in-process, same CIDs) p50 {:.1} us at {SMALL}, {:.1} us at {n}: {:.1} us of the difference",
        big.small_get.as_secs_f64() * 1e6,
        f.get.as_secs_f64() * 1e6,
        (f.get.as_secs_f64() - big.small_get.as_secs_f64()) * 1e6
    );
    println!(
        "RSS 20 s after start: {} MiB = {:.0} B/pin; after the listings {} MiB = {:.0} B/pin",
        big.rss_20s_kb / 1024,
        per_pin(big.rss_20s_kb),
        big.status.rss_kb / 1024,
        per_pin(big.status.rss_kb),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; under `cargo test` this is a 1/100 smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("SCALE_PINS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 10_000 });
    let bin = env!("CARGO_BIN_EXE_ipfs-cluster-service").to_string();
    // SCALE_BIN measures another build alone (e.g. the one before a change).
    let mut bins = match std::env::var("SCALE_BIN") {
        Ok(b) => vec![(b.clone(), b)],
        Err(_) => vec![("this build".to_string(), bin)],
    };
    if let Ok(b) = std::env::var("SCALE_BASELINE_BIN") {
        bins.insert(0, ("baseline".to_string(), b));
    }
    let root = tempfile::tempdir().expect("temp dir");
    let small_export = root.path().join("small.json");
    let big_export = root.path().join("big.json");
    let t = Instant::now();
    write_export(&small_export, SMALL.min(n));
    write_export(&big_export, n);
    eprintln!("exports written in {}", secs(t.elapsed()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut results = Vec::new();
    for (label, bin) in &bins {
        eprintln!("{label}: {SMALL} and {n} pins");
        let exports = (small_export.as_path(), big_export.as_path());
        // The smoke pass only checks that the reads work.
        let reads = if full { POINT_READS } else { POINT_READS / 10 };
        let big = rt.block_on(measure(bin, n, reads, root.path(), exports));
        report(label, n, &big);
        results.push((label.clone(), big));
    }
    if let [(_, before), (_, after)] = results.as_slice() {
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!("== before / after ==");
        for (name, a, b) in [
            ("import", before.import, after.import),
            ("start to ready", before.ready, after.ready),
            (
                "GET /allocations",
                before.allocations.wall,
                after.allocations.wall,
            ),
            (
                "pin/ls?stream=true",
                before.pin_ls_stream.wall,
                after.pin_ls_stream.wall,
            ),
            ("pin/ls", before.pin_ls.wall, after.pin_ls.wall),
            ("GET /pins", before.status.wall, after.status.wall),
            (
                "GET /allocations, peer CPU",
                before.allocations.cpu,
                after.allocations.cpu,
            ),
            (
                "pin/ls?stream=true, peer CPU",
                before.pin_ls_stream.cpu,
                after.pin_ls_stream.cpu,
            ),
            ("pin/ls, peer CPU", before.pin_ls.cpu, after.pin_ls.cpu),
            ("GET /pins, peer CPU", before.status.cpu, after.status.cpu),
        ] {
            println!(
                "{name}: {} -> {} (x{:.1} faster)",
                secs(a),
                secs(b),
                r(a, b)
            );
        }
        println!(
            "RSS 20 s after start: {} MiB -> {} MiB; after the listings {} MiB -> {} MiB",
            before.rss_20s_kb / 1024,
            after.rss_20s_kb / 1024,
            before.status.rss_kb / 1024,
            after.status.rss_kb / 1024
        );
    }
}
