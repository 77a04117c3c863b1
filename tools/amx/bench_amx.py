"""Build and run the AMX microbenchmark (tools/amx/amx_bench.c) against rfc's cpu-avx512 Q8_0x8 matmul.

    python tools/amx/bench_amx.py            # prints CSV: N, K, M, kernel, ms, GMAC/s, speedup, error
    python tools/amx/bench_amx.py --keep DIR # also leaves the generated source and binary in DIR

The VNNI side is the cpu-avx512 library's own code: this script renders cpu_prelude.c.j2 and
the Q8_0x8 cpu_matmul_x8.c.j2 as the compiler does, prepends them to amx_bench.c and builds
with cpu-avx512's flags plus -mamx-tile -mamx-int8, single threaded (no OpenMP). Needs a host
with amx_tile and amx_int8 (and a kernel that grants XTILEDATA); a tool, not part of the suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from rfc.artifacts.formats import Kernels
from rfc.compiler.codegen.cpu import CC, CpuTuning, _x8_params
from rfc.compiler.codegen.format_table import format_params
from rfc.compiler.codegen.render import render
from rfc.artifacts.targets import CPU_TARGETS

HERE = Path(__file__).resolve().parent
# the prelude's model constants: only RFC_MAX_K matters here (the activation scratch)
PRELUDE = {"abi_version": 0, "n_embd": 576, "n_ff": 1536, "vocab_size": 32, "n_heads": 9, "n_kv_heads": 3,
           "head_dim": 64, "group": 3, "q_width": 576, "kv_width": 192, "kv_piece": 64, "max_k": 5632,
           "op_exports": True}  # fmt: skip


def host_has_amx() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return all(f" {flag}" in flags for flag in ("amx_tile", "amx_int8"))


def source() -> str:
    kernels = render("cpu_prelude.c.j2", {**PRELUDE, **format_params(Kernels.CPU)})
    kernels += render("cpu_matmul_x8.c.j2", _x8_params("Q8_0x8", CpuTuning()))
    return kernels + (HERE / "amx_bench.c").read_text()


def build(folder: Path) -> Path:
    (folder / "amx_bench_full.c").write_text(source())
    flags = list(CPU_TARGETS["cpu-avx512"].cflags)
    command = [CC, "-O3", "-fno-math-errno", "-Wno-unknown-pragmas", *flags, "-mamx-tile", "-mamx-int8",
               "-o", "amx_bench", "amx_bench_full.c", "-lm"]  # fmt: skip
    proc = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"build failed: {' '.join(command)}\n{proc.stderr[-4000:]}")
    return folder / "amx_bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = ap.parse_args()
    if not host_has_amx():
        print("this host has no amx_tile / amx_int8 (/proc/cpuinfo)", file=sys.stderr)
        return 2
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return subprocess.run([str(build(args.keep))], check=False).returncode
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run([str(build(Path(tmp)))], check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
