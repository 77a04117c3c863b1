"""Measure the cpu matmul of each weight format: one [N, K] weight, T tokens, the library's
rfc_matmul_<fmt> (the kernels the step program runs), best of --repeat.

    python tools/bench_formats.py                              # 4096 x 4096, T = 1 and 64, every GGUF format
    python tools/bench_formats.py --formats Q4_0 IQ4_XS --tokens 1 8 512 --target cpu-avx512

Decode (T = 1) streams the weight once: GB/s of weight bytes read is the figure to compare
(memory-bound formats approach the machine's bandwidth; table lookups make others compute-bound).
Prefill (T > 1) reports GFLOP/s (2 N K T per call). Weights are random valid blocks (the fixtures'
generator, tools/fixtures/tiny_models.py), the classic formats' scales made finite; speed does
not depend on the values. Threads: OpenMP's default (OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rfc.artifacts.formats import GGUF_FORMATS, Kernels, tensor_nbytes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
from rfc.compiler.codegen import CodegenInput, cpu
from rfc.compiler.spec import HParams
from rfc.compiler.targets import parse_target

ROOT = Path(__file__).resolve().parents[1]
# byte offsets of the f16 scales of the classic formats (random bytes elsewhere)
_SCALES = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_1": (0, 2), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,),
           "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # fmt: skip


def _generator():
    spec = importlib.util.spec_from_file_location("tiny_models", ROOT / "tools" / "fixtures" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_models"] = module
    spec.loader.exec_module(module)
    return module


def weight(fmt: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    f = GGUF_FORMATS[fmt]
    if f.is_float:
        return (
            rng.standard_normal((n, k))
            .astype({"F32": np.float32, "F16": np.float16}.get(fmt, np.float16))
            .view(np.uint8)
        )
    raw = rng.integers(0, 256, (n * k // f.block_elems, f.block_bytes), np.uint8)
    if fmt in _SCALES:
        for at in _SCALES[fmt]:
            raw[:, at : at + 2] = rng.uniform(0.001, 0.01, len(raw)).astype(np.float16).view(np.uint8).reshape(-1, 2)
        return raw
    return _generator().random_blocks(fmt, raw, 1 / math.sqrt(k))


def build(formats: list[str], n: int, k: int, target: str, out: Path) -> ctypes.CDLL:
    entries = [TensorEntry(f"w.{f}", f"w.{f}", f, (n, k), 0, tensor_nbytes(f, (n, k)), "") for f in formats]
    hp = HParams(architecture="llama", name="bench", context_length=64, n_embd=k, n_ff=k, n_layers=1, n_heads=8,
                 n_kv_heads=8, head_dim=k // 8, n_rot=k // 8, rope_style="neox", rope_freq_base=1e4,
                 rope_freq_scale=1.0, rope_scaling_type="linear", rms_eps=1e-5, vocab_size=n, tied_embeddings=False,
                 qkv_bias=False, rope_freq_factors=False)  # fmt: skip
    plan = Plan(buffers=(Buffer("x", ("T", k)), Buffer("y", ("T", n))),
                ops=tuple(Op("matmul", ("x",), ("y",), (e.name,)) for e in entries), kv=KVSpec(1, 8, k // 8),
                input_tokens="tokens", output_logits="y", output_hidden="x", vocab_size=n, n_embd=k,
                context_length=64)  # fmt: skip
    t = parse_target(target)
    source = cpu.render_source(CodegenInput(t, hp, plan, WeightLayout(256, tuple(entries)), None, None), step=False)
    lib = out / cpu.LIBRARY
    lib.write_bytes(cpu.compile_source(source, cpu.compile_command(t)))
    return ctypes.CDLL(str(lib))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--formats", nargs="+", default=[f for f, r in GGUF_FORMATS.items() if Kernels.CPU in r.kernels])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(args.formats, args.n, args.k, args.target, Path(tmp))
        scratch = np.zeros(
            lib.rfc_scratch_bytes(max(args.tokens)) if hasattr(lib, "rfc_scratch_bytes") else 1 << 28, np.uint8
        )
        print(f"{args.n} x {args.k}, target {args.target}; decode: ms and GB/s of weights, prefill: ms and GFLOP/s")
        print(f"{'format':8} {'bits/w':>6} " + " ".join(f"{'T=' + str(t):>17}" for t in args.tokens))
        for fmt in args.formats:
            w = np.ascontiguousarray(weight(fmt, args.n, args.k, rng)).reshape(-1)
            fn = getattr(lib, f"rfc_matmul_{fmt.lower()}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
            cells = []
            for t in args.tokens:
                x = rng.standard_normal((t, args.k)).astype(np.float32)
                y = np.zeros((t, args.n), np.float32)

                def call(x=x, t=t, y=y):
                    fn(w.ctypes.data, w.nbytes // args.n, args.n, args.k, x.ctypes.data, t, y.ctypes.data, None, None,
                       scratch.ctypes.data)  # fmt: skip

                call()
                best = float("inf")
                for _ in range(max(1, args.repeat // max(1, t // 16))):
                    started = time.perf_counter()
                    call()
                    best = min(best, time.perf_counter() - started)
                rate = w.nbytes / best / 1e9 if t == 1 else 2 * args.n * args.k * t / best / 1e9
                cells.append(f"{best * 1e3:8.3f} ms {rate:6.1f}")
            print(f"{fmt:8} {8 * w.nbytes / (args.n * args.k):6.3f} " + " ".join(f"{c:>17}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
