#!/usr/bin/env bash
# Install and run a real IPFS daemon (kubo if present, otherwise js-ipfs 0.66.1
# from the npm registry) with its kubo-compatible /api/v0 RPC, bound to
# 127.0.0.1 only. Used by tests and for local development.
#
# Usage:
#   scripts/ipfs-daemon.sh install
#       Use kubo (`ipfs`/`kubo` on PATH whose `ipfs version` says kubo/go-ipfs),
#       or install js-ipfs once into $IPFS_DAEMON_CACHE with `npm ci`.
#   scripts/ipfs-daemon.sh bin
#       Print the path of the daemon binary (installs js-ipfs if needed).
#   scripts/ipfs-daemon.sh start REPO_DIR API_PORT
#       Initialise REPO_DIR if needed, configure it for loopback-only use,
#       start the daemon in the background and wait until the API answers.
#       Prints only the daemon PID on stdout. PID file: REPO_DIR/daemon.pid,
#       log: REPO_DIR/daemon.log.
#   scripts/ipfs-daemon.sh stop REPO_DIR
#       SIGTERM the daemon, wait up to STOP_TIMEOUT seconds, then SIGKILL.
#       No-op if it is not running.
#
# Environment:
#   IPFS_DAEMON_CACHE  js-ipfs install dir (default ~/.cache/ipfs-cluster-rs/js-ipfs)
#   IPFS_DAEMON_IMPL   auto (default) | kubo | js
#   SWARM_PORT=0 GATEWAY_PORT=0 RPC_PORT=0   other listeners (all on 127.0.0.1)
#   IPFS_OFFLINE=1     start with --offline (set to 0 to enable the swarm)
#   CORS_ORIGINS       comma-separated origins the API allows (API.HTTPHeaders
#                      Access-Control-Allow-Origin); none by default
#   START_TIMEOUT=60   seconds to wait for /api/v0/id
#   STOP_TIMEOUT=10    seconds to wait after SIGTERM before SIGKILL
#   IPFS_DAEMON_KEEPALIVE=1  js-ipfs only: preload js-ipfs-daemon/keep-alive.cjs so
#                      a leaked promise rejection is logged instead of killing the daemon
#
# All messages go to stderr; stdout carries only the requested value.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PKG_SRC="$SCRIPT_DIR/js-ipfs-daemon"
CACHE_DIR="${IPFS_DAEMON_CACHE:-${HOME:-/tmp}/.cache/ipfs-cluster-rs/js-ipfs}"
IMPL_PREF="${IPFS_DAEMON_IMPL:-auto}"
STAMP_FILE="$CACHE_DIR/.install-stamp"

log() { printf 'ipfs-daemon: %s\n' "$*" >&2; }
die() { printf 'ipfs-daemon: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

# ---------------------------------------------------------------------------
# helpers

is_uint() { [[ "${1:-}" =~ ^[0-9]+$ ]]; }

check_port() { # name value
    if ! is_uint "$2" || (( 10#$2 > 65535 )); then
        die "$1 must be a port number 0-65535, got '$2'"
    fi
}

abspath() { # dir (must exist)
    (cd "$1" && pwd)
}

# True if PID is a live (non-zombie) process.
pid_alive() {
    local pid="$1" state=""
    is_uint "$pid" && (( pid > 0 )) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/stat" ]]; then
        state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1 || true)"
    elif command -v ps >/dev/null 2>&1; then
        state="$(ps -o stat= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
    fi
    [[ "$state" != Z* ]]
}

# True if PID is alive and looks like an IPFS daemon (guards against PID reuse).
pid_is_daemon() {
    local pid="$1" args=""
    pid_alive "$pid" || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    elif command -v ps >/dev/null 2>&1; then
        args="$(ps -o args= -p "$pid" 2>/dev/null || true)"
    else
        return 0 # cannot tell; trust the PID file
    fi
    # kubo: "ipfs daemon ..."; js-ipfs sets process.title, so its cmdline reads just "ipfs".
    [[ "$args" == *daemon* || "$args" == *ipfs* || "$args" == *kubo* ]]
}

read_pid() { # repo_dir -> pid or empty
    local f="$1/daemon.pid" pid=""
    [[ -f "$f" ]] && pid="$(tr -dc '0-9' <"$f" 2>/dev/null || true)"
    printf '%s' "$pid"
}

require_node() {
    command -v node >/dev/null 2>&1 ||
        die "node is not installed (needed for js-ipfs; Node >= 18 and npm >= 7 required). Install Node.js or put kubo's 'ipfs' on PATH."
    command -v npm >/dev/null 2>&1 ||
        die "npm is not installed (needed to install js-ipfs). Install npm or put kubo's 'ipfs' on PATH."
    local major
    major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
    if ! is_uint "$major" || (( major < 18 )); then
        die "node >= 18 is required for js-ipfs, found $(node --version 2>/dev/null || echo unknown)"
    fi
}

# Prints the path of a kubo/go-ipfs binary on PATH, or fails.
find_kubo() {
    local cand path out
    for cand in ipfs kubo; do
        path="$(command -v "$cand" 2>/dev/null)" || continue
        out="$( { "$path" version --all || "$path" version; } 2>/dev/null </dev/null || true)"
        if grep -Eiq 'kubo|go-ipfs|^ipfs version [0-9]' <<<"$out"; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    return 1
}

KUBO_BIN=""
IMPL=""
select_impl() {
    [[ -n "$IMPL" ]] && return 0
    case "$IMPL_PREF" in
        auto)
            if KUBO_BIN="$(find_kubo)"; then IMPL=kubo; else IMPL=js; fi ;;
        kubo)
            KUBO_BIN="$(find_kubo)" || die "IPFS_DAEMON_IMPL=kubo but no kubo 'ipfs'/'kubo' binary on PATH"
            IMPL=kubo ;;
        js) IMPL=js ;;
        *) die "IPFS_DAEMON_IMPL must be auto, kubo or js (got '$IMPL_PREF')" ;;
    esac
}

JSIPFS_BIN="$CACHE_DIR/node_modules/.bin/jsipfs"

# Checksum of everything that determines the js-ipfs install.
pkg_checksum() {
    node -e '
        const fs = require("fs"), path = require("path"), crypto = require("crypto");
        const root = process.argv[1], h = crypto.createHash("sha256");
        const walk = (rel) => {
            const abs = path.join(root, rel);
            if (fs.statSync(abs).isDirectory()) {
                for (const e of fs.readdirSync(abs).sort()) walk(path.join(rel, e));
            } else {
                h.update(rel + "\0"); h.update(fs.readFileSync(abs)); h.update("\0");
            }
        };
        for (const f of ["package.json", "package-lock.json", "stubs"]) walk(f);
        h.update(process.version.split(".")[0]); // native prebuilds depend on the Node major
        console.log(h.digest("hex"));
    ' "$1"
}

js_installed() {
    [[ -x "$JSIPFS_BIN" && -f "$STAMP_FILE" ]] || return 1
    [[ "$(cat "$STAMP_FILE" 2>/dev/null)" == "$(pkg_checksum "$PKG_SRC")" ]]
}

install_js() {
    require_node
    [[ -f "$PKG_SRC/package.json" && -f "$PKG_SRC/package-lock.json" && -d "$PKG_SRC/stubs" ]] ||
        die "missing $PKG_SRC/{package.json,package-lock.json,stubs}"
    if js_installed; then
        return 0
    fi
    mkdir -p "$CACHE_DIR"

    # Serialise concurrent installs (e.g. parallel test processes).
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$CACHE_DIR/.install.lock"
        if ! flock -n 9; then
            log "another install is running in $CACHE_DIR; waiting for it ..."
            flock 9
        fi
        if js_installed; then # somebody else finished it meanwhile
            exec 9>&-
            return 0
        fi
    fi

    local sum start rc=0
    sum="$(pkg_checksum "$PKG_SRC")"
    rm -f "$STAMP_FILE"
    rm -rf "$CACHE_DIR/stubs" "$CACHE_DIR/package.json" "$CACHE_DIR/package-lock.json"
    cp "$PKG_SRC/package.json" "$PKG_SRC/package-lock.json" "$CACHE_DIR/"
    cp -R "$PKG_SRC/stubs" "$CACHE_DIR/stubs"
    chmod -R u+w "$CACHE_DIR/package.json" "$CACHE_DIR/package-lock.json" "$CACHE_DIR/stubs"

    log "installing js-ipfs 0.66.1 into $CACHE_DIR (npm ci, ~40 s) ..."
    start=$SECONDS
    # stdout (the summary) goes to a log; errors still reach stderr.
    (cd "$CACHE_DIR" &&
        npm ci --no-audit --no-fund --no-progress --loglevel=error \
            </dev/null >"$CACHE_DIR/npm-install.log") || rc=$?
    if (( rc != 0 )) || [[ ! -x "$JSIPFS_BIN" ]]; then
        [[ -s "$CACHE_DIR/npm-install.log" ]] && tail -n 30 "$CACHE_DIR/npm-install.log" >&2
        die "npm ci failed in $CACHE_DIR (exit $rc); see the messages above"
    fi
    printf '%s\n' "$sum" >"$STAMP_FILE"
    log "js-ipfs installed in $((SECONDS - start)) s"
    if command -v flock >/dev/null 2>&1; then exec 9>&-; fi
}

cmd_install() {
    select_impl
    if [[ "$IMPL" == kubo ]]; then
        log "using kubo at $KUBO_BIN; nothing to install"
        return 0
    fi
    install_js
}

daemon_bin() {
    select_impl
    if [[ "$IMPL" == kubo ]]; then
        printf '%s\n' "$KUBO_BIN"
    else
        install_js
        printf '%s\n' "$JSIPFS_BIN"
    fi
}

# ---------------------------------------------------------------------------
# configuration (daemon must be down)

configure_js() { # repo api swarm gateway rpc
    # shellcheck disable=SC2016 # JS template literals, not shell expansions
    node -e '
        const fs = require("fs");
        const [file, api, swarm, gw, rpc, origins] = process.argv.slice(1);
        const c = JSON.parse(fs.readFileSync(file, "utf8"));
        const a = c.Addresses = c.Addresses || {};
        a.API = `/ip4/127.0.0.1/tcp/${api}`;
        a.Gateway = `/ip4/127.0.0.1/tcp/${gw}`;
        a.RPC = `/ip4/127.0.0.1/tcp/${rpc}`;
        a.Swarm = [`/ip4/127.0.0.1/tcp/${swarm}`];
        a.Announce = [];
        a.NoAnnounce = [];
        a.Delegates = [];
        c.Bootstrap = [];
        const d = c.Discovery = c.Discovery || {};
        d.MDNS = Object.assign({}, d.MDNS, { Enabled: false });
        d.webRTCStar = Object.assign({}, d.webRTCStar, { Enabled: false });
        c.Swarm = Object.assign({}, c.Swarm, { DisableNatPortMap: true });
        const api_ = c.API = c.API || {};
        const h = api_.HTTPHeaders = api_.HTTPHeaders || {};
        if (origins) {
            h["Access-Control-Allow-Origin"] = origins.split(",");
        } else {
            delete h["Access-Control-Allow-Origin"];
        }
        const tmp = file + ".tmp";
        fs.writeFileSync(tmp, JSON.stringify(c, null, 2));
        fs.renameSync(tmp, file);
    ' "$1/config" "$2" "$3" "$4" "$5" "${CORS_ORIGINS:-}"
}

configure_kubo() { # repo api swarm gateway
    local repo="$1"
    kcfg() { IPFS_PATH="$repo" "$KUBO_BIN" config "$@" </dev/null >/dev/null; }
    kcfg Addresses.API "/ip4/127.0.0.1/tcp/$2"
    kcfg Addresses.Gateway "/ip4/127.0.0.1/tcp/$4"
    kcfg --json Addresses.Swarm "[\"/ip4/127.0.0.1/tcp/$3\"]"
    kcfg --json Addresses.Announce '[]'
    kcfg --json Addresses.AppendAnnounce '[]' 2>/dev/null || true
    kcfg --json Bootstrap '[]'
    kcfg --json Discovery.MDNS.Enabled false
    kcfg --json Swarm.DisableNatPortMap true
    if [[ -n "${CORS_ORIGINS:-}" ]]; then
        local list
        list=$(printf '%s' "$CORS_ORIGINS" | sed 's/[^,][^,]*/"&"/g')
        kcfg --json API.HTTPHeaders.Access-Control-Allow-Origin "[$list]"
        kcfg --json API.HTTPHeaders.Access-Control-Allow-Methods '["POST"]'
    fi
    # kubo >= 0.37 fetches network defaults ("auto" values) unless told not to.
    kcfg --json AutoConf.Enabled false 2>/dev/null || true
}

peer_id() { # repo
    if [[ "$IMPL" == kubo ]]; then
        IPFS_PATH="$1" "$KUBO_BIN" config Identity.PeerID </dev/null
    else
        node -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).Identity.PeerID' "$1/config"
    fi
}

api_id() { # port -> body of /api/v0/id (fails if no answer)
    curl -sf -X POST --max-time 3 "http://127.0.0.1:$1/api/v0/id" </dev/null 2>/dev/null
}

log_tail() { # repo: print this run's part of daemon.log (from the last start marker)
    local f="$1/daemon.log"
    [[ -f "$f" ]] || return 0
    log "daemon.log of this run ($f):"
    awk '/^===== .*: start \(/ { n = 0 } { buf[n++] = $0 } END { s = (n > 60) ? n - 60 : 0; for (i = s; i < n; i++) print "    " buf[i] }' "$f" >&2
}

# ---------------------------------------------------------------------------
# start / stop

cmd_start() {
    [[ $# -eq 2 ]] || die "usage: $0 start REPO_DIR API_PORT   (see $0 --help)"
    local repo="$1" api_port="$2"
    local swarm_port="${SWARM_PORT:-0}" gw_port="${GATEWAY_PORT:-0}" rpc_port="${RPC_PORT:-0}"
    local offline="${IPFS_OFFLINE:-1}" timeout="${START_TIMEOUT:-60}"
    check_port API_PORT "$api_port"
    check_port SWARM_PORT "$swarm_port"
    check_port GATEWAY_PORT "$gw_port"
    check_port RPC_PORT "$rpc_port"
    api_port=$((10#$api_port)) swarm_port=$((10#$swarm_port))
    gw_port=$((10#$gw_port)) rpc_port=$((10#$rpc_port))
    (( api_port > 0 )) || die "API_PORT must not be 0"
    is_uint "$timeout" || die "START_TIMEOUT must be a number of seconds, got '$timeout'"
    command -v curl >/dev/null 2>&1 || die "curl is required"

    select_impl
    local bin
    if [[ "$IMPL" == kubo ]]; then
        bin="$KUBO_BIN"
    else
        install_js
        bin="$JSIPFS_BIN"
    fi

    mkdir -p "$repo"
    repo="$(abspath "$repo")"

    # Already running from this repo?
    local old_pid body
    old_pid="$(read_pid "$repo")"
    if [[ -n "$old_pid" ]] && pid_is_daemon "$old_pid"; then
        if [[ -f "$repo/config" ]] && body="$(api_id "$api_port")" &&
            grep -qF "\"$(peer_id "$repo")\"" <<<"$body"; then
            log "daemon already running for $repo (PID $old_pid, API port $api_port)"
            printf '%s\n' "$old_pid"
            return 0
        fi
        die "a daemon (PID $old_pid) is already running for $repo but not on API port $api_port; stop it first"
    fi

    # Stale lock from a daemon killed with SIGKILL: remove only when its PID is dead.
    if [[ -e "$repo/repo.lock" || -e "$repo/api" ]]; then
        if [[ -n "$old_pid" ]]; then
            log "removing stale repo.lock/api left by dead PID $old_pid"
            rm -rf "$repo/repo.lock" "$repo/api"
        else
            log "warning: $repo has a repo.lock/api but no daemon.pid; leaving them alone"
        fi
    fi
    rm -f "$repo/daemon.pid"

    if api_id "$api_port" >/dev/null; then
        die "something already answers on 127.0.0.1:$api_port/api/v0/id; choose another API_PORT"
    fi

    {
        printf '\n===== %s: start (%s, API port %s)\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$IMPL" "$api_port"
    } >>"$repo/daemon.log"

    if [[ ! -f "$repo/config" ]]; then
        log "initialising $IMPL repo in $repo"
        local rc=0
        if [[ "$IMPL" == kubo ]]; then
            IPFS_PATH="$repo" "$bin" init --profile test </dev/null >>"$repo/daemon.log" 2>&1 || rc=$?
        else
            IPFS_PATH="$repo" NO_UPDATE_NOTIFIER=1 "$bin" init --profile test --empty-repo </dev/null >>"$repo/daemon.log" 2>&1 || rc=$?
        fi
        if (( rc != 0 )) || [[ ! -f "$repo/config" ]]; then
            log_tail "$repo"
            die "repo init failed in $repo"
        fi
    fi

    if [[ "$IMPL" == kubo ]]; then
        configure_kubo "$repo" "$api_port" "$swarm_port" "$gw_port"
    else
        configure_js "$repo" "$api_port" "$swarm_port" "$gw_port" "$rpc_port"
    fi
    local want_id
    want_id="$(peer_id "$repo")"

    local -a args=(daemon)
    [[ "$IMPL" == js ]] && args+=(--enable-preload=false)
    [[ "$offline" == 1 || "$offline" == true ]] && args+=(--offline)

    # Detach: own session (if setsid exists), no stdin, output to the log.
    local -a launcher=(nohup)
    command -v setsid >/dev/null 2>&1 && launcher=(setsid nohup)
    local -a envs=("IPFS_PATH=$repo")
    if [[ "$IMPL" == js ]]; then
        envs+=(NO_UPDATE_NOTIFIER=1)
        if [[ "${IPFS_DAEMON_KEEPALIVE:-1}" == 1 && -f "$PKG_SRC/keep-alive.cjs" ]]; then
            envs+=("NODE_OPTIONS=${NODE_OPTIONS:+$NODE_OPTIONS }--require \"$PKG_SRC/keep-alive.cjs\"")
        fi
    fi
    env "${envs[@]}" "${launcher[@]}" "$bin" "${args[@]}" </dev/null >>"$repo/daemon.log" 2>&1 &
    local pid=$!
    printf '%s\n' "$pid" >"$repo/daemon.pid"
    # Don't leave a half-started daemon behind if we are interrupted.
    STARTING_REPO="$repo" STARTING_PID="$pid"
    trap on_interrupt INT TERM
    log "started $IMPL daemon PID $pid (${args[*]}), waiting for 127.0.0.1:$api_port ..."

    local deadline=$((SECONDS + timeout))
    while :; do
        if ! pid_alive "$pid"; then
            log_tail "$repo"
            rm -f "$repo/daemon.pid"
            die "daemon exited before its API answered"
        fi
        if body="$(api_id "$api_port")" && grep -qF "\"$want_id\"" <<<"$body"; then
            break
        fi
        if (( SECONDS >= deadline )); then
            log_tail "$repo"
            log "giving up after ${timeout}s; stopping PID $pid"
            stop_pid "$repo" "$pid" || true
            die "daemon did not answer on 127.0.0.1:$api_port/api/v0/id within ${timeout}s"
        fi
        sleep 0.25
    done
    trap - INT TERM
    log "daemon ready (PID $pid, peer $want_id, API http://127.0.0.1:$api_port)"
    printf '%s\n' "$pid"
}

STARTING_REPO="" STARTING_PID=""
on_interrupt() {
    trap - INT TERM
    log "interrupted; stopping PID $STARTING_PID"
    stop_pid "$STARTING_REPO" "$STARTING_PID" || true
    exit 130
}

stop_pid() { # repo pid
    local repo="$1" pid="$2" wait="${STOP_TIMEOUT:-10}" i
    is_uint "$wait" || wait=10
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "PID $pid still alive after ${wait}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && { log "PID $pid survived SIGKILL"; return 1; }
        rm -rf "$repo/repo.lock" "$repo/api" # the killed daemon could not clean up
    fi
    rm -f "$repo/daemon.pid"
}

cmd_stop() {
    [[ $# -eq 1 ]] || die "usage: $0 stop REPO_DIR   (see $0 --help)"
    local repo="$1" pid
    if [[ ! -d "$repo" ]]; then
        log "no repo at $repo; nothing to stop"
        return 0
    fi
    pid="$(read_pid "$repo")"
    if [[ -z "$pid" ]]; then
        log "no daemon.pid in $repo; not running"
        return 0
    fi
    if ! pid_alive "$pid"; then
        log "daemon PID $pid is not running; removing stale daemon.pid"
        rm -f "$repo/daemon.pid"
        return 0
    fi
    if ! pid_is_daemon "$pid"; then
        log "PID $pid is alive but is not an IPFS daemon (PID reused?); removing stale daemon.pid"
        rm -f "$repo/daemon.pid"
        return 0
    fi
    log "stopping daemon PID $pid"
    stop_pid "$repo" "$pid" || die "could not stop PID $pid"
    log "stopped"
}

# ---------------------------------------------------------------------------

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        install) [[ $# -eq 0 ]] || die "usage: $0 install"; cmd_install ;;
        bin) [[ $# -eq 0 ]] || die "usage: $0 bin"; daemon_bin ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        -h | --help | help) usage ;;
        "") usage; die "missing command (install, bin, start or stop)" ;;
        *) usage; die "unknown command '${cmd}'" ;;
    esac
}

main "$@"
