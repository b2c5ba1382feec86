#!/bin/bash
# Runs as a oneshot service inside the container run.sh boots (systemd is PID 1 here). It does
# what an operator does, in order (with install.sh, or with the Debian package when run.sh was
# given one: /run/aitbc/pkg.deb), and prints `ok`/`FAIL` per step, then `BOOT-CHECK: PASS`
# only when every step passed. It must never touch anything outside the container: the
# repository and the binaries are read-only binds, the only writable bind is /run/aitbc/out.
set -uo pipefail
exec >/run/aitbc/out/log 2>&1
src=/run/aitbc/src
bin=/run/aitbc/bin
failed=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failed=1; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# Waits (bounded) until a command succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || { bad "$what (not within ${secs}s)"; return 1; }
    sleep 0.2
  done
  ok "$what"
}
show() { systemctl show aitbc-miner.service -p "$1" --value; }

echo "== systemd $(systemctl --version | head -1 | cut -d' ' -f2), kernel $(uname -r)"

unified=0
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && unified=1
echo "== a Coordinator to mine for (a transient service on 127.0.0.1, a free port)"
mkdir -p /var/lib/coord
db=/var/lib/coord/coord.db
miner_key=$("$bin/aitbc-coordinator" keys add --db "$db" --scope miner --name boot-check)
client_key=$("$bin/aitbc-coordinator" keys add --db "$db" --scope client --name boot-check)
# Port 0: the container shares this host's network, where 8080 may be taken. All addresses:
# the IPAddressDeny check below reaches it on this host's own non-loopback address too.
systemd-run --quiet --unit=coord "$bin/aitbc-coordinator" serve --listen 0.0.0.0:0 --db "$db"
coord_up() {
  port=$(journalctl -u coord -o cat --no-pager | sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' | tail -1)
  coord="127.0.0.1:$port"
  [ -n "$port" ] || return 1
  [ -n "$coord" ] && curl -fsS "http://$coord/v1/health"
}
wait_for "coordinator answers" 20 coord_up
echo "   at http://$coord"

deb=/run/aitbc/pkg.deb
if [ -f "$deb" ]; then
  echo "== the Debian package: dpkg -i runs postinst (install.sh --configure) under systemd"
  # This host's image forbids maintainer scripts to start services (policy-rc.d exits 101),
  # which install.sh honours; a Debian machine has none. Only the container's /usr overlay
  # loses it.
  rm -f /usr/sbin/policy-rc.d
  check "dpkg -i exits 0" dpkg -i "$deb"
  check "the user exists" getent passwd aitbc-miner
  check "the unit is enabled" systemctl is-enabled --quiet aitbc-miner.service
  check "the service is active with the default config" systemctl is-active --quiet aitbc-miner.service
  check "config exists with mode 600" test "$(stat -c %a /etc/aitbc/miner.conf)" = 600
  check "config belongs to aitbc-miner" test "$(stat -c %U /etc/aitbc/miner.conf)" = aitbc-miner
  check "reinstalling the same package exits 0" dpkg -i "$deb"
else
  echo "== install.sh, as an operator runs it"
  check "install.sh exits 0" bash "$src/systemd/install.sh" --binary "$bin/aitbc-miner"
  check "the unit is enabled" systemctl is-enabled --quiet aitbc-miner.service
  check "config exists with mode 600" test "$(stat -c %a /etc/aitbc/miner.conf)" = 600
  check "the second run exits 0" bash "$src/systemd/install.sh" --binary "$bin/aitbc-miner"
fi

echo "== edit the config, then the README's restart"
sed -i -e "s|^API_KEY=.*|API_KEY=\"$miner_key\"|" \
  -e 's|^MINER_ID=.*|MINER_ID="boot-check"|' -e "s|^COORD_URL=.*|COORD_URL=\"http://$coord\"|" \
  -e 's|^HEARTBEAT_SECS=.*|HEARTBEAT_SECS=1|' \
  -e 's|^MAX_CONCURRENCY=.*|MAX_CONCURRENCY=2|' \
  -e 's|^LOG_FILE=.*|LOG_FILE="/var/log/aitbc-miner.log"|' /etc/aitbc/miner.conf
check "systemctl restart aitbc-miner.service" systemctl restart aitbc-miner.service
check "active (running) after READY=1" test "$(show ActiveState)/$(show SubState)" = active/running
echo "   User=$(show User) Type=$(show Type) WatchdogUSec=$(show WatchdogUSec) StatusText=$(show StatusText)"
check "runs as aitbc-miner" test "$(ps -o user= -p "$(show MainPID)")" = aitbc-miner
echo "   cgroups of the main process: $(tr '\n' ' ' </proc/"$(show MainPID)"/cgroup)"
journalctl -u aitbc-miner.service --no-pager -o cat | grep -E 'workers run in|no cgroup subtree' | tail -1
if [ "$unified" = 1 ]; then
  # The unified hierarchy (run.sh with SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1): systemd delegates
  # the service's cgroup, and the supervisor must have moved itself into its own leaf.
  svc=/sys/fs/cgroup/system.slice/aitbc-miner.service
  check "cgroup v2: the supervisor moved into its delegated leaf" \
    grep -qx '0::/system.slice/aitbc-miner.service/supervisor' /proc/"$(show MainPID)"/cgroup
  check "cgroup v2: the workers' subtree exists beside it" test -d "$svc/workers"
  check "cgroup v2: the journal says so" \
    journalctl -u aitbc-miner.service -o cat --no-pager -g 'workers run in cgroup v2 .*delegated'
fi

echo "== jobs through the service"
for i in 1 2 3 4; do
  "$bin/aitbc-coordinator" jobs submit --url "http://$coord" --key "$client_key" --workload torch_bench \
    --params '{"n":64,"iters":2}' --reward 5 >/dev/null || bad "submit job $i"
done
credits() {
  "$bin/aitbc-coordinator" wallet balance --url "http://$coord" --wallet wallet_demo | grep -Eq '"credits": *4\b'
}
wait_for "4 jobs credited to the wallet" 90 credits
"$bin/aitbc-coordinator" wallet balance --url "http://$coord" --wallet wallet_demo
check "aitbc-miner status answers" aitbc-miner status
aitbc-miner status --metrics | head -20
check "the watchdog was pinged" test -n "$(show WatchdogTimestamp)"
check "no automatic restart happened" test "$(show NRestarts)" = 0
check "LOG_FILE=/var/log/aitbc-miner.log gets the lines too" grep -q 'proof accepted' /var/log/aitbc-miner.log
check "journald gets lines without a second timestamp" \
  test -z "$(journalctl -u aitbc-miner.service -o cat --no-pager | grep -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T')"
check "journalctl -p warning filters by the <N> priority" \
  test -z "$(journalctl -u aitbc-miner.service -o cat -p warning --no-pager | grep -E ' INFO ')"
journalctl -u aitbc-miner.service --no-pager -o cat | tail -15
echo "-- warnings and worse:"
journalctl -u aitbc-miner.service --no-pager -p warning -o cat | tail -10
systemd-analyze security aitbc-miner.service --no-pager | tail -1

own_ip=$(ip -4 -o addr show scope global 2>/dev/null | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -1)
if [ -n "$own_ip" ]; then
  echo "== IPAddressDeny: the service reaches loopback and the drop-in's addresses only"
  check "outside the service, the Coordinator answers on $own_ip" \
    curl -fsS -o /dev/null "http://$own_ip:$port/v1/health"
  sed -i "s|^COORD_URL=.*|COORD_URL=\"http://$own_ip:$port\"|" /etc/aitbc/miner.conf
  systemctl restart aitbc-miner.service
  # The first heartbeat fails when its connect times out (10 s): the filter drops, not refuses.
  heartbeat_is() { aitbc-miner status --json | jq -e ".heartbeat.ok == $1" >/dev/null; }
  t0=$SECONDS
  wait_for "inside it, a heartbeat to $own_ip fails (not in IPAddressAllow)" 60 heartbeat_is false
  echo "   after $((SECONDS - t0)) s"
  echo "   $(aitbc-miner status --json | jq -r .heartbeat.error)"
  check "install.sh --configure allows the new COORD_URL" /usr/lib/aitbc-miner/install.sh --configure
  grep IPAddressAllow /etc/systemd/system/aitbc-miner.service.d/50-coordinator.conf
  # (install.sh honours this image's policy-rc.d, which forbids it to restart the service.)
  systemctl restart aitbc-miner.service
  wait_for "  ... and the heartbeat gets through" 60 heartbeat_is true
else
  echo "skip IPAddressDeny: this host has no non-loopback IPv4 address to point COORD_URL at"
fi

echo "== README operations commands, as written"
check "systemctl restart aitbc-miner.service" systemctl restart aitbc-miner.service
check "  ... active again" systemctl is-active --quiet aitbc-miner.service
timeout 3 journalctl -u aitbc-miner -f >/tmp/follow 2>&1
check "journalctl -u aitbc-miner -f follows (stopped by timeout)" test -s /tmp/follow
check "systemctl disable --now aitbc-miner.service" systemctl disable --now aitbc-miner.service
check "  ... inactive" test "$(show ActiveState)" = inactive
check "  ... not enabled" test "$(systemctl is-enabled aitbc-miner.service)" = disabled

if [ -f "$deb" ]; then
  echo "== dpkg -r keeps the config and the spool; dpkg -P removes them"
  check "dpkg -r aitbc-miner" dpkg -r aitbc-miner
  check "  ... the binary is gone" test ! -e /usr/bin/aitbc-miner
  check "  ... the unit is gone" test ! -e /lib/systemd/system/aitbc-miner.service
  check "  ... the config is kept" test -f /etc/aitbc/miner.conf
  check "  ... the state dir is kept" test -d /var/lib/aitbc-miner
  check "dpkg -P aitbc-miner" dpkg -P aitbc-miner
  check "  ... the config is gone" test ! -e /etc/aitbc/miner.conf
  check "  ... the state dir is gone" test ! -e /var/lib/aitbc-miner
else
  echo "== uninstall keeps the config and the spool"
  check "install.sh --uninstall" bash "$src/systemd/install.sh" --uninstall
  check "  ... the unit is gone" test ! -e /etc/systemd/system/aitbc-miner.service
  check "  ... the config is kept" test -f /etc/aitbc/miner.conf
  check "  ... the state dir is kept" test -d /var/lib/aitbc-miner
fi

if [ "$failed" -eq 0 ]; then echo "BOOT-CHECK: PASS"; else echo "BOOT-CHECK: FAIL"; fi
