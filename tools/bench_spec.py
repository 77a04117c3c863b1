"""Speculative decoding: single-stream decode speed of `rfc serve` without and with
`--spec-type ngram`, and of llama-server without and with its n-gram speculation, on the same
prompts (tools/spec_prompts/tasks.json: tasks over a given ~500-token text, and free-form chat).

    python tools/bench_spec.py --bundle B --gguf G --llama-server /tmp/llama.cpp-build/build/bin/llama-server \\
        --threads 2 --rounds 3 --max-tokens 256
    # a model without a chat template (a random-weight GGUF): raw prompts
    python tools/bench_spec.py --bundle B --gguf G ... --api completion --ignore-eos

Every server runs from the start; each round sends each prompt to each server in turn (the
order rotates by round), one request at a time, greedy. A request's decode speed is its tokens
after the first over the time from its first streamed token to its last (prefill excluded);
a server's speed over a set of prompts is their tokens over their decode time, per round, and
the table shows the median of the rounds. rfc's drafts and accepted drafts come from its
/metrics, llama-server's from the `timings` of its last chunk. `rfc == rfc+ngram` says whether
the speculative text was the plain one, prompt by prompt.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench_serve import _free_port, _wait_ready

PROMPTS = Path(__file__).resolve().parent / "spec_prompts"
# llama-server's n-gram speculation as it ships (defaults: keys of 12 tokens, drafts of up to
# 48), and with shorter keys and drafts (the best of several tried on these prompts);
# --llama-spec adds others.
LLAMA_SPEC = {
    "llama ngram-simple": "--spec-type ngram-simple",
    "llama ngram-simple n3 m8": "--spec-type ngram-simple --spec-ngram-simple-size-n 3 --spec-ngram-simple-size-m 8",
    "llama ngram-map-k": "--spec-type ngram-map-k",
    "llama ngram-map-k n4 m16": "--spec-type ngram-map-k --spec-ngram-map-k-size-n 4 --spec-ngram-map-k-size-m 16",
    "llama ngram-map-k n3 m8": "--spec-type ngram-map-k --spec-ngram-map-k-size-n 3 --spec-ngram-map-k-size-m 8",
}


@dataclass
class Server:
    name: str
    cmd: list[str]
    url: str = ""
    proc: subprocess.Popen | None = None
    is_rfc: bool = False


@dataclass
class Result:
    tokens: int
    decode_s: float
    text: str
    drafted: int = 0
    accepted: int = 0


@dataclass
class Table:
    results: dict[tuple[str, str, int], Result] = field(default_factory=dict)  # (server, prompt, round)


def main() -> int:
    args = _parse()
    tasks = json.loads((PROMPTS / "tasks.json").read_text())
    prompts = {f"grounded/{t['name']}": _grounded(t) for t in tasks["grounded"]}
    prompts.update({f"chat/{t['name']}": t["content"] for t in tasks["chat"]})
    if args.only:
        prompts = {k: v for k, v in prompts.items() if any(o in k for o in args.only)}
    servers = _servers(args)
    table = Table()
    try:
        for server in servers:
            _start(server, args)
        for server in servers:  # warm each: its first step pays for lazy setup
            _request(server, args, "Hello", 4)
        for rnd in range(args.rounds):
            for i, (name, prompt) in enumerate(prompts.items()):
                order = servers[(rnd + i) % len(servers) :] + servers[: (rnd + i) % len(servers)]
                for server in order:
                    time.sleep(args.pause)  # the last server's threads stop spinning
                    table.results[(server.name, name, rnd)] = _request(server, args, prompt, args.max_tokens)
                print(
                    f"round {rnd + 1}/{args.rounds} {name}: "
                    + ", ".join(f"{s.name} {_tps(table.results[(s.name, name, rnd)]):.1f}" for s in servers),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for server in servers:
            if server.proc is not None:
                server.proc.terminate()
                server.proc.wait(timeout=30)
    _report(args, servers, list(prompts), table)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="The rfc bundle.")
    p.add_argument("--gguf", help="The same model's GGUF, for llama-server (none: rfc alone).")
    p.add_argument("--llama-server", default="llama-server", help="The llama-server binary.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llama-threads", type=int, help="llama-server's threads (default: --threads).")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument(
        "--api",
        choices=["chat", "completion"],
        default="chat",
        help="chat: /v1/chat/completions (the model's chat template); completion: the prompt as raw text.",
    )
    p.add_argument("--ignore-eos", action="store_true", help="Every request makes --max-tokens tokens.")
    p.add_argument("--rfc-args", default="", help="More `rfc serve` arguments (both rfc servers).")
    p.add_argument("--llama-args", default="", help="More llama-server arguments (every llama-server; e.g. -nr).")
    p.add_argument("--rfc-spec-args", default="--spec-type ngram", help="The speculative rfc server's own arguments.")
    p.add_argument(
        "--llama-spec",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="Another llama-server speculation to run (repeatable); --no-default-llama-spec drops the built-in ones.",
    )
    p.add_argument("--no-default-llama-spec", action="store_true")
    p.add_argument("--only", action="append", default=[], help="Only the prompts whose name holds this (repeatable).")
    p.add_argument("--pause", type=float, default=0.3, help="Seconds between two requests.")
    p.add_argument("--json", help="Also write every result here.")
    return p.parse_args()


def _grounded(task: dict) -> str:
    text = (PROMPTS / task["file"]).read_text().strip()
    if task.get("fence"):
        text = f"```{task['fence']}\n{text}\n```"
    return f"{task['task']}\n\n{text}"


def _servers(args) -> list[Server]:
    rfc = [
        sys.executable,
        "-c",
        "from rfc.cli.main import main; main()",
        "serve",
        args.bundle,
        "--threads",
        str(args.threads),
        "--log-level",
        "warning",
        "--max-batch",
        "4",
        *shlex.split(args.rfc_args),
    ]
    servers = [Server("rfc", rfc, is_rfc=True), Server("rfc+ngram", rfc + shlex.split(args.rfc_spec_args), is_rfc=True)]
    if args.gguf:
        t = str(args.llama_threads or args.threads)
        llama = [
            args.llama_server,
            "-m",
            args.gguf,
            "-t",
            t,
            "-tb",
            t,
            "-c",
            "8192",
            "-np",
            "1",
            "--log-disable",
            *shlex.split(args.llama_args),
        ]
        servers.append(Server("llama", llama))
        spec = {} if args.no_default_llama_spec else dict(LLAMA_SPEC)
        spec.update(dict(s.split("=", 1) for s in args.llama_spec))
        servers += [Server(name, llama + shlex.split(extra)) for name, extra in spec.items()]
    return servers


def _start(server: Server, args) -> None:
    port = _free_port()
    server.url = f"http://127.0.0.1:{port}"
    server.proc = subprocess.Popen(
        [*server.cmd, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**__import__("os").environ, **({"GOMP_SPINCOUNT": "20000"} if server.is_rfc else {})},
    )
    _wait_ready(server.url + ("/ready" if server.is_rfc else "/health"), 600, server.proc)


def _spec_counts(server: Server) -> tuple[int, int]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for name in ("rocmforge_spec_draft_tokens_total", "rocmforge_spec_accepted_tokens_total"):
            if line.startswith(name + "{"):
                values[name] = values.get(name, 0) + int(float(line.rsplit(" ", 1)[1]))
    return values.get("rocmforge_spec_draft_tokens_total", 0), values.get("rocmforge_spec_accepted_tokens_total", 0)


def _request(server: Server, args, prompt: str, max_tokens: int) -> Result:
    before = _spec_counts(server) if server.is_rfc else (0, 0)
    body = {
        "model": "bench",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.api == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    first = last = None
    tokens, text, timings = None, [], {}
    with requests.post(server.url + path, json=body, stream=True, timeout=1200) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            timings = data.get("timings") or timings
            for choice in data.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") if args.api == "chat" else choice.get("text")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
    after = _spec_counts(server) if server.is_rfc else (0, 0)
    drafted = after[0] - before[0] if server.is_rfc else int(timings.get("draft_n", 0))
    accepted = after[1] - before[1] if server.is_rfc else int(timings.get("draft_n_accepted", 0))
    return Result(tokens or len(text), (last - first) if first else 0.0, "".join(text), drafted, accepted)


def _tps(r: Result) -> float:
    return (r.tokens - 1) / r.decode_s if r.decode_s > 0 else 0.0


def _speed(table: Table, server: str, prompts: list[str], rounds: int) -> tuple[float, list[float]]:
    """Median over rounds of (tokens after the first) / (decode seconds), over `prompts`."""
    per_round = []
    for rnd in range(rounds):
        rs = [table.results[(server, p, rnd)] for p in prompts]
        seconds = sum(r.decode_s for r in rs)
        per_round.append(sum(r.tokens - 1 for r in rs) / seconds if seconds > 0 else 0.0)
    return statistics.median(per_round), per_round


def _report(args, servers: list[Server], prompts: list[str], table: Table) -> None:
    names = [s.name for s in servers]
    print(f"decode tok/s, median of {args.rounds} rounds; drafts accepted/verified (all rounds)")
    print("| prompt | tokens | " + " | ".join(names) + " | rfc == rfc+ngram |")
    print("|---|--:|" + "--:|" * len(names) + ":-:|")
    for p in prompts:
        cells = []
        for s in names:
            rs = [table.results[(s, p, rnd)] for rnd in range(args.rounds)]
            tps = statistics.median(_tps(r) for r in rs)
            drafted, accepted = sum(r.drafted for r in rs), sum(r.accepted for r in rs)
            cells.append(f"{tps:.1f}" + (f" ({accepted}/{drafted})" if drafted else ""))
        same = all(
            table.results[("rfc", p, rnd)].text == table.results[("rfc+ngram", p, rnd)].text
            for rnd in range(args.rounds)
        )
        tokens = table.results[("rfc", p, 0)].tokens
        print(f"| {p} | {tokens} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    for group in ("grounded/", "chat/"):
        members = [p for p in prompts if p.startswith(group)]
        if not members:
            continue
        speeds = {s: _speed(table, s, members, args.rounds) for s in names}
        line = " | ".join(f"{s} {speeds[s][0]:.1f} ({', '.join(f'{x:.1f}' for x in speeds[s][1])})" for s in names)
        print(f"\n{group[:-1]} (tokens / decode seconds over its prompts, per round): {line}")
        base = speeds["rfc"][0]
        ratios = [f"rfc+ngram / rfc {speeds['rfc+ngram'][0] / base:.2f}"]
        llama_spec = [s for s in names if s.startswith("llama ")]
        if llama_spec:
            best = max(llama_spec, key=lambda s: speeds[s][0])
            ratios.append(f"rfc+ngram / best llama n-gram ({best}) {speeds['rfc+ngram'][0] / speeds[best][0]:.2f}")
            ratios.append(f"{best} / llama {speeds[best][0] / speeds['llama'][0]:.2f}")
        print("ratios: " + "; ".join(ratios))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "server": s,
                        "prompt": p,
                        "round": rnd,
                        "tokens": r.tokens,
                        "decode_s": r.decode_s,
                        "drafted": r.drafted,
                        "accepted": r.accepted,
                        "text": r.text,
                    }
                    for (s, p, rnd), r in table.results.items()
                ],
                indent=1,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
