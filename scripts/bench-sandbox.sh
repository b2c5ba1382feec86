#!/usr/bin/env bash
# Confined worker start beside bubblewrap and a bare fork+exec, in the same run: the release
# build of benches/confined_start.rs (the supervisor's real WorkerProcess::start path: job
# directory, cgroup, fork, namespaces, rlimits, capability drop, Landlock, seccomp, Hello),
# `bwrap --unshare-all --ro-bind / / true`, and fork+exec+wait of /bin/true.
# Installs bubblewrap with apt when it is missing (needs root for that). Run it as root to
# include the per-worker cgroup and the switch to `nobody`, as a root-started miner does.
# Usage: scripts/bench-sandbox.sh [rounds]   (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bwrap is missing: install bubblewrap (apt-get install -y bubblewrap) or run as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap
fi
bwrap --version
cargo bench --quiet --bench confined_start -- "$rounds"
