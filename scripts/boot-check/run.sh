#!/usr/bin/env bash
# Boots a real systemd (PID 1 of a throwaway container) and puts the miner service through
# what an operator does: install.sh, edit the config, restart, run jobs, `aitbc-miner status`,
# the README's operations commands, uninstall. The checks themselves are in inside.sh.
#
# Why a container: the machines here (and CI) do not run systemd as PID 1, so
# `systemd-analyze` can only read the unit; this is where it is started for real.
# The container is this host's /usr (read-only, with a tmpfs overlay that takes install.sh's
# writes) over an empty tmpfs root, so the host is left exactly as it was.
#
# Usage: scripts/boot-check/run.sh [BINARY_DIR]   (default: target/release; needs root and
# systemd-nspawn from the systemd-container package). Exits 0 only when inside.sh says PASS.
# With SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 (read by systemd-nspawn) the container gets the
# unified cgroup hierarchy, as production Debian 12 has, even on a hybrid host: systemd then
# delegates the service's cgroup for real (without controllers, which the host keeps on v1).
# With BOOT_CHECK_DEB=path/to/aitbc-miner.deb the service is installed with dpkg instead of
# install.sh (the container gets a copy of this host's dpkg database, so dependencies resolve).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=$(cd "${1:-$repo/target/release}" && pwd)

die() { echo "boot-check: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "needs root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || die "needs systemd-nspawn: apt-get install systemd-container"
for b in aitbc-miner aitbc-coordinator; do
  [ -x "$bin_dir/$b" ] || die "no $bin_dir/$b (cargo build --release --bins)"
done

work=$(mktemp -d /tmp/aitbc-boot-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out" "$work/usr-upper"
pkg_binds=()
if [ -n "${BOOT_CHECK_DEB:-}" ]; then
  [ -f "$BOOT_CHECK_DEB" ] || die "BOOT_CHECK_DEB=$BOOT_CHECK_DEB is not a file"
  cp -a /var/lib/dpkg "$work/dpkg"
  # Its overrides name this host's groups, which the container's empty /etc does not have.
  : >"$work/dpkg/statoverride"
  pkg_binds=(--bind="$work/dpkg:/var/lib/dpkg" --bind-ro="$(realpath "$BOOT_CHECK_DEB"):/run/aitbc/pkg.deb")
fi
cat >"$work/boot-check.service" <<'UNIT'
[Unit]
Description=aitbc-miner boot check (scripts/boot-check/inside.sh)
[Service]
Type=oneshot
ExecStart=/bin/bash /run/aitbc/src/scripts/boot-check/inside.sh
ExecStopPost=/bin/systemctl poweroff --no-block
UNIT

# --register=no and --keep-unit: there is no host systemd (no machined, no scopes) to ask.
# bpf(2) and CAP_BPF/CAP_PERFMON: systemd's IP firewall (IPAddressDeny=) is a cgroup BPF
# program; without them systemd in the container silently runs units without it.
status=0
timeout "${BOOT_CHECK_TIMEOUT_SECS:-300}" systemd-nspawn --quiet \
  --directory=/ --volatile=yes --overlay="/usr:$work/usr-upper:/usr" \
  --register=no --keep-unit --console=pipe --machine=aitbc-boot-check \
  --system-call-filter=bpf --capability=CAP_BPF,CAP_PERFMON \
  --bind-ro="$repo:/run/aitbc/src" \
  --bind-ro="$bin_dir/aitbc-miner:/run/aitbc/bin/aitbc-miner" \
  --bind-ro="$bin_dir/aitbc-coordinator:/run/aitbc/bin/aitbc-coordinator" \
  --bind="$work/out:/run/aitbc/out" "${pkg_binds[@]}" \
  --bind-ro="$work/boot-check.service:/etc/systemd/system/boot-check.service" \
  --boot systemd.wants=boot-check.service systemd.firstboot=off >"$work/console" 2>&1 || status=$?

cat "$work/out/log" 2>/dev/null || { echo "boot-check: the container wrote no log" >&2; cat "$work/console" >&2; }
[ "$status" -eq 0 ] || die "systemd-nspawn exited $status (124: timed out)"
grep -qx 'BOOT-CHECK: PASS' "$work/out/log"
