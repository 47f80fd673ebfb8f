#!/usr/bin/env bash
# Benchmarks (not part of the test suite): memory and speed targets measured side
# by side in one run.
#   - status of 100,000 pins streamed through GET /pins: peer RSS growth (< 64 MiB)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-cluster-rs/target}"
cargo test --release --lib status_of_100k_pins -- --ignored --nocapture 2>&1 |
  grep -E "pins committed|streamed in|test result|panicked"
