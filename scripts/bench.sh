#!/usr/bin/env bash
# Benchmarks (not part of the test suite): memory and speed targets measured side
# by side in one run.
#   - status of 100,000 pins streamed through GET /pins: peer RSS growth (< 64 MiB)
#   - sled against redb as the Raft store
#   - a 1 GiB add through the proxy and through the REST API: peer RSS growth (< 32 MiB)
#   - the proxy against the daemon: a 1 GiB cat and 500 small calls
# `scripts/bench.sh scale-ingest [options]` runs only the ingest at scale
# (benches/scale_ingest.rs): 3 release peers before fake daemons, REST and proxy
# pins/s and p50 at 1 and 64 connections, `state import` of 1,000,000 pins and
# start to ready, each next to a raw-store floor measured in the same run.
# Options: --pins N --secs S --import N --conns 1,64 --before <old service binary>.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
if [[ "${1:-}" == "scale-ingest" ]]; then
  shift
  exec cargo bench --features fake-daemon --bench scale_ingest -- "$@"
fi
cargo test --release --lib status_of_100k_pins -- --ignored --nocapture 2>&1 |
  grep -E "pins committed|streamed in|test result|panicked"

# - the Raft stores, sled against redb: log appends, pin writes, scans, reads,
#   removals, disk and memory, with the redb/sled ratio of each
cargo bench --bench store 2>&1 | grep -vE "^ *(Compiling|Finished|Running)"

# - a 1 GiB add streamed through the proxy: peer RSS growth (< 32 MiB)
cargo build --release --bins -q
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
trap 'kill "${PEER:-0}" 2>/dev/null || true; bash scripts/ipfs-daemon.sh stop "$WORK/ipfs" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(port); PROXY=$(port); REST=$(port); P2P=$(port)
bash scripts/ipfs-daemon.sh start "$WORK/ipfs" "$API" >/dev/null 2>&1
"$BIN/ipfs-cluster-service" --config "$WORK/c" init >/dev/null
CLUSTER_LISTENMULTIADDRESS=/ip4/127.0.0.1/tcp/$P2P \
CLUSTER_IPFSHTTP_NODEMULTIADDRESS=/ip4/127.0.0.1/tcp/$API \
CLUSTER_IPFSPROXY_NODEMULTIADDRESS=/ip4/127.0.0.1/tcp/$API \
CLUSTER_IPFSPROXY_LISTENMULTIADDRESS=/ip4/127.0.0.1/tcp/$PROXY \
CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS=/ip4/127.0.0.1/tcp/$REST \
IPFS_CLUSTER_LOG_LEVEL=warn "$BIN/ipfs-cluster-service" --config "$WORK/c" daemon &
PEER=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$REST/health" >/dev/null && break; sleep 0.1; done
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$WORK/big.bin"
kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PEER/status"; }
# add_1gib LABEL URL FIELD: uploads big.bin to URL, prints the time, whether the
# root (the last object's FIELD) is cluster-pinned, and the peer's RSS growth.
add_1gib() {
  echo 5 >"/proc/$PEER/clear_refs"
  local before start end peak root pinned
  before=$(kb VmRSS)
  start=$(date +%s.%N)
  root=$(curl -sf -X POST -F "file=@$WORK/big.bin;type=application/octet-stream" "$2" |
    tail -n1 | sed -E "s/.*\"$3\":\"([^\"]+)\".*/\\1/")
  end=$(date +%s.%N)
  peak=$(kb VmHWM)
  pinned=$(curl -sf "http://127.0.0.1:$REST/allocations/$root" | grep -c '"cid"' || true)
  echo "1 GiB add through $1 in $(echo "$end - $start" | bc) s, cluster-pinned: $pinned;" \
    "peer RSS $before kB, peak $peak kB, growth $(( (peak - before) / 1024 )) MiB" >&2
  echo "$root"
}
ROOT=$(add_1gib "the proxy" "http://127.0.0.1:$PROXY/api/v0/add" Hash)
# - the same 1 GiB through the REST API's /add (what `ipfs-cluster-ctl add` uses)
add_1gib "the REST API" "http://127.0.0.1:$REST/add?cid-version=1" cid >/dev/null

# - the proxy against the daemon, side by side: reading that 1 GiB back (`cat`)
#   and 500 small calls (`version`) on one kept-alive connection; after a warm-up
#   read, three rounds alternate between the two, and the best of each counts
secs() { curl -s -w '%{time_total}\n' -X POST "$@" | awk '{ t += $1 } END { print t }'; }
small_args() { for _ in $(seq 1 500); do printf -- '-o /dev/null http://127.0.0.1:%s/api/v0/version ' "$1"; done; }
secs -o /dev/null "http://127.0.0.1:$API/api/v0/cat?arg=$ROOT" >/dev/null
for _ in 1 2 3; do
  for target in "direct $API" "proxy $PROXY"; do
    set -- $target
    # shellcheck disable=SC2046 # one argument per word
    echo "$1 $(secs -o /dev/null "http://127.0.0.1:$2/api/v0/cat?arg=$ROOT") $(secs $(small_args "$2"))"
  done
done | awk '
  { if (!($1 in cat) || $2 < cat[$1]) cat[$1] = $2; if (!($1 in small) || $3 < small[$1]) small[$1] = $3 }
  END {
    printf "cat of 1 GiB: direct %.2f s, proxy %.2f s (proxy/direct %.2f)\n", cat["direct"], cat["proxy"], cat["proxy"] / cat["direct"]
    printf "500 version calls: direct %.3f s, proxy %.3f s (proxy/direct %.2f)\n", small["direct"], small["proxy"], small["proxy"] / small["direct"]
  }'
