#!/usr/bin/env bash
# Runs the whole test suite: unit tests, end-to-end tests and the compatibility
# suite. The tests that need a real IPFS daemon start their own through
# scripts/ipfs-daemon.sh; this installs it first (once, cached outside the repo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
bash scripts/ipfs-daemon.sh install >/dev/null
bash scripts/compat-clients.sh install
cargo test --all-targets "$@"
