"""Where does batch invariance hold on the cpu target? One sequence's last-token logits alone
against inside steps of other shapes (other sequences' prefills and decodes beside it, its own
prompt split differently), at 2 and at 1 threads, compared bit for bit (docs/determinism.md).

    python tools/check_invariance.py MODEL.gguf|BUNDLE [...]

Prints, per model, the largest difference of each step shape that is not 0.0 ("none": every
shape gave the same bits) and the difference between 1 and 2 threads. A GGUF is compiled for
the cpu target into a temporary folder first."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model


def bundle_of(model: Path, scratch: Path) -> Path:
    if model.is_dir():
        return model
    from rfc.compiler.pipeline import CompileOptions, compile_model

    out = scratch / model.stem
    compile_model(CompileOptions(model=model, out_dir=out, targets=("cpu",)))
    return out


def measure(bundle: Path, threads: int, length: int = 40) -> tuple[np.ndarray, dict[str, float]]:
    model = load_model(bundle, LoadOptions(device="cpu", prefix_caching=False, threads=threads))
    blocks = model.kv_pool.manager()
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, model.vocab_size, size=length).tolist()
    filler = rng.integers(3, model.vocab_size, size=600).tolist()

    def run(spec: list[tuple[int, list[int], int]]) -> np.ndarray:
        chunks = []
        for seq, tokens, start in spec:
            if start == 0:
                blocks.free(seq)
            blocks.allocate(seq, start + len(tokens))
            chunks.append(ScheduledChunk(seq, start, tuple(tokens)))
        return model.executor.forward(build_batch(chunks, blocks))

    base = run([(1, prompt, 0)])[0]
    got = {}
    run([(1, prompt[:-1], 0)])
    got["split L-1+1"] = run([(1, prompt[-1:], length - 1)])[0]
    for n in (3, 9, 31, 33, 100, 300):
        got[f"after a prefill of {n}"] = run([(2, filler[:n], 0), (1, prompt, 0)])[1]
    for n in (1, 7, 8, 31, 32, 64, 200):
        run([(1, prompt[:-1], 0)])
        got[f"decode beside a prefill of {n}"] = run([(2, filler[:n], 0), (1, prompt[-1:], length - 1)])[1]
    for k in (1, 5, 16):
        run([(1, prompt[:k], 0)])
        got[f"split {k}+rest"] = run([(1, prompt[k:], k)])[0]
    return base, {name: float(np.abs(row - base).max()) for name, row in got.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            bundle = bundle_of(model, Path(scratch))
            base2, two = measure(bundle, 2)
            base1, _ = measure(bundle, 1)
            differ = {k: v for k, v in two.items() if v}
            print(
                f"{model.stem}: 1 vs 2 threads {float(np.abs(base1 - base2).max())}; "
                f"shapes that differ: {differ or 'none'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
