"""x8 matmuls as a decode step streams them: weights from memory, not from a warm cache.

    python tools/bench_x8_stream.py build OLD --target cpu-avx512     # the kernels as rendered now
    (change templates/cpu_matmul_x8.c.j2 or kernels/*.h)
    python tools/bench_x8_stream.py build NEW --target cpu-avx512
    python tools/bench_x8_stream.py build AVX2 --target cpu
    python tools/bench_x8_stream.py time OLD NEW AVX2 [--formats Q4_Kx8,Q6_Kx8] [--tokens 1,2,4,8,16] [--threads 2]

`build` renders the prelude and the x8 matmuls of --formats for --target and compiles them into
/tmp/rfc-x8-libs/NAME.so. `time` calls each library's rfc_matmul_<fmt> on 16 copies of one random
5632 x 2048 weight matrix in turn (~100 MB in Q4_K: more than a server CPU's L3), so each call
reads its weights from memory as a one-token step does; the libraries alternate, 9 rounds,
medians, and the outputs are compared bit for bit (a kernel change that should not move a sum
must print "bitwise-equal"; the AVX2 build of a k-quant sums otherwise, docs/determinism.md).
tools/amx/bench_kquant.py times the same kernels on cache-resident weights (compute, not
bandwidth). A tool, not part of the suite.
"""

from __future__ import annotations

import os
import sys

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import numpy as np

LIBS = Path("/tmp/rfc-x8-libs")
FORMATS = "Q4_0x8,Q4_1x8,Q8_0x8,Q4_Kx8,Q5_Kx8,Q6_Kx8,IQ4_XSx8"
N, K, COPIES = 5632, 2048, 16


def x8_library(fmts: list[str], target: str, tuning=None) -> bytes:
    """The prelude and the x8 matmuls of `fmts` (rfc_matmul_<fmt>, K up to 5632) as the compiler
    renders them for `target` with `tuning` (default CpuTuning()), compiled: a shared library
    (also tools/amx/bench_kquant.py's)."""
    from rfc.artifacts.formats import Kernels
    from rfc.compiler.codegen import cpu
    from rfc.compiler.codegen.format_table import format_params
    from rfc.compiler.codegen.render import render
    from rfc.compiler.targets import parse_target

    tuning = tuning or cpu.CpuTuning()
    prelude = {"abi_version": cpu.ABI_VERSION, "n_embd": 576, "n_ff": 5632, "vocab_size": 32, "n_heads": 1,
               "n_kv_heads": 1, "head_dim": 32, "group": 1, "q_width": 32, "kv_width": 32, "kv_piece": 32,
               "max_k": 5632, "op_exports": True}  # fmt: skip
    src = render("cpu_prelude.c.j2", {**prelude, **format_params(Kernels.CPU)})
    src += "".join(render("cpu_matmul_x8.c.j2", cpu._x8_params(f, tuning)) for f in fmts)
    return cpu.compile_source(src, cpu.compile_command(parse_target(target)))


def build(name: str, target: str, fmts: list[str]) -> None:
    LIBS.mkdir(exist_ok=True)
    (LIBS / f"{name}.so").write_bytes(x8_library(fmts, target))


def timed(names: list[str], fmts: list[str], tokens: list[int]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.kernels.test_cpu_kernels import weight_bytes  # the suite's packed random weights

    libs = {n: ctypes.CDLL(str(LIBS / f"{n}.so")) for n in names}
    for lib in libs.values():
        lib.rfc_scratch_bytes.argtypes, lib.rfc_scratch_bytes.restype = [ctypes.c_int], ctypes.c_size_t
    rng = np.random.default_rng(27)
    c = ctypes.c_void_p
    print(f"{os.environ['OMP_NUM_THREADS']} threads, {N} x {K}, {COPIES} copies; ms per pass over all copies (GB/s)")
    for fmt in fmts:
        first = np.frombuffer(weight_bytes(fmt, N, K, rng), np.uint8)
        copies = [first.copy() for _ in range(COPIES)]
        for t in tokens:
            x = rng.standard_normal((t, K)).astype(np.float32)
            scratch = np.zeros(max(lib.rfc_scratch_bytes(t) for lib in libs.values()) + 64, np.uint8)
            times: dict[str, list[float]] = {n: [] for n in libs}
            outs = {}
            for _ in range(9):
                for name, lib in libs.items():
                    fn = getattr(lib, f"rfc_matmul_{fmt.lower()}")
                    out = np.empty((t, N), np.float32)
                    start = time.perf_counter()
                    for w in copies:
                        fn(c(w.ctypes.data), ctypes.c_size_t(w.size // N), N, K, c(x.ctypes.data), t,
                           c(out.ctypes.data), None, None, c(scratch.ctypes.data))  # fmt: skip
                    times[name].append(time.perf_counter() - start)
                    outs[name] = out
            size = sum(w.size for w in copies)
            cells = [
                f"{n} {statistics.median(v) * 1e3:.2f} ({size / statistics.median(v) / 1e9:.1f})"
                for n, v in times.items()
            ]
            ref = next(iter(outs.values()))
            same = "bitwise-equal" if all(np.array_equal(o, ref) for o in outs.values()) else "different"
            print(f"{fmt} tokens={t}: {'  '.join(cells)}  {same}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["build", "time"])
    p.add_argument("names", nargs="+")
    p.add_argument("--target", default="cpu-avx512")
    p.add_argument("--formats", default=FORMATS)
    p.add_argument("--tokens", default="1,2,4,8,16")
    p.add_argument("--threads", default=None)
    args = p.parse_args()
    # before libgomp loads (the first library's dlopen)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = args.threads
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    fmts = args.formats.split(",")
    if args.mode == "build":
        for name in args.names:
            build(name, args.target, fmts)
    else:
        timed(args.names, fmts, [int(v) for v in args.tokens.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
