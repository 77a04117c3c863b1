"""Sampling time per row at a large vocabulary, for every parameter combination.

    python tools/bench_sampler.py [--bundle BUNDLE] [--vocab 128256] [--rows 200] [--budget-ms 0.5]

With --bundle, the Sampler uses the host sampling functions of that bundle's cpu kernel
library (kernels/cpu_sample.h), as `rfc serve` on that bundle does; without, its numpy code
(what a bundle without a cpu target samples with).

Logits are drawn like a real model's (a peaked head over a long Gaussian tail, and a flat
case where top_p must look far). Prints a markdown table, median and p90 per row in ms,
and exits 1 when any median exceeds --budget-ms (the budget: <= 0.5 ms at 128k).
"""

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from rfc.runtime.core.sampling_kernels import SamplingKernels

CASES = {
    "greedy": SamplingParams(temperature=0),
    "temperature": SamplingParams(temperature=0.8),
    "top_k=40": SamplingParams(temperature=0.8, top_k=40),
    "top_p=0.95": SamplingParams(temperature=0.8, top_p=0.95),
    "min_p=0.05": SamplingParams(temperature=0.8, min_p=0.05),
    "top_k+top_p+min_p (run defaults)": SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    "top_p=0.95+min_p=0.05": SamplingParams(temperature=0.8, top_p=0.95, min_p=0.05),
    "penalties (rep, presence, freq)": SamplingParams(
        temperature=0.8, repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5, penalty_last_n=64
    ),
    "greedy + penalties": SamplingParams(temperature=0, repetition_penalty=1.1),
    "logit_bias (16 ids)": SamplingParams(temperature=0.8, logit_bias={i * 97: -5.0 for i in range(16)}),
    "all filters + penalties": SamplingParams(
        temperature=0.8,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
    ),
}


def logits_rows(vocab: int, rows: int, flat: bool, rng: np.random.Generator) -> np.ndarray:
    scale = 0.3 if flat else 2.5  # flat: top_p 0.95 needs a large part of the vocab
    x = rng.standard_normal((rows, vocab), dtype=np.float32) * scale
    if not flat:
        heads = rng.integers(0, vocab, size=(rows, 8))
        x[np.arange(rows)[:, None], heads] += 12.0
    return x


def measure(params: SamplingParams, logits: np.ndarray, logprobs: int | None, kernels: SamplingKernels | None,
            cold: bool = False) -> tuple[float, float]:  # fmt: skip
    prompt = list(range(0, 6400, 100))  # 64 distinct tokens in the penalty window
    sampler = Sampler(params, prompt, logits.shape[1], kernels)
    times = []
    warm = np.empty(logits.shape[1], np.float32)
    for row in logits:
        # The engine samples rows it has just copied out of the device's arena (cached);
        # a row read cold from a 100 MB array would add its memory traffic (~50 us here).
        if not cold:
            np.copyto(warm, row)
            row = warm
        t = time.perf_counter()
        token = sampler.sample(row, logprobs)  # as the engine calls it
        if logprobs is not None:
            sampler.logprobs(row, token, logprobs)
        times.append(time.perf_counter() - t)
    times_ms = np.array(times[len(times) // 10 :]) * 1e3  # skip warm-up
    return float(np.median(times_ms)), float(np.percentile(times_ms, 90))


def bundle_kernels(path: Path) -> SamplingKernels | None:
    """The sampling functions of the best cpu target of a bundle this host runs."""
    from rfc.artifacts.bundle import open_bundle
    from rfc.runtime.devices import choose_device

    bundle = open_bundle(path)
    target = choose_device(bundle, "cpu").target
    entry = next(t for t in bundle.manifest["targets"] if t["name"] == target)
    return SamplingKernels.from_library(ctypes.CDLL(str(bundle.file(entry["kernels"]))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="sample with this bundle's cpu kernel library")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--budget-ms", type=float, default=0.5)
    ap.add_argument(
        "--cold-rows", action="store_true", help="sample rows straight from the 100 MB array (not in cache)"
    )
    args = ap.parse_args()
    kernels = None
    if args.bundle is not None:
        kernels = bundle_kernels(args.bundle)
        if kernels is None:
            print(f"{args.bundle}: no cpu target whose library has the sampling functions", file=sys.stderr)
            return 2
    rng = np.random.default_rng(0)
    shapes = {
        "peaked": logits_rows(args.vocab, args.rows, False, rng),
        "flat": logits_rows(args.vocab, args.rows, True, rng),
    }
    how = f"the cpu kernels of {args.bundle}" if kernels else "numpy (no kernel library)"
    rows = "cold rows" if args.cold_rows else "warm rows"
    print(f"vocab {args.vocab}, {args.rows} {rows}, sampled with {how}; ms per row (median / p90)\n")
    print("| parameters | peaked | flat | peaked + logprobs=5 |")
    print("|---|--:|--:|--:|")
    worst = 0.0
    for name, params in CASES.items():
        cells = []
        for shape, lp in (("peaked", None), ("flat", None), ("peaked", 5)):
            med, p90 = measure(params, shapes[shape], lp, kernels, args.cold_rows)
            worst = max(worst, med)
            cells.append(f"{med:.3f} / {p90:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nworst median {worst:.3f} ms (budget {args.budget_ms} ms)")
    return 0 if worst <= args.budget_ms else 1


if __name__ == "__main__":
    sys.exit(main())
