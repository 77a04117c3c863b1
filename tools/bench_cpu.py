"""Measure prefill and decode speed of the cpu device on a GGUF (or an already compiled bundle).

    python tools/bench_cpu.py /tmp/tl-Q4_0.gguf                 # compiles to a temp dir first
    python tools/bench_cpu.py --bundle /tmp/tl-Q4_0.rfc         # reuses a bundle
    python tools/bench_cpu.py MODEL.gguf --prompt 512 --gen 128 --repeat 3

Prefill: one sequence, a prompt of --prompt random tokens in one step (logits for the last
token only), tokens per second of the best of --repeat runs. Decode: after a 16-token
prompt, --gen steps of one token each (greedy), tokens per second of the best run. Like
llama-bench, the numbers leave out compile time and the first touch of the weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.assemble import LoadedModel, LoadOptions, load_model


# An Engine keeps its own block bookkeeping; this tool drives the executor without one, so it
# keeps one BlockManager per loaded model it steps.
_BLOCKS: dict[int, BlockManager] = {}


def blocks_of(lm: LoadedModel) -> BlockManager:
    if id(lm) not in _BLOCKS:
        _BLOCKS[id(lm)] = lm.kv_pool.manager()
    return _BLOCKS[id(lm)]


def prefill(lm: LoadedModel, tokens: list[int], seq: int = 0) -> tuple[float, np.ndarray]:
    blocks_of(lm).allocate(seq, len(tokens))
    batch = build_batch([ScheduledChunk(seq, 0, tuple(tokens))], blocks_of(lm))
    started = time.perf_counter()
    logits = lm.executor.forward(batch)
    return time.perf_counter() - started, logits


def decode(lm: LoadedModel, prompt: list[int], steps: int, seq: int = 0) -> float:
    _, logits = prefill(lm, prompt, seq)
    pos = len(prompt)
    started = time.perf_counter()
    for _ in range(steps):
        token = int(logits[-1].argmax())
        blocks_of(lm).allocate(seq, pos + 1)
        logits = lm.executor.forward(build_batch([ScheduledChunk(seq, pos, (token,))], blocks_of(lm)))
        pos += 1
    return time.perf_counter() - started


def run(bundle: Path, prompt_len: int, gen: int, repeat: int) -> dict[str, float]:
    lm = load_model(bundle, LoadOptions(device="cpu", kv_blocks=None))
    if lm.device_choice.name != "cpu":
        raise SystemExit(f"bench_cpu: got device {lm.device_choice.name}, not cpu")
    rng = np.random.default_rng(0)
    vocab = lm.vocab_size
    prompt = rng.integers(1, vocab, size=prompt_len).tolist()
    prefill(lm, prompt[:32])  # page the weights in
    blocks_of(lm).free(0)
    best_prefill = best_decode = float("inf")
    for _ in range(repeat):
        seconds, _ = prefill(lm, prompt)
        blocks_of(lm).free(0)
        best_prefill = min(best_prefill, seconds)
        seconds = decode(lm, prompt[:16], gen)
        blocks_of(lm).free(0)
        best_decode = min(best_decode, seconds)
    return {"prefill_tok_s": prompt_len / best_prefill, "decode_tok_s": gen / best_decode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", type=Path, help="GGUF to compile and measure")
    p.add_argument("--bundle", type=Path, help="measure this compiled bundle instead")
    p.add_argument("--prompt", type=int, default=512, help="prefill prompt length (default 512)")
    p.add_argument("--gen", type=int, default=128, help="decode steps (default 128)")
    p.add_argument("--repeat", type=int, default=3, help="runs; the best counts (default 3)")
    args = p.parse_args(argv)
    if (args.model is None) == (args.bundle is None):
        p.error("give a GGUF or --bundle, not both")
    with tempfile.TemporaryDirectory(prefix="rfc-bench-") as tmp:
        bundle = args.bundle
        if bundle is None:
            from rfc.compiler.pipeline import CompileOptions, compile_model

            bundle = Path(tmp) / "bundle"
            compile_model(CompileOptions(args.model, bundle, targets=("cpu",)))
        result = run(bundle, args.prompt, args.gen, args.repeat)
    name = (args.model or args.bundle).name
    print(
        f"{name}: prefill {result['prefill_tok_s']:.1f} tok/s ({args.prompt} tokens), "
        f"decode {result['decode_tok_s']:.1f} tok/s ({args.gen} tokens)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
