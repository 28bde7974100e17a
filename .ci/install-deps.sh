#!/bin/sh
# Installs, as root on Debian 12, every system package the Tracevisor tests need (LTTng,
# lttng-ust toolchain, babeltrace, lttng-analyses, OpenSSH), then checks each tool works.
# Idempotent: only missing packages are installed. `--check` installs nothing and only
# reports. `--browser` adds what the dashboard's browser tests need (Chromium, its WebDriver
# and python3-selenium, all from Debian: no browser download). Exits non-zero if anything is
# still missing.
set -eu

PACKAGES="
lttng-tools
liblttng-ust-dev
babeltrace2
babeltrace
python3
python3-babeltrace
python3-lttnganalyses
python3-prometheus-client
openssh-server
openssh-client
iproute2
procps
gcc
libc6-dev
pkg-config
curl
ca-certificates
"

check_only=0
browser=0
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        --browser) browser=1 ;;
        *) echo "usage: $0 [--check] [--browser]" >&2; exit 2 ;;
    esac
done
if [ "$browser" = 1 ]; then
    PACKAGES="$PACKAGES chromium chromium-driver python3-selenium"
fi

say() { printf 'install-deps: %s\n' "$*"; }

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=""
for p in $PACKAGES; do
    if installed "$p"; then
        say "present  $p ($(dpkg-query -W -f='${Version}' "$p"))"
    else
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    if [ "$check_only" = 1 ]; then
        say "missing:$missing"
    else
        if [ "$(id -u)" != 0 ]; then
            say "must run as root to install:$missing" >&2
            exit 1
        fi
        say "installing:$missing"
        # Without systemd (containers, CI), keep package scripts from starting daemons
        # (sshd, lttng-sessiond): the tests start their own.
        policy_rc=""
        if [ ! -d /run/systemd/system ] && [ ! -e /usr/sbin/policy-rc.d ]; then
            policy_rc=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
            chmod 755 "$policy_rc"
            trap 'rm -f "$policy_rc"' EXIT
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086 # word splitting of the package list is intended
        apt-get install -y -q --no-install-recommends $missing
        for p in $missing; do
            say "installed $p ($(dpkg-query -W -f='${Version}' "$p"))"
        done
    fi
else
    say "all packages already installed, nothing to do"
fi

if [ "$check_only" = 0 ] && [ "$(id -u)" = 0 ]; then
    mkdir -p /run/sshd   # sshd's privilege separation directory
fi

# Check what the tests actually call.
failed=0
need() {
    what=$1
    shift
    if "$@" >/dev/null 2>&1; then
        say "ok       $what"
    else
        say "BROKEN   $what" >&2
        failed=1
    fi
}
for cmd in lttng lttng-sessiond lttng-relayd babeltrace2 babeltrace lttng-cputop-mi \
    lttng-iousagetop-mi lttng-iolatencystats-mi ssh ssh-keygen gcc pkg-config curl kill ss; do
    need "$cmd" sh -c "command -v $cmd || test -x /usr/sbin/$cmd"
done
need "/usr/sbin/sshd" test -x /usr/sbin/sshd
need "lttng-ust headers and library (pkg-config lttng-ust)" pkg-config --exists lttng-ust
need "python3-babeltrace CTF writer (/usr/bin/python3)" /usr/bin/python3 -c "from babeltrace import CTFWriter"
need "lttnganalyses module (/usr/bin/python3)" /usr/bin/python3 -c "import lttnganalyses"
need "prometheus_client parser (/usr/bin/python3)" /usr/bin/python3 -c "import prometheus_client.parser"
if [ "$browser" = 1 ]; then
    need "chromium" sh -c "command -v chromium"
    need "chromedriver" sh -c "command -v chromedriver"
    need "python3-selenium (/usr/bin/python3)" /usr/bin/python3 -c "import selenium.webdriver"
fi

if [ -d /proc/lttng ]; then
    say "kernel tracer: available (lttng-modules loaded)"
else
    say "kernel tracer: not available (no lttng-modules); kernel-tracing tests use generated traces"
fi

if [ "$failed" != 0 ] || { [ "$check_only" = 1 ] && [ -n "$missing" ]; }; then
    say "FAILED: some dependencies are missing or broken" >&2
    exit 1
fi
say "done"
