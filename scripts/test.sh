#!/usr/bin/env bash
# Runs the whole test suite: unit tests, end-to-end tests and the compatibility
# suite. The tests that need a real IPFS daemon start their own through
# scripts/ipfs-daemon.sh; this installs it first (once, cached outside the repo).
# The fault tests (openraft's storage suite on both stores, the seeded in-process
# clusters of raft::sim, the hung daemon, the per-peer RPC bound) are unit tests:
# `cargo test` runs them. SIM_SEEDS=<n> runs more seeds, SIM_SEED=<n> replays one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
bash scripts/ipfs-daemon.sh install >/dev/null
bash scripts/compat-clients.sh install
cargo test --all-targets "$@"
