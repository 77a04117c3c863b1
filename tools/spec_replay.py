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
default curve is docs/benchmarks-log.md's verify-step cost on the AVX-512 Xeon (ms, interpolated).

`--bounds` adds two ceilings under the same curve, to tell which part a change could move:
"known acceptance" replays the same drafter's offers with each step carrying exactly the
offered tokens that the output accepts (the best any planner or acceptance model could do with
these drafts); "any earlier place" drafts, each step, the longest run of the coming output found
anywhere earlier in the sequence, all accepted (hindsight: what a drafter that copies the
sequence's own tokens would give if it always chose the right place, n_max tokens a step at
most).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rfc.runtime.engine.speculative import DraftPlanner, SeqSpec, SpecConfig, SpecType, StepCost
from rfc.runtime.engine.speculative_ngram import NgramIndex

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
    p.add_argument("--bounds", action="store_true", help="Also the known-acceptance and any-earlier-place ceilings.")
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
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.sampling.sampler import SamplingParams
    from rfc.runtime.engine.prompting import chat_template, encode_prompt

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
        spec.index.extend(out[j : j + emitted])
        j += emitted
        time += _cost(points, 1 + len(draft)) / points[1]
        steps += 1
        accepted += ok
        drafted += len(draft)
    return time, steps, accepted, drafted


def known_acceptance(prompt: list[int], out: list[int], points: dict[int, float], args) -> float:
    """Modeled time (one-token steps) when every step carries exactly the tokens of the n-gram
    drafter's offer that the output accepts: no rejected draft token, no accepted one left out."""
    index = NgramIndex(args.ngram_min, args.ngram_max)
    index.extend(prompt + out[:1])
    time, j = 0.0, 1
    while j < len(out):
        offer = index.draft(min(args.n_max, len(out) - j - 1))
        ok = 0
        while ok < len(offer) and offer[ok] == out[j + ok]:
            ok += 1
        index.extend(out[j : j + ok + 1])
        j += ok + 1
        time += _cost(points, 1 + ok) / points[1]
    return time


def longest_earlier(history: list[int], coming: list[int], cap: int) -> int:
    """The longest prefix of `coming` (at most `cap` tokens) that occurs in `history`."""
    best = 0
    for i, token in enumerate(history):
        if token != coming[0]:
            continue
        n = 1
        while n < cap and n < len(coming) and i + n < len(history) and history[i + n] == coming[n]:
            n += 1
        best = max(best, n)
        if best == cap:
            break
    return best


def any_earlier_place(prompt: list[int], out: list[int], points: dict[int, float], args) -> float:
    """Modeled time (one-token steps) when every step drafts the longest run of the coming
    output that occurs anywhere in the sequence so far (hindsight), all of it accepted."""
    time, j = 0.0, 1
    while j < len(out):
        limit = min(args.n_max, len(out) - j - 1)
        n = longest_earlier(prompt + out[:j], out[j:], limit) if limit >= 1 else 0
        j += n + 1
        time += _cost(points, 1 + n) / points[1]
    return time


def _report(outputs: dict[str, dict[str, list[int]]], points: dict[int, float], args) -> None:
    extra = " known acceptance | any earlier place |" if args.bounds else ""
    print("| prompt | tokens | target steps | drafts accepted / verified | modeled speed-up |" + extra)
    print("|---|--:|--:|--:|--:|" + ("--:|--:|" if args.bounds else ""))
    groups: dict[str, list[float]] = {}
    for name, run in outputs.items():
        time, steps, accepted, drafted = _replay(run["prompt"], run["out"], points, args)
        times = [time]
        if args.bounds:
            times += [
                known_acceptance(run["prompt"], run["out"], points, args),
                any_earlier_place(run["prompt"], run["out"], points, args),
            ]
        tokens = len(run["out"]) - 1
        print(
            f"| {name} | {tokens} | {steps} | {accepted}/{drafted} | "
            + " | ".join(f"{tokens / t:.2f}" for t in times)
            + " |"
        )
        group = groups.setdefault(name.split("/")[0], [0.0] * (1 + len(times)))
        group[0] += tokens
        for k, t in enumerate(times):
            group[1 + k] += t
    for name, (tokens, *times) in groups.items():
        bounds = (
            f" (known acceptance {tokens / times[1]:.2f}, any earlier place {tokens / times[2]:.2f})"
            if args.bounds
            else ""
        )
        print(f"{name}: modeled speed-up {tokens / times[0]:.2f}{bounds}")


if __name__ == "__main__":
    sys.exit(main())
