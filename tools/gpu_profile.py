"""Where a GPU decode step's time goes (a lent GPU: sm_* with device cuda, gfx* with hip).

    python tools/gpu_profile.py BUNDLE [--batch 1] [--steps 50] [--context 512]

For a step of `--batch` sequences of one token each, after a `--context`-token prompt per
sequence:
1. the whole step as the engine runs it (stage the batch, copy it in, replay the graph, copy
   the logits out, synchronize), median of `--steps`;
2. the graph alone (replay + synchronize, the batch already on the device): the GPU's time
   plus one launch;
3. the step as the server runs it where the device samples (greedy: the sampling kernel in the
   graph, only the token ids back), median of `--steps`, beside the graph with the sampling
   kernel replayed alone: what the step costs outside the graph (staging, copies, the host),
   and the time spent in each driver call of such a step (the copies' and the graph's enqueue
   calls, the synchronize that waits for the card) against the step's rest (the host's Python);
4. the host's share: cProfile of the whole steps, the functions with the most own time;
5. each launch of the decode list run on its own (launch, synchronize), summed by kernel:
   per-kernel time with one launch latency each (a kernel far above that latency is where the
   GPU time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from gpu_experiment import graph_replays, queued_decode  # a sibling script (tools/ is this script's path)
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    lm = load_model(args.bundle, LoadOptions(device=args.device))
    runner = lm.device.runner
    blocks = lm.kv_pool.manager()
    rng = np.random.default_rng(0)
    seqs = list(range(args.batch))
    for s in seqs:  # the prompts, one sequence at a time
        prompt = rng.integers(2, lm.vocab_size, size=args.context).tolist()
        blocks.allocate(s, len(prompt))
        lm.executor.forward(build_batch([ScheduledChunk(s, 0, tuple(prompt))], blocks))
    pos = args.context

    def batch():
        chunks = [ScheduledChunk(s, pos, (int(rng.integers(2, lm.vocab_size)),)) for s in seqs]
        for c in chunks:
            blocks.allocate(c.seq_id, pos + 1)
        return build_batch(chunks, blocks)

    def step() -> float:
        nonlocal pos
        b = batch()
        t = time.perf_counter()
        lm.executor.forward(b)
        pos += 1
        return time.perf_counter() - t

    step()  # graph capture for this batch size
    whole = [step() for _ in range(args.steps)]
    print(
        f"{args.bundle.name}: batch {args.batch}, context {args.context}: whole step median {statistics.median(whole) * 1e3:.3f} ms "
        f"(min {min(whole) * 1e3:.3f}), {args.batch / statistics.median(whole):.1f} tok/s"
    )

    d, stream = runner._driver, runner.stream
    b = batch()
    scalars = runner._forward(b, runner.stage["tokens"][0])
    d.stream_synchronize(stream)
    graph = runner._graph(scalars, False)
    times = graph_replays(runner, graph, args.steps)
    print(
        f"graph replay + sync alone: median {statistics.median(times) * 1e3:.3f} ms (min {min(times) * 1e3:.3f}); "
        f"{len(runner.launch_list(scalars['n_tokens']))} launches"
    )

    if lm.executor.samples_on_device:
        served_breakdown(lm, runner, batch, args.steps, graph_alone=statistics.median(times))

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print("host, cProfile of", args.steps, "whole steps (own time):")
    print("\n".join(out.getvalue().splitlines()[: args.top + 12]))

    launches = runner.launches_for(scalars["n_tokens"])
    bound = runner.launch_list(scalars["n_tokens"])
    per_kernel: dict[str, list[float]] = defaultdict(list)
    empty = []
    for _ in range(3):
        t = time.perf_counter()
        d.stream_synchronize(stream)
        empty.append(time.perf_counter() - t)
    for _round in range(3):
        for launch, bl in zip(launches, bound):
            t = time.perf_counter()
            bl.enqueue(d, scalars, stream)
            d.stream_synchronize(stream)
            per_kernel[launch.kernel].append(time.perf_counter() - t)
    rows = []
    for name, ts in per_kernel.items():
        n = len(ts) // 3
        rows.append((sum(ts) / 3, n, name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(
        f"each launch on its own (launch + sync, mean of 3 rounds): {total * 1e3:.3f} ms over {len(bound)} launches "
        f"(a bare sync: {min(empty) * 1e6:.1f} us)"
    )
    print(f"{'kernel':<48} {'launches':>8} {'total ms':>9} {'us each':>8}")
    for t, n, name in rows[: args.top]:
        print(f"{name[:48]:<48} {n:>8} {t * 1e3:>9.3f} {t / n * 1e6:>8.1f}")
    return 0


def served_breakdown(lm, runner, batch, steps: int, graph_alone: float) -> None:
    """The step as `rfc serve` runs it where the device samples (forward_sampled, greedy: the
    sampling kernel last in the graph, the token ids copied back), against the same graph
    replayed alone with and without that kernel: the sampling kernel's time, and the step's
    time outside the graph (the batch staged and copied in, the ids out, the host's Python)."""
    from rfc.runtime.sampling.sampler import Sampler, SamplingParams

    n = len(batch().context_lens)
    samplers = [Sampler(SamplingParams(temperature=0.0), [1], lm.vocab_size) for _ in range(n)]
    rows = [(sampler, False) for sampler in samplers]

    def served() -> float:
        b = batch()
        t = time.perf_counter()
        out = lm.executor.forward_sampled(b, rows)
        dt = time.perf_counter() - t
        for sampler, token in zip(samplers, out.tokens):
            sampler.record(int(token))
        return dt

    served()  # the sampled graph's capture
    whole = statistics.median([served() for _ in range(steps)])
    d, stream = runner._driver, runner.stream
    scalars = runner._forward(batch(), runner.stage["tokens"][0])
    d.stream_synchronize(stream)
    graph = runner._graph(scalars, True)
    sampled = statistics.median(graph_replays(runner, graph, steps))
    print(
        f"served step (tokens chosen on the device): median {whole * 1e3:.3f} ms, {n / whole:.1f} tok/s; "
        f"its graph with the sampling kernel, replay + sync alone: {sampled * 1e3:.3f} ms "
        f"(the sampling kernel {(sampled - graph_alone) * 1e6:.1f} us); outside the graph "
        f"{(whole - sampled) * 1e6:.1f} us a step"
    )
    with DriverCallTimes(d, SERVED_CALLS) as calls:
        timed = [served() for _ in range(steps)]
    print(calls.summary(timed))
    if lm.executor.runs_ahead:
        queued = statistics.median([queued_decode(lm.executor, batch, samplers, steps) / steps for _ in range(3)])
        print(
            f"served steps queued ahead (each fed the ids of the step before, as the engine queues decode): "
            f"{queued * 1e3:.3f} ms a step, {n / queued:.1f} tok/s; {(queued - sampled) * 1e6:.1f} us a step "
            f"beyond the graph replayed alone (median of 3 runs of {steps})"
        )


# the driver calls of a served decode step (gpu_program.StepRunner.run_sampled)
SERVED_CALLS = ("copy_to_device_async", "event_record", "graph_launch", "copy_to_host_async", "stream_synchronize")


class DriverCallTimes:
    """Within a `with`, each call of `names` on `driver` (an instance: its methods wrapped on it,
    restored after) timed, by name in call order: where a served step's time outside the graph
    goes, between the driver's calls (their enqueueing, and the synchronize's wait for the card)
    and the host's own code around them."""

    def __init__(self, driver, names: tuple[str, ...]):
        self.driver, self.names = driver, names
        self.times: dict[str, list[float]] = {name: [] for name in names}

    def __enter__(self) -> "DriverCallTimes":
        for name in self.names:
            real = getattr(self.driver, name)

            def timed(*args, _real=real, _times=self.times[name], **kwargs):
                t = time.perf_counter()
                try:
                    return _real(*args, **kwargs)
                finally:
                    _times.append(time.perf_counter() - t)

            setattr(self.driver, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.names:
            vars(self.driver).pop(name, None)  # the class's method again

    def summary(self, steps: list[float]) -> str:
        """One line: per step (medians over `steps`, the steps' own times), each call's time
        (summed where a step makes several), and the step's rest (its time less its calls')."""
        n = len(steps)
        per_step = {}
        for name, ts in self.times.items():
            if ts and len(ts) % n == 0:  # the same count every step: summed per step
                k = len(ts) // n
                per_step[name] = [sum(ts[i * k : (i + 1) * k]) for i in range(n)]
        rest = [steps[i] - sum(v[i] for v in per_step.values()) for i in range(n)]
        parts = [f"{name} {statistics.median(v) * 1e6:.1f}" for name, v in per_step.items()]
        odd = [f"{name} x{len(ts)}" for name, ts in self.times.items() if name not in per_step]
        return (
            f"a served step's driver calls, us (median of {n}): {', '.join(parts)}"
            + (f" (uneven: {', '.join(odd)})" if odd else "")
            + f"; the rest of the step (the host's code) {statistics.median(rest) * 1e6:.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
