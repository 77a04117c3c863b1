"""The one command to run on a lent GPU: build, check, benchmark.

    python tools/gpu_check.py --bench                  # everything, sm_90, device cuda
    python tools/gpu_check.py --target gfx90a          # an AMD GPU (device hip)
    python tools/gpu_check.py ~/.cache/rfc/test-data/fixtures/*/tiny-llama-Q4_K_M.gguf --decode 128

1. Kernel resources: every kernel's registers, stack, spills and shared memory for the
   target (as the cubin or the code object's metadata records them: compiler/codegen/
   gpu_usage.py); matmul/attention kernels with local memory fail.
2. Correctness, per model: compile for --target, load with the GPU device (the bound step
   program, graphs), compare teacher-forced logits with the fixture's llama.cpp logits
   (tests/bounds.py's llama.cpp bounds) and with the numpy reference device (tests/bounds.py's
   per-format bounds, the GPU's int8 activation rounding measured by the float64 oracle); where
   the program has a batch list (gpu_bmma's twins), the same tokens once more in one step on it
   (the fixture's step takes the prefill list, steps of 8 to 63 tokens the batch list). For
   stories260K also greedy text against the llama.cpp goldens (`rfc run --device <gpu>`); for
   the real SmolLM2-135M-Instruct (fetched as the tests fetch it, tests/testdata.py) its lighthouse
   logits against llama.cpp's at the vocabulary ids the golden keeps (top-1 wherever llama.cpp's
   gap > 0.5, mean |d| <= 0.2, max <= 1.5, as tests/e2e/test_smollm2.py)
   and llama.cpp's greedy tokens up to each case's first near-tie, through `rfc run`.
3. Speculation on the GPU: for stories260K, greedy text with `--spec-type ngram` (drafts verified in
   multi-token steps, rejected tokens' KV rolled back) must equal the same device's greedy text
   without it; for llama-Q4_K_M, llama-Q8_0 and qwen3-Q8_0, teacher-forced logits with a q8_0
   K and V cache must stay within the device's bounds of the reference device's with that cache.
4. With --bench: random-weight GGUFs made here with tools/make_gguf.py (a Llama-3-8B-shaped
   Q4_K_M and a TinyLlama-1.1B-shaped Q4_0), greedy decode tok/s at batch 1 and 16 with the
   tokens chosen on the device as `rfc serve` chooses them (and batch 1 with every step's logits
   copied to the host, the figure before device sampling took part), the weight bytes
   streamed per second at batch 1 (against the HBM roofline), prefill tok/s of one 512-token
   prompt on the program's prefill list (tensor-core matmuls: int8 mma.sync on sm_80+ for the
   formats of compiler/codegen/gpu_imma.py, half wmma for the others and on sm_70/75; how many
   of each it launches is printed) and on the decode list (dp4a) for comparison, and the time from `rfc serve` start to /ready; then each matmul of
   the decode list alone at batch 1 (tools/gpu_matmul_bw.py: events around repeated launches,
   its weight bytes per second against a device-to-device copy's).
5. On a GPU target: the host detection that `rfc serve model.gguf` compiles for without --arch
   (cli/host_targets.py) must name --target among this machine's targets.
Prints tables; exits non-zero when any check fails. On a machine with no network (a lent GPU
box), `--fixtures DIR` takes the fixture GGUFs, their logits and the goldens from DIR and makes
or fetches nothing (SmolLM2 is checked only if DIR holds it). Every driver call is checked by the
device itself (rfc.runtime.devices.cuda / hip raise DeviceError with the driver's message).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import urllib.request
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.compiler.pipeline import CompileOptions, compile_model
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.assemble import LoadedModel, LoadOptions, load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.bounds, tests.oracle: the same bounds as CI
from tests import testdata  # noqa: E402  the fixtures (made in main) and SmolLM2, where the tests find them

FIXTURES = testdata.fixtures_dir()
DEMO = ROOT / "compiler" / "demo" / "stories260K.gguf"
SMOLLM2 = testdata.model_path(testdata.SMOLLM2)
SMOLLM2_MEAN, SMOLLM2_MAX = 0.2, 1.5  # tests/e2e/test_smollm2.py's bounds
GOLDENS = (  # (prompt or None for BOS alone, tokens, golden file)
    (None, 199, "stories260K.greedy-from-bos.txt"),
    ("Once upon a time, there was a dragon", 100, "stories260K.greedy-dragon.txt"),
)
PREFILL_BENCH_TOKENS = 512
# the batch step matmul_table profiles by kernel: the table's batch-16 rate, launch group by group
BATCH_PROFILE_SEQS = 16
BENCH_MODELS = (  # (file name, make_gguf.py arguments)
    (
        "bench-tinyllama-1.1b-Q4_0.gguf",
        ["--preset", "tinyllama-1.1b", "--format", "Q4_0"],
    ),  # first: done even if a limit cuts the 8B
    (
        "bench-llama3-8b-Q4_K_M.gguf",
        ["--preset", "7b", "--ffn", "14336", "--kv-heads", "8", "--vocab", "128256", "--format", "Q4_K_M"],
    ),
)


# An Engine keeps its own block bookkeeping; this tool drives the executor without one, so each
# loaded model it steps carries one BlockManager of its own (kept on the model, not in a table
# by id: a model loaded later could reuse a freed one's id and find its blocks and state slots).
def blocks_of(lm: LoadedModel) -> BlockManager:
    blocks = getattr(lm, "_gpu_check_blocks", None)
    if blocks is None:
        blocks = lm._gpu_check_blocks = lm.kv_pool.manager()
    return blocks


def kernel_usage(bundle: Path, target: str) -> tuple[bool, str]:
    from rfc.artifacts.bundle import open_bundle
    from rfc.compiler.codegen.gpu_usage import bundle_usage, usage_table
    from rfc.artifacts.targets import target_entry

    b = open_bundle(bundle)
    usage = bundle_usage(b, target_entry(b.manifest, target))
    bad = [u.name for u in usage.values() if u.is_hot and u.uses_local_memory]
    return not bad, usage_table(usage)


def forward(lm: LoadedModel, seq: int, start: int, tokens: list[int], all_logits: bool = False) -> np.ndarray:
    blocks_of(lm).allocate(seq, start + len(tokens))
    return lm.executor.forward(
        build_batch([ScheduledChunk(seq, start, tuple(tokens), all_logits=all_logits)], blocks_of(lm))
    )


def teacher_forced(bundle: Path, device: str, tokens: list[int]) -> np.ndarray:
    lm = load_model(bundle, LoadOptions(device=device))
    return forward(lm, 0, 0, tokens, all_logits=True)


def speed(lm: LoadedModel, prompt_len: int, steps: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s), after one warm-up run of each."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(2, lm.vocab_size, size=prompt_len).tolist()
    forward(lm, 0, 0, prompt[:8])  # warm-up: first launches, pool allocations
    blocks_of(lm).free(0)
    t = time.perf_counter()
    logits = forward(lm, 1, 0, prompt)
    prefill = prompt_len / (time.perf_counter() - t)
    pos = prompt_len
    t = time.perf_counter()
    for _ in range(steps):
        logits = forward(lm, 1, pos, [int(logits[-1].argmax())])
        pos += 1
    return prefill, steps / (time.perf_counter() - t)


def rfc_run(bundle: Path, device: str, n: int, prompt: str | None, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-c",
        "from rfc.cli.main import main; main()",
        "run",
        str(bundle),
        "--temperature",
        "0",
        "-n",
        str(n),
        "--device",
        device,
        *extra,
    ]
    if prompt is not None:
        args += ["-p", prompt]
    return subprocess.run(args, capture_output=True, text=True)


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"


def greedy_goldens(bundle: Path, device: str) -> tuple[bool, str]:
    notes = []
    ok = True
    for prompt, n, golden in GOLDENS:
        text = (FIXTURES / golden).read_text(encoding="utf-8")[:-2]  # llama.cpp adds a blank line
        proc = rfc_run(bundle, device, n, prompt)
        got = proc.stdout if prompt is None else " " + prompt + proc.stdout
        same = proc.returncode == 0 and got == text + "\n"
        ok &= same
        notes.append(f"{golden.split('.')[1]} {'same' if same else 'DIFFERENT'}")
        if proc.returncode != 0:
            notes.append(last_line(proc))
    return ok, ", ".join(notes)


def first_difference(a: str, b: str) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def engine_checks(bundle: Path, device: str) -> tuple[bool, list[str]]:
    """Speculation on this device: greedy text with n-gram speculation must be the text without it
    (stories260K's two golden prompts); the drafts accepted are reported."""
    notes = []
    ok = True
    for prompt, n, _ in GOLDENS:
        plain = rfc_run(bundle, device, n, prompt)
        spec = rfc_run(bundle, device, n, prompt, "--spec-type", "ngram")
        same = plain.returncode == 0 and spec.returncode == 0 and plain.stdout == spec.stdout
        ok &= same
        where = "" if same else f" (first difference at char {first_difference(plain.stdout, spec.stdout)})"
        notes.append(
            f"spec ngram {'same' if same else 'DIFFERENT'}{where}"
            + ("" if spec.returncode == 0 else f": {last_line(spec)}")
        )
        if spec.returncode == 0:
            stats = [line for line in spec.stderr.splitlines() if "draft" in line or "accept" in line]
            if stats:
                notes.append(stats[-1].strip())
    return bool(ok), notes


Q8_CACHE = KvCacheTypes(CacheType.Q8_0, CacheType.Q8_0)
Q8_CACHE_MODELS = ("llama-Q4_K_M", "llama-Q8_0", "qwen3-Q8_0")  # head_dim a multiple of 32


def q8_cache_check(
    name: str, bundle: Path, device: str, tokens: list[int], rounding, plain_ref: np.ndarray
) -> tuple[bool, str]:
    """Teacher-forced logits with a q8_0 K and V cache on the device against the reference
    device's with the same cache (which quantizes as llama.cpp does): the device's own bounds for
    its activation rounding, widened by a share of what quantizing the cache moves the
    reference's logits by (tests/bounds.py KV_CPU_SHARE: the device's K and V differ from the
    reference's by its rounding, which flips a value to the next q8_0 step now and then)."""
    from tests.bounds import KV_CPU_SHARE, device_bounds

    lm = load_model(bundle, LoadOptions(device=device, cache_types=Q8_CACHE))
    got = forward(lm, 0, 0, tokens, all_logits=True)
    ref_lm = load_model(bundle, LoadOptions(device="ref", cache_types=Q8_CACHE))
    ref = forward(ref_lm, 0, 0, tokens, all_logits=True)
    quantizing = np.abs(ref - plain_ref)
    flips = (0 if rounding is None else np.abs(rounding)) + KV_CPU_SHARE * quantizing
    ok, summary = device_bounds(name, got, ref, flips)
    return ok, (
        f"q8_0 cache vs ref q8_0 {summary}{'' if ok else ' FAIL'} "
        f"(quantizing moves ref by mean {quantizing.mean():.2e}, a share {KV_CPU_SHARE} of it allowed)"
    )


def batch_list_check(
    name: str, lm: LoadedModel, tokens: list[int], expected: np.ndarray, ref: np.ndarray, rounding
) -> tuple[bool, str]:
    """The fixture's tokens in one step on the batch list (gpu_bmma's twins on the int8 matrix
    instructions), against llama.cpp's logits and within the decode list's rounding bounds of the
    reference device's: the fixture's own step takes the prefill list, and steps of 8 to 63 tokens,
    which take the batch list, would otherwise go unchecked on the card."""
    from tests.bounds import device_bounds, llama_cpp_bounds

    runner = lm.device.runner
    saved, runner.prefill_min_tokens = runner.prefill_min_tokens, None
    try:
        if runner.list_name(len(tokens)) != "batch_launches":
            return False, f"batch list: a {len(tokens)}-token step takes {runner.list_name(len(tokens))} FAIL"
        got = forward(lm, 2, 0, tokens, all_logits=True)
    finally:
        runner.prefill_min_tokens = saved
        blocks_of(lm).free(2)
    ok_cpp, cpp = llama_cpp_bounds(name, got, expected)
    ok_ref, vs_ref = device_bounds(name, got, ref, rounding)
    return ok_cpp and ok_ref, (
        f"batch list: llama.cpp {cpp}{'' if ok_cpp else ' FAIL'}; vs ref {vs_ref}{'' if ok_ref else ' FAIL'}"
    )


def smollm2_checks(bundle: Path, device: str) -> tuple[bool, list[str]]:
    """SmolLM2 against llama.cpp: teacher-forced lighthouse logits and the greedy prefixes."""
    import json

    from tokenizers import Tokenizer

    from tests.bounds import TOP1_GAP

    data = np.load(FIXTURES / "smollm2-lighthouse.logits.npz")
    expected = data["logits"]  # at the vocabulary ids in data["columns"]
    got = teacher_forced(bundle, device, data["tokens"].tolist())[:, data["columns"]]
    d = np.abs(got - expected)
    top = np.sort(expected, axis=-1)
    clear = top[:, -1] - top[:, -2] > TOP1_GAP
    agree = got.argmax(-1) == expected.argmax(-1)
    ok = bool(agree[clear].all()) and d.mean() <= SMOLLM2_MEAN and d.max() <= SMOLLM2_MAX
    notes = [f"lighthouse max {d.max():.3f} mean {d.mean():.4f} top1 {agree.mean():.3f}{'' if ok else ' FAIL'}"]
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    same = 0
    cases = json.loads((FIXTURES / "smollm2-greedy.json").read_text())
    for case in cases:
        n = case["first_near_tie"]
        prefix = case["completion_ids"][: len(case["completion_ids"]) if n is None else n]
        prompt = case["prompt"] if case["kind"] == "raw" else case["rendered"]  # the exact rendering as the prompt
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from rfc.cli.main import main; main()",
                "run",
                str(bundle),
                "--temperature",
                "0",
                "-n",
                str(len(prefix)),
                "--device",
                device,
                "-p",
                prompt,
            ],
            capture_output=True,
            text=True,
        )
        same += proc.returncode == 0 and proc.stdout == tokenizer.decode(prefix) + "\n"
    ok &= same == len(cases)
    notes.append(f"greedy prefixes {same}/{len(cases)} same")
    return bool(ok), notes


def check_model(path: Path, target: str, device: str, out: Path, args) -> dict:
    name = "stories260K" if path == DEMO else "SmolLM2" if path == SMOLLM2 else path.stem.removeprefix("tiny-")
    row = {"model": name, "ok": True, "notes": []}
    bundle = out / f"{path.stem}-{target}"
    t = time.perf_counter()
    compile_model(CompileOptions(model=path, out_dir=bundle, targets=(target,), force=True))
    row["compile_s"] = time.perf_counter() - t
    npz = path.with_name(path.stem + ".logits.npz")
    if npz.is_file():
        expected = np.load(npz)
        tokens = expected["tokens"].tolist()
        from rfc.artifacts.bundle import open_bundle
        from tests.bounds import device_bounds, llama_cpp_bounds
        from tests.kernels.gpu_support import (
            gpu_rounding,
            gpu_rounding_kinds,
            prefill_rounding,
            prefill_rounding_kinds,
        )

        lm = load_model(bundle, LoadOptions(device=device))
        gpu = forward(lm, 0, 0, tokens, all_logits=True)
        runner = getattr(lm.device, "runner", None)  # GPU devices; --target cpu* dry-runs this tool without one
        min_tokens = (
            runner.prefill_min_tokens if runner is not None else None
        )  # the fixtures' 64 tokens take the prefill list
        rounding = prefill_rounding if min_tokens is not None and len(tokens) >= min_tokens else gpu_rounding
        ok, summary = llama_cpp_bounds(name, gpu, expected["logits"])
        row["ok"] &= ok
        row["notes"].append(f"llama.cpp {summary}{'' if ok else ' FAIL'}")
        ref = teacher_forced(bundle, "ref", tokens)
        formats = {t.format for t in open_bundle(bundle).layout.tensors}
        # two float64 oracle passes: once per model
        rounded = (
            prefill_rounding(name, formats, tokens, target)
            if rounding is prefill_rounding
            else gpu_rounding(name, formats, tokens)
        )
        ok, summary = device_bounds(name, gpu, ref, rounded)
        row["ok"] &= ok
        row["notes"].append(f"vs ref {summary}{'' if ok else ' FAIL'}")
        if runner is not None and runner.program.batch_launches:
            # the batch list rounds as the decode list does (no half tensor cores)
            same = rounding is gpu_rounding or prefill_rounding_kinds(formats, target) == gpu_rounding_kinds(formats)
            ok, summary = batch_list_check(
                name, lm, tokens, expected["logits"], ref, rounded if same else gpu_rounding(name, formats, tokens)
            )
            row["ok"] &= ok
            row["notes"].append(summary)
        if name in Q8_CACHE_MODELS:
            ok, summary = q8_cache_check(name, bundle, device, tokens, rounded, ref)
            row["ok"] &= ok
            row["notes"].append(summary)
    if path == DEMO:
        ok, summary = greedy_goldens(bundle, device)
        row["ok"] &= ok
        row["notes"].append(summary)
        ok, notes = engine_checks(bundle, device)
        row["ok"] &= ok
        row["notes"].extend(notes)
    if path == SMOLLM2:
        ok, notes = smollm2_checks(bundle, device)
        row["ok"] &= ok
        row["notes"].extend(notes)
    if device != "cpu":
        ok, table = kernel_usage(bundle, target)
        row["ok"] &= ok
        row["notes"].append("kernels: no local memory" if ok else "kernels: LOCAL MEMORY in hot kernels")
        row["usage"] = table
    lm = load_model(bundle, LoadOptions(device=device))
    row["prefill"], row["decode"] = speed(lm, args.prompt, args.decode)
    return row


def decode_batch(lm: LoadedModel, batch: int, steps: int, logits: bool = False) -> float:
    """Aggregate decode tok/s with `batch` sequences of 32-token prompts, after a warm-up: greedy,
    each step's tokens chosen on the device as the engine serves them (only the token ids come
    back; where the device queues steps ahead, each step launched before the one before is read
    and fed its tokens on the device, as the engine runs decode: runtime/engine/ahead.py) where
    the device samples; with `logits` (or where it does not) every step's logits come back to
    the host instead, and the next tokens are random."""
    from rfc.runtime.sampling.sampler import Sampler, SamplingParams

    rng = np.random.default_rng(1)
    prompts = [rng.integers(2, lm.vocab_size, size=32).tolist() for _ in range(batch)]
    for s, prompt in enumerate(prompts):
        forward(lm, 100 + s, 0, prompt)
    pos = 32
    on_device = lm.executor.samples_on_device and not logits
    samplers = [Sampler(SamplingParams(temperature=0.0), list(p), lm.vocab_size) for p in prompts]
    tokens = [int(rng.integers(2, lm.vocab_size)) for _ in range(batch)]

    def next_batch():
        nonlocal pos
        chunks = [ScheduledChunk(100 + s, pos, (tokens[s],)) for s in range(batch)]
        for c in chunks:
            blocks_of(lm).allocate(c.seq_id, pos + 1)
        pos += 1
        return build_batch(chunks, blocks_of(lm))

    def step():
        nonlocal tokens
        built = next_batch()
        if on_device:
            out = lm.executor.forward_sampled(built, [(sampler, False) for sampler in samplers])
            tokens = [int(t) for t in out.tokens]
            for sampler, t in zip(samplers, tokens):
                sampler.record(t)
        else:
            lm.executor.forward(built)
            tokens = [int(rng.integers(2, lm.vocab_size)) for _ in range(batch)]

    try:
        step()  # graph capture for this batch size
        if on_device and lm.executor.runs_ahead:
            from gpu_experiment import queued_decode  # a sibling script

            return batch * steps / queued_decode(lm.executor, next_batch, samplers, steps)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        return batch * steps / (time.perf_counter() - t)
    finally:
        for s in range(batch):
            blocks_of(lm).free(100 + s)


def served_rate(lm: LoadedModel, batch: int, steps: int, errors: list[str]) -> float:
    """decode_batch as the engine runs it (tokens chosen on the device); where that fails, the
    error in `errors` and the rate with the logits copied to the host instead."""
    try:
        return decode_batch(lm, batch, steps)
    except Exception as e:  # noqa: BLE001  the error is the finding: reported, not raised
        errors.append(f"batch {batch} with the tokens chosen on the device: {type(e).__name__}: {e}")
        return decode_batch(lm, batch, steps, logits=True)


def prefill_rates(lm: LoadedModel, tokens: int) -> tuple[float, float | None]:
    """tok/s of one `tokens`-token prompt on the step program's prefill list, and on its decode
    list (None without a prefill list), each after a warm-up run."""
    runner = getattr(lm.device, "runner", None)
    prompt = np.random.default_rng(2).integers(2, lm.vocab_size, size=tokens).tolist()

    def rate() -> float:
        forward(lm, 200, 0, prompt)  # warm-up
        blocks_of(lm).free(200)
        t = time.perf_counter()
        forward(lm, 200, 0, prompt)
        elapsed = time.perf_counter() - t
        blocks_of(lm).free(200)
        return tokens / elapsed

    mma = rate()
    if runner is None or runner.prefill_min_tokens is None:
        return mma, None
    saved, runner.prefill_min_tokens = runner.prefill_min_tokens, None  # every step on the decode list
    try:
        return mma, rate()
    finally:
        runner.prefill_min_tokens = saved


def prefill_matmuls(lm: LoadedModel) -> str:
    """Which tensor-core matmuls the prefill list launches: int8 (rfc_matmul_imma_*, sm_80+ over
    the formats of compiler/codegen/gpu_imma.py) and half (rfc_matmul_mma_*), launches per step."""
    runner = getattr(lm.device, "runner", None)
    launches = runner.program.prefill_launches if runner is not None else ()
    int8 = sum(l.kernel.startswith("rfc_matmul_imma_") for l in launches)
    half = sum(l.kernel.startswith("rfc_matmul_mma_") for l in launches)
    return f"int8 {int8}, half {half}"


def launch_summary(lm: LoadedModel) -> str:
    """Launches a step of each list, and whether they overlap (compiler/codegen/gpu_overlap.py:
    the program marked for it and the driver with the launch)."""
    runner = getattr(lm.device, "runner", None)
    if runner is None:
        return "no step program"
    program = runner.program
    marked = ", ".join(sorted(program.overlapped_lists())) or "none"
    overlap = f"lists marked: {marked}; driver: {'yes' if runner._driver.overlaps else 'no'}"
    return (
        f"decode list {len(program.launches)}, one-token list {len(program.single_launches)}, prefill list "
        f"{len(program.prefill_launches)}, batch list {len(program.batch_launches)} (from "
        f"{program.batch_min_tokens} tokens); overlapped launches: {overlap}"
    )


def serve_ready_seconds(bundle: Path, device: str) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [
        sys.executable,
        "-c",
        "from rfc.cli.main import main; main()",
        "serve",
        str(bundle),
        "--device",
        device,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - t < 600:
            if proc.poll() is not None:
                raise RuntimeError(f"rfc serve exited {proc.returncode}: {proc.stderr.read().decode()[-400:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rfc serve not ready after 600 s")
    finally:
        proc.terminate()
        proc.wait(30)


def matmul_table(lm: LoadedModel) -> str:
    """Each matmul of the decode list alone at batch 1 (tools/gpu_matmul_bw.py), as a table."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_matmul_bw as bw

    runner = lm.device.runner
    blocks = blocks_of(lm)
    scalars = bw.decode_step(runner, lm.executor, lm.vocab_size, blocks)
    blocks.free(0)
    timer = bw.EventTimer(runner._driver)
    text = bw.table(
        bw.matmul_rates(runner, lm.bundle.layout, scalars, timer, 200), timer.copy_rate(runner._driver, runner.stream)
    )
    try:  # the whole step by kernel: what each node costs beyond its work
        text += "\n\nthe decode step by kernel, batch 1:\n" + bw.step_profile(runner, scalars, timer, 50)
    except Exception as e:  # the matmul table stands without it
        text += f"\n(step profile failed: {type(e).__name__}: {e})"
    try:  # a step of 16 sequences' tokens (the batch list: each weight read once for all of them)
        seqs, first = BATCH_PROFILE_SEQS, 2  # (sequence 0: the batch-1 step's, 1: the prefill's)
        scalars = bw.batch_decode_step(runner, lm.executor, lm.vocab_size, blocks, seqs, first=first)
        text += f"\n\nthe decode step by kernel, batch {seqs}:\n" + bw.step_profile(runner, scalars, timer, 20)
        for s in range(first, first + seqs):
            blocks.free(s)
    except Exception as e:
        text += f"\n(batch step profile failed: {type(e).__name__}: {e})"
    try:  # and a 512-token prompt's step (the prefill list: tensor-core matmuls, tiled attention)
        scalars = bw.prefill_step(runner, lm.vocab_size, blocks, PREFILL_BENCH_TOKENS)
        text += f"\n\na {PREFILL_BENCH_TOKENS}-token prefill step by kernel:\n" + bw.step_profile(
            runner, scalars, timer, 3
        )
        blocks.free(1)
    except Exception as e:
        text += f"\n(prefill profile failed: {type(e).__name__}: {e})"
    return text


def bench(
    target: str, device: str, out: Path, steps: int, only: set[str] | None, on_row=lambda rows: None
) -> list[dict]:
    rows = []
    for file, make_args in BENCH_MODELS:
        if only is not None and not any(name in file for name in only):
            continue
        t0 = time.perf_counter()
        gguf = out / file
        if not gguf.is_file():
            subprocess.run([sys.executable, str(ROOT / "tools" / "make_gguf.py"), str(gguf), *make_args], check=True)
        bundle = out / f"{gguf.stem}-{target}"
        compile_model(CompileOptions(model=gguf, out_dir=bundle, targets=(target,), force=True))
        lm = load_model(bundle, LoadOptions(device=device))
        weight_bytes = (bundle / "weights.bin").stat().st_size
        errors: list[str] = []
        b1 = served_rate(lm, 1, steps, errors)
        b1_logits = decode_batch(lm, 1, steps, logits=True)
        b16 = served_rate(lm, 16, max(8, steps // 4), errors)
        prefill, prefill_dp4a = prefill_rates(lm, PREFILL_BENCH_TOKENS)
        rows.append(
            {
                "model": gguf.stem,
                "b1": b1,
                "b1_logits": b1_logits,
                "errors": errors,
                "b16": b16,
                "gbps": b1 * weight_bytes / 1e9,
                "prefill": prefill,
                "prefill_dp4a": prefill_dp4a,
                "prefill_matmuls": prefill_matmuls(lm),
                "launches": launch_summary(lm),
                "ready": serve_ready_seconds(bundle, device),
                "matmuls": matmul_table(lm) if device in ("cuda", "hip") else "",
            }
        )
        print(
            f"bench {gguf.stem}: {time.perf_counter() - t0:.0f} s, "
            f"{ {k: v for k, v in rows[-1].items() if k != 'matmuls'} }\n{rows[-1]['matmuls']}",
            file=sys.stderr,
            flush=True,
        )
        on_row(rows)
    return rows


def write_json(
    path: Path | None, target: str, device: str, out: Path, rows: list[dict], bench_rows: list[dict]
) -> None:
    """The checks and benchmark rows so far (tools/gpu_session.py reads them): written after every
    model, so a run cut off by its time limit still leaves what it measured."""
    if path is None:
        return
    keep = ("model", "ok", "notes", "compile_s", "prefill", "decode")
    path.write_text(
        json.dumps(
            {
                "target": target,
                "device": device,
                "out": str(out),
                "checks": [{k: r[k] for k in keep if k in r} for r in rows],
                "bench": [
                    {k: v for k, v in b.items() if k != "matmuls"} | {"gguf": str(out / (b["model"] + ".gguf"))}
                    for b in bench_rows
                ],
            },
            indent=1,
            default=str,
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="GGUF files (default: every fixture, stories260K and SmolLM2)")
    ap.add_argument("--target", default="sm_90", help="sm_XY (device cuda), gfxNNNN (device hip) or cpu* (a dry run)")
    ap.add_argument("--out", type=Path, default=None, help="where to write bundles (default: a temp dir)")
    ap.add_argument("--prompt", type=int, default=128, help="prefill tokens for the speed test")
    ap.add_argument("--decode", type=int, default=64, help="decode steps for the speed test")
    ap.add_argument("--bench", action="store_true", help="also the 8B / 1.1B random-weight benchmark table")
    ap.add_argument(
        "--bench-only", default=None, help="comma-separated parts of the benchmark models' names to run (8b, 1.1b)"
    )
    ap.add_argument(
        "--fixtures",
        type=Path,
        default=None,
        help="take fixtures and goldens from this directory; make and fetch nothing (no network)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the checks and benchmark rows to this file (tools/gpu_session.py reads it)",
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="S",
        help="start no further model's checks after S seconds (those left are listed as not run)",
    )
    args = ap.parse_args()
    started = time.monotonic()
    # --target cpu (or cpu-avx512, ...) runs everything but the GPU's own checks on the cpu
    # device: a dry run of this tool on a machine without a GPU.
    device = "cuda" if args.target.startswith("sm_") else "cpu" if args.target.startswith("cpu") else "hip"
    global FIXTURES, SMOLLM2
    if args.fixtures is not None:
        FIXTURES = args.fixtures.resolve()
        SMOLLM2 = FIXTURES / SMOLLM2.name
    else:
        testdata.make_fixtures()
        testdata.smollm2()
    models = args.models or [DEMO] + sorted(FIXTURES.glob("tiny-*.gguf")) + ([SMOLLM2] if SMOLLM2.is_file() else [])
    out = args.out or Path(tempfile.mkdtemp(prefix="rfc-gpu-check-"))
    rows = []
    if device != "cpu":
        from rfc.cli.host_targets import host_targets

        host = host_targets()
        rows.append({"model": "host targets", "ok": args.target in host.targets, "notes": [host.describe()]})
    for path in models:
        t0 = time.perf_counter()
        if args.time_limit is not None and time.monotonic() - started > args.time_limit:
            rows.append({"model": path.stem, "ok": True, "notes": ["not run: --time-limit reached"]})
            continue
        try:
            rows.append(check_model(path.resolve(), args.target, device, out, args))
        except Exception as e:  # report and go on with the next model
            traceback.print_exc()
            rows.append({"model": path.stem, "ok": False, "notes": [f"{type(e).__name__}: {e}"]})
        r = rows[-1]
        print(
            f"{'ok  ' if r['ok'] else 'FAIL'} {r['model']} ({time.perf_counter() - t0:.1f} s): {'; '.join(r['notes'])}",
            file=sys.stderr,
            flush=True,
        )
        write_json(args.json, args.target, device, out, rows, [])
    print(f"\n{args.target} ({device}), bundles in {out}\n")
    print(f"{'model':<16} {'ok':<4} {'compile s':>9} {'prefill tok/s':>13} {'decode tok/s':>12}  checks")
    for r in rows:
        nums = (
            f"{r['compile_s']:>9.1f} {r['prefill']:>13.0f} {r['decode']:>12.1f}"
            if "decode" in r
            else f"{'-':>9} {'-':>13} {'-':>12}"
        )
        print(f"{r['model']:<16} {'yes' if r['ok'] else 'NO':<4} {nums}  {'; '.join(r['notes'])}")
    usage = next((r["usage"] for r in rows if "usage" in r and "Q4_K_M" in r["model"]), None)
    if usage:
        print(f"\nkernel resources (llama-Q4_K_M, {args.target}):\n{usage}")
    if args.bench:
        print(
            f"\n{'benchmark model':<34} {'b1 tok/s':>9} {'(logits)':>9} {'b16 tok/s':>10} {'b16/b1':>7} {'weights GB/s':>12} "
            f"{'prefill 512 tok/s':>17} {'(dp4a)':>8} {'serve ready s':>13}"
        )
        only = None if args.bench_only is None else set(args.bench_only.split(","))
        bench_rows = bench(
            args.target,
            device,
            out,
            args.decode,
            only,
            lambda done: write_json(args.json, args.target, device, out, rows, done),
        )
        for b in bench_rows:
            dp4a = f"{b['prefill_dp4a']:>8.0f}" if b["prefill_dp4a"] is not None else f"{'-':>8}"
            print(
                f"{b['model']:<34} {b['b1']:>9.1f} {b['b1_logits']:>9.1f} {b['b16']:>10.1f} {b['b16'] / b['b1']:>7.2f} {b['gbps']:>12.0f} "
                f"{b['prefill']:>17.0f} {dp4a} {b['ready']:>13.1f}"
            )
            print(f"  {b['model']}: the prefill list's tensor-core matmuls per step: {b['prefill_matmuls']}")
            print(f"  {b['model']}: launches a step: {b['launches']}")
            for error in b["errors"]:
                print(f"  {b['model']}: FAILED {error}")
            if b["matmuls"]:
                print(f"  {b['model']}: each matmul of the decode list alone, batch 1\n{b['matmuls']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
