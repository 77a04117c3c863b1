"""Whole steps of bundles compiled for different cpu targets, interleaved (cpu-amx vs cpu-avx512).

    python tools/amx/bench_steps.py B-avx512 B-amx [--threads 1] [--rounds 7]

Per bundle: a 128-token prefill, then one sequence's 1 / 4 / 8 / 16-token step at position
128 (the shape of a speculative verify step, logits for every token). Each round takes every
(bundle, shape) once, in turn; a step figure is the median of 5 calls; the report is the median
over rounds. With --threads 1 the step program runs on this thread, so the figures are thread
CPU time (time.thread_time), which a loaded machine disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model

STEPS = (1, 4, 8, 16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    models = {b: load_model(b, LoadOptions(device="cpu", threads=args.threads, kv_blocks=64)) for b in args.bundles}
    rng = np.random.default_rng(0)
    prompt = tuple(int(t) for t in rng.integers(100, 20000, 128))
    extra = tuple(int(t) for t in rng.integers(100, 20000, max(STEPS)))
    blocks = {b: m.kv_pool.manager() for b, m in models.items()}
    for b in models:
        blocks[b].allocate(0, len(prompt) + len(extra))

    def timed(b: Path, chunk: ScheduledChunk) -> float:
        batch = build_batch([chunk], blocks[b])
        started = clock()
        models[b].executor.forward(batch)
        return clock() - started

    def prefill(b: Path) -> float:
        return timed(b, ScheduledChunk(0, 0, prompt))

    def step(b: Path, n: int) -> float:
        return statistics.median(timed(b, ScheduledChunk(0, len(prompt), extra[:n], all_logits=True)) for _ in range(5))

    for b in models:  # first touch of the weights
        prefill(b)
        step(b, max(STEPS))
    samples: dict[tuple[Path, str], list[float]] = {}
    for _ in range(args.rounds):
        for b in models:
            samples.setdefault((b, "prefill 128"), []).append(prefill(b))
        for n in STEPS:
            for b in models:
                samples.setdefault((b, f"{n}-token step"), []).append(step(b, n))
    for (b, shape), v in samples.items():
        print(f"{b.name}\t{models[b].device_choice.target}\t{shape}\t{1e3 * statistics.median(v):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
