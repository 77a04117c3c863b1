"""Each matmul of a GPU bundle's decode list alone, at batch 1: its time and the weight bytes it
streams per second, against the card's device-to-device copy (a lent GPU: sm_* with device
cuda, gfx* with hip).

    python tools/gpu_matmul_bw.py BUNDLE [--device cuda] [--repeat 200] [--all]

After one real decode step (so the arena holds real activations), every launch of the decode
list whose kernel is a matmul (the fused q+k+v and gate+up+SwiGLU ones too) is launched
`--repeat` times back to back between two events (cuEventRecord / hipEventRecord); its time
is the events' elapsed time over the repeats, its rate the bytes of the weights it reads (the
layout entries of its weight arguments) over that time. Each kernel once (its first launch)
unless `--all`. The copy line: one `cuMemcpyDtoDAsync` of 1 GiB the same way, counted as
2 x bytes (read and write), the figure docs/benchmarks.md compares with.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

from rfc.artifacts.program import ArgKind
from rfc.runtime.engine.batch import ScheduledChunk, build_batch

COPY_BYTES = 1 << 30


class EventTimer:
    """GPU time between two events on the runner's stream (CUDA driver API or HIP)."""

    def __init__(self, driver):
        self.lib, self.cuda = driver.lib, driver.dialect.api == "CUDA"
        p = ctypes.c_void_p
        names = (
            ("cuEventCreate", "cuEventRecord", "cuEventSynchronize")
            if self.cuda
            else ("hipEventCreate", "hipEventRecord", "hipEventSynchronize")
        )
        self._create, self._record, self._sync = (getattr(self.lib, n) for n in names)
        self._create.argtypes = [ctypes.POINTER(p), ctypes.c_uint] if self.cuda else [ctypes.POINTER(p)]
        self._record.argtypes, self._sync.argtypes = [p, p], [p]
        elapsed = ("cuEventElapsedTime_v2", "cuEventElapsedTime") if self.cuda else ("hipEventElapsedTime",)
        self._elapsed = next(getattr(self.lib, n) for n in elapsed if hasattr(self.lib, n))
        self._elapsed.argtypes = [ctypes.POINTER(ctypes.c_float), p, p]
        for fn in (self._create, self._record, self._sync, self._elapsed):
            fn.restype = ctypes.c_int
        self.start, self.end = self._event(), self._event()

    def _event(self):
        ev = ctypes.c_void_p()
        self._check(self._create(ctypes.byref(ev), 0) if self.cuda else self._create(ctypes.byref(ev)))
        return ev

    @staticmethod
    def _check(status: int) -> None:
        if status != 0:
            raise RuntimeError(f"event call failed with status {status}")

    def time(self, work, stream) -> float:
        """Seconds of GPU time `work()` queues on `stream`."""
        self._check(self._record(self.start, stream))
        work()
        self._check(self._record(self.end, stream))
        self._check(self._sync(self.end))
        ms = ctypes.c_float()
        self._check(self._elapsed(ctypes.byref(ms), self.start, self.end))
        return ms.value / 1e3

    def copy_rate(self, driver, stream) -> float:
        """Device-to-device copy GB/s (2 x bytes: read and write) of COPY_BYTES, best of 3."""
        src, dst = driver.malloc(COPY_BYTES), driver.malloc(COPY_BYTES)
        try:
            if self.cuda:
                fn = self.lib.cuMemcpyDtoDAsync_v2
                fn.argtypes, fn.restype = (
                    [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p],
                    ctypes.c_int,
                )
                copy = lambda: self._check(fn(dst, src, COPY_BYTES, stream))  # noqa: E731
            else:
                fn = self.lib.hipMemcpyAsync
                fn.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
                fn.restype = ctypes.c_int
                copy = lambda: self._check(fn(dst, src, COPY_BYTES, 3, stream))  # noqa: E731 (3: device to device)
            copy()
            best = min(self.time(copy, stream) for _ in range(3))
        finally:
            driver.free(src)
            driver.free(dst)
        return 2 * COPY_BYTES / best / 1e9


class WallTimer:
    """Host time around the work and one synchronize: for drivers without events (the emulator)."""

    def __init__(self, driver):
        self.driver = driver

    def time(self, work, stream) -> float:
        t = time.perf_counter()
        work()
        self.driver.stream_synchronize(stream)
        return time.perf_counter() - t

    def copy_rate(self, driver, stream) -> float | None:
        return None


def decode_step(runner, executor, vocab: int, blocks, context: int = 32) -> dict[str, int]:
    """A `context`-token prompt through `executor` (over the runner's device), then one decode
    step's batch staged and run on the runner: the step's scalars (sequence 0)."""
    return batch_decode_step(runner, executor, vocab, blocks, 1, context, first=0)


def batch_decode_step(
    runner, executor, vocab: int, blocks, seqs: int, context: int = 32, first: int = 2
) -> dict[str, int]:
    """Sequences `first`.. (`seqs` of them), each a `context`-token prompt through `executor`, then
    one decode step of a token each staged and run on the runner (the batch list from the
    runner's batch_min_tokens on): the step's scalars, for step_profile. The caller frees the
    sequences' blocks."""
    rng = np.random.default_rng(0)
    ids = range(first, first + seqs)
    for s in ids:
        blocks.allocate(s, context + 1)
        prompt = tuple(int(t) for t in rng.integers(2, vocab, size=context))
        executor.forward(build_batch([ScheduledChunk(s, 0, prompt)], blocks))
    batch = build_batch([ScheduledChunk(s, context, (int(rng.integers(2, vocab)),)) for s in ids], blocks)
    scalars = runner._forward(batch, runner.stage["tokens"][0])
    runner._driver.stream_synchronize(runner.stream)
    return scalars


def prefill_step(runner, vocab: int, blocks, tokens: int = 512, seq: int = 1) -> dict[str, int]:
    """One `tokens`-token prompt staged and run on the runner (the prefill list from the
    runner's prefill_min_tokens on): the step's scalars, for step_profile."""
    rng = np.random.default_rng(1)
    prompt = tuple(int(t) for t in rng.integers(2, vocab, size=tokens))
    blocks.allocate(seq, tokens)
    scalars = runner._forward(build_batch([ScheduledChunk(seq, 0, prompt)], blocks), runner.stage["tokens"][0])
    runner._driver.stream_synchronize(runner.stream)
    return scalars


def matmul_rates(runner, layout, scalars: dict[str, int], timer, repeat: int, every: bool = False) -> list[dict]:
    """Each matmul launch of the list the step of `scalars` runs alone: {kernel, bytes, us, gbps}."""
    entries = layout.by_name()
    bound = runner.launch_list(scalars["n_tokens"])
    rows, seen = [], set()
    for launch, b in zip(runner.launches_for(scalars["n_tokens"]), bound):
        if not launch.kernel.startswith("rfc_matmul_") or (launch.kernel in seen and not every):
            continue
        seen.add(launch.kernel)
        nbytes = sum(
            entries[runner.program.weights.get(a.ref, a.ref)].nbytes for a in launch.args if a.kind is ArgKind.WEIGHT
        )

        def work(b=b):
            for _ in range(repeat):
                b.enqueue(runner._driver, scalars, runner.stream)

        work()  # warm: the weights' first touch, the instruction cache
        seconds = timer.time(work, runner.stream) / repeat
        rows.append({"kernel": launch.kernel, "bytes": nbytes, "us": seconds * 1e6, "gbps": nbytes / seconds / 1e9})
    return rows


def step_profile(runner, scalars: dict[str, int], timer, repeat: int) -> str:
    """Where one decode step's GPU time goes: the launches of the decode list grouped by kernel,
    each group's launches queued `repeat` times between events (us per step), beside the whole
    list queued the same way; the difference from the step's graph time is what each node costs
    beyond its work."""
    bound = runner.launch_list(scalars["n_tokens"])
    launches = runner.launches_for(scalars["n_tokens"])  # the launches `bound` binds
    assert len(launches) == len(bound)
    groups: dict[str, list] = {}
    for launch, b in zip(launches, bound):
        groups.setdefault(launch.kernel, []).append(b)

    def queue(items):
        def work():
            for _ in range(repeat):
                for b in items:
                    b.enqueue(runner._driver, scalars, runner.stream)

        return work

    every = queue(bound)
    every()  # warm
    whole = timer.time(every, runner.stream) / repeat
    rows = []
    for kernel, items in groups.items():
        work = queue(items)
        work()
        rows.append((timer.time(work, runner.stream) / repeat, kernel, len(items)))
    rows.sort(reverse=True)
    lines = [f"{'kernel':<56} {'launches':>8} {'us/step':>9} {'share':>6}"]
    for seconds, kernel, n in rows:
        lines.append(f"{kernel[:56]:<56} {n:>8} {seconds * 1e6:>9.1f} {seconds / whole:>6.1%}")
    total = sum(r[0] for r in rows)
    lines.append(
        f"{len(bound)} launches; the whole list queued back to back: {whole * 1e6:.1f} us/step "
        f"(sum of the groups alone {total * 1e6:.1f})"
    )
    return "\n".join(lines)


def table(rows: list[dict], copy_gbps: float | None) -> str:
    lines = [f"{'kernel':<52} {'weight MB':>9} {'us':>8} {'GB/s':>8} {'of copy':>7}"]
    for r in sorted(rows, key=lambda r: -r["bytes"]):
        share = f"{r['gbps'] / copy_gbps:>7.2f}" if copy_gbps else f"{'-':>7}"
        lines.append(f"{r['kernel'][:52]:<52} {r['bytes'] / 1e6:>9.2f} {r['us']:>8.1f} {r['gbps']:>8.0f} {share}")
    if copy_gbps:
        lines.append(f"device-to-device copy: {copy_gbps:.0f} GB/s (2 x {COPY_BYTES >> 20} MiB over its time)")
    return "\n".join(lines)


def main() -> int:
    from rfc.runtime.engine.assemble import LoadOptions, load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--all", action="store_true", help="every matmul launch, not each kernel once")
    args = ap.parse_args()
    lm = load_model(args.bundle, LoadOptions(device=args.device))
    runner = lm.device.runner
    scalars = decode_step(runner, lm.executor, lm.vocab_size, lm.kv_pool.manager())
    timer = EventTimer(runner._driver)
    rows = matmul_rates(runner, lm.bundle.layout, scalars, timer, args.repeat, args.all)
    print(f"{args.bundle.name}: each matmul of the decode list alone, batch 1, {args.repeat} launches between events")
    print(table(rows, timer.copy_rate(runner._driver, runner.stream)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
