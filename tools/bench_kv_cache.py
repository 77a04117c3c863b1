"""Decode speed at a long context with each KV-cache type (--cache-type-k/-v) on the cpu device.

    python tools/bench_kv_cache.py MODEL.gguf                       # compiles to a temp dir first
    python tools/bench_kv_cache.py --bundle B --context 4096 --gen 64 --repeat 5 --types f16,q8_0,q4_0

One model per cache type (the same bundle, K and V both of that type), each given a context of
--context random tokens (prefilled 512 a step, not timed). Then, --repeat rounds, the types
interleaved within each round: --gen greedy decode steps from that context, timed, and the
sequence cut back to it (BlockManager.truncate) so every round decodes at the same depth. It
prints each type's median tokens per second and the ratio to the first type. On a shared
machine, interleaving keeps one type from having all the quiet minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model

CHUNK = 512


def setup(bundle: Path, t: CacheType, context: list[int], gen: int, threads: int | None):
    lm = load_model(
        bundle,
        LoadOptions(
            device="cpu",
            kv_blocks=-(-(len(context) + gen) // 16),
            threads=threads,
            cache_types=KvCacheTypes(t, t),
            prefix_caching=False,
        ),
    )
    if lm.device_choice.name != "cpu":
        raise SystemExit(f"bench_kv_cache: got device {lm.device_choice.name}, not cpu")
    blocks = lm.kv_pool.manager()
    blocks.allocate(0, len(context))
    logits = None
    for start in range(0, len(context), CHUNK):
        part = tuple(context[start : start + CHUNK])
        logits = lm.executor.forward(build_batch([ScheduledChunk(0, start, part)], blocks))
    return lm, blocks, int(logits[-1].argmax())


def decode(lm, blocks, first: int, pos: int, steps: int) -> float:
    token = first
    started = time.perf_counter()
    for i in range(steps):
        blocks.allocate(0, pos + i + 1)
        logits = lm.executor.forward(build_batch([ScheduledChunk(0, pos + i, (token,))], blocks))
        token = int(logits[-1].argmax())
    seconds = time.perf_counter() - started
    blocks.truncate(0, pos)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", type=Path, help="GGUF to compile and measure")
    p.add_argument("--bundle", type=Path, help="measure this compiled bundle instead")
    p.add_argument("--context", type=int, default=4096, help="tokens in the cache before decoding (default 4096)")
    p.add_argument("--gen", type=int, default=64, help="decode steps per round (default 64)")
    p.add_argument("--repeat", type=int, default=5, help="rounds; medians are reported (default 5)")
    p.add_argument("--types", default="f16,q8_0", help="cache types, the first is the baseline (default f16,q8_0)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: the affinity mask's cores)")
    a = p.parse_args(argv)
    types = [CacheType(t) for t in a.types.split(",")]
    with tempfile.TemporaryDirectory(prefix="rfc-bench-kv-") as tmp:
        bundle = a.bundle
        if bundle is None:
            if a.model is None:
                p.error("give a GGUF or --bundle")
            from rfc.compiler.pipeline import CompileOptions, compile_model

            bundle = Path(tmp) / "bundle"
            compile_model(CompileOptions(model=a.model, out_dir=bundle, targets=("cpu",)))
        context = np.random.default_rng(0).integers(1, 1000, size=a.context).tolist()
        runs = {}
        for t in types:
            started = time.perf_counter()
            runs[t] = setup(bundle, t, context, a.gen, a.threads)
            print(
                f"{t}: {a.context} tokens of context in {time.perf_counter() - started:.1f} s, "
                f"{KvCacheTypes(t, t).token_bytes(runs[t][0].bundle.plan.kv)} bytes per token",
                file=sys.stderr,
            )
        speeds: dict[CacheType, list[float]] = {t: [] for t in types}
        for r in range(a.repeat):
            for t in types:
                lm, blocks, first = runs[t]
                speeds[t].append(a.gen / decode(lm, blocks, first, a.context, a.gen))
            print(f"round {r + 1}: " + ", ".join(f"{t} {speeds[t][-1]:.1f}" for t in types), file=sys.stderr)
        base = statistics.median(speeds[types[0]])
        for t in types:
            m = statistics.median(speeds[t])
            print(
                f"{t:5s} decode at {a.context} context: {m:6.1f} tok/s (median of {a.repeat}; "
                f"runs {', '.join(f'{s:.1f}' for s in speeds[t])})  x{m / base:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
