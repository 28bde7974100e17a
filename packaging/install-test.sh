#!/usr/bin/env bash
# Installs the packages built by build-debs.sh on this machine and checks them for real:
# files, owners and modes, the installed units (systemd-analyze verify), then starts the
# INSTALLED binaries with the INSTALLED configuration the way the units do (systemd need not
# be running: the coordinator runs as the `tracevisor` user through runuser), enrolls an agent
# with `tracesd enroll`, starts it and sees it connected in GET /clients; then removes the
# packages (no tracevisor or tracesd process may be left) and purges them (/etc/tracevisor and
# the state directories must be gone).
#
# Usage (root): packaging/install-test.sh [DEB_DIR]     (default: $CARGO_TARGET_DIR/debian)
#
# The machine is left clean whatever happens: an EXIT trap stops what the test started (by
# process id), purges both packages and deletes the `tracevisor` user if the test created it.
# It refuses to run when either package is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tracevisor-target}"
DEBS="${1:-$CARGO_TARGET_DIR/debian}"
AGENT_NAME=install-test-agent
PATIENCE=90

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "install-test.sh: FAILED: $*" >&2; exit 1; }
check() { printf '  ok: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs packages)"
shopt -s nullglob
tv_debs=("$DEBS"/tracevisor_*.deb)
ts_debs=("$DEBS"/tracesd_*.deb)
shopt -u nullglob
[ ${#tv_debs[@]} = 1 ] && [ ${#ts_debs[@]} = 1 ] ||
    fail "expected one tracevisor_*.deb and one tracesd_*.deb in $DEBS (run packaging/build-debs.sh)"
TV_DEB=$(realpath "${tv_debs[0]}")
TS_DEB=$(realpath "${ts_debs[0]}")
for package in tracevisor tracesd; do
    if dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qv '^not-installed$'; then
        fail "package $package is already on this machine; remove it first (this test purges what it installs)"
    fi
done
user_existed=no
getent passwd tracevisor >/dev/null && user_existed=yes

WORK=$(mktemp -d)
COORD_PID=""
AGENT_PID=""
stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    set +e
    if [ "$status" != 0 ]; then
        for log in "$WORK"/*.log; do
            echo "---- $(basename "$log") (last 40 lines)"
            tail -n 40 "$log"
        done
    fi
    stop_pid "$AGENT_PID"
    stop_pid "$COORD_PID"
    for package in tracesd tracevisor; do
        if dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qv '^not-installed$'; then
            echo "cleanup: purging $package"
            dpkg --purge "$package" >/dev/null
        fi
    done
    if [ "$user_existed" = no ] && getent passwd tracevisor >/dev/null; then
        # Debian packages keep their system users on purge; this test leaves none behind.
        userdel tracevisor 2>/dev/null
        getent group tracevisor >/dev/null && groupdel tracevisor 2>/dev/null
    fi
    rm -rf "$WORK"
    if [ "$status" = 0 ]; then
        echo
        echo "install test: PASSED"
    else
        echo
        echo "install test: FAILED (exit $status); the machine was cleaned up"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# GET /trace/api/v1.0/PATH on the coordinator.
api() {
    curl -sS --max-time 10 "http://127.0.0.1:$PORT/trace/api/v1.0$1"
}

step "install $(basename "$TV_DEB") $(basename "$TS_DEB")"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "$TV_DEB" "$TS_DEB" >"$WORK/apt.log" 2>&1; then
    cat "$WORK/apt.log"
    fail "apt-get install failed"
fi
grep -E '^(Setting up|Unpacking|tracesd:)' "$WORK/apt.log" || true

step "installed files"
for package in tracevisor tracesd; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$package")" = installed ] || fail "$package is not installed"
done
check "both packages installed: $(dpkg-query -W -f='${Package} ${Version}  ' tracevisor tracesd)"
/usr/bin/tracevisor --version >/dev/null && /usr/bin/tracesd --version >/dev/null
check "$(/usr/bin/tracevisor --version), $(/usr/bin/tracesd --version)"
uid=$(id -u tracevisor) || fail "no tracevisor user"
[ "$uid" -lt 1000 ] || fail "tracevisor is not a system user (uid $uid)"
check "system user tracevisor (uid $uid, shell $(getent passwd tracevisor | cut -d: -f7))"
[ "$(stat -c '%U:%G %a' /var/lib/tracevisor)" = "tracevisor:tracevisor 750" ] ||
    fail "/var/lib/tracevisor is $(stat -c '%U:%G %a' /var/lib/tracevisor)"
check "/var/lib/tracevisor tracevisor:tracevisor 0750"
[ "$(stat -c '%U:%G %a' /etc/tracevisor/tracevisor.toml)" = "root:tracevisor 640" ] ||
    fail "/etc/tracevisor/tracevisor.toml is $(stat -c '%U:%G %a' /etc/tracevisor/tracevisor.toml)"
check "/etc/tracevisor/tracevisor.toml root:tracevisor 0640"
[ "$(stat -c '%U:%G %a' /etc/tracevisor/tracesd.toml)" = "root:root 600" ] ||
    fail "/etc/tracevisor/tracesd.toml is $(stat -c '%U:%G %a' /etc/tracevisor/tracesd.toml)"
check "/etc/tracevisor/tracesd.toml root:root 0600"
dpkg-query -W -f='${Conffiles}\n' tracevisor | grep -q ' /etc/tracevisor/tracevisor.toml ' ||
    fail "tracevisor.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' tracesd | grep -q ' /etc/tracevisor/tracesd.toml ' ||
    fail "tracesd.toml is not a conffile"
check "both configuration files are conffiles"
man -w tracevisor >/dev/null && man -w tracesd >/dev/null || fail "man pages missing"
check "man pages: $(man -w tracevisor) $(man -w tracesd)"
[ -L /etc/systemd/system/multi-user.target.wants/tracevisor.service ] ||
    fail "tracevisor.service is not enabled"
[ ! -e /etc/systemd/system/multi-user.target.wants/tracesd.service ] ||
    fail "tracesd.service is enabled before enrollment"
[ ! -e /etc/systemd/system/multi-user.target.wants/lttng-relayd.service ] ||
    fail "lttng-relayd.service is enabled on installation"
check "tracevisor.service enabled; tracesd.service and lttng-relayd.service not (enroll enables tracesd)"

step "systemd-analyze verify (installed units)"
units=(/usr/lib/systemd/system/tracevisor.service /usr/lib/systemd/system/tracesd.service
    /usr/lib/systemd/system/lttng-relayd.service)
verify=$(systemd-analyze verify "${units[@]}" 2>&1) || { echo "$verify"; fail "systemd-analyze verify"; }
[ -z "$verify" ] || { echo "$verify"; fail "systemd-analyze verify printed warnings"; }
check "accepted: ${units[*]}"

step "start the installed coordinator as tracevisor.service does"
grep -q '^ExecStart=/usr/bin/tracevisor serve --config /etc/tracevisor/tracevisor.toml$' \
    /usr/lib/systemd/system/tracevisor.service || fail "unexpected ExecStart in tracevisor.service"
PORT=$(free_port)
# User=tracevisor, UMask=0077, working directory /; only the port differs (a free loopback
# port through TRACEVISOR_LISTEN instead of the configured 127.0.0.1:5000).
(
    cd /
    umask 0077
    exec runuser -u tracevisor -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/var/lib/tracevisor LANG=C.UTF-8 TRACEVISOR_LISTEN="127.0.0.1:$PORT" \
        /usr/bin/tracevisor serve --config /etc/tracevisor/tracevisor.toml
) >"$WORK/tracevisor.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 1 $((PATIENCE * 5))); do
    api /clients >/dev/null 2>&1 && break
    kill -0 "$COORD_PID" 2>/dev/null || fail "the coordinator exited"
    sleep 0.2
done
api /clients >/dev/null || fail "the coordinator does not answer on 127.0.0.1:$PORT"
coord=$(pgrep -P "$COORD_PID" -x tracevisor || true)
[ -n "$coord" ] && [ "$(ps -o user= -p "$coord")" = tracevisor ] ||
    fail "the coordinator does not run as tracevisor"
check "tracevisor serve (pid $coord, user tracevisor) answers on 127.0.0.1:$PORT"
[ "$(stat -c '%U %a' /var/lib/tracevisor/agent-token)" = "tracevisor 600" ] ||
    fail "agent-token is $(stat -c '%U %a' /var/lib/tracevisor/agent-token)"
check "state written in /var/lib/tracevisor: $(ls /var/lib/tracevisor | tr '\n' ' ')"
TOKEN=$(runuser -u tracevisor -- /usr/bin/tracevisor agent-token --config /etc/tracevisor/tracevisor.toml 2>/dev/null)
[ -n "$TOKEN" ] || fail "tracevisor agent-token printed nothing"
check "tracevisor agent-token prints the enrollment token"

step "tracesd enroll (wrong token first: refused, nothing written)"
set +e
TRACESD_TOKEN=wrong-token-0123456789 /usr/bin/tracesd enroll --coordinator "http://127.0.0.1:$PORT" \
    --hostname "$AGENT_NAME" >"$WORK/enroll-wrong.log" 2>&1
status=$?
set -e
cat "$WORK/enroll-wrong.log"
[ "$status" = 1 ] && grep -q 'refused the enrollment token (HTTP 401' "$WORK/enroll-wrong.log" ||
    fail "a wrong token was not reported as such (exit $status)"
grep -q '^coordinator = ' /etc/tracevisor/tracesd.toml && fail "a refused enrollment wrote the config"
check "wrong token refused (exit 1), /etc/tracevisor/tracesd.toml untouched"

step "tracesd enroll --coordinator http://127.0.0.1:$PORT --hostname $AGENT_NAME (token from TRACESD_TOKEN)"
TRACESD_TOKEN="$TOKEN" /usr/bin/tracesd enroll --coordinator "http://127.0.0.1:$PORT" \
    --hostname "$AGENT_NAME" | tee "$WORK/enroll.log"
[ "$(stat -c '%U:%G %a' /etc/tracevisor/tracesd.toml)" = "root:root 600" ] ||
    fail "the enrolled config is $(stat -c '%U:%G %a' /etc/tracevisor/tracesd.toml)"
grep -q "^coordinator = \"http://127.0.0.1:$PORT\"$" /etc/tracevisor/tracesd.toml || fail "coordinator not written"
grep -q "^hostname = \"$AGENT_NAME\"$" /etc/tracevisor/tracesd.toml || fail "hostname not written"
grep -q '^credential = "tvc1_' /etc/tracevisor/tracesd.toml || fail "no per-agent credential written"
grep -qF "$TOKEN" /etc/tracevisor/tracesd.toml && fail "the enrollment token was written to the host"
check "/etc/tracevisor/tracesd.toml written, root:root 0600, with the host's own credential (not the token)"

step "start the installed agent as tracesd.service does"
grep -q '^ExecStart=/usr/bin/tracesd --config /etc/tracevisor/tracesd.toml$' \
    /usr/lib/systemd/system/tracesd.service || fail "unexpected ExecStart in tracesd.service"
install -d -m 0750 /var/lib/tracesd # StateDirectory=tracesd
(
    cd /
    umask 0027
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LTTNG_HOME=/var/lib/tracesd \
        /usr/bin/tracesd --config /etc/tracevisor/tracesd.toml
) >"$WORK/tracesd.log" 2>&1 &
AGENT_PID=$!
connected=""
for _ in $(seq 1 $((PATIENCE * 2))); do
    clients=$(api /clients || true)
    connected=$(printf '%s' "$clients" | AGENT_NAME="$AGENT_NAME" python3 -c '
import json, os, sys
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
items = data.get("clients", data) if isinstance(data, dict) else data
for c in items:
    if c.get("hostname") == os.environ["AGENT_NAME"] and (c.get("agent") or {}).get("connected") is True:
        print(json.dumps(c))
')
    [ -n "$connected" ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || fail "the agent exited"
    sleep 0.5
done
[ -n "$connected" ] || fail "$AGENT_NAME never appeared connected in GET /clients: $clients"
echo "GET /trace/api/v1.0/clients -> $connected"
check "$AGENT_NAME is connected"

step "a userspace trace job through the installed agent (informational)"
job=$(curl -sS --max-time 120 -H 'Content-Type: application/json' -X POST \
    -d "{\"host\": \"$AGENT_NAME\", \"duration\": 1, \"type\": \"ust\", \"username\": \"root\"}" \
    "http://127.0.0.1:$PORT/trace/api/v1.0/analyses" || true)
printf '%s' "$job" | python3 -c '
import json, sys
try:
    job = json.load(sys.stdin)
except ValueError:
    print("  no JSON answer"); sys.exit(0)
job = job.get("job", job)
print("  status", job.get("status"), "via", job.get("via"), "error", job.get("error"))
' || true

step "tracevisor credentials revoke $AGENT_NAME: the installed agent is cut off"
/usr/bin/tracevisor --server "http://127.0.0.1:$PORT" credentials
/usr/bin/tracevisor --server "http://127.0.0.1:$PORT" credentials revoke "$AGENT_NAME"
cut_off=""
for _ in $(seq 1 $((PATIENCE * 2))); do
    if api /clients | AGENT_NAME="$AGENT_NAME" python3 -c '
import json, os, sys
data = json.load(sys.stdin)
items = data.get("clients", data) if isinstance(data, dict) else data
sys.exit(0 if any(c.get("hostname") == os.environ["AGENT_NAME"] and not (c.get("agent") or {}).get("connected") for c in items) else 1)
'; then
        cut_off=yes
        break
    fi
    sleep 0.5
done
[ -n "$cut_off" ] || fail "$AGENT_NAME still connected after its credential was revoked"
check "$AGENT_NAME disconnected after revocation"

step "remove the packages (configuration kept, no process left)"
dpkg --remove tracesd tracevisor
for pid in "$AGENT_PID" "$COORD_PID"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "process $pid is still running after removal"
    wait "$pid" 2>/dev/null || true
done
AGENT_PID=""
COORD_PID=""
left=$(for exe in /proc/[0-9]*/exe; do
    target=$(readlink "$exe" 2>/dev/null) || continue
    case "$target" in
        /usr/bin/tracevisor | /usr/bin/tracesd | "/usr/bin/tracevisor (deleted)" | "/usr/bin/tracesd (deleted)")
            echo "${exe%/exe} $target" ;;
    esac
done)
[ -z "$left" ] || fail "processes left after removal: $left"
check "no tracevisor or tracesd process is running"
[ -f /etc/tracevisor/tracevisor.toml ] && [ -f /etc/tracevisor/tracesd.toml ] ||
    fail "removal deleted the configuration"
check "configuration kept by remove: $(ls /etc/tracevisor | tr '\n' ' ')"

step "purge the packages"
dpkg --purge tracesd tracevisor
[ ! -e /etc/tracevisor ] || fail "/etc/tracevisor is still there: $(ls -A /etc/tracevisor)"
check "/etc/tracevisor is gone"
for dir in /var/lib/tracevisor /var/lib/tracesd; do
    [ ! -e "$dir" ] || fail "$dir is still there"
done
check "/var/lib/tracevisor and /var/lib/tracesd are gone"
for package in tracevisor tracesd; do
    dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qv '^not-installed$' &&
        fail "$package is still known to dpkg"
done
check "dpkg knows neither package"
