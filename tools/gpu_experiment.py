"""Experiments on a lent GPU: where a step's GPU time goes, kernel by kernel, and how the
compiler's tiling constants move it. (The figures in docs/benchmarks-log.md "Where the GPU time
goes" and "Matmul blocks at batch 1" were taken this way.)

    python tools/gpu_experiment.py ncu BUNDLE [--out DIR]
    python tools/gpu_experiment.py ncu-detail BUNDLE --kernel 'rfc_matmul_imma_.*14336' [--count 4]
    python tools/gpu_experiment.py variants GGUF [--target sm_90] \\
        --variant "gpu_plan.MATMUL_ROW_STEPS=1 gpu_plan.INT8_MATMUL_THREADS=256" --variant "gpu_imma.IMMA_PREQUANT=False"

`ncu`: runs, under Nsight Compute (`ncu --metrics gpu__time_duration.sum`, clocks left alone), a
32-token prompt (the decode list, launched one by one), one batch-1 decode step (the graph: ncu
times its kernel nodes one at a time) and a 512-token prompt (the prefill list), then sums each
kernel's GPU time over the decode step and over the prefill step. The events the other tools
time around launches queued from Python measure the host's enqueue rate for small kernels
(7-10 µs a launch); ncu measures the kernels.

`ncu-detail`: the same steps under Nsight Compute's sections (speed of light, occupancy, launch
statistics, memory and compute workload, warp states) for the first `--count` launches of the
kernels whose names match `--kernel`: why a kernel takes its time (the prefill list's int8
tensor-core matmuls first: they ran at a few percent of the card's int8 peak). Written to
OUT/BUNDLE-ncu-detail.txt and printed.

`variants`: compiles GGUF for the target once as it is and once per `--variant` (assignments to
constants of rfc.compiler.codegen modules, set in every codegen module that imported them),
and times each bundle's graph-replayed batch-1 decode step (median of 100 after a 33-token
context), a 512-token prefill step (median of 3) and graph-replayed decode steps of 2, 4, 8 and 16
sequences (medians of 50). Each variant's logits of the prefill's last token and of the
16-sequence step are compared with the plain bundle's (largest difference against the logits'
spread, and how many rows pick the same argmax): a variant timed fast but wrong says so. Kernels come from the build cache where an earlier compile made them (`tools/gpu_session.py prepare --kernels` fills it here, off the card's
time, for the plain bundle; a variant's kernels are compiled there). A variant whose weights are
the plain bundle's, tensor for tensor, links its weights.bin instead of packing the GGUF again.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFILL_TOKENS = 512
BATCH = 16  # sequences of the batched decode step `variants` times
# the batched steps `variants` times, BATCH last: 2 and 4 below gpu_bmma's BATCH_MMA_MIN_TOKENS (8), 8
# where its batch list starts
BATCHED = (2, 4, 8, BATCH)


def _load(bundle: Path, device: str = "cuda"):
    from rfc.runtime.engine.assemble import LoadOptions, load_model

    return load_model(bundle, LoadOptions(device=device))


def _batch(chunks, blocks):
    from rfc.runtime.engine.batch import ScheduledChunk, build_batch

    return build_batch([ScheduledChunk(*c) for c in chunks], blocks)


def run_steps(bundle: Path, meta: Path) -> None:
    """The steps `ncu` profiles: a 32-token prompt, one graph decode step, a 512-token prompt, and
    where the device samples, one more decode step as `rfc serve` runs it (greedy, the sampling
    kernel last in its graph: what `--ncu-detail 'rfc_sample_.*'` profiles). The first two lists'
    kernel names go to `meta` so the profile can be split by step."""
    import numpy as np

    lm = _load(bundle)
    blocks = lm.kv_pool.manager()
    rng = np.random.default_rng(0)
    blocks.allocate(0, 33)
    lm.executor.forward(_batch([(0, 0, tuple(rng.integers(2, lm.vocab_size, size=32).tolist()))], blocks))
    lm.executor.forward(_batch([(0, 32, (5,))], blocks))
    blocks.allocate(1, PREFILL_TOKENS)
    lm.executor.forward(_batch([(1, 0, tuple(rng.integers(2, lm.vocab_size, size=PREFILL_TOKENS).tolist()))], blocks))
    if lm.executor.samples_on_device:
        from rfc.runtime.sampling.sampler import Sampler, SamplingParams

        blocks.allocate(0, 34)
        sampler = Sampler(SamplingParams(temperature=0.0), [5], lm.vocab_size)
        lm.executor.forward_sampled(_batch([(0, 33, (7,))], blocks), [(sampler, False)])
    program = lm.device.runner.program
    meta.write_text(
        json.dumps(
            {
                "decode": [l.kernel for l in program.single_launches or program.launches],
                "prefill": [l.kernel for l in program.prefill_launches or program.launches],
            }
        )
    )


def kernel_table(rows: list[tuple[str, float]]) -> str:
    """rows: (kernel, ns) in launch order -> a table by kernel, most time first."""
    per: dict[str, list[float]] = defaultdict(list)
    for name, ns in rows:
        per[name].append(ns)
    total = sum(ns for _, ns in rows) or 1.0
    lines = [f"{'kernel':<58} {'n':>4} {'us total':>10} {'us each':>9} {'share':>6}"]
    for name, v in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        lines.append(
            f"{name[:58]:<58} {len(v):>4} {sum(v) / 1e3:>10.1f} {sum(v) / len(v) / 1e3:>9.2f} {sum(v) / total:>6.1%}"
        )
    lines.append(f"GPU time {total / 1e3:.1f} us over {len(rows)} kernels")
    return "\n".join(lines)


def parse_ncu(text: str) -> list[tuple[str, float]]:
    """(kernel, ns) per profiled kernel from `ncu --csv --page raw --metrics gpu__time_duration.sum`."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    rows = []
    for r in csv.DictReader(io.StringIO("\n".join(lines))):
        value = r.get("gpu__time_duration.sum", "").replace(",", "")
        try:
            rows.append((r["Kernel Name"], float(value)))
        except ValueError:  # the units row
            continue
    return rows


def ncu(bundle: Path, out: Path, timeout: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    meta = out / f"{bundle.name}-lists.json"
    cmd = [
        "ncu",
        "--clock-control",
        "none",
        "--metrics",
        "gpu__time_duration.sum",
        "--csv",
        "--page",
        "raw",
        sys.executable,
        __file__,
        "_steps",
        str(bundle),
        str(meta),
    ]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (out / f"{bundle.name}-ncu.csv").write_text(p.stdout)
    print(f"ncu on {bundle.name}: exit {p.returncode} in {time.time() - t:.0f} s")
    if p.returncode:
        print(p.stdout[-2000:], p.stderr[-2000:])
        return p.returncode
    rows, lists = parse_ncu(p.stdout), json.loads(meta.read_text())
    n_dec, n_pre = len(lists["decode"]), len(lists["prefill"])
    for label, part, want in (
        ("batch-1 decode step (graph)", rows[n_dec : 2 * n_dec], lists["decode"]),
        (f"{PREFILL_TOKENS}-token prefill step", rows[2 * n_dec : 2 * n_dec + n_pre], lists["prefill"]),
    ):
        same = [name for name, _ in part] == want
        print(f"\n{bundle.name}, {label}{'' if same else ' (KERNEL NAMES DO NOT MATCH THE LIST: read with care)'}")
        print(kernel_table(part))
    return 0


NCU_SECTIONS = (
    "SpeedOfLight",
    "Occupancy",
    "LaunchStats",
    "MemoryWorkloadAnalysis",
    "ComputeWorkloadAnalysis",
    "WarpStateStats",
)


def ncu_detail_command(bundle: Path, meta: Path, kernel: str, count: int) -> list[str]:
    """ncu over the profiled steps, its sections for the first `count` launches matching `kernel`."""
    sections = [arg for name in NCU_SECTIONS for arg in ("--section", name)]
    return [
        "ncu",
        "--clock-control",
        "none",
        "--kernel-name",
        f"regex:{kernel}",
        "--launch-count",
        str(count),
        *sections,
        sys.executable,
        __file__,
        "_steps",
        str(bundle),
        str(meta),
    ]


def ncu_detail(bundle: Path, out: Path, timeout: float, kernel: str, count: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cmd = ncu_detail_command(bundle, out / f"{bundle.name}-detail-lists.json", kernel, count)
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (out / f"{bundle.name}-ncu-detail.txt").write_text(p.stdout + p.stderr)
    print(f"ncu-detail on {bundle.name} ({kernel}): exit {p.returncode} in {time.time() - t:.0f} s")
    print(p.stdout[-20000:])
    if p.returncode:
        print(p.stderr[-2000:])
    return p.returncode


@contextlib.contextmanager
def _weights_of(bundle: Path | None):
    """While compiling a variant: where the weights it plans are those `bundle` (the plain
    build of the same GGUF, compiled by this process moments before: the same packing code)
    packed, tensor for tensor, link its weights.bin instead of packing them again (an 8B's 4.9
    GB took ~25 s of a variant's compile on a 2-core EPYC, card time on the GPU machine). Other
    weights (a variant that changes the weight plan) are packed as usual."""
    from rfc.artifacts.bundle import open_bundle
    from rfc.artifacts.layout import WEIGHTS_FILE
    from rfc.compiler import pipeline

    if bundle is None:
        yield
        return
    layout = open_bundle(bundle, verify=False, mmap_weights=False).layout
    packed = [(t.name, t.role, t.format, tuple(t.shape)) for t in layout.tensors]
    write = pipeline.write_weights

    def reuse(model, uses, out_path, on_tensor=lambda name: None):
        if [(u.name, u.role, u.stored_format, tuple(u.shape)) for u in uses] != packed:
            return write(model, uses, out_path, on_tensor)
        out_path.unlink(missing_ok=True)
        try:
            os.link(bundle / WEIGHTS_FILE, out_path)
        except OSError:  # another file system
            shutil.copyfile(bundle / WEIGHTS_FILE, out_path)
        return layout

    pipeline.write_weights = reuse
    try:
        yield
    finally:
        pipeline.write_weights = write


def _override(assignments: str) -> dict[tuple[str, str], object]:
    """Sets codegen constants ("module.NAME=value ...") in every rfc.compiler.codegen module that
    holds them; returns the old values."""
    import importlib
    import pkgutil

    import rfc.compiler.codegen as codegen

    for m in pkgutil.iter_modules(codegen.__path__):
        importlib.import_module(f"rfc.compiler.codegen.{m.name}")
    old = {}
    for item in assignments.split():
        target, _, value = item.partition("=")
        module, _, name = target.rpartition(".")
        home = sys.modules[f"rfc.compiler.codegen.{module}"]
        if not hasattr(home, name):
            raise SystemExit(f"rfc.compiler.codegen.{module} has no {name}")
        new, current = ast.literal_eval(value), getattr(home, name)
        for mod_name, mod in list(sys.modules.items()):
            if mod_name.startswith("rfc.compiler.codegen") and hasattr(mod, name) and getattr(mod, name) is current:
                old[(mod_name, name)] = getattr(mod, name)
                setattr(mod, name, new)
    return old


def _decode_graph(bundle: Path, device: str, rng):
    """The bundle loaded, a 32-token prompt drawn from `rng` run, and the captured graph of a
    batch-1 decode step at a 33-token context: (model, runner, blocks, graph); the model keeps the
    graph's memory."""
    lm = _load(bundle, device)
    runner, blocks = lm.device.runner, lm.kv_pool.manager()
    blocks.allocate(0, 40)
    lm.executor.forward(_batch([(0, 0, tuple(rng.integers(2, lm.vocab_size, size=32).tolist()))], blocks))
    lm.executor.forward(_batch([(0, 32, (5,))], blocks))
    scalars = runner._forward(_batch([(0, 33, (6,))], blocks), runner.stage["tokens"][0])
    runner._driver.stream_synchronize(runner.stream)
    return lm, runner, blocks, runner._graph(scalars, False)


def graph_replays(runner, graph, n: int) -> list[float]:
    """Seconds of each of n replays of `graph`, each synchronized (the batch already on the device)."""
    d, times = runner._driver, []
    for _ in range(n):
        t = time.perf_counter()
        d.graph_launch(graph, runner.stream)
        d.stream_synchronize(runner.stream)
        times.append(time.perf_counter() - t)
    return times


def queued_decode(executor, batch, samplers: list, steps: int) -> float:
    """Seconds of `steps` decode steps run as the engine runs them where the device queues steps
    ahead (runtime/engine/ahead.py): each step launched before the one before is read, its
    tokens fed on the device from that step's ids (row i feeds token i). `batch()` gives each
    step's StepBatch (its staged tokens are ignored but the first's); `samplers` one per row."""
    rows = [(sampler, False) for sampler in samplers]
    feed = tuple((i, i) for i in range(len(samplers)))

    def read(pending) -> None:
        for sampler, token in zip(samplers, pending.result().tokens):
            sampler.record(int(token))

    t = time.perf_counter()
    pending = executor.launch_sampled(batch(), rows)
    for _ in range(steps - 1):
        queued = executor.launch_sampled(batch(), rows, feed)
        read(pending)
        pending = queued
    read(pending)
    return time.perf_counter() - t


def _time_bundle(bundle: Path, device: str) -> tuple[float, float, list[float], object]:
    """(graph decode step seconds at batch 1, median of 100; 512-token prefill seconds, median of 3;
    graph decode step seconds at each of BATCHED sequences, medians of 50; the logits of the
    prefill's last token and of each of the 16 sequences' step, as one float64 array)."""
    import numpy as np

    rng = np.random.default_rng(0)
    lm, runner, blocks, graph = _decode_graph(bundle, device, rng)
    decode = graph_replays(runner, graph, 100)
    prompt = tuple(rng.integers(2, lm.vocab_size, size=PREFILL_TOKENS).tolist())
    prefill = []
    for i in range(4):
        blocks.allocate(1, PREFILL_TOKENS)
        t = time.perf_counter()
        prefill_logits = lm.executor.forward(_batch([(1, 0, prompt)], blocks))
        prefill.append(time.perf_counter() - t)
        blocks.free(1)
    # 16 sequences of a 32-token prompt each (one prefill step), then a step of one token each: the
    # decode list's graph at batch 16
    seqs = range(2, 2 + BATCH)
    for q in seqs:
        blocks.allocate(q, 40)
    lm.executor.forward(_batch([(q, 0, tuple(rng.integers(2, lm.vocab_size, size=32).tolist())) for q in seqs], blocks))
    batched = []
    for n in BATCHED:
        scalars = runner._forward(_batch([(q, 32, (5,)) for q in seqs[:n]], blocks), runner.stage["tokens"][0])
        runner._driver.stream_synchronize(runner.stream)
        batched.append(statistics.median(graph_replays(runner, runner._graph(scalars, False), 50)))
    # the same 16-token step again, its logits read back (the batch list's kernels at 16 tokens)
    step_logits = lm.executor.forward(_batch([(q, 32, (5,)) for q in seqs], blocks))
    logits = np.vstack([np.asarray(prefill_logits, np.float64)[-1:], np.asarray(step_logits, np.float64)])
    return statistics.median(decode), statistics.median(prefill[1:]), batched, logits


def logits_agreement(plain, other) -> str:
    """How far a variant's logits are from the plain bundle's: the largest difference over the
    plain logits' standard deviation, and the rows whose argmax is the same."""
    import numpy as np

    if plain.shape != other.shape:
        return f"shape {other.shape} against {plain.shape}"
    worst = float(np.max(np.abs(plain - other))) / max(float(np.std(plain)), 1e-30)
    same = int(np.sum(np.argmax(plain, axis=1) == np.argmax(other, axis=1)))
    return f"max diff {worst:.4f} sd, argmax {same}/{plain.shape[0]}"


def interleaved(bundles: list[Path], device: str, rounds: int, reps: int = 100) -> int:
    """Graph-replayed batch-1 decode steps of several bundles loaded side by side, timed in turns
    (each round every bundle `reps` replays): the medians of an A/B that a drifting card's clock
    cannot bias (variants times one bundle after another)."""
    import numpy as np

    graphs = [_decode_graph(bundle, device, np.random.default_rng(0)) for bundle in bundles]
    times: list[list[float]] = [[] for _ in bundles]
    for _ in range(rounds):
        for i, (_lm, runner, _blocks, graph) in enumerate(graphs):
            times[i] += graph_replays(runner, graph, reps)
    for bundle, ts in zip(bundles, times):
        med = statistics.median(ts)
        print(f"{bundle.name:<60} {med * 1e6:>9.1f} us {1 / med:>7.0f} tok/s ({len(ts)} replays)", flush=True)
    return 0


def variant_header() -> str:
    batched = "".join(f"{f'b{n} step':>10}" for n in BATCHED)
    return f"{'variant':<70} {'decode step':>12} {'tok/s':>7} {'prefill 512':>12} {'tok/s':>8}{batched} {'tok/s':>7}"


def variant_row(name: str, decode: float, prefill: float, steps: list[float], agreement: str) -> str:
    """One bundle's line under variant_header (seconds in; the last tok/s is the BATCH-sequence step's)."""
    batched = "".join(f"{t * 1e6:>7.0f} us" for t in steps)
    return (
        f"{name:<70} {decode * 1e6:>9.0f} us {1 / decode:>7.0f} {prefill * 1e3:>9.2f} ms "
        f"{PREFILL_TOKENS / prefill:>8.0f}{batched} {BATCH / steps[-1]:>7.0f}  {agreement}"
    )


def variants(gguf: Path, target: str, specs: list[str], out: Path) -> int:
    from rfc.compiler.pipeline import CompileOptions, compile_model

    print(variant_header())
    plain, plain_logits = None, None
    for spec in ["", *specs]:
        old = _override(spec)
        try:
            bundle = out / f"variant-{abs(hash(spec)) % 10**8}-{target}"
            with _weights_of(plain):
                compile_model(CompileOptions(model=gguf, out_dir=bundle, targets=(target,), force=True))
            plain = plain or bundle
        finally:
            for (mod, name), value in old.items():
                setattr(sys.modules[mod], name, value)
        if target.startswith("sm_") or target.startswith("gfx"):
            dec, pre, steps, logits = _time_bundle(bundle, "cuda" if target.startswith("sm_") else "hip")
            plain_logits = logits if plain_logits is None else plain_logits
            agreement = logits_agreement(plain_logits, logits) if spec else "(the logits compared against)"
            print(variant_row(spec or "(as compiled today)", dec, pre, steps, agreement), flush=True)
        else:
            print(f"{spec or '(as compiled today)':<70} compiled (no GPU target: not timed)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("ncu", help="per-kernel GPU time of a decode and a prefill step")
    n.add_argument("bundle", type=Path)
    n.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rfc-ncu")
    n.add_argument("--timeout", type=float, default=300)
    nd = sub.add_parser("ncu-detail", help="Nsight Compute's sections for a few launches of the kernels named")
    nd.add_argument("bundle", type=Path)
    nd.add_argument("--kernel", default="rfc_matmul_imma_", help="a regular expression over kernel names")
    nd.add_argument("--count", type=int, default=4)
    nd.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rfc-ncu")
    nd.add_argument("--timeout", type=float, default=300)
    v = sub.add_parser("variants", help="decode and prefill time of bundles compiled with other codegen constants")
    v.add_argument("gguf", type=Path)
    v.add_argument("--target", default="sm_90")
    v.add_argument("--variant", action="append", default=[], help='"module.NAME=value ..." (repeatable)')
    v.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rfc-variants")
    i = sub.add_parser("interleaved", help="batch-1 decode steps of bundles timed in turns (an A/B)")
    i.add_argument("bundles", type=Path, nargs="+")
    i.add_argument("--device", default="cuda")
    i.add_argument("--rounds", type=int, default=5)
    s = sub.add_parser("_steps")  # what ncu runs
    s.add_argument("bundle", type=Path)
    s.add_argument("meta", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "ncu":
        return ncu(args.bundle, args.out, args.timeout)
    if args.cmd == "ncu-detail":
        return ncu_detail(args.bundle, args.out, args.timeout, args.kernel, args.count)
    if args.cmd == "variants":
        return variants(args.gguf, args.target, args.variant, args.out)
    if args.cmd == "interleaved":
        return interleaved(args.bundles, args.device, args.rounds)
    run_steps(args.bundle, args.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
