//! Several peers at scale (`scripts/bench.sh scale-join`): 3 release peers each
//! `state import` the same export of N pins (1,000,000) and are started together
//! several times (every start must succeed); then a 4th, empty peer joins with
//! `--bootstrap` and the time until it holds the whole pinset (caught up by
//! snapshot) and its peak RSS (VmHWM) are printed against the budget
//! (300 B/pin + 64 MiB); then `GET /pins` (global status) over the 4 peers.
//! Each peer has a kubo-shaped fake daemon holding all the pins.
//!
//! `SCALE_PINS` sets N; `SCALE_ROUNDS` the starts of the 3 peers (3);
//! `SCALE_DATASTORE` the store given to `init --datastore` (fjall);
//! `SCALE_BASELINE_BIN=<another ipfs-cluster-service>` runs the same with that
//! build first, for a before/after in one run. Ports: 20 from `JOIN_PORT_BASE`
//! when set, free ones otherwise. Without `--bench` (`cargo test`) a smoke pass
//! with 2,000 pins checks that it still works.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use scale_common::{cid_of, fake_daemon, run, write_export};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod scale_common;

/// Peak RSS allowed while a peer installs the pinset: per pin, plus this.
const RSS_PER_PIN: f64 = 300.0;
const RSS_FIXED_KB: u64 = 64 * 1024;

#[path = "../tests/common/ports.rs"]
mod ports;
use ports::free_port;

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read a JSON file")).expect("parse it")
}

struct Peer {
    bin: PathBuf,
    dir: PathBuf,
    daemon: u16,
    p2p: u16,
    rest: u16,
    proxy: u16,
    child: Option<Child>,
}

impl Peer {
    fn config_arg(&self) -> String {
        self.dir.to_string_lossy().to_string()
    }

    fn id(&self) -> String {
        json_file(&self.dir.join("identity.json"))["id"]
            .as_str()
            .expect("a peer ID")
            .to_string()
    }

    fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p, self.id())
    }

    fn rest_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.rest)
    }

    fn spawn(&mut self, extra: &[&str]) {
        let addr = |p: u16| format!("/ip4/127.0.0.1/tcp/{p}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("peer.log"))
            .expect("peer log");
        let child = Command::new(&self.bin)
            .args(["--config", &self.config_arg(), "daemon"])
            .args(extra)
            .env("CLUSTER_LISTENMULTIADDRESS", addr(self.p2p))
            .env("CLUSTER_IPFSHTTP_NODEMULTIADDRESS", addr(self.daemon))
            .env("CLUSTER_IPFSPROXY_NODEMULTIADDRESS", addr(self.daemon))
            .env("CLUSTER_IPFSPROXY_LISTENMULTIADDRESS", addr(self.proxy))
            .env("CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS", addr(self.rest))
            .env("IPFS_CLUSTER_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a peer");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `Some(status)` once the process has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("peer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
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

/// Waits until every peer answers `GET /health` (a peer serves its API once it
/// has a leader and has caught up; `/id` would also wait for the IPFS daemon,
/// here busy streaming its pin list to every peer); `Err` names a peer that
/// exited instead.
async fn all_ready(
    client: &reqwest::Client,
    peers: &mut [&mut Peer],
    limit: Duration,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut ready = vec![false; peers.len()];
    while ready.iter().any(|r| !r) {
        for (i, p) in peers.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            if let Some(st) = p.exited() {
                return Err(format!("peer {i} exited ({st}):\n{}", p.log_tail()));
            }
            if let Ok(r) = client.get(p.rest_url("/health")).send().await
                && r.status().is_success()
            {
                ready[i] = true;
            }
        }
        if t.elapsed() > limit {
            return Err(format!("not ready after {limit:?}: {ready:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed())
}

/// Lines of a streamed response, and how long it took.
async fn count_lines(client: &reqwest::Client, url: &str) -> (u64, Duration) {
    let t = Instant::now();
    let resp = client.get(url).send().await.expect("request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let mut stream = resp.bytes_stream();
    let mut lines = 0u64;
    while let Some(chunk) = stream.next().await {
        lines += chunk.expect("body").iter().filter(|b| **b == b'\n').count() as u64;
    }
    (lines, t.elapsed())
}

struct Figures {
    import: Duration,
    starts: Vec<Result<Duration, String>>,
    join: Duration,
    /// When the pinset's last pin first answered on the 4th peer.
    last_seen: Duration,
    /// Full listings taken to confirm the pinset (each ~1 s at 1M).
    listings: u32,
    join_hwm_kb: u64,
    status: Duration,
    status_lines: u64,
}

async fn measure(bin: &Path, n: u64, rounds: usize, export: &Path, root: &Path) -> Figures {
    let base: Option<u16> = std::env::var("JOIN_PORT_BASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let port = |o: u16| base.map(|b| b + o).unwrap_or_else(free_port);
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    let datastore = std::env::var("SCALE_DATASTORE").unwrap_or_else(|_| "fjall".into());
    let mut peers: Vec<Peer> = Vec::new();
    for i in 0..4u16 {
        let p = Peer {
            bin: bin.to_path_buf(),
            dir: root.join(format!("p{i}")),
            daemon: port(i * 5),
            p2p: port(i * 5 + 1),
            rest: port(i * 5 + 2),
            proxy: port(i * 5 + 3),
            child: None,
        };
        fake_daemon(n, p.daemon, &tasks, cancel.clone()).await;
        let d = p.config_arg();
        run(
            bin,
            &["--config", &d, "init", "--force", "--datastore", &datastore],
        );
        peers.push(p);
    }
    // The first 3 know each other (init_peerset and peerstore); all share a secret.
    let addrs: Vec<String> = peers.iter().map(Peer::addr).collect();
    for (i, p) in peers.iter().enumerate().take(3) {
        let others: Vec<&str> = (0..3)
            .filter(|j| *j != i)
            .map(|j| addrs[j].as_str())
            .collect();
        let identity = std::fs::read(p.dir.join("identity.json")).expect("identity");
        let d = p.config_arg();
        let peers_arg = others.join(",");
        run(
            bin,
            &[
                "--config",
                &d,
                "init",
                "--force",
                "--datastore",
                &datastore,
                "--peers",
                &peers_arg,
            ],
        );
        std::fs::write(p.dir.join("identity.json"), identity).expect("identity");
    }
    let secret = json_file(&peers[0].dir.join("service.json"))["cluster"]["secret"].clone();
    for p in &peers {
        let file = p.dir.join("service.json");
        let mut cfg = json_file(&file);
        cfg["cluster"]["secret"] = secret.clone();
        std::fs::write(&file, cfg.to_string()).expect("write service.json");
    }
    // The 3 import the same export at once, as operators of 3 machines would.
    let t = Instant::now();
    let imports: Vec<_> = peers[..3]
        .iter()
        .map(|p| {
            let (bin, d, e) = (bin.to_path_buf(), p.config_arg(), export.to_path_buf());
            std::thread::spawn(move || {
                run(
                    &bin,
                    &[
                        "--config",
                        &d,
                        "state",
                        "import",
                        "-f",
                        &e.to_string_lossy(),
                    ],
                )
            })
        })
        .collect();
    for i in imports {
        i.join().expect("an import");
    }
    let import = t.elapsed();

    let client = ipfs_cluster::http::plain_http_client_builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("HTTP client");
    let mut starts = Vec::new();
    for round in 0..rounds {
        for p in peers[..3].iter_mut() {
            p.spawn(&[]);
        }
        let (a, rest) = peers.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        let mut three = [&mut a[0], &mut b[0], &mut c[0]];
        let r = all_ready(&client, &mut three, Duration::from_secs(120)).await;
        eprintln!("  start {}: {r:?}", round + 1);
        let failed = r.is_err();
        starts.push(r);
        if failed || round + 1 < rounds {
            for p in peers[..3].iter_mut() {
                p.stop();
            }
        }
        if failed {
            // Start them once more for the rest of the run.
            for p in peers[..3].iter_mut() {
                p.spawn(&[]);
            }
            let (a, rest) = peers.split_at_mut(1);
            let (b, c) = rest.split_at_mut(1);
            let mut three = [&mut a[0], &mut b[0], &mut c[0]];
            all_ready(&client, &mut three, Duration::from_secs(120))
                .await
                .expect("the 3 peers start");
            break;
        }
    }

    // A new, empty peer joins: it catches up by snapshot.
    let bootstrap = addrs[0].clone();
    let t = Instant::now();
    peers[3].spawn(&["--bootstrap", &bootstrap]);
    let last = cid_of(n - 1);
    let mut last_seen = None;
    let mut listings = 0;
    loop {
        if let Some(st) = peers[3].exited() {
            panic!("the joining peer exited ({st}):\n{}", peers[3].log_tail());
        }
        if let Ok(r) = client
            .get(peers[3].rest_url(&format!("/allocations/{last}")))
            .send()
            .await
            && r.status().is_success()
        {
            last_seen.get_or_insert(t.elapsed());
            // Pins are installed in key order, the last one last: confirm all.
            listings += 1;
            let (lines, _) = count_lines(&client, &peers[3].rest_url("/allocations")).await;
            if lines == n {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no full pinset on the 4th peer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join = t.elapsed();
    let last_seen = last_seen.unwrap_or(join);
    let join_hwm_kb = status_kb(peers[3].pid(), "VmHWM");

    let (status_lines, status) = count_lines(&client, &peers[0].rest_url("/pins")).await;
    for p in peers.iter_mut() {
        p.stop();
    }
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    Figures {
        import,
        starts,
        join,
        last_seen,
        listings,
        join_hwm_kb,
        status,
        status_lines,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn report(label: &str, n: u64, f: &Figures) {
    let budget_kb = (RSS_PER_PIN * n as f64 / 1024.0) as u64 + RSS_FIXED_KB;
    let ok = f.starts.iter().filter(|s| s.is_ok()).count();
    println!("== {label}: 3 peers with {n} pins each, a 4th joining ==");
    println!("import on 3 peers at once: {}", secs(f.import));
    let times: Vec<String> = f
        .starts
        .iter()
        .map(|s| match s {
            Ok(d) => secs(*d),
            Err(_) => "FAILED".into(),
        })
        .collect();
    println!(
        "starts of the 3: {ok}/{} succeeded (all ready in {})",
        f.starts.len(),
        times.join(", ")
    );
    for e in f.starts.iter().filter_map(|s| s.as_ref().err()) {
        println!("  failure: {e}");
    }
    println!(
        "4th peer (--bootstrap) holds all {n} pins after {} ; peak RSS {} MiB = {:.0} B/pin (budget {} MiB: {})",
        secs(f.join),
        f.join_hwm_kb / 1024,
        f.join_hwm_kb as f64 * 1024.0 / n as f64,
        budget_kb / 1024,
        if f.join_hwm_kb <= budget_kb {
            "within"
        } else {
            "OVER"
        }
    );
    println!(
        "  its last pin answered after {}; {} full listing(s) to confirm the pinset",
        secs(f.last_seen),
        f.listings
    );
    println!(
        "GET /pins (global status over 4 peers): {} ; {} pins",
        secs(f.status),
        f.status_lines
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; under `cargo test` this is a smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(d)
    };
    let n = num("SCALE_PINS", if full { 1_000_000 } else { 2_000 }).max(1);
    let rounds = num("SCALE_ROUNDS", if full { 3 } else { 2 }).max(1) as usize;
    let mut bins = vec![(
        "this build".to_string(),
        PathBuf::from(env!("CARGO_BIN_EXE_ipfs-cluster-service")),
    )];
    if let Ok(b) = std::env::var("SCALE_BASELINE_BIN") {
        bins.insert(0, ("baseline".to_string(), PathBuf::from(b)));
    }
    let root = tempfile::tempdir().expect("temp dir");
    let export = root.path().join("export.json");
    write_export(&export, n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut results = Vec::new();
    for (i, (label, bin)) in bins.iter().enumerate() {
        let dir = root.path().join(format!("run{i}"));
        let f = rt.block_on(measure(bin, n, rounds, &export, &dir));
        report(label, n, &f);
        results.push(f);
    }
    if let [before, after] = results.as_slice() {
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!("== before / after ==");
        println!(
            "import x{:.2} faster; join x{:.2} faster; GET /pins x{:.2} faster; join peak RSS {} -> {} MiB",
            r(before.import, after.import),
            r(before.join, after.join),
            r(before.status, after.status),
            before.join_hwm_kb / 1024,
            after.join_hwm_kb / 1024
        );
    }
    let last = results.last().expect("a run");
    assert_eq!(last.status_lines, n, "GET /pins lists every pin");
    assert!(
        last.starts.iter().all(Result::is_ok),
        "every start of the 3 peers succeeds"
    );
}
