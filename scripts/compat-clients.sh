#!/usr/bin/env bash
# Installs (once, cached outside the repo) the real client libraries the
# compatibility suite drives: the JS kubo-rpc-client (npm) and the Python
# ipfshttpclient (PyPI). Prints nothing on stdout.
#   scripts/compat-clients.sh install
#   scripts/compat-clients.sh paths     # prints NODE_DIR and PYTHON lines
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${COMPAT_CLIENTS_CACHE:-$HOME/.cache/ipfs-cluster-rs/compat-clients}"
NODE_DIR="$CACHE/node"
VENV="$CACHE/venv"

install() {
  mkdir -p "$NODE_DIR"
  if ! cmp -s "$ROOT/compat-tests/clients/package.json" "$NODE_DIR/package.json" ||
     [[ ! -d "$NODE_DIR/node_modules/kubo-rpc-client" ]]; then
    cp "$ROOT/compat-tests/clients/package.json" "$NODE_DIR/package.json"
    (cd "$NODE_DIR" && NO_UPDATE_NOTIFIER=1 npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import ipfshttpclient' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'ipfshttpclient==0.8.0a2' >&2
  fi
}

case "${1:-}" in
  install) install ;;
  paths) echo "NODE_DIR=$NODE_DIR"; echo "PYTHON=$VENV/bin/python" ;;
  *) echo "usage: $0 install|paths" >&2; exit 2 ;;
esac
