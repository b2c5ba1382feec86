#!/usr/bin/env bash
# Idle supervisor benchmark: a miner with a long-poll open and nothing to do, serving its
# status socket and rewriting a Prometheus metrics file every 15 s, as a deployed one does.
# Measures the supervisor's resident memory and CPU use over a window, beside the same
# figures for its pre-started (idle) worker processes. Traffic stays on 127.0.0.1.
# Usage: scripts/bench-idle.sh [window_secs]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-30}
cargo build --release --quiet --bin aitbc-miner --bin aitbc-coordinator
bin=target/release
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

key=$($bin/aitbc-coordinator keys add --db "$dir/c.db" --scope miner --name idle)
$bin/aitbc-coordinator serve --listen 127.0.0.1:0 --db "$dir/c.db" 2>"$dir/coord.log" &
for _ in $(seq 100); do grep -q 'listening on' "$dir/coord.log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [0-9.:]*' "$dir/coord.log" | awk '{print $3}')

# As root, `run` drops to RUN_AS_USER (nobody here: no system user need exist), which must
# be able to pass through $dir and write the socket's and the metrics file's directory.
chmod 755 "$dir"
mkdir "$dir/run"
if [ "$(id -u)" -eq 0 ]; then chown nobody "$dir/run"; fi

cat >"$dir/miner.conf" <<CONF
COORD_URL="http://$addr"
WALLET_ADDR="wallet_idle"
API_KEY="$key"
MINER_ID="idle-bench"
WORK_DIR="$dir/work"
STATE_DIR="$dir/state"
HEARTBEAT_SECS=20
POLL_WAIT_SECS=25
MAX_CONCURRENCY=1
RUN_AS_USER="nobody"
STATUS_SOCKET="$dir/run/status.sock"
METRICS_FILE="$dir/run/aitbc_miner.prom"
METRICS_INTERVAL_SECS=15
CONF
chmod 600 "$dir/miner.conf"
$bin/aitbc-miner run --config "$dir/miner.conf" 2>"$dir/miner.log" &
miner=$!
sleep 3   # let it start, heartbeat and open its first long-poll
kill -0 "$miner" 2>/dev/null || { echo "the miner did not start:" >&2; tail -5 "$dir/miner.log" >&2; exit 1; }

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
c0=$(cpu $miner); t0=$(date +%s.%N)
sleep "$window"
c1=$(cpu $miner); t1=$(date +%s.%N)
rss=$(rss_kb $miner)
workers=$(cat /proc/$miner/task/*/children 2>/dev/null | wc -w)
wrss=0
for w in $(cat /proc/$miner/task/*/children 2>/dev/null); do wrss=$((wrss + $(rss_kb "$w"))); done
awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$ticks" -v rss="$rss" \
    -v nw="$workers" -v wrss="$wrss" 'BEGIN {
  pct = 100 * (c1 - c0) / hz / (t1 - t0);
  printf "idle supervisor over %.1f s: RSS %.1f MiB (target < 20), CPU %.3f%% of a core (target < 0.5; %d clock ticks of 1/%d s)\n", t1 - t0, rss / 1024, pct, c1 - c0, hz;
  printf "its %d pre-started idle worker(s): RSS %.1f MiB in all\n", nw, wrss / 1024;
}'

# What `aitbc-miner status` costs an operator: the whole command, process start included.
n=50
t0=$(date +%s.%N)
for _ in $(seq $n); do $bin/aitbc-miner status --socket "$dir/run/status.sock" --json >/dev/null; done
t1=$(date +%s.%N)
awk -v t0="$t0" -v t1="$t1" -v n="$n" 'BEGIN { printf "aitbc-miner status --json: %.2f ms per call (mean of %d, process start included)\n", 1000 * (t1 - t0) / n, n }'
