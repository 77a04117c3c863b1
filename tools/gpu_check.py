"""Check the GPU path on a machine with a GPU: compile, load, compare, time.

    python tools/gpu_check.py                          # every fixture, sm_90, device cuda
    python tools/gpu_check.py --target gfx90a          # an AMD GPU (device hip)
    python tools/gpu_check.py ../shared/fixtures/tiny-llama-Q4_K_M.gguf --decode 128

For each model: compile for --target (nvcc / hipcc must be on this machine), load with the
GPU device, and compare teacher-forced logits with the fixture's llama.cpp logits (.npz,
the CPU path's bounds: F32/F16/tied max <= 0.05, BF16 max <= 0.15, quantized mean <= 0.15
and top-1 >= 0.93) and with the numpy reference device. For stories260K also greedy text
against the llama.cpp goldens (`rfc run --device <gpu>`). Then prefill and decode speed.
Prints one table; exits non-zero when any check fails. Every driver call is checked by the
device itself (rfc.runtime.devices.cuda / hip raise DeviceError with the driver's message).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from rfc.compiler.pipeline import CompileOptions, compile_model
from rfc.runtime.batch import SeqChunk, build_batch
from rfc.runtime.loader import LoadedModel, LoadOptions, load_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
DEMO = ROOT / "compiler" / "demo" / "stories260K.gguf"
GOLDENS = (  # (prompt or None for BOS alone, tokens, golden file)
    (None, 199, "stories260K.greedy-from-bos.txt"),
    ("Once upon a time, there was a dragon", 100, "stories260K.greedy-dragon.txt"),
)
REF_REL_TOL = 1e-3  # GPU vs reference: max |Δ| / max(1, max |ref|)


def bounds_ok(name: str, logits: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    d = np.abs(logits - expected)
    top1 = float((logits.argmax(-1) == expected.argmax(-1)).mean())
    fmt = name.rsplit("-", 1)[-1]
    if fmt in ("F32", "F16"):
        ok = d.max() <= 0.05
    elif fmt == "BF16":
        ok = d.max() <= 0.15
    else:
        ok = d.mean() <= 0.15 and top1 >= 0.93
    return bool(ok), f"max {d.max():.4f} mean {d.mean():.4f} top1 {top1:.3f}"


def forward(lm: LoadedModel, seq: int, start: int, tokens: list[int], all_logits: bool = False) -> np.ndarray:
    lm.blocks.allocate(seq, start + len(tokens))
    return lm.executor.forward(build_batch([SeqChunk(seq, start, tuple(tokens), all_logits=all_logits)], lm.blocks))


def teacher_forced(bundle: Path, device: str, tokens: list[int]) -> np.ndarray:
    lm = load_model(bundle, LoadOptions(device=device))
    return forward(lm, 0, 0, tokens, all_logits=True)


def speed(lm: LoadedModel, prompt_len: int, steps: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s), after one warm-up run of each."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(2, lm.vocab_size, size=prompt_len).tolist()
    forward(lm, 0, 0, prompt[:8])  # warm-up: first launches, pool allocations
    lm.blocks.free(0)
    t = time.perf_counter()
    logits = forward(lm, 1, 0, prompt)
    prefill = prompt_len / (time.perf_counter() - t)
    pos = prompt_len
    t = time.perf_counter()
    for _ in range(steps):
        logits = forward(lm, 1, pos, [int(logits[-1].argmax())])
        pos += 1
    return prefill, steps / (time.perf_counter() - t)


def greedy_goldens(bundle: Path, device: str) -> tuple[bool, str]:
    notes = []
    ok = True
    for prompt, n, golden in GOLDENS:
        text = (FIXTURES / golden).read_text(encoding="utf-8")[:-2]  # llama.cpp adds a blank line
        args = [sys.executable, "-c", "from rfc.cli.main import main; main()", "run", str(bundle),
                "--temperature", "0", "-n", str(n), "--device", device]
        if prompt is not None:
            args += ["-p", prompt]
        proc = subprocess.run(args, capture_output=True, text=True)
        got = proc.stdout if prompt is None else " " + prompt + proc.stdout
        same = proc.returncode == 0 and got == text + "\n"
        ok &= same
        notes.append(f"{golden.split('.')[1]} {'same' if same else 'DIFFERENT'}")
        if proc.returncode != 0:
            notes.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return ok, ", ".join(notes)


def check_model(path: Path, target: str, device: str, out: Path, args) -> dict:
    name = "stories260K" if path == DEMO else path.stem.removeprefix("tiny-")
    row = {"model": name, "ok": True, "notes": []}
    bundle = out / f"{path.stem}-{target}"
    t = time.perf_counter()
    compile_model(CompileOptions(model=path, out_dir=bundle, targets=(target,), force=True))
    row["compile_s"] = time.perf_counter() - t
    npz = path.with_name(path.stem + ".logits.npz")
    if npz.is_file():
        expected = np.load(npz)
        tokens = expected["tokens"].tolist()
        gpu = teacher_forced(bundle, device, tokens)
        ok, summary = bounds_ok(name, gpu, expected["logits"])
        row["ok"] &= ok
        row["notes"].append(f"llama.cpp {summary}{'' if ok else ' FAIL'}")
        ref = teacher_forced(bundle, "ref", tokens)
        rel = float(np.abs(gpu - ref).max()) / max(1.0, float(np.abs(ref).max()))
        row["ok"] &= rel <= REF_REL_TOL
        row["notes"].append(f"vs ref {rel:.1e}{'' if rel <= REF_REL_TOL else ' FAIL'}")
    if path == DEMO:
        ok, summary = greedy_goldens(bundle, device)
        row["ok"] &= ok
        row["notes"].append(summary)
    lm = load_model(bundle, LoadOptions(device=device))
    row["prefill"], row["decode"] = speed(lm, args.prompt, args.decode)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="GGUF files (default: every fixture and stories260K)")
    ap.add_argument("--target", default="sm_90", help="sm_XY (device cuda) or gfxNNNN (device hip)")
    ap.add_argument("--out", type=Path, default=None, help="where to write bundles (default: a temp dir)")
    ap.add_argument("--prompt", type=int, default=128, help="prefill tokens for the speed test")
    ap.add_argument("--decode", type=int, default=64, help="decode steps for the speed test")
    args = ap.parse_args()
    device = "cuda" if args.target.startswith("sm_") else "hip"
    models = args.models or sorted(FIXTURES.glob("tiny-*.gguf")) + [DEMO]
    out = args.out or Path(tempfile.mkdtemp(prefix="rfc-gpu-check-"))
    rows = []
    for path in models:
        try:
            rows.append(check_model(path.resolve(), args.target, device, out, args))
        except Exception as e:  # report and go on with the next model
            traceback.print_exc()
            rows.append({"model": path.stem, "ok": False, "notes": [f"{type(e).__name__}: {e}"]})
        r = rows[-1]
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['model']}", file=sys.stderr, flush=True)
    print(f"\n{args.target} ({device}), bundles in {out}\n")
    print(f"{'model':<16} {'ok':<4} {'compile s':>9} {'prefill tok/s':>13} {'decode tok/s':>12}  checks")
    for r in rows:
        nums = (f"{r['compile_s']:>9.1f} {r['prefill']:>13.0f} {r['decode']:>12.1f}" if "decode" in r else f"{'-':>9} {'-':>13} {'-':>12}")
        print(f"{r['model']:<16} {'yes' if r['ok'] else 'NO':<4} {nums}  {'; '.join(r['notes'])}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
