#!/usr/bin/env bash
# Brings up the Tracevisor coordinator on a fresh Debian machine: installs LTTng and the analyses
# (root or sudo), starts a root lttng-sessiond if none runs, builds, then runs
# `tracevisor serve` on 127.0.0.1:5000 with its embedded database and the built-in local agent.
# Extra arguments go to `tracevisor serve` (for example --listen, --data-dir, --config).
set -euo pipefail
cd "$(dirname "$0")/.."
# Release builds keep their own target directory (shared with the benchmarks and the packages).
export CARGO_TARGET_DIR="${CARGO_RELEASE_TARGET_DIR:-$HOME/.cache/tracevisor-target-release}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

as_root .ci/install-deps.sh
if ! as_root lttng list >/dev/null 2>&1; then
    echo "run.sh: starting lttng-sessiond"
    as_root lttng-sessiond --daemonize
fi
cargo build --release --locked -p tracevisor -p tracesd --bins
exec "$CARGO_TARGET_DIR/release/tracevisor" serve "$@"
