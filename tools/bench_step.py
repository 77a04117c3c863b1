"""The cost of one step by its token count: the executor alone, one sequence at a given cache
position, steps of 1..N tokens with a logit row for every token (a speculative verify step).

    python tools/bench_step.py --bundle B [--position 600] [--sizes 1,2,4,8,16] [--rounds 30]
    python tools/bench_step.py --bundle B --only 16 --seconds 20    # one size in a loop: for perf

A prompt of --position random tokens is prefilled once; every measured step then writes its
tokens at positions position.. position+n-1 of the same sequence (the same KV slots each time), so
every step sees the same cache. The sizes are interleaved in a shuffled order per round, so a
change in the machine's load reaches them all alike; per size it prints the median and the
fastest of the rounds, the step's time inside the library call (the rest is host-side Python:
batch layout, argument struct, the logits' copy), the cost per token past the first and the
process's CPU time per step (with --threads 1 the step's work, which a busy machine's load
changes far less than its wall time). Run it
under `perf record -F 499 -g -- python3 tools/bench_step.py ... --only 16` to see where a
verify step's time goes; `--curve` prints the medians as tools/spec_replay.py's --curve.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model


class _TimedEntry:
    """Wraps the device's library entry: the seconds spent inside the last call."""

    def __init__(self, fn):
        self.fn, self.last = fn, 0.0

    def __call__(self, *args):
        started = time.perf_counter()
        status = self.fn(*args)
        self.last = time.perf_counter() - started
        return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--position", type=int, default=600, help="cached tokens before the step (default 600)")
    p.add_argument("--sizes", default="1,2,4,8,16", help="step token counts (default 1,2,4,8,16)")
    p.add_argument("--rounds", type=int, default=30, help="steps per size (default 30)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", type=int, help="one step size in a loop for --seconds (a profiler's run)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--curve", action="store_true", help="also print the medians as spec_replay.py --curve")
    p.add_argument("--save-logits", type=Path, help="write each size's logits to this .npz (to compare two builds)")
    args = p.parse_args(argv)
    sizes = [args.only] if args.only else [int(s) for s in args.sizes.split(",")]
    if min(sizes) < 1 or args.position < 1:
        p.error("sizes and --position must be positive")

    lm = load_model(args.bundle, LoadOptions(device="cpu", threads=args.threads, kv_blocks=None))
    device = lm.executor.device
    timed = None
    if hasattr(device, "_entry"):  # the cpu step device: time its library call apart from the host's work
        timed = device._entry = _TimedEntry(device._entry)
    blocks = lm.kv_pool.manager()
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, lm.vocab_size, size=args.position + max(sizes)).tolist()
    blocks.allocate(0, len(prompt))
    for start in range(0, args.position, 256):  # prefill in chunks: a bounded arena
        chunk = tuple(prompt[start : min(start + 256, args.position)])
        lm.executor.forward(build_batch([ScheduledChunk(0, start, chunk, needs_logits=False)], blocks))

    logits: dict[str, np.ndarray] = {}

    def step(n: int) -> tuple[float, float, float]:
        chunk = ScheduledChunk(0, args.position, tuple(prompt[args.position : args.position + n]), num_drafts=n - 1)
        started, cpu = time.perf_counter(), time.process_time()
        logits[str(n)] = lm.executor.forward(build_batch([chunk], blocks))
        return time.perf_counter() - started, timed.last if timed else float("nan"), time.process_time() - cpu

    for n in sizes:  # warm: the arena and page faults of each size
        step(n)
    if args.save_logits:
        np.savez(args.save_logits, **logits)
    if args.only:
        end, count = time.perf_counter() + args.seconds, 0
        while time.perf_counter() < end:
            step(args.only)
            count += 1
        print(f"{count} steps of {args.only} tokens in {args.seconds:.0f} s")
        return 0
    total: dict[int, list[float]] = {n: [] for n in sizes}
    inside: dict[int, list[float]] = {n: [] for n in sizes}
    cpu: dict[int, list[float]] = {n: [] for n in sizes}
    order = list(sizes)
    for _ in range(args.rounds):
        random.shuffle(order)
        for n in order:
            t, c, u = step(n)
            total[n].append(t)
            inside[n].append(c)
            cpu[n].append(u)
    one = statistics.median(total[sizes[0]]) if sizes[0] == 1 else None
    print(f"{args.bundle.name}: position {args.position}, {args.threads} threads, {args.rounds} rounds; ms")
    print("tokens  median  fastest  in-library  host  per-extra-token  cpu")
    for n in sizes:
        med, fast, lib = statistics.median(total[n]), min(total[n]), statistics.median(inside[n])
        extra = f"{(med - one) / (n - 1) * 1e3:15.3f}" if one is not None and n > 1 else "              -"
        print(
            f"{n:6d}  {med * 1e3:6.2f}  {fast * 1e3:7.2f}  {lib * 1e3:10.2f}  {(med - lib) * 1e3:4.2f}  {extra}  "
            f"{statistics.median(cpu[n]) * 1e3:.2f}"
        )
    if args.curve:
        print("--curve " + ",".join(f"{n}:{statistics.median(total[n]) * 1e3:.2f}" for n in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
