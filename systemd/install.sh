#!/usr/bin/env bash
# install.sh: installs, configures or removes the AITBC miner as a systemd service.
#
#   systemd/install.sh [--no-start] [--binary PATH]       install (or update) and start
#   systemd/install.sh --configure [--no-start]            configure what is already in place
#   systemd/install.sh --deconfigure                       stop, disable, drop the generated drop-in
#   systemd/install.sh --uninstall [--purge]               remove (--purge: config, spool and log too)
#
# DESTDIR=/some/root installs into that directory instead of /: the user is created in its
# etc/passwd with `systemd-sysusers --root`, and neither the host's users nor its systemd are
# touched. Safe to run twice: the second run changes nothing but the binary and the files this
# script owns (same bytes), and never touches an existing /etc/aitbc/miner.conf.
#
# The Debian package runs the installed copy (/usr/lib/aitbc-miner/install.sh) from its
# maintainer scripts: postinst `--configure`, prerm `--deconfigure`. One source of truth for
# the user, the directories, the default config, the log file and the Coordinator drop-in.
#
# What it must never do: overwrite or truncate an operator's config or log, remove the config
# or the spool without --purge, or touch the host when DESTDIR is set.
set -euo pipefail

PROG=install.sh
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF'
usage: install.sh [--no-start] [--binary PATH]
       install.sh --configure [--no-start] [--keep-state]
       install.sh --deconfigure
       install.sh --uninstall [--purge]

  (none)         install the binary, units, logrotate and sysusers files, then configure
  --configure    only configure what is installed: user, /etc/aitbc, default config if none,
                 log file, the Coordinator drop-in, then enable and (re)start the service
  --deconfigure  stop and disable the service, remove the generated drop-in
  --uninstall    stop, disable and remove the installed files; keeps /etc/aitbc/miner.conf,
                 /var/lib/aitbc-miner and the log unless --purge is given
  --no-start     never call systemctl; print what to run instead
  --keep-state   (with --configure) do not enable; restart only if already running (upgrades)
  --binary PATH  the aitbc-miner binary to install (default: target/release/aitbc-miner)

Environment: DESTDIR=DIR installs into DIR (a scratch root) and never touches the host.
EOF
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

mode=install
purge=0
no_start=0
keep_state=0
binary=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --uninstall) mode=uninstall ;;
    --configure) mode=configure ;;
    --deconfigure) mode=deconfigure ;;
    --purge) purge=1 ;;
    --no-start) no_start=1 ;;
    --keep-state) keep_state=1 ;;
    --binary)
      [ "$#" -ge 2 ] || die "--binary needs a path, e.g. --binary target/release/aitbc-miner"
      binary="$2"
      shift
      ;;
    --binary=*) binary="${1#--binary=}" ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown argument: $1"
      ;;
  esac
  shift
done
[ "$purge" -eq 0 ] || [ "$mode" = uninstall ] || die "--purge goes with --uninstall"
[ "$keep_state" -eq 0 ] || [ "$mode" = configure ] || die "--keep-state goes with --configure"
[ -z "$binary" ] || [ "$mode" = install ] || die "--binary goes with an install"

# --- Where things go ------------------------------------------------------------------------
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
USER_NAME=aitbc-miner
UNIT=aitbc-miner.service
NVIDIA_UNIT=aitbc-miner-nvidia.service
BIN=/usr/bin/aitbc-miner
UNIT_DIR=/etc/systemd/system
DROPIN_DIR=/etc/systemd/system/aitbc-miner.service.d
DROPIN=$DROPIN_DIR/50-coordinator.conf
LOGROTATE=/etc/logrotate.d/aitbc-miner
SYSUSERS=/usr/lib/sysusers.d/aitbc-miner.conf
LIBDIR=/usr/lib/aitbc-miner
CONF_DIR=/etc/aitbc
CONF=/etc/aitbc/miner.conf
STATE_DIR=/var/lib/aitbc-miner
LOG=/var/log/aitbc-miner.log

d() { printf '%s%s' "$DESTDIR" "$1"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# systemd is the running init here, and we are installing into / (not a scratch root).
systemd_here() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# A path the aitbc Debian package owns (an install.sh install must not fight dpkg).
owned_by_package() {
  [ -z "$DESTDIR" ] && command -v dpkg-query >/dev/null 2>&1 &&
    dpkg-query -S "$1" >/dev/null 2>&1
}

if ! is_root; then
  [ -n "$DESTDIR" ] || die "run as root (or set DESTDIR to install into a scratch root)"
fi

# --- Steps ----------------------------------------------------------------------------------

# Copies $1 to $2 with mode $3, owned by root, only when the bytes differ (so a rerun leaves
# timestamps alone). Replaces atomically: a running binary is never written in place.
put() {
  local src="$1" dst
  dst="$(d "$2")"
  mkdir -p "$(dirname "$dst")"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    chmod "$3" "$dst"
  else
    install -m "$3" "$src" "$dst.new.$$"
    mv -f "$dst.new.$$" "$dst"
    say "installed $2"
  fi
  if is_root; then chown 0:0 "$dst"; fi
}

# Creates the system user and group from the sysusers.d file (systemd-sysusers), or with
# useradd where systemd-sysusers is missing (only outside DESTDIR).
ensure_user() {
  local spec
  spec="$(d "$SYSUSERS")"
  [ -f "$spec" ] || spec="$HERE/aitbc-miner.sysusers"
  if [ -n "$DESTDIR" ]; then
    command -v systemd-sysusers >/dev/null 2>&1 ||
      die "systemd-sysusers is needed to create the user inside DESTDIR (apt-get install systemd)"
    mkdir -p "$DESTDIR/etc"
    systemd-sysusers --root "$DESTDIR" "$spec" >/dev/null 2>&1 ||
      die "systemd-sysusers --root $DESTDIR $spec failed"
    return
  fi
  if getent passwd "$USER_NAME" >/dev/null; then
    return
  fi
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$spec" || die "systemd-sysusers $spec failed"
  else
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "AITBC compute miner" "$USER_NAME" ||
      die "useradd $USER_NAME failed"
  fi
  say "created system user $USER_NAME"
}

# uid:gid of the service user, from DESTDIR's passwd or the host's.
user_ids() {
  local line
  if [ -n "$DESTDIR" ]; then
    line="$(grep "^$USER_NAME:" "$DESTDIR/etc/passwd" || true)"
  else
    line="$(getent passwd "$USER_NAME" || true)"
  fi
  [ -n "$line" ] || die "user $USER_NAME does not exist after creating it"
  local name pw uid gid
  IFS=: read -r name pw uid gid _ <<<"$line"
  [ -n "$uid" ] && [ -n "$gid" ] || die "cannot read the uid and gid of $USER_NAME from: $line"
  printf '%s:%s' "$uid" "$gid"
}

own() {
  # Files owned by the service user; as non-root in a DESTDIR the owner cannot be set.
  # (The ids are read first: a failure inside "$(...)" would not stop `set -e`.)
  local ids
  if is_root; then
    ids="$(user_ids)" || exit 1
    chown "$ids" "$@" || die "chown $ids $*"
  fi
}

ensure_config() {
  mkdir -p "$(d "$CONF_DIR")"
  chmod 0755 "$(d "$CONF_DIR")"
  if is_root; then chown 0:0 "$(d "$CONF_DIR")"; fi
  if [ -e "$(d "$CONF")" ]; then
    say "kept $CONF (an existing config is never changed)"
    return
  fi
  local bin tmp
  bin="$(d "$BIN")"
  [ -x "$bin" ] || die "$BIN is missing: cannot write the default config with it"
  tmp="$(d "$CONF").new.$$"
  (umask 077 && "$bin" example-config >"$tmp") || {
    rm -f "$tmp"
    die "$BIN example-config failed"
  }
  chmod 0600 "$tmp"
  own "$tmp"
  mv "$tmp" "$(d "$CONF")"
  say "wrote the default $CONF (mode 0600): set COORD_URL, WALLET_ADDR and API_KEY in it"
}

ensure_log() {
  local log
  log="$(d "$LOG")"
  mkdir -p "$(dirname "$log")"
  # Created if missing, never truncated; owner and mode set either way, so a log left by the
  # guide's root-run installer becomes writable by the service.
  [ -e "$log" ] || : >>"$log"
  chmod 0600 "$log"
  own "$log"
}

# COORD_URL from the config file: the last assignment, quotes and trailing comment removed.
coord_url() {
  local line
  line="$(grep -E '^[[:space:]]*(export[[:space:]]+)?COORD_URL=' "$(d "$CONF")" 2>/dev/null | tail -n 1 || true)"
  line="${line#*COORD_URL=}"
  case "$line" in
    \"*) line="${line#\"}" && line="${line%%\"*}" ;;
    \'*) line="${line#\'}" && line="${line%%\'*}" ;;
    *) line="${line%%#*}" && line="${line%%[[:space:]]*}" ;;
  esac
  printf '%s' "$line"
}

# The host part of a URL: scheme, user info, port and path removed; [v6] unbracketed.
url_host() {
  local rest="${1#*://}"
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  rest="${rest##*@}"
  case "$rest" in
    \[*) rest="${rest#[}" && rest="${rest%%]*}" ;;
    *) rest="${rest%%:*}" ;;
  esac
  printf '%s' "$rest"
}

# The first word of each input line, sorted, unique, space-separated (plain bash and
# coreutils: no awk, whose /usr/bin/awk is an alternatives link that a minimal root may lack).
first_words() {
  local first _rest
  while read -r first _rest; do
    [ -n "$first" ] && printf '%s\n' "$first"
  done | sort -u | paste -sd ' ' -
}

# The addresses on resolv.conf's `nameserver` lines (a %zone suffix removed), like first_words.
nameservers() {
  local key addr _rest
  while read -r key addr _rest; do
    [ "$key" = nameserver ] && [ -n "$addr" ] && printf '%s\n' "${addr%%%*}"
  done | sort -u | paste -sd ' ' -
}

# Writes aitbc-miner.service.d/50-coordinator.conf: IPAddressAllow= for the Coordinator's
# addresses (getent ahosts) and this host's nameservers (/etc/resolv.conf), on top of the
# unit's IPAddressDeny=any + IPAddressAllow=localhost. Regenerated on every run.
write_dropin() {
  local url host addrs ns tmp dst
  url="$(coord_url)"
  host="$(url_host "$url")"
  addrs=""
  if [ -n "$host" ]; then
    addrs="$(getent ahosts "$host" 2>/dev/null | first_words || true)"
  fi
  ns="$(nameservers </etc/resolv.conf 2>/dev/null || true)"
  dst="$(d "$DROPIN")"
  mkdir -p "$(dirname "$dst")"
  tmp="$dst.new.$$"
  {
    echo "# Written by install.sh from COORD_URL in $CONF; rewritten on every run."
    echo "# After changing COORD_URL (or when its addresses change), rerun"
    echo "# /usr/lib/aitbc-miner/install.sh --configure, or edit this file and run"
    echo "# systemctl daemon-reload && systemctl restart aitbc-miner"
    echo "[Service]"
    if [ -n "$addrs" ]; then
      echo "# the Coordinator: $host (getent ahosts)"
      echo "IPAddressAllow=$addrs"
    else
      echo "# the Coordinator: ${host:-<no COORD_URL>} did not resolve here; only loopback is allowed"
    fi
    if [ -n "$ns" ]; then
      echo "# DNS: the nameservers of /etc/resolv.conf"
      echo "IPAddressAllow=$ns"
    fi
  } >"$tmp"
  chmod 0644 "$tmp"
  if is_root; then chown 0:0 "$tmp"; fi
  if [ -f "$dst" ] && cmp -s "$tmp" "$dst"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$dst"
    say "wrote $DROPIN (Coordinator ${host:-unset}: ${addrs:-not resolved}; nameservers: ${ns:-none})"
  fi
  [ -n "$addrs" ] || say "warning: COORD_URL host '${host}' did not resolve: the service can reach only loopback until you rerun this script"
}

# Whether policy-rc.d (chroots, image builds) forbids starting services, as invoke-rc.d asks.
start_allowed() {
  [ -x /usr/sbin/policy-rc.d ] || return 0
  local rc=0
  /usr/sbin/policy-rc.d "$UNIT" start >/dev/null 2>&1 || rc=$?
  [ "$rc" -ne 101 ]
}

start_service() {
  if [ "$no_start" -eq 1 ] || ! systemd_here; then
    local why="--no-start"
    [ "$no_start" -eq 1 ] || why="systemd is not running here"
    [ -z "$DESTDIR" ] || why="DESTDIR is set"
    say "not starting the service ($why); on the target run:"
    say "  systemctl daemon-reload && systemctl enable --now $UNIT"
    return
  fi
  systemctl daemon-reload
  if [ "$keep_state" -eq 1 ]; then
    # An upgrade: enabled or not is the operator's choice; a running miner gets the new bits.
    systemctl try-restart "$UNIT"
    say "restarted $UNIT if it was running"
    return
  fi
  systemctl enable "$UNIT" >/dev/null 2>&1 || die "systemctl enable $UNIT failed"
  if ! start_allowed; then
    say "enabled $UNIT; policy-rc.d forbids starting services here"
    return
  fi
  # restart, not start: a rerun puts a new binary or drop-in to work.
  if ! systemctl restart "$UNIT"; then
    # From the package's postinst a service that will not start must not leave the package
    # half-configured: say so and go on. A manual install fails loudly.
    [ "$mode" = configure ] || die "systemctl restart $UNIT failed: see journalctl -u aitbc-miner"
    say "warning: $UNIT did not start: see journalctl -u aitbc-miner and aitbc-miner doctor"
    return
  fi
  say "enabled and (re)started $UNIT; follow it with: journalctl -u aitbc-miner -f"
}

stop_service() {
  if systemd_here; then
    systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
    systemctl stop "$NVIDIA_UNIT" >/dev/null 2>&1 || true
    say "stopped and disabled $UNIT"
  fi
}

remove() {
  local p
  for p in "$@"; do
    if [ -e "$(d "$p")" ] || [ -L "$(d "$p")" ]; then
      rm -f "$(d "$p")"
      say "removed $p"
    fi
  done
}

configure() {
  ensure_user
  ensure_config
  ensure_log
  write_dropin
  start_service
}

# --- Modes ----------------------------------------------------------------------------------
case "$mode" in
  install)
    owned_by_package "$BIN" &&
      die "$BIN belongs to the aitbc-miner Debian package: upgrade or remove it with apt, not this script"
    [ -n "$binary" ] || binary="$REPO/target/release/aitbc-miner"
    [ -f "$binary" ] || die "no binary at $binary: build it (cargo build --release) or pass --binary PATH"
    for f in aitbc-miner.service aitbc-miner-nvidia.service aitbc-miner.logrotate \
      aitbc-miner.sysusers README.md; do
      [ -f "$HERE/$f" ] || die "$HERE/$f is missing: run install.sh from the source tree's systemd/ directory"
    done
    put "$HERE/aitbc-miner.sysusers" "$SYSUSERS" 0644
    put "$binary" "$BIN" 0755
    put "$HERE/aitbc-miner.service" "$UNIT_DIR/$UNIT" 0644
    put "$HERE/aitbc-miner-nvidia.service" "$UNIT_DIR/$NVIDIA_UNIT" 0644
    put "$HERE/aitbc-miner.logrotate" "$LOGROTATE" 0644
    put "$HERE/install.sh" "$LIBDIR/install.sh" 0755
    put "$HERE/README.md" "$LIBDIR/README.md" 0644
    configure
    ;;
  configure)
    configure
    ;;
  deconfigure)
    stop_service
    remove "$DROPIN"
    rmdir "$(d "$DROPIN_DIR")" 2>/dev/null || true
    ;;
  uninstall)
    owned_by_package "$BIN" &&
      die "$BIN belongs to the aitbc-miner Debian package: use apt remove (or apt purge) aitbc-miner"
    stop_service
    remove "$BIN" "$UNIT_DIR/$UNIT" "$UNIT_DIR/$NVIDIA_UNIT" "$DROPIN" "$LOGROTATE" "$SYSUSERS" \
      "$LIBDIR/install.sh" "$LIBDIR/README.md"
    rmdir "$(d "$DROPIN_DIR")" "$(d "$LIBDIR")" 2>/dev/null || true
    if systemd_here; then systemctl daemon-reload; fi
    if [ "$purge" -eq 1 ]; then
      remove "$CONF"
      rmdir "$(d "$CONF_DIR")" 2>/dev/null || true
      if [ -e "$(d "$STATE_DIR")" ]; then
        rm -rf "$(d "$STATE_DIR")"
        say "removed $STATE_DIR (the spool)"
      fi
      rm -f "$(d "$LOG")" "$(d "$LOG")".[0-9]*
      say "purged the config, the spool and the log; the user $USER_NAME is kept (files it owned elsewhere stay owned)"
    else
      say "kept $CONF, $STATE_DIR (the spool) and $LOG; --purge removes them"
    fi
    ;;
esac
