#!/usr/bin/env python3
"""Compiles CUDA C to PTX with the NVRTC of the nvidia-cuda-nvrtc-cu12 wheel, through ctypes.

Usage: nvrtc_ptx.py SOURCE.cu OUTPUT.ptx

Called by scripts/gen-ptx.sh, which installs the pinned wheel (12.0.140) into a virtual
environment first. No GPU and no CUDA toolkit are needed: NVRTC is a plain shared library.

It must never pick up another NVRTC than the wheel's (the PTX ISA version follows the NVRTC
version, and a driver refuses PTX newer than itself), so it loads libnvrtc.so.12 by the wheel's
path only, and it checks that the result declares the expected `.version`.

Why these options:
  --gpu-architecture=compute_70  Volta's virtual ISA: the oldest architecture that the CUDA 12
      drivers a miner runs (525 series on) still support alongside every newer one, and enough
      for what the kernels use (__dp4a needs sm_61). The driver JITs it to the real GPU's SM
      (sm_75, sm_80, sm_89, sm_90, ...) when the module is loaded.
  --fmad=true, --ftz=false, --prec-div=true, --prec-sqrt=true  NVRTC's defaults, spelled out
      (the int8 chain's kernels use no floating point; the options only pin the output).
  No -lineinfo and no -G: the output must not depend on file paths or debug settings, so that
      regenerating it on any machine gives the committed bytes.
"""

import ctypes
import glob
import os
import sys

EXPECTED_VERSION = ".version 8.0"
OPTIONS = [
    b"--gpu-architecture=compute_70",
    b"--fmad=true",
    b"--ftz=false",
    b"--prec-div=true",
    b"--prec-sqrt=true",
]
# The name NVRTC records for the program; fixed so the output does not depend on the path.
PROGRAM_NAME = b"torch_bench.cu"


def find_libnvrtc():
    """libnvrtc.so.12 from the installed nvidia-cuda-nvrtc-cu12 wheel, and nowhere else."""
    try:
        import nvidia.cuda_nvrtc  # noqa: F401  (a namespace package from the wheel)
    except ImportError:
        sys.exit(
            "nvrtc_ptx.py: the nvidia-cuda-nvrtc-cu12 wheel is not installed in this Python; "
            "run scripts/gen-ptx.sh, which installs it into .venv-ptx"
        )
    for root in nvidia.cuda_nvrtc.__path__:
        hits = sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so.12")))
        if hits:
            return hits[0]
    sys.exit("nvrtc_ptx.py: the nvidia-cuda-nvrtc-cu12 wheel has no lib/libnvrtc.so.12")


def check(nvrtc, status, what, prog=None):
    if status == 0:
        return
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    message = nvrtc.nvrtcGetErrorString(status).decode()
    log = ""
    if prog is not None:
        size = ctypes.c_size_t()
        if nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size)) == 0 and size.value > 1:
            buf = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = "\n" + buf.value.decode(errors="replace")
    sys.exit(f"nvrtc_ptx.py: {what} failed: {message}{log}")


def compile_ptx(source):
    nvrtc = ctypes.CDLL(find_libnvrtc())
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(nvrtc, nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    if (major.value, minor.value) != (12, 0):
        sys.exit(
            f"nvrtc_ptx.py: NVRTC {major.value}.{minor.value} loaded, 12.0 expected "
            "(nvidia-cuda-nvrtc-cu12==12.0.140)"
        )

    prog = ctypes.c_void_p()
    check(
        nvrtc,
        nvrtc.nvrtcCreateProgram(
            ctypes.byref(prog), source, PROGRAM_NAME, 0, None, None
        ),
        "nvrtcCreateProgram",
    )
    opts = (ctypes.c_char_p * len(OPTIONS))(*OPTIONS)
    check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(OPTIONS), opts), "compiling", prog)
    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
    buf = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.value.decode()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: nvrtc_ptx.py SOURCE.cu OUTPUT.ptx")
    src_path, out_path = sys.argv[1], sys.argv[2]
    with open(src_path, "rb") as f:
        source = f.read()
    ptx = compile_ptx(source)
    version = next((l.strip() for l in ptx.splitlines() if l.startswith(".version")), None)
    if version != EXPECTED_VERSION:
        sys.exit(f"nvrtc_ptx.py: the PTX says {version!r}, expected {EXPECTED_VERSION!r}")
    with open(out_path, "w") as f:
        f.write(ptx)


if __name__ == "__main__":
    main()
