"""Speculative decoding in the engine alone (no HTTP): greedy decode of one bundle without and
with `--spec-type ngram` on tools/spec_prompts/tasks.json's prompts (in the model's chat
template), the two alternating per prompt and round.

    python tools/bench_spec_engine.py --bundle B --max-tokens 192 --rounds 3

Per prompt: decode tok/s (tokens after the first over the time from the first token to the
last; the median of the rounds), the drafts accepted / verified, target steps per generated
token (what speculation saves, whatever else runs on the machine) and whether the greedy text
was the same. Per group (grounded, chat): tokens over decode seconds over its prompts, per
round, and their median. tools/bench_spec.py measures through `rfc serve` against llama-server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.engine.prompting import chat_template, encode_prompt
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.engine.speculative import SpecConfig, SpecType

PROMPTS = Path(__file__).resolve().parent / "spec_prompts"
KINDS = (SpecType.NONE, SpecType.NGRAM)


def prompts() -> dict[str, str]:
    tasks = json.loads((PROMPTS / "tasks.json").read_text())
    out = {}
    for t in tasks["grounded"]:
        text = (PROMPTS / t["file"]).read_text().strip()
        if t.get("fence"):
            text = f"```{t['fence']}\n{text}\n```"
        out[f"grounded/{t['name']}"] = f"{t['task']}\n\n{text}"
    out.update({f"chat/{t['name']}": t["content"] for t in tasks["chat"]})
    return out


def decode(model, ids: list[int], kind: SpecType, max_tokens: int) -> tuple[int, float, int, dict, list[int]]:
    """(tokens, decode seconds, target steps after the first token, engine counts, tokens)."""
    engine = Engine(model, SchedulerConfig(spec=SpecConfig(type=kind)))
    state = engine.submit(GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=max_tokens))
    first, steps = None, 0
    while engine.step():
        if first is None and state.tokens:
            first, steps = time.perf_counter(), engine.steps
    return len(state.tokens), time.perf_counter() - first, engine.steps - steps, engine.counts(), list(state.tokens)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-tokens", type=int, default=192)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = load_model(Path(args.bundle), LoadOptions(device=args.device))
    template = chat_template(model)
    texts = prompts()
    res = {}
    for rnd in range(args.rounds):
        for i, (name, text) in enumerate(texts.items()):
            ids = encode_prompt(model, template.render([{"role": "user", "content": text}], add_generation_prompt=True))
            for kind in KINDS if (rnd + i) % 2 == 0 else KINDS[::-1]:
                res[(name, kind, rnd)] = decode(model, ids, kind, args.max_tokens)
            speeds = [(res[(name, k, rnd)][0] - 1) / res[(name, k, rnd)][1] for k in KINDS]
            print(
                f"round {rnd + 1} {name}: plain {speeds[0]:.1f} ngram {speeds[1]:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )

    def tps(r) -> float:
        return (r[0] - 1) / r[1]

    print(
        "| prompt | plain tok/s | ngram tok/s | ngram / plain | drafts accepted / verified | steps per token (plain, "
        "ngram) | same text |"
    )
    print("|---|--:|--:|--:|--:|--:|:-:|")
    for name in texts:
        plain = [res[(name, SpecType.NONE, r)] for r in range(args.rounds)]
        spec = [res[(name, SpecType.NGRAM, r)] for r in range(args.rounds)]
        a, b = statistics.median(map(tps, plain)), statistics.median(map(tps, spec))
        counts = spec[0][3]
        same = all(x[4] == y[4] for x, y in zip(plain, spec))
        print(
            f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f} | {counts['spec_accepted']}/{counts['spec_drafted']} | "
            f"{plain[0][2] / (plain[0][0] - 1):.2f}, {spec[0][2] / (spec[0][0] - 1):.2f} | {'yes' if same else 'NO'} "
            f"|"
        )
    for group in ("grounded/", "chat/"):
        names = [n for n in texts if n.startswith(group)]
        per = {
            k: [
                sum(res[(n, k, r)][0] - 1 for n in names) / sum(res[(n, k, r)][1] for n in names)
                for r in range(args.rounds)
            ]
            for k in KINDS
        }
        a, b = statistics.median(per[SpecType.NONE]), statistics.median(per[SpecType.NGRAM])
        rounds = {k: ", ".join(f"{x:.1f}" for x in v) for k, v in per.items()}
        print(
            f"{group[:-1]}: plain {a:.1f} ({rounds[SpecType.NONE]}), ngram {b:.1f} ({rounds[SpecType.NGRAM]}) tok/s; "
            f"ngram / plain {b / a:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
