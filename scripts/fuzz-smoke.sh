#!/usr/bin/env bash
# A short, bounded cargo-fuzz run of the agent-link frame decoder (needs the nightly toolchain).
# Longer runs: FUZZ_SECONDS=3600 scripts/fuzz-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../protocol/fuzz"
seconds="${FUZZ_SECONDS:-20}"
if ! rustup toolchain list | grep -q nightly; then
    echo "fuzz-smoke: no nightly toolchain; skipping the fuzz run" >&2
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
cargo +nightly fuzz run decode_frame -- -max_total_time="$seconds" 2>&1 | tail -n 5
