"""Cost of constrained decoding per generated token (the budget: <= 10% of the decode
step on SmolLM2-135M at batch 1, <= 1 ms per row at a 128k vocabulary).

    python tools/bench_constraints.py --bundle bundles/SmolLM2-135M-Instruct \\
        --vocab-gguf ~/.cache/rfc/test-data/vocab/*/ggml-vocab-llama-bpe.gguf   # unpacked by the tests

1. End to end on the bundle: greedy decode of --tokens tokens (ignore_eos) without a
   constraint and with a grammar that never ends (so both runs make the same number of
   steps); the difference per token is the constraint's cost inside the engine.
2. In isolation: mask + accept per token for a JSON schema, on the bundle's vocabulary and
   (with --vocab-gguf) on a 128k one (Llama 3's), driven by random logits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from rfc.runtime.sampling.constraints import Grammars
from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.generate import generate
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.sampling.sampler import SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city"],
        },
    },
    "required": ["name", "age", "address"],
}
ENDLESS = "start: /[a-z ,.]+/"  # never accepting-only, so a run lasts exactly --tokens steps


def decode_ms_per_token(model, grammar, tokens: int, prompt: list[int]) -> float:
    engine = Engine(model)
    request = GenerationRequest(
        prompt_ids=prompt,
        params=SamplingParams(temperature=0.0),
        max_tokens=tokens,
        ignore_eos=True,
        constraint=grammar,
    )
    generate(
        engine,
        GenerationRequest(prompt_ids=prompt, params=SamplingParams(temperature=0.0), max_tokens=2),
        lambda _: None,
    )
    state, stats = generate(engine, request, lambda _: None)
    elapsed = stats.generate_seconds
    assert len(state.tokens) == tokens, (len(state.tokens), state.finish_reason, state.error)
    return 1e3 * elapsed / max(1, tokens - 1)  # generate_seconds starts at the first token


def mask_us_per_token(grammars: Grammars, rows: int, seed: int = 0) -> tuple[float, float]:
    """(median, p95) microseconds of mask + accept over `rows` random-logit JSON generations."""
    rng = np.random.default_rng(seed)
    grammar = grammars.json_schema(SCHEMA, "bench")
    times = []
    for _ in range(rows):
        m = grammar.matcher()
        for _ in range(300):
            logits = rng.standard_normal(grammars.vocab_size).astype(np.float32)
            t = time.perf_counter()
            masked = m.mask(logits)
            token = int(np.argmax(masked))
            m.accept(token)
            times.append(time.perf_counter() - t)
            if m.is_done:
                break
    times.sort()
    return 1e6 * statistics.median(times), 1e6 * times[int(0.95 * (len(times) - 1))]


def vocab_tokenizer(path: Path) -> tuple[str, int, list[int]]:
    from gguf import GGUFReader  # a tool may read GGUFs; the runtime never does

    from rfc.compiler.tokenizer import build_tokenizer

    reader = GGUFReader(str(path))
    metadata = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    text, info = build_tokenizer(metadata)
    return text, info.vocab_size, list(info.eog_ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--vocab-gguf", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rows", type=int, default=20, help="JSON generations for the isolated mask timing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved plain/constrained decode runs")
    args = ap.parse_args()

    model = load_model(args.bundle, LoadOptions(device=args.device))
    info = model.tokenizer_info
    eos = list(info.get("eog_ids") or [info["eos_id"]])
    started = time.perf_counter()
    grammars = Grammars((args.bundle / "tokenizer.json").read_text(encoding="utf-8"), model.vocab_size, eos)
    print(f"tokenizer view: {model.vocab_size} tokens in {time.perf_counter() - started:.2f} s")
    prompt = model.tokenizer.encode("Once upon a time", add_special_tokens=True).ids
    endless = grammars.lark(ENDLESS, "bench")
    decode_ms_per_token(model, None, args.tokens, prompt)  # warm-up: the device's first steps run slower
    runs: dict[str, list[float]] = {"plain": [], "constrained": []}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits both alike
        runs["plain"].append(decode_ms_per_token(model, None, args.tokens, prompt))
        runs["constrained"].append(decode_ms_per_token(model, endless, args.tokens, prompt))
    plain, constrained = statistics.median(runs["plain"]), statistics.median(runs["constrained"])
    print(
        f"decode, batch 1, {args.tokens} tokens on {model.device_choice.name}, median of {args.rounds} interleaved "
        f"rounds: {plain:.2f} ms/token plain, "
        f"{constrained:.2f} ms/token constrained: +{constrained - plain:.3f} ms "
        f"({100 * (constrained - plain) / plain:+.1f}%)"
    )
    med, p95 = mask_us_per_token(grammars, args.rows)
    print(
        f"mask + accept, JSON schema, vocab {model.vocab_size}: median {med:.0f} us, p95 {p95:.0f} us per token "
        f"({100 * med / 1e3 / plain:.1f}% of the plain decode step)"
    )
    if args.vocab_gguf:
        text, n, eos = vocab_tokenizer(args.vocab_gguf)
        big = Grammars(text, n, eos)
        med, p95 = mask_us_per_token(big, args.rows)
        print(f"mask + accept, JSON schema, vocab {n}: median {med:.0f} us, p95 {p95:.0f} us per row")


if __name__ == "__main__":
    main()
