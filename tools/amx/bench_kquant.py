"""x8 matmuls on the tile unit against the cpu-avx512 VNNI kernels.

    python tools/amx/bench_kquant.py [--reps 7] [--formats Q4_Kx8,Q5_Kx8] [--tokens 4,8,16,64,128]
    python tools/amx/bench_kquant.py --formats Q4_0x8,Q4_1x8,Q8_0x8

Builds the prelude and the x8 matmuls as the compiler renders them for cpu-amx twice: once
with every CpuTuning.amx_min_tokens* = 1 (every call on AMX, kernels/cpu_amx.h) and once with
them out of reach (every call on the VNNI kernels: cpu_dot.h rfc_x8colt_k45, cpu_gemm.h
rfc_x16dot_*), then times one thread (OMP_NUM_THREADS=1, thread CPU time, the two interleaved,
medians) at each token count on 576 x 1536 and 2048 x 5632, and checks the outputs equal bit
for bit. Prints CSV. Needs a host with amx_tile and amx_int8; a tool, not part of the suite.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before libgomp loads

import argparse  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from rfc.compiler.codegen import cpu  # noqa: E402
from rfc.runtime.devices import cpu as cpu_device  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from bench_x8_stream import x8_library  # noqa: E402

SHAPES = ((576, 1536), (2048, 5632))


def build(folder: Path, fmts: list[str], threshold: int) -> ctypes.CDLL:
    tuning = dataclasses.replace(
        cpu.CpuTuning(), amx_min_tokens=threshold, amx_min_tokens_4bit=threshold, amx_min_tokens_kquant=threshold
    )
    path = folder / f"lib{threshold}.so"
    path.write_bytes(x8_library(fmts, "cpu-amx", tuning))
    lib = ctypes.CDLL(str(path))
    cpu_device.init_kernels(lib, "cpu-amx")
    lib.rfc_scratch_bytes.argtypes, lib.rfc_scratch_bytes.restype = [ctypes.c_int], ctypes.c_size_t
    return lib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--formats", default="Q4_Kx8,Q5_Kx8")
    ap.add_argument("--tokens", default="4,8,16,64,128")
    args = ap.parse_args()
    reason = cpu_device.probe("cpu-amx")
    if reason is not None:
        print(f"{reason}: cannot run the cpu-amx kernels here", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.kernels.test_cpu_kernels import weight_bytes  # the suite's packed random weights

    fmts = args.formats.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        amx, vnni = build(Path(tmp), fmts, 1), build(Path(tmp), fmts, 1 << 30)
        print("format,N,K,tokens,vnni_ms,amx_ms,speedup,bitwise")
        rng = np.random.default_rng(27)
        for fmt in fmts:
            for n, k in SHAPES:
                w = np.frombuffer(weight_bytes(fmt, n, k, rng), np.uint8).copy()
                for t in (int(v) for v in args.tokens.split(",")):
                    x = rng.standard_normal((t, k)).astype(np.float32)
                    outs, times = {}, {"vnni": [], "amx": []}
                    scratch = np.zeros(amx.rfc_scratch_bytes(t) + 64, np.uint8)
                    for _ in range(args.reps):
                        for name, lib in (("vnni", vnni), ("amx", amx)):
                            fn = getattr(lib, f"rfc_matmul_{fmt.lower()}")
                            out = np.empty((t, n), np.float32)
                            c = ctypes.c_void_p
                            t0 = time.thread_time()
                            fn(c(w.ctypes.data), ctypes.c_size_t(w.size // n), n, k, c(x.ctypes.data), t,
                               c(out.ctypes.data), None, None, c(scratch.ctypes.data))  # fmt: skip
                            times[name].append(time.thread_time() - t0)
                            outs[name] = out
                    v, a = statistics.median(times["vnni"]) * 1e3, statistics.median(times["amx"]) * 1e3
                    same = np.array_equal(outs["vnni"], outs["amx"])
                    print(f"{fmt},{n},{k},{t},{v:.3f},{a:.3f},{v / a:.2f},{same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
