"""Speculative decoding's drafter and draft planner on a busy machine: replays greedy outputs
through them, with a verify step's cost taken as given, so that what a drafter or planner change
is worth can be told without timing a step (a shared machine's load swings a step's time 2-7x;
the steps a sequence needs and their sizes do not depend on it).

    python tools/spec_replay.py --bundle B --save outs.json      # greedy outputs, no speculation
    python tools/spec_replay.py --outputs outs.json [--ngram-min 2] [--curve 1:7.33,2:7.73,...]

For each prompt of tools/spec_prompts (tools/bench_spec_engine.py's), the first run decodes
`--max-tokens` greedy tokens without speculation and saves the prompt and output ids. The
replay walks each output as the engine would with `--spec-type ngram`: the sequence's
NgramIndex drafts, the DraftPlanner sizes the draft with the sequence's acceptance record and the
cost curve, and the draft is accepted up to its first token that differs from the output (a
greedy verify step emits exactly that). It prints, per prompt, the target steps, the drafts
accepted / verified, and the modeled speed-up: (tokens - 1) one-token steps over the sum of the
steps' costs; per group (grounded, chat), tokens over modeled time over its prompts. The
default curve is docs/benchmarks.md's verify-step cost on the AVX-512 Xeon (ms, interpolated).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rfc.runtime.engine.spec import DraftPlanner, SeqSpec, SpecConfig, SpecType, StepCost
from rfc.runtime.engine.spec_ngram import NgramIndex

CURVE = "1:7.33,2:7.73,4:9.43,8:12.80,12:17.42,16:21.43,24:28.25,31:35.06"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="Decode the prompts without speculation (needs --save).")
    p.add_argument("--save", help="Where the greedy outputs go.")
    p.add_argument("--outputs", help="Greedy outputs to replay.")
    p.add_argument("--max-tokens", type=int, default=192)
    p.add_argument("--curve", default=CURVE, help="Step tokens:cost pairs (any unit), interpolated.")
    p.add_argument("--ngram-min", type=int, default=SpecConfig.ngram_min)
    p.add_argument("--ngram-max", type=int, default=SpecConfig.ngram_max)
    p.add_argument("--n-max", type=int, default=SpecConfig.n_max)
    args = p.parse_args()
    if args.bundle:
        if not args.save:
            p.error("--bundle needs --save")
        Path(args.save).write_text(json.dumps(_decode(Path(args.bundle), args.max_tokens)))
    if args.outputs:
        _report(json.loads(Path(args.outputs).read_text()), _parse_curve(args.curve), args)
    return 0


def _decode(bundle: Path, max_tokens: int) -> dict[str, dict[str, list[int]]]:
    from bench_spec_engine import prompts  # tools/ is the script's directory
    from rfc.runtime.engine.engine import Engine, GenerationRequest
    from rfc.runtime.engine.scheduler import SchedulerConfig
    from rfc.runtime.model.loader import LoadOptions, load_model
    from rfc.runtime.sampling.sampler import SamplingParams
    from rfc.runtime.text.prompting import chat_template, encode_prompt

    model = load_model(bundle, LoadOptions(device="cpu"))
    template = chat_template(model)
    engine = Engine(model, SchedulerConfig())
    out = {}
    for name, text in prompts().items():
        ids = encode_prompt(model, template.render([{"role": "user", "content": text}], add_generation_prompt=True))
        state = engine.submit(GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=max_tokens))
        while engine.step():
            pass
        out[name] = {"prompt": list(ids), "out": list(state.tokens)}
        print(f"{name}: {len(ids)} prompt tokens, {len(state.tokens)} generated", file=sys.stderr, flush=True)
    return out


def _parse_curve(text: str) -> dict[int, float]:
    points = {int(t): float(c) for t, c in (pair.split(":") for pair in text.split(","))}
    if 1 not in points:
        raise SystemExit("--curve needs the one-token step's cost (1:...)")
    return points


def _cost(points: dict[int, float], tokens: int) -> float:
    sizes = sorted(points)
    for low, high in zip(sizes, sizes[1:]):
        if low <= tokens <= high:
            return points[low] + (points[high] - points[low]) * (tokens - low) / (high - low)
    return points[sizes[-1]] * tokens / sizes[-1]  # past the curve: proportional


def _replay(prompt: list[int], out: list[int], points: dict[int, float], args) -> tuple[float, int, int, int]:
    """(modeled time in one-token steps, target steps, drafts accepted, drafts verified) for the
    tokens after the first (the prefill's)."""
    config = SpecConfig(type=SpecType.NGRAM, n_max=args.n_max, ngram_min=args.ngram_min, ngram_max=args.ngram_max)
    spec = SeqSpec(SpecType.NGRAM, config.n_max, NgramIndex(config.ngram_min, config.ngram_max))
    cost = StepCost()
    for tokens, ms in points.items():  # the planner's curve: the given one, as if measured
        for _ in range(StepCost._MIN_SEEN + 1):
            cost.observe(tokens, ms / 1000)
    planner = DraftPlanner(cost, config.step_tokens)
    spec.index.extend(prompt + out[:1])
    time = 0.0
    steps = accepted = drafted = 0
    j = 1
    while j < len(out):
        limit = min(spec.n_max, len(out) - j - 1)
        offer = spec.index.draft(limit) if limit >= 1 else []
        spec.matched = spec.index.matched()
        n = planner.allocate({0: spec.chances(len(offer))}, 1, 1).get(0, 0) if offer else 0
        draft = offer[:n]
        if offer and not draft:
            spec.record(0, 0)
        ok = 0
        while ok < len(draft) and draft[ok] == out[j + ok]:
            ok += 1
        if draft:
            spec.record(len(draft), ok)
        emitted = min(ok + 1, len(out) - j)
        spec.index.extend(out[j:j + emitted])
        j += emitted
        time += _cost(points, 1 + len(draft)) / points[1]
        steps += 1
        accepted += ok
        drafted += len(draft)
    return time, steps, accepted, drafted


def _report(outputs: dict[str, dict[str, list[int]]], points: dict[int, float], args) -> None:
    print("| prompt | tokens | target steps | drafts accepted / verified | modeled speed-up |")
    print("|---|--:|--:|--:|--:|")
    groups: dict[str, list[float]] = {}
    for name, run in outputs.items():
        time, steps, accepted, drafted = _replay(run["prompt"], run["out"], points, args)
        tokens = len(run["out"]) - 1
        print(f"| {name} | {tokens} | {steps} | {accepted}/{drafted} | {tokens / time:.2f} |")
        group = groups.setdefault(name.split("/")[0], [0.0, 0.0])
        group[0] += tokens
        group[1] += time
    for name, (tokens, time) in groups.items():
        print(f"{name}: modeled speed-up {tokens / time:.2f}")


if __name__ == "__main__":
    sys.exit(main())
