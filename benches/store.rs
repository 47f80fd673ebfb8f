//! sled against redb under the peer's own access patterns, side by side in one
//! run: `cargo bench --bench store` (scripts/bench.sh runs it).
//!
//! Each backend runs in a child process of its own, so that one's caches and
//! threads do not weigh on the other's memory figures. Without `--bench` (as
//! `cargo test --all-targets` runs it) a hundredth of the work checks that the
//! benchmark still works.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ipfs_cluster::raft::{LogBatch, LogOp, Request};
use ipfs_cluster::state::codec;
use ipfs_cluster::store::{self, Backend, Tree};
use ipfs_cluster::types::{Cid, Pin, PinOptions};

/// Raft log appends, each made durable before the next (one commit each).
const APPENDS: u64 = 2_000;
/// Pins written to the state, in batches as a follower applies them.
const PINS: u64 = 100_000;
const BATCH: u64 = 100;
/// Pins per batch of removals.
const PURGE_BATCH: u64 = 1_000;

fn pin(i: u64) -> Pin {
    let mut digest = [0xab_u8; 32];
    digest[..8].copy_from_slice(&i.to_be_bytes());
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, &digest).expect("a digest");
    let mut p = Pin::new(Cid(cid::Cid::new_v1(0x70, mh)), PinOptions::default());
    p.options.name = format!("pin {i}");
    p.options.replication_factor_min = -1;
    p.options.replication_factor_max = -1;
    p
}

/// A log entry of one pin, as the peer writes it.
fn entry(i: u64) -> Vec<u8> {
    LogBatch(vec![Request::new(LogOp::Pin(Box::new(pin(i))))]).encode()
}

/// A pin as the state stores it.
fn value(i: u64) -> Vec<u8> {
    codec::encode_pin(&pin(i))
}

/// A state key: a prefix and 36 CID-like bytes.
fn pin_key(i: u64) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(&[0x01, 0x70, 0x12, 0x20]);
    k.extend_from_slice(&i.to_be_bytes());
    k.extend_from_slice(&[0xab; 24]);
    k
}

fn kb(field: &str) -> u64 {
    ipfs_cluster::procfs::status_kb(None, field).unwrap_or(0)
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Runs every measurement on `backend`, on `1/scale` of the full sizes, and
/// prints them as `name value` lines.
fn measure(backend: Backend, scale: u64) {
    let (appends, pins) = (APPENDS / scale, PINS / scale);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let rss_before = kb("VmRSS:");
    let db = store::open(dir.path(), backend).expect("open the store");
    let log = db.tree("raft_log").expect("log tree");
    let state = db.tree("state").expect("state tree");

    let append_s = timed(|| {
        for i in 0..appends {
            log.apply(vec![(i.to_be_bytes().to_vec(), Some(entry(i)))])
                .expect("append");
            log.flush().expect("flush");
        }
    });
    let apply_s = timed(|| {
        for b in 0..pins / BATCH {
            let batch = (b * BATCH..(b + 1) * BATCH)
                .map(|i| (pin_key(i), Some(value(i))))
                .collect();
            apply(&*state, batch);
        }
    });
    let scan_s = timed(|| {
        let n = state.range(b"p/", None).filter(|r| r.is_ok()).count() as u64;
        assert_eq!(n, pins, "scan saw every pin");
    });
    let get_s = timed(|| {
        for i in (0..pins).map(|i| (i * 7_919) % pins) {
            assert!(state.get(&pin_key(i)).expect("get").is_some());
        }
    });
    let disk = disk_bytes(dir.path());
    let purge_s = timed(|| {
        for b in 0..pins / PURGE_BATCH {
            let batch = (b * PURGE_BATCH..(b + 1) * PURGE_BATCH)
                .map(|i| (pin_key(i), None))
                .collect();
            apply(&*state, batch);
        }
    });
    let rss_peak = kb("VmHWM:");
    println!("appends_per_s {:.0}", appends as f64 / append_s);
    println!("pins_applied_per_s {:.0}", pins as f64 / apply_s);
    println!("pins_scanned_per_s {:.0}", pins as f64 / scan_s);
    println!("gets_per_s {:.0}", pins as f64 / get_s);
    println!("pins_removed_per_s {:.0}", pins as f64 / purge_s);
    println!("disk_mib {:.1}", disk as f64 / 1_048_576.0);
    println!(
        "rss_growth_mib {:.1}",
        rss_peak.saturating_sub(rss_before) as f64 / 1024.0
    );
}

/// The pin encodings a state value could use: bytes per pin, encodes and
/// decodes per second.
fn codecs(n: u64) {
    let pins: Vec<Pin> = (0..n).map(pin).collect();
    type Enc = fn(&Pin) -> Vec<u8>;
    type Dec = fn(&[u8]) -> Pin;
    let cases: [(&str, Enc, Dec); 3] = [
        (
            "json",
            |p| serde_json::to_vec(p).expect("json"),
            |b| serde_json::from_slice(b).expect("json"),
        ),
        (
            "cbor (ciborium)",
            |p| {
                let mut v = Vec::new();
                ciborium::into_writer(p, &mut v).expect("cbor");
                v
            },
            |b| ciborium::from_reader(b).expect("cbor"),
        ),
        ("format 1", codec::encode_pin, |b| {
            codec::decode_pin(b).expect("format 1")
        }),
    ];
    println!(
        "pin encodings, {n} pins: {:>10}{:>14}{:>14}",
        "bytes/pin", "encodes/s", "decodes/s"
    );
    for (name, enc, dec) in cases {
        let mut bytes = 0;
        let mut encoded = Vec::with_capacity(pins.len());
        let e = timed(|| {
            for p in &pins {
                let v = enc(p);
                bytes += v.len();
                encoded.push(v);
            }
        });
        let d = timed(|| {
            for v in &encoded {
                std::hint::black_box(dec(v));
            }
        });
        println!(
            "  {name:<27}{:>10}{:>14.0}{:>14.0}",
            bytes as u64 / n,
            n as f64 / e,
            n as f64 / d
        );
    }
}

fn apply(tree: &dyn Tree, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    tree.apply(batch).expect("apply");
    tree.flush().expect("flush");
}

fn run_child(backend: &str, scale: u64) -> Vec<(String, f64)> {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let out = Command::new(exe)
        .args(["--backend", backend, "--scale", &scale.to_string()])
        .output()
        .expect("run a backend's measurements");
    assert!(
        out.status.success(),
        "{backend}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).map(String::as_str)
    };
    if let Some(backend) = value("--backend") {
        let scale = value("--scale").and_then(|s| s.parse().ok()).unwrap_or(1);
        match backend {
            "sled" => measure(Backend::Sled, scale),
            "redb" => measure(Backend::Redb, scale),
            other => panic!("unknown backend {other:?}"),
        }
        return;
    }
    let scale = if args.iter().any(|a| a == "--bench") {
        1
    } else {
        100
    };
    codecs(PINS / scale);
    let sled = run_child("sled", scale);
    let redb = run_child("redb", scale);
    println!(
        "store: {} durable log appends, {} pins in batches of {BATCH}; higher is better except disk and RSS",
        APPENDS / scale,
        PINS / scale
    );
    println!("{:<22}{:>14}{:>14}{:>12}", "", "sled", "redb", "redb/sled");
    for ((name, s), (_, r)) in sled.iter().zip(&redb) {
        let ratio = if *s > 0.0 { r / s } else { f64::NAN };
        println!("{name:<22}{s:>14.1}{r:>14.1}{ratio:>12.2}");
    }
}
