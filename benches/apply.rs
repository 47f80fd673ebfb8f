//! The cost of exactly-once in the Raft state machine's apply
//! (`scripts/bench.sh apply`, or
//! `cargo bench --features fake-daemon --bench apply`): new pins applied in
//! entries of 1 and of 256 requests, each shape three ways side by side in one
//! run: without request IDs (nothing recorded: the apply of before request IDs
//! counted), with IDs (each looked up and recorded, the oldest records pruned),
//! and with IDs numbered per entry and a condition (as the cluster writes pins
//! now: one record per entry). Best of three rounds, interleaved; ratios
//! against the run without IDs. On fjall (the default store), then redb.

use std::time::Duration;

use ipfs_cluster::raft::bench::{Kind, apply};
use ipfs_cluster::store::Backend;

/// Records kept: smaller than the daemon's 2^19 so that most of the run is in
/// the steady state where every apply also prunes as many records as it adds.
const WINDOW: u64 = 1 << 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    // (label, apply calls, entries per call, requests per entry)
    let shapes: &[(&str, u64, u64, u64)] = if smoke {
        &[
            ("1 request/entry", 20, 1, 1),
            ("256 requests/entry", 4, 4, 256),
        ]
    } else {
        &[
            ("1 request/entry, 1 entry/call", 3_000, 1, 1),
            ("256 requests/entry, 4 entries/call", 300, 4, 256),
        ]
    };
    let kinds = [Kind::NoId, Kind::Id, Kind::IdAndCondition];
    // The default store first.
    for backend in [Backend::Fjall, Backend::Redb] {
        println!("apply: new pins, {backend:?}, request records kept for {WINDOW} requests");
        for &(label, calls, entries, per_entry) in shapes {
            let n = calls * entries * per_entry;
            let mut best = [Duration::MAX; 3];
            for _round in 0..if smoke { 1 } else { 3 } {
                for (k, kind) in kinds.iter().enumerate() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let t = apply(
                        dir.path(),
                        backend,
                        *kind,
                        WINDOW,
                        calls,
                        entries,
                        per_entry,
                    )
                    .await
                    .expect("apply");
                    best[k] = best[k].min(t);
                }
            }
            println!("{label}: {n} requests");
            for (k, kind) in kinds.iter().enumerate() {
                let t = best[k].as_secs_f64();
                println!(
                    "  {:<16} {:>10.0} requests/s  {:>7.2} µs/request  ratio {:.2}",
                    format!("{kind:?}"),
                    n as f64 / t,
                    t * 1e6 / n as f64,
                    t / best[0].as_secs_f64()
                );
            }
        }
    }
}
