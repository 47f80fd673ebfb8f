#!/usr/bin/env bash
# Chaos run (not part of the test suite): release peers, each before a fake
# kubo daemon (scripts/fake_daemon.py), take pins and unpins from concurrent
# clients through the REST API and the proxies while peers, often the leader,
# are killed with SIGKILL and restarted, or paused with SIGSTOP. At the end every
# peer must hold the same pinset, every acknowledged pin must be in it and no
# acknowledged unpin undone. Prints operations, errors, kills, pauses, leader
# changes and the longest time no write was acknowledged; exits 1 on a failure.
#
# Settings (environment):
#   CHAOS_SECONDS  length of the chaos phase (default 300)
#   CHAOS_PEERS    peers, 3 to 5 (default 3)
#   CHAOS_CLIENTS  concurrent clients (default 64)
#   CHAOS_PORT     first of the ports used, 4 per peer (default 41000)
#   CHAOS_SEED     random seed (default: the time)
#   CHAOS_KEEP     keep the work folder (peer logs) when set
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
cargo build --release --bins -q
exec python3 scripts/chaos.py "$CARGO_TARGET_DIR/release"
