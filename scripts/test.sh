#!/usr/bin/env bash
# Runs the whole Tracevisor test suite on a fresh Debian machine: installs what the tests need
# (LTTng, babeltrace2, lttng-analyses, OpenSSH, Chromium for the dashboard, ...; root or sudo), then format, lint, build, test.
# Tests that need root, LTTng or sshd are not skipped here: TRACEVISOR_REQUIRE_ALL=1 turns a skip
# into a failure. Set TRACEVISOR_REQUIRE_ALL=0 to let them skip (each prints why).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tracevisor-target}"
export TRACEVISOR_REQUIRE_ALL="${TRACEVISOR_REQUIRE_ALL:-1}"
# No incremental compilation: a clean run gains nothing from it, and its session directories
# grew the shared target directory by tens of GiB over many runs (the disk filled once).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
if [ "$(id -u)" = 0 ]; then
    .ci/install-deps.sh --browser
elif command -v sudo >/dev/null; then
    sudo .ci/install-deps.sh --browser
else
    echo "test.sh: run as root (or install sudo) so the test dependencies can be installed" >&2
    exit 1
fi

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
# --all-targets: the binaries the integration tests start are built with the same features as
# the tests themselves, so `cargo test` does not rebuild SurrealDB a second time.
cargo build --workspace --all-targets --locked

step "tests"
cargo test --workspace --locked

step "fuzz smoke run"
scripts/fuzz-smoke.sh

if [ "$(id -u)" = 0 ] && command -v dpkg >/dev/null; then
    step "debian packages: build, lintian, systemd-analyze, install test"
    debs=$(mktemp -d)
    # Release builds keep their own target directory (a cold SurrealDB release build is long).
    CARGO_TARGET_DIR="${CARGO_RELEASE_TARGET_DIR:-$HOME/.cache/tracevisor-target-release}" packaging/build-debs.sh "$debs"
    CARGO_TARGET_DIR="${CARGO_RELEASE_TARGET_DIR:-$HOME/.cache/tracevisor-target-release}" packaging/install-test.sh "$debs"
    rm -rf "$debs"
else
    echo "SKIPPED debian packages: needs root and dpkg"
fi

step "all tests passed"
