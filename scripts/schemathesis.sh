#!/usr/bin/env bash
# OpenAPI-driven fuzzing of the REST API with schemathesis (from PyPI): starts a coordinator on a
# temp data dir (no local agent; SSH connect timeout 1 s, durations at most 2 s so generated
# trace requests end quickly), runs every operation, and fails on any 5xx answer or crash.
# The coverage phase is left out: schemathesis 4.32 fails inside its own generator on it.
# Usage: scripts/schemathesis.sh [MAX_EXAMPLES]   (default 100 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tracevisor-target}"
examples="${1:-100}"
command -v schemathesis >/dev/null || python3 -m pip install --quiet schemathesis
bin="$CARGO_TARGET_DIR/debug/tracevisor"
[ -x "$bin" ] || cargo build -p tracevisor --bins
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/config.toml" <<TOML
ssh_connect_timeout_secs = 1
max_duration_secs = 2
TOML
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --config "$dir/config.toml" --no-local-agent >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
status=0
schemathesis run "http://127.0.0.1:$port/trace/api/v1.0/openapi.json" \
    --url "http://127.0.0.1:$port" \
    --checks not_a_server_error \
    --max-examples "$examples" \
    --request-timeout 30 \
    --exclude-path-regex '/events$' \
    --phases examples,fuzzing,stateful \
    --workers 1 || status=$?
if ! kill -0 $pid 2>/dev/null; then
    echo "schemathesis.sh: the coordinator died; its log:" >&2
    tail -n 50 "$dir/log" >&2
    exit 1
fi
if grep -q "panicked" "$dir/log"; then
    echo "schemathesis.sh: the coordinator panicked:" >&2
    grep -A5 panicked "$dir/log" >&2
    exit 1
fi
exit $status
