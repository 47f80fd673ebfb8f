#!/usr/bin/env bash
# Benchmarks (not part of the test suite): memory and speed targets measured side
# by side in one run.
#   scripts/bench.sh
#     - status of 100,000 pins streamed through GET /pins: peer RSS growth (< 64 MiB)
#     - sled against redb as the Raft store
#     - a 1 GiB add through the proxy and through the REST API: peer RSS growth (< 32 MiB)
#     - the proxy against the daemon: a 1 GiB cat and 500 small calls
#   scripts/bench.sh proxy
#     - the proxy's pass-through against nginx's proxy_pass and a bare hyper proxy,
#       all in front of one trivial backend (examples/bench-backend.rs), driven by
#       wrk: 1, 32 and 128 connections and a 1 GiB stream with the peer's RSS
#       growth (three interleaved rounds, the stream three times a round; medians,
#       ratios to direct and to nginx)
#     - 500 small calls through the proxy against the real daemon directly
#     PEER_BASE=/path/to/ipfs-cluster-service adds that build's peer as a column
#     ("base"), for a before/after in one run.
#   scripts/bench.sh scale-pinset
#     - one release peer with 1,000,000 imported pins (SCALE_PINS to change;
#       SCALE_BASELINE_BIN=<another ipfs-cluster-service> for a before/after): import,
#       start, listings, status, point reads at 10k and 1M, RSS per pin, each next to
#       a floor measured in the same run.
#   scripts/bench.sh scale-ingest [--pins N --secs S --import N --preload N --conns 1,64 --before BIN --rounds N]
#     - 3 release peers before fake daemons (benches/scale_ingest.rs): REST and proxy
#       pins/s and p50 at 1 and 64 connections, `state import` of 1,000,000 pins and
#       start to ready, each next to a raw-store floor measured in the same run.
#       With --before, the builds run after, before, before, after (each on fake
#       daemons holding only the preloaded pins), each build's figures over its two runs;
#       --rounds N repeats that block and prints each round's ratio.
#   scripts/bench.sh scale-join
#     - 3 release peers importing the same 1,000,000-pin export, started together
#       SCALE_ROUNDS times (3), then a 4th joining with --bootstrap: time until it
#       holds the whole pinset and its peak RSS against 300 B/pin + 64 MiB, then
#       global status (GET /pins) over the 4 (benches/scale_join.rs; SCALE_PINS,
#       SCALE_DATASTORE (redb), SCALE_BASELINE_BIN for a before column,
#       JOIN_PORT_BASE for fixed ports).
#   scripts/bench.sh apply
#     - the Raft state machine's apply of new pins without request IDs, with IDs
#       (exactly-once records) and with IDs and conditions (benches/apply.rs).
#   scripts/bench.sh scale
#     - scale-ingest, then scale-pinset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
MODE="${1:-all}"
case "$MODE" in
  all | proxy) ;;
  apply)
    exec cargo bench --features fake-daemon --bench apply
    ;;
  scale-ingest)
    shift
    exec cargo bench --features fake-daemon --bench scale_ingest -- "$@"
    ;;
  scale)
    cargo bench --features fake-daemon --bench scale_ingest
    cargo bench --bench scale_pinset 2>&1 | grep -vE "^ *(Compiling|Finished|Running)"
    exit
    ;;
  scale-pinset)
    cargo bench --bench scale_pinset 2>&1 | grep -vE "^ *(Compiling|Finished|Running)"
    exit
    ;;
  scale-join)
    cargo bench --bench scale_join 2>&1 | grep -vE "^ *(Compiling|Finished|Running)"
    exit
    ;;
  *) echo "usage: $0 [proxy|apply|scale|scale-ingest|scale-pinset|scale-join]" >&2; exit 2 ;;
esac

BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PEER:-}" "${PIDS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash scripts/ipfs-daemon.sh stop "$WORK/ipfs" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PEER/status"; }
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

API=$(port); PROXY=$(port); REST=$(port); P2P=$(port)
# run_peer BIN DIR PROXY_PORT REST_PORT P2P_PORT NODE_PORT: a release peer, its IPFS
# connector on the real daemon and its proxy in front of 127.0.0.1:NODE_PORT;
# sets RUN_PID.
run_peer() {
  [ -d "$2" ] || "$1" --config "$2" init >/dev/null
  CLUSTER_LISTENMULTIADDRESS=/ip4/127.0.0.1/tcp/$5 \
  CLUSTER_IPFSHTTP_NODEMULTIADDRESS=/ip4/127.0.0.1/tcp/$API \
  CLUSTER_IPFSPROXY_NODEMULTIADDRESS=/ip4/127.0.0.1/tcp/$6 \
  CLUSTER_IPFSPROXY_LISTENMULTIADDRESS=/ip4/127.0.0.1/tcp/$3 \
  CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS=/ip4/127.0.0.1/tcp/$4 \
  IPFS_CLUSTER_LOG_LEVEL=warn "$1" --config "$2" daemon &
  RUN_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$4/health" >/dev/null && break; sleep 0.1; done
}
# start_peer NODE_PORT: this build's peer (PEER) with its proxy on $PROXY.
start_peer() { run_peer "$BIN/ipfs-cluster-service" "$WORK/c" "$PROXY" "$REST" "$P2P" "$1"; PEER=$RUN_PID; }
stop_peer() { kill "$PEER"; wait "$PEER" 2>/dev/null || true; PEER=; }

# vs_daemon API_PORT PROXY_PORT [ROOT]: the proxy against the daemon, side by side:
# reading ROOT back (`cat`, when given) and 500 small calls (`version`) on one
# kept-alive connection; after a warm-up, five rounds alternate between the two,
# and the best of each counts.
vs_daemon() {
  local api="$1" proxy="$2" root="${3:-}"
  secs() { curl -s -w '%{time_total}\n' -X POST "$@" | awk '{ t += $1 } END { print t }'; }
  small_args() { for _ in $(seq 1 500); do printf -- '-o /dev/null http://127.0.0.1:%s/api/v0/version ' "$1"; done; }
  cat_secs() { if [ -n "$root" ]; then secs -o /dev/null "http://127.0.0.1:$1/api/v0/cat?arg=$root"; else echo 0; fi; }
  cat_secs "$api" >/dev/null
  # shellcheck disable=SC2046 # one argument per word
  secs $(small_args "$proxy") >/dev/null
  for _ in 1 2 3 4 5; do
    for target in "direct $api" "proxy $proxy"; do
      set -- $target
      # shellcheck disable=SC2046 # one argument per word
      echo "$1 $(cat_secs "$2") $(secs $(small_args "$2"))"
    done
  done | awk -v cat="$root" '
    { if (!($1 in c) || $2 < c[$1]) c[$1] = $2; if (!($1 in s) || $3 < s[$1]) s[$1] = $3 }
    END {
      if (cat != "") printf "cat of 1 GiB: direct %.2f s, proxy %.2f s (proxy/direct %.2f)\n", c["direct"], c["proxy"], c["proxy"] / c["direct"]
      printf "500 version calls: direct %.3f s, proxy %.3f s (proxy/direct %.2f)\n", s["direct"], s["proxy"], s["proxy"] / s["direct"]
    }'
}

if [ "$MODE" = proxy ]; then
  cargo build --release --bins --example bench-backend -q
  BACKEND=$(port); BARE=$(port); NGINX=$(port); NGINX_DAEMON=$(port)
  "$CARGO_TARGET_DIR/release/examples/bench-backend" serve "127.0.0.1:$BACKEND" & PIDS+=($!)
  "$CARGO_TARGET_DIR/release/examples/bench-backend" proxy "127.0.0.1:$BARE" "127.0.0.1:$BACKEND" & PIDS+=($!)
  declare -A PID_OF=([bare]=$!)
  TARGETS="direct:$BACKEND bare:$BARE"
  if command -v nginx >/dev/null; then
    # As the reference figures: 1 worker, a kept-alive upstream, HTTP/1.1, no buffering.
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid nginx.pid;
error_log error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path body; proxy_temp_path proxy;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; }
  }
  # The same, in front of the real daemon (for the paired calls at the end).
  upstream daemon { server 127.0.0.1:$API; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_DAEMON;
    location / { proxy_pass http://daemon; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; }
  }
}
CONF
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>/dev/null & PIDS+=($!)
    NGINX_MASTER=$!
    TARGETS="direct:$BACKEND nginx:$NGINX bare:$BARE"
  else
    echo "nginx is not installed: its column is left out" >&2
  fi
  if [ -n "${PEER_BASE:-}" ]; then
    BASE_PROXY=$(port)
    run_peer "$PEER_BASE" "$WORK/base" "$BASE_PROXY" "$(port)" "$(port)" "$BACKEND"
    PIDS+=("$RUN_PID")
    PID_OF[base]=$RUN_PID
    TARGETS="$TARGETS base:$BASE_PROXY"
  fi
  TARGETS="$TARGETS peer:$PROXY"
  bash scripts/ipfs-daemon.sh start "$WORK/ipfs" "$API" >/dev/null 2>&1
  start_peer "$BACKEND"
  for t in $TARGETS; do wait_http "http://127.0.0.1:${t#*:}/api/v0/version"; done
  PID_OF[peer]=$PEER
  [ -n "${NGINX_MASTER:-}" ] && PID_OF[nginx]=$(pgrep -P "$NGINX_MASTER" | head -n1)
  # CPU time (user + system, clock ticks) a process has used so far.
  ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
  echo 'wrk.method = "POST"' >"$WORK/post.lua"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  # wrk's latency percentiles and req/s, as "target conns req/s p50(µs)"
  wrk_run() {
    wrk -t"$3" -c"$2" -d4s --latency -s "$WORK/post.lua" "http://127.0.0.1:$4/api/v0/version" |
      awk -v t="$1" -v c="$2" '
        function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1000000 }
        $1 == "50%" { p50 = us($2) } $1 == "Requests/sec:" { rps = $2 }
        END { print t, c, rps, p50 }'
  }
  : >"$WORK/results"
  for t in $TARGETS; do wrk -t1 -c8 -d1s -s "$WORK/post.lua" "http://127.0.0.1:${t#*:}/api/v0/version" >/dev/null; done
  for round in 1 2 3; do
    for load in "1 1" "32 2" "128 2"; do
      set -- $load
      for t in $TARGETS; do
        n=${t%%:*} pid=${PID_OF[${t%%:*}]:-}
        [ -n "$pid" ] && t0=$(ticks "$pid")
        line=$(wrk_run "$n" "$1" "$2" "${t#*:}")
        echo "$line" >>"$WORK/results"
        # CPU per call: the proxy's own CPU time over the calls it relayed, a
        # figure the machine's other load moves far less than req/s.
        if [ -n "$pid" ] && [ "$1" = 32 ]; then
          echo "$line $(( $(ticks "$pid") - t0 ))" | awk -v hz="$(getconf CLK_TCK)" \
            '{ printf "%s cpu %.2f 0\n", $1, $5 / hz * 1e6 / ($3 * 4) }' >>"$WORK/results"
        fi
      done
    done
    # A stream takes well under a second, and two processes on two CPUs (direct)
    # move with any other wake-up on the machine: three each a round, in turn.
    for _ in 1 2 3; do
      for t in $TARGETS; do
        if [ "${t%%:*}" = peer ]; then echo 5 >"/proc/$PEER/clear_refs"; before=$(kb VmRSS); fi
        speed=$(curl -s -X POST -o /dev/null -w '%{speed_download}' "http://127.0.0.1:${t#*:}/api/v0/cat/big")
        echo "${t%%:*} stream $speed 0" >>"$WORK/results"
        if [ "${t%%:*}" = peer ]; then echo "peer rss $(( ($(kb VmHWM) - before) )) 0" >>"$WORK/results"; fi
      done
    done
    echo "round $round done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  done
  # median TARGET LOAD FIELD (3 = req/s, B/s or kB; 4 = p50 µs)
  median() { awk -v t="$1" -v c="$2" -v f="$3" '$1 == t && $2 == c { print $f }' "$WORK/results" |
    sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  names=""; for t in $TARGETS; do names="$names ${t%%:*}"; done
  {
    printf '| load |'; for n in $names; do printf ' %s |' "$n"; done; printf '\n|---|'
    for _ in $names; do printf -- '---|'; done; printf '\n'
    d=$(median direct 1 4); n1=$(median nginx 1 4)
    printf '| 1 connection, p50 (added over direct) |'
    for n in $names; do
      v=$(median "$n" 1 4)
      if [ "$n" = direct ]; then printf ' %.0f µs |' "$v"; else printf ' %.0f µs (+%.0f) |' "$v" "$(echo "$v - $d" | bc)"; fi
    done; printf '\n'
    for c in 32 128; do
      d=$(median direct "$c" 3); ng=$(median nginx "$c" 3)
      printf '| %s connections, req/s (× direct) |' "$c"
      for n in $names; do
        v=$(median "$n" "$c" 3)
        if [ "$n" = direct ]; then printf ' %.0f |' "$v"; else printf ' %.0f (%.2f×) |' "$v" "$(echo "$v / $d" | bc -l)"; fi
      done; printf '\n'
    done
    d=$(median direct stream 3)
    printf '| 1 GiB stream, GiB/s (× direct) |'
    for n in $names; do
      v=$(median "$n" stream 3)
      if [ "$n" = direct ]; then printf ' %.2f |' "$(echo "$v / 1073741824" | bc -l)"
      else printf ' %.2f (%.2f×) |' "$(echo "$v / 1073741824" | bc -l)" "$(echo "$v / $d" | bc -l)"; fi
    done; printf '\n'
  } | sed 's/(+-/(-/g'
  if [ -n "$(median nginx 32 3)" ]; then
    printf 'peer/nginx: 32 connections %.2f×, 128 connections %.2f×; 1 connection, p50 added over direct: peer %.0f µs, nginx %.0f µs\n' \
      "$(echo "$(median peer 32 3) / $(median nginx 32 3)" | bc -l)" "$(echo "$(median peer 128 3) / $(median nginx 128 3)" | bc -l)" \
      "$(echo "$(median peer 1 4) - $(median direct 1 4)" | bc)" "$(echo "$(median nginx 1 4) - $(median direct 1 4)" | bc)"
  fi
  printf 'CPU per relayed call at 32 connections (µs, median of 3):'
  for n in $names; do v=$(median "$n" cpu 3); [ -n "$v" ] && printf ' %s %.1f' "$n" "$v"; done
  if [ -n "$(median nginx cpu 3)" ]; then
    printf ' (peer/nginx %.2f×)' "$(echo "$(median peer cpu 3) / $(median nginx cpu 3)" | bc -l)"
  fi
  printf '\n'
  printf 'peer RSS growth over the 1 GiB stream: %s MiB (median of 9; largest %s MiB)\n' \
    "$(( $(median peer rss 3) / 1024 ))" "$(( $(awk '$1 == "peer" && $2 == "rss" { print $3 }' "$WORK/results" | sort -n | tail -n1) / 1024 ))"
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  # - the same small calls against the real daemon, through the proxy and directly
  stop_peer
  start_peer "$API"
  vs_daemon "$API" "$PROXY"
  # Paired single calls (direct, nginx, peer, one after the other), which
  # resolve a few percent where rounds of 500 calls cannot.
  if [ -n "${NGINX_MASTER:-}" ]; then
    echo "paired version calls against the real daemon (3,000 each: direct, nginx, peer):"
    python3 scripts/paired_calls.py 3000 "$API" "$NGINX_DAEMON" "$PROXY"
  else
    echo "paired version calls against the real daemon (3,000 each: direct, peer):"
    python3 scripts/paired_calls.py 3000 "$API" "$PROXY"
  fi
  exit 0
fi

cargo test --release --lib status_of_100k_pins -- --ignored --nocapture 2>&1 |
  grep -E "pins committed|streamed in|test result|panicked"

# - the Raft stores, sled against redb: log appends, pin writes, scans, reads,
#   removals, disk and memory, with the redb/sled ratio of each
cargo bench --bench store 2>&1 | grep -vE "^ *(Compiling|Finished|Running)"

# - a 1 GiB add streamed through the proxy: peer RSS growth (< 32 MiB)
cargo build --release --bins -q
bash scripts/ipfs-daemon.sh start "$WORK/ipfs" "$API" >/dev/null 2>&1
start_peer "$API"
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$WORK/big.bin"
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
#   and 500 small calls
vs_daemon "$API" "$PROXY" "$ROOT"
