#!/usr/bin/env bash
# Regenerates cuda/kernels/torch_bench.ptx from cuda/kernels/torch_bench.cu with NVRTC 12.0
# (PTX ISA 8.0, which every driver from the 525 series on can JIT), from the PyPI wheel
# nvidia-cuda-nvrtc-cu12==12.0.140 in a virtual environment (.venv-ptx). No GPU, no toolkit.
#
#   bash scripts/gen-ptx.sh           write the PTX (commit it together with the .cu)
#   bash scripts/gen-ptx.sh --check   regenerate into a temporary file and fail, with a diff
#                                     summary, if it differs from the committed PTX (CI runs this)
#
# It never uses another NVRTC than the pinned wheel's: a newer one emits a newer `.version`,
# which older drivers refuse to load.
set -euo pipefail
cd "$(dirname "$0")/.."

NVRTC_WHEEL="nvidia-cuda-nvrtc-cu12==12.0.140"
VENV=".venv-ptx"
SRC="cuda/kernels/torch_bench.cu"
PTX="cuda/kernels/torch_bench.ptx"

die() { printf 'gen-ptx.sh: %s\n' "$*" >&2; exit 1; }

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) die "usage: bash scripts/gen-ptx.sh [--check]" ;;
esac

command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3 python3-venv)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || die "could not create $VENV (apt-get install python3-venv)"
fi
nvrtc_version() {
  "$VENV/bin/python" -m pip show nvidia-cuda-nvrtc-cu12 2>/dev/null | sed -n 's/^Version: //p'
}
if [ "$(nvrtc_version)" != "12.0.140" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$NVRTC_WHEEL" \
    || die "could not install $NVRTC_WHEEL into $VENV"
fi
installed="$(nvrtc_version)"
[ "$installed" = "12.0.140" ] || die "$VENV has nvidia-cuda-nvrtc-cu12 '$installed', expected 12.0.140"

if [ "$check" -eq 0 ]; then
  "$VENV/bin/python" scripts/nvrtc_ptx.py "$SRC" "$PTX"
  printf 'gen-ptx.sh: wrote %s (%s, %s bytes)\n' "$PTX" "$(grep -m1 '^\.version' "$PTX")" \
    "$(wc -c <"$PTX")"
  exit 0
fi

[ -f "$PTX" ] || die "$PTX is missing: run bash scripts/gen-ptx.sh and commit it"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
"$VENV/bin/python" scripts/nvrtc_ptx.py "$SRC" "$tmp"
head -n 20 "$PTX" | grep -qx '\.version 8\.0' || die "$PTX does not declare .version 8.0"
if ! cmp -s "$tmp" "$PTX"; then
  printf 'gen-ptx.sh: %s is not what %s compiles to:\n' "$PTX" "$SRC" >&2
  diff -u "$PTX" "$tmp" | diffstat 2>/dev/null >&2 \
    || printf '  %s lines differ\n' "$(diff "$PTX" "$tmp" | grep -c '^[<>]')" >&2
  diff -u "$PTX" "$tmp" | head -n 40 >&2 || true
  die "run bash scripts/gen-ptx.sh and commit $PTX"
fi
printf 'gen-ptx.sh: %s matches %s (%s)\n' "$PTX" "$SRC" "$(grep -m1 '^\.version' "$PTX")"
