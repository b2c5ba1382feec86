#!/usr/bin/env bash
# Coordinator benchmark: requests/second and p50/p99 latency of `POST /v1/miner/heartbeat` and
# of an empty `GET /v1/miner/next?miner=..&slots=1` (no wait), for the release aitbc-coordinator
# (auth on, durable SQLite store) and, side by side in the same run, the guide's kind of mock
# Coordinator: a FastAPI app holding everything in memory under one uvicorn worker
# (scripts/bench/fastapi_app.py). Both are driven by wrk with the same threads, connections and
# duration. Traffic stays on 127.0.0.1; every run is bounded by the duration.
#
# Usage: scripts/bench-coordinator.sh [seconds_per_case]   (default 10)
# Env:   CONNS (default 50), THREADS (default 1: on a 2-core machine wrk keeps one core and
#        the server gets the other), PYTHON (default python3).
# Needs: wrk (apt-get install -y wrk), python3 with venv; installs fastapi and uvicorn into
#        .venv-bench with pip on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${CONNS:-50}
threads=${THREADS:-1}
python=${PYTHON:-python3}
[[ $secs =~ ^[0-9]+$ ]] && ((secs >= 1 && secs <= 120)) || { echo "seconds_per_case must be 1..120, got $secs" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }

cargo build --release --quiet --bin aitbc-coordinator
if [ ! -x .venv-bench/bin/uvicorn ]; then
    "$python" -m venv .venv-bench
    .venv-bench/bin/pip install --quiet fastapi uvicorn
fi

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for CMD...: retry up to 10 s
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "gave up waiting for: $*" >&2
    return 1
}

# The Rust Coordinator: a durable SQLite file, a miner key, auth and rate limiting on. The rate
# limit is raised above what wrk can send from one key so that no answer is a 429.
bin=target/release/aitbc-coordinator
key=$($bin keys add --db "$dir/coord.db" --scope miner --name bench)
$bin serve --listen 127.0.0.1:0 --db "$dir/coord.db" --rate-limit-per-sec 10000000 2>"$dir/coord.log" &
pids+=($!)
wait_for grep -q 'listening on' "$dir/coord.log"
rust_addr=$(grep -o 'listening on [0-9.:]*' "$dir/coord.log" | head -1 | awk '{print $3}')

# The FastAPI app, one uvicorn worker, access log off (which only flatters it).
py_port=$(free_port)
BENCH_KEY=$key .venv-bench/bin/uvicorn fastapi_app:app --app-dir scripts/bench \
    --host 127.0.0.1 --port "$py_port" --no-access-log --log-level warning 2>"$dir/py.log" &
pids+=($!)
py_addr=127.0.0.1:$py_port
wait_for curl -fsS "http://$py_addr/docs"

hb='{"miner_id":"bench-miner","wallet":"wallet_bench","mode":"cpu","gpu":0}'
for addr in "$rust_addr" "$py_addr"; do
    curl -fsS -X POST "http://$addr/v1/miner/heartbeat" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' --data "$hb" >/dev/null
    code=$(curl -sS -o "$dir/body" -w '%{http_code}' "http://$addr/v1/miner/next?miner=bench-miner&slots=1" \
        -H "Authorization: Bearer $key")
    [ "$code" = 204 ] && [ ! -s "$dir/body" ] || { echo "$addr: next gave $code, not an empty 204" >&2; exit 1; }
done

# run CASE ADDR -> "rps p50_ms p99_ms non2xx+errors"
run() {
    local path
    case $1 in
        heartbeat) path=/v1/miner/heartbeat ;;
        next) path="/v1/miner/next?miner=bench-miner&slots=1" ;;
    esac
    local out
    out=$(BENCH_CASE=$1 BENCH_KEY=$key BENCH_MINER=bench-miner \
        wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 5s -s scripts/bench/wrk.lua "http://$2$path")
    local line
    line=$(grep '^RESULT ' <<<"$out") || { echo "wrk printed no RESULT:" >&2; echo "$out" >&2; exit 1; }
    local rps p50 p99 errors non2xx
    rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$line")
    errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
    non2xx=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$line")
    echo "$rps $p50 $p99 $((errors + non2xx))"
}

echo "wrk -t$threads -c$conns -d${secs}s per case; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf '| %-24s | %-28s | %9s | %8s | %8s | %6s |\n' endpoint server 'req/s' 'p50 ms' 'p99 ms' 'failed'
printf '|%s|%s|%s|%s|%s|%s|\n' -------------------------- ------------------------------ ----------- ---------- ---------- --------
status=0
for c in heartbeat next; do
    read -r r_rps r_p50 r_p99 r_bad <<<"$(run "$c" "$rust_addr")"
    read -r p_rps p_p50 p_p99 p_bad <<<"$(run "$c" "$py_addr")"
    label=$([ "$c" = heartbeat ] && echo 'POST /v1/miner/heartbeat' || echo 'GET /v1/miner/next (204)')
    printf '| %-24s | %-28s | %9s | %8s | %8s | %6s |\n' "$label" 'aitbc-coordinator (SQLite)' "$r_rps" "$r_p50" "$r_p99" "$r_bad"
    printf '| %-24s | %-28s | %9s | %8s | %8s | %6s |\n' "$label" 'FastAPI + uvicorn (memory)' "$p_rps" "$p_p50" "$p_p99" "$p_bad"
    ratio=$(awk -v a="$r_rps" -v b="$p_rps" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
    printf '| %-24s | %-28s | %9s | %8s | %8s | %6s |\n' "$label" "ratio (target >= 5x)" "${ratio}x" '' '' ''
    if [ "$r_bad" != 0 ] || [ "$p_bad" != 0 ]; then status=1; fi
done
if [ $status != 0 ]; then echo "some requests failed (non-2xx or socket errors): the figures above are not valid" >&2; fi
exit $status
