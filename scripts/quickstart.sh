#!/usr/bin/env bash
# The main job: build, start a real IPFS daemon and one cluster peer in front of it,
# add a file through the proxy, pin it through the proxy, and show its status.
#
# Ports (override with env): IPFS_API_PORT=5001, CLUSTER_PROXY_PORT=9095,
# CLUSTER_REST_PORT=9094, CLUSTER_P2P_PORT=9096 (all on 127.0.0.1). State lives in $QUICKSTART_DIR
# (default ~/.cache/ipfs-cluster-rs/quickstart). Pass --keep to leave the daemon
# and the peer running afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
WORK="${QUICKSTART_DIR:-$HOME/.cache/ipfs-cluster-rs/quickstart}"
IPFS_API_PORT="${IPFS_API_PORT:-5001}"
PROXY_PORT="${CLUSTER_PROXY_PORT:-9095}"
REST_PORT="${CLUSTER_REST_PORT:-9094}"
BIN="$CARGO_TARGET_DIR/release"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

for port in "$IPFS_API_PORT" "$PROXY_PORT" "$REST_PORT" "${CLUSTER_P2P_PORT:-9096}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; set IPFS_API_PORT / CLUSTER_PROXY_PORT / CLUSTER_REST_PORT" >&2
    exit 1
  fi
done

say "building (release)"
cargo build --release --bins

mkdir -p "$WORK"
PEER_PID=""
cleanup() {
  if [[ $KEEP == 0 ]]; then
    [[ -n "$PEER_PID" ]] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null || true
    bash scripts/ipfs-daemon.sh stop "$WORK/ipfs" || true
  fi
}
trap cleanup EXIT

say "starting a real IPFS daemon on 127.0.0.1:$IPFS_API_PORT"
bash scripts/ipfs-daemon.sh start "$WORK/ipfs" "$IPFS_API_PORT" >/dev/null

say "initialising a cluster peer in $WORK/cluster"
"$BIN/ipfs-cluster-service" --config "$WORK/cluster" init --force
export CLUSTER_LISTENMULTIADDRESS="/ip4/127.0.0.1/tcp/${CLUSTER_P2P_PORT:-9096}"
export CLUSTER_IPFSHTTP_NODEMULTIADDRESS="/ip4/127.0.0.1/tcp/$IPFS_API_PORT"
export CLUSTER_IPFSPROXY_NODEMULTIADDRESS="/ip4/127.0.0.1/tcp/$IPFS_API_PORT"
export CLUSTER_IPFSPROXY_LISTENMULTIADDRESS="/ip4/127.0.0.1/tcp/$PROXY_PORT"
export CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS="/ip4/127.0.0.1/tcp/$REST_PORT"

say "starting the peer (proxy 127.0.0.1:$PROXY_PORT, REST API 127.0.0.1:$REST_PORT)"
"$BIN/ipfs-cluster-service" --config "$WORK/cluster" daemon >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$REST_PORT/health" >/dev/null && break
  kill -0 "$PEER_PID" 2>/dev/null || { cat "$WORK/peer.log" >&2; exit 1; }
  sleep 0.1
done
CTL=("$BIN/ipfs-cluster-ctl" --host "/ip4/127.0.0.1/tcp/$REST_PORT")
"${CTL[@]}" id

PROXY="http://127.0.0.1:$PROXY_PORT/api/v0"
FILE="$WORK/hello.txt"
echo "hello from ipfs-cluster in Rust, $(date -u +%FT%TZ)" >"$FILE"

say "adding a file through the proxy (passed through to the daemon)"
ADDED=$(curl -sf -X POST -F "file=@$FILE;type=application/octet-stream" "$PROXY/add?pin=false")
echo "$ADDED"
CID=$(printf '%s\n' "$ADDED" | tail -n1 | sed -E 's/.*"Hash":"([^"]+)".*/\1/')

say "pinning $CID through the proxy (a cluster pin)"
curl -sf -X POST "$PROXY/pin/add?arg=$CID"

say "the cluster pinset, through the proxy"
curl -sf -X POST "$PROXY/pin/ls"

say "ipfs-cluster-ctl status $CID"
"${CTL[@]}" status "$CID"
"${CTL[@]}" pin ls

if [[ $KEEP == 1 ]]; then
  say "left running: peer PID $PEER_PID (kill $PEER_PID), daemon: scripts/ipfs-daemon.sh stop $WORK/ipfs"
fi
