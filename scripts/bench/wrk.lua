-- wrk script for scripts/bench-coordinator.sh: sends the request named by BENCH_CASE
-- ("heartbeat" or "next"; the URL carries the path) with the miner key from BENCH_KEY, and
-- prints one RESULT line that the shell script parses. It must never target anything but the
-- URL wrk was given (127.0.0.1).
local case = os.getenv("BENCH_CASE") or "heartbeat"
local key = os.getenv("BENCH_KEY") or ""
local miner = os.getenv("BENCH_MINER") or "bench-miner"

wrk.headers["Authorization"] = "Bearer " .. key
if case == "heartbeat" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"miner_id":"' .. miner .. '","wallet":"wallet_bench","mode":"cpu","gpu":0}'
else
  wrk.method = "GET" -- the path, /v1/miner/next?miner=..&slots=1, is in the URL
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d non2xx=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, errors, summary.errors.status))
end
