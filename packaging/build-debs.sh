#!/usr/bin/env bash
# Builds the Debian packages `tracevisor` (coordinator) and `tracesd` (agent) from the workspace
# with cargo-deb (release profile), checks their systemd units with `systemd-analyze verify`,
# and runs lintian on them: any lintian error fails the build (warnings are listed).
#
# Usage: packaging/build-debs.sh [OUTPUT_DIR]     (default: $CARGO_TARGET_DIR/debian)
#
# Missing tools are installed when running as root: cargo-deb (cargo install), lintian,
# dpkg-dev and systemd (apt-get). The build shares cargo's target directory with the rest of
# the project ($CARGO_TARGET_DIR, default ~/.cache/tracevisor-target) and builds the release
# binaries of the whole workspace, as the benchmarks do, so the two reuse each other's build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tracevisor-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
OUT="${1:-$CARGO_TARGET_DIR/debian}"
PACKAGES=(tracevisor tracesd)

step() { printf '\n==> %s\n' "$*"; }
die() { echo "build-debs.sh: $*" >&2; exit 1; }

need_apt=()
command -v lintian >/dev/null || need_apt+=(lintian)
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need_apt[*]}: install them (apt-get install ${need_apt[*]}) or run as root"
    step "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if ! cargo deb --version >/dev/null 2>&1; then
    step "installing cargo-deb"
    cargo install cargo-deb --locked
fi

step "release build"
cargo build --release --locked --workspace --bins

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
for package in "${PACKAGES[@]}"; do
    rm -f "$OUT/${package}"_*.deb
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The Debian synopsis of each package (one line, under 80 characters, not starting with the
# package name: lintian's description-starts-with-package-name is an error). cargo-deb only
# takes the crate's `description`, so the control file is finished here (with md5sums).
synopsis() {
    case "$1" in
        tracevisor) echo "coordinator of the Tracevisor control plane for LTTng tracing" ;;
        tracesd) echo "agent of the Tracevisor control plane for LTTng tracing" ;;
    esac
}

finish_deb() {
    local deb=$1 package=$2 tree="$WORK/tree-$2"
    rm -rf "$tree"
    dpkg-deb --raw-extract "$deb" "$tree"
    cargo metadata --format-version 1 --no-deps --locked |
        SYNOPSIS="$(synopsis "$package")" PACKAGE="$package" CONTROL="$tree/DEBIAN/control" python3 -c '
import json, os, sys, textwrap
meta = json.load(sys.stdin)
pkg = next(p for p in meta["packages"] if (p.get("metadata") or {}).get("deb", {}).get("name") == os.environ["PACKAGE"])
extended = pkg["metadata"]["deb"]["extended-description"]
synopsis = os.environ["SYNOPSIS"]
assert 0 < len(synopsis) < 80, synopsis
lines, in_description = [], False
for line in open(os.environ["CONTROL"]).read().splitlines():
    if line.startswith("Description:"):
        in_description = True
        lines.append("Description: " + synopsis)
        lines.extend(" " + l for l in textwrap.wrap(extended, 79))
    elif in_description and line.startswith(" "):
        continue
    else:
        in_description = False
        lines.append(line)
open(os.environ["CONTROL"], "w").write("\n".join(lines) + "\n")
'
    # md5sums of every file but the conffiles (what dh_md5sums writes).
    (
        cd "$tree"
        find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
            while read -r file; do
                if ! grep -qxF "/$file" DEBIAN/conffiles 2>/dev/null; then
                    md5sum "$file"
                fi
            done >DEBIAN/md5sums
    )
    chmod 0644 "$tree/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb" >/dev/null
}

for package in "${PACKAGES[@]}"; do
    step "cargo deb -p $package"
    deb=$(cargo deb -p "$package" --no-build --locked -o "$OUT" | tail -n 1)
    [ -f "$deb" ] || die "cargo deb did not report a package file (got: $deb)"
    finish_deb "$deb" "$package"
    dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
done

step "systemd-analyze verify"
# Offline: a scratch root holding the system's units and the packages' files, so the units
# are checked against the packaged binaries (lttng-relayd from this machine when installed).
VROOT="$WORK/root"
mkdir -p "$VROOT/usr/lib/systemd/system" "$VROOT/usr/bin"
cp -a /lib/systemd/system/. "$VROOT/usr/lib/systemd/system/"
for package in "${PACKAGES[@]}"; do
    dpkg-deb --extract "$OUT/${package}"_*.deb "$VROOT"
done
if [ -x /usr/bin/lttng-relayd ]; then
    cp /usr/bin/lttng-relayd "$VROOT/usr/bin/"
else
    printf '#!/bin/sh\n' >"$VROOT/usr/bin/lttng-relayd"
    chmod 0755 "$VROOT/usr/bin/lttng-relayd"
fi
units=$(cd "$VROOT/usr/lib/systemd/system" && for package in "${PACKAGES[@]}"; do
    dpkg-deb --contents "$OUT/${package}"_*.deb | grep -o 'usr/lib/systemd/system/[^ ]*\.service$' | xargs -n1 basename
done)
# shellcheck disable=SC2086 # one word per unit
verify=$(systemd-analyze verify --man=no --root="$VROOT" $units 2>&1) || {
    echo "$verify"
    die "systemd-analyze verify failed"
}
if [ -n "$verify" ]; then
    echo "$verify"
    die "systemd-analyze verify printed warnings"
fi
echo "units accepted:" $units

step "lintian"
set +e
lintian --tag-display-limit 0 --fail-on error "$OUT"/tracevisor_*.deb "$OUT"/tracesd_*.deb 2>&1 |
    grep -v '^running with root privileges is not recommended' >"$WORK/lintian.txt"
status=${PIPESTATUS[0]}
set -e
cat "$WORK/lintian.txt"
errors=$(grep -c '^E:' "$WORK/lintian.txt" || true)
warnings=$(grep -c '^W:' "$WORK/lintian.txt" || true)
echo "lintian: $errors error(s), $warnings warning(s)"
[ "$status" = 0 ] && [ "$errors" = 0 ] || die "lintian reported errors"

step "packages in $OUT"
ls -l "$OUT"/tracevisor_*.deb "$OUT"/tracesd_*.deb
