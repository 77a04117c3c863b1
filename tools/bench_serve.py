"""Benchmark a streaming LLM server: N concurrent clients, aggregate tok/s, TTFT p50/p95,
and the time from process start to the first /ready 200.

    # start `rfc serve` itself (measures start -> ready), 1 then 16 clients:
    python tools/bench_serve.py --bundle bundles/stories260K --clients 1,16 --max-tokens 64
    # an already running server (rfc serve, llama.cpp's llama-server, vLLM):
    python tools/bench_serve.py --url http://127.0.0.1:8080 --clients 16
    # any server command; {port} is replaced by a free port:
    python tools/bench_serve.py --server-cmd 'llama-server -m tl.gguf -t 2 -np 16 --port {port}' --ready-path /health

Each client sends --requests streaming requests one after the other, all clients at once.
The OpenAI API (/v1/completions, stream, ignore_eos) is the default because every server
speaks it; `--api native` uses rfc's /generate/stream. With ignore_eos each request makes
exactly --max-tokens tokens; tokens are counted from the usage chunk when the server sends
one, else one per streamed chunk. A request that ends short of --max-tokens, with an error
event or an HTTP error is counted and reported (its finish reason, the first error) with the
tail of the server's own log (`--server-log`, a temporary file unless given), where it was started here.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import requests

PROMPTS = [
    "Once upon a time",
    "The little dog",
    "One day, a girl named Lily",
    "Tom had a big red ball",
    "The sun was shining",
    "In the park there was",
    "Mom said to Tim",
    "A bird flew over the house",
]


@dataclass
class RequestResult:
    ttft_s: float
    total_s: float
    tokens: int
    finish_reason: str | None = None  # the last one the stream gave
    error: str | None = None  # an error event in the stream, or the HTTP error


def main() -> int:
    args = _parse()
    server = None
    ready_s = None
    url = args.url
    try:
        if url is None:
            server, url, ready_s = _start_server(args)
        _wait_ready(url + args.ready_path, 600)
        _run_once(url, args, clients=1, requests_per_client=1)  # warm the HTTP path
        if args.prefix_ttft:
            _print_prefix_ttft(url, args)
        rows = []
        for clients in args.clients:
            started = time.perf_counter()
            results = _run_once(url, args, clients, args.requests)
            wall = time.perf_counter() - started
            rows.append(_summary(clients, results, wall, args.max_tokens))
        _print(args, rows, ready_s)
        if server is not None and any(r["short"] or r["errors"] for r in rows):
            print(f"server log tail ({args.server_log}):")
            print("\n".join(Path(args.server_log).read_text(errors="replace").splitlines()[-40:]))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="An already running server.")
    src.add_argument("--bundle", help="Start `rfc serve BUNDLE` and time it to /ready.")
    src.add_argument("--server-cmd", help="Start this command ({port}: a free port) and time it to --ready-path.")
    p.add_argument("--serve-args", default="", help="Extra `rfc serve` arguments (with --bundle).")
    p.add_argument(
        "--server-log",
        help="Where a server started here writes its output (default: a temporary file); its tail is "
        "printed when a request ends short or with an error.",
    )
    p.add_argument(
        "--clients",
        default="1,16",
        type=lambda s: [int(x) for x in s.split(",")],
        help="Comma-separated client counts.",
    )
    p.add_argument("--requests", type=int, default=1, help="Requests per client.")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--api", choices=["openai", "native"], default="openai")
    p.add_argument("--ready-path", default="/ready", help="Readiness probe (llama-server: /health).")
    p.add_argument("--json", action="store_true", help="Print the results as JSON too.")
    p.add_argument(
        "--prefix-ttft",
        type=int,
        default=0,
        metavar="WORDS",
        help="Also time the first token of a fresh prompt of about WORDS words and of a second "
        "request repeating that prompt with another question (prefix reuse), one client, "
        "--prefix-rounds times each.",
    )
    p.add_argument("--prefix-rounds", type=int, default=3)
    return p.parse_args()


def _long_prompt(words: int, nonce: int) -> str:
    """A prompt no server has seen (the nonce leads, so no earlier prefix matches it)."""
    vocab = (
        "the lighthouse keeper wrote down every ship that passed the rocks at night while "
        "storms came from the north and the lamp burned oil that the village brought by cart"
    ).split()
    rng = random.Random(nonce)
    return f"Log {nonce}: " + " ".join(rng.choice(vocab) for _ in range(words))


def _print_prefix_ttft(url: str, args) -> None:
    """TTFT of a fresh long prompt, then of a request sharing all of it but the question: a
    server that reuses KV for a repeated prefix prefills only the new tokens the second time;
    then of an exact repeat of the first (a retry, `n` > 1), which needs only its last token."""
    session = requests.Session()  # for /tokenize; each timed request opens its own connection
    fresh, repeat, exact = [], [], []
    one = argparse.Namespace(**{**vars(args), "max_tokens": 1})
    for i in range(args.prefix_rounds):
        text = _long_prompt(args.prefix_ttft, random.SystemRandom().randrange(10**9))
        # a fresh connection each: llama-server may close an idle kept-alive one under the client
        fresh.append(_one_request(requests.Session(), url, one, text + "\nQuestion: which ship came first?").ttft_s)
        repeat.append(_one_request(requests.Session(), url, one, text + "\nQuestion: who brought the oil?").ttft_s)
        exact.append(_one_request(requests.Session(), url, one, text + "\nQuestion: which ship came first?").ttft_s)
    tokens = _count_tokens(session, url, text)
    print(
        f"prefix TTFT ({args.prefix_ttft} words, {tokens} tokens, median of {args.prefix_rounds}): "
        f"fresh {statistics.median(fresh):.3f} s, repeated prefix {statistics.median(repeat):.3f} s, "
        f"exact repeat {statistics.median(exact):.3f} s"
    )
    print(
        "  rounds (fresh / repeated prefix / exact repeat):",
        " ".join(f"{f:.3f}/{r:.3f}/{e:.3f}" for f, r, e in zip(fresh, repeat, exact)),
    )


def _count_tokens(session: requests.Session, url: str, text: str) -> str:
    try:  # llama.cpp's /tokenize shape, which both rfc serve and llama-server answer
        return str(len(session.post(url + "/tokenize", json={"content": text}, timeout=60).json()["tokens"]))
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return "?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args) -> tuple[subprocess.Popen, str, float]:
    port = _free_port()
    if args.bundle:
        cmd = [
            sys.executable,
            "-c",
            "from rfc.cli.main import main; main()",
            "serve",
            args.bundle,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *shlex.split(args.serve_args),
        ]
    else:
        cmd = shlex.split(args.server_cmd.replace("{port}", str(port)))
    started = time.perf_counter()
    if args.server_log is None:
        args.server_log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False).name
    with open(args.server_log, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url + args.ready_path, 600, proc)
    return proc, url, time.perf_counter() - started


def _wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"{url} did not return 200 within {timeout} s")


def _run_once(url: str, args, clients: int, requests_per_client: int) -> list[RequestResult]:
    """Every request of a run has a prompt no earlier request had: a nonce leads it, so a
    server's prefix cache (llama-server reuses a slot's cached tokens one by one) cannot
    turn the measured TTFT into that of a repeat. --prefix-ttft measures reuse on purpose."""
    results: list[RequestResult] = []
    nonce = random.SystemRandom().randrange(10**9)
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        session = requests.Session()
        barrier.wait()
        for j in range(requests_per_client):
            r = _one_request(session, url, args, f"({nonce}-{i}-{j}) " + PROMPTS[(i + j) % len(PROMPTS)])
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _one_request(session: requests.Session, url: str, args, prompt: str) -> RequestResult:
    if args.api == "native":
        path, body = "/generate/stream", {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}
    else:
        path = "/v1/completions"
        body = {
            "model": "bench",
            "prompt": prompt,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    started = time.perf_counter()
    first = None
    chunks = 0
    usage_tokens = None
    finish, error = None, None
    try:
        with session.post(url + path, json=body, stream=True, timeout=600) as r:
            if r.status_code >= 400:
                error = f"HTTP {r.status_code}: {r.text[:300]}"
            for line in r.iter_lines() if error is None else ():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("error"):
                    error = json.dumps(data["error"])[:300]
                if data.get("usage"):
                    usage_tokens = data["usage"]["completion_tokens"]
                choices = data.get("choices") or [{}]
                finish = choices[0].get("finish_reason") or data.get("finish_reason") or finish
                has_token = data.get("token") is not None if args.api == "native" else bool(data.get("choices"))
                if has_token:
                    first = first or time.perf_counter()
                    chunks += 1
    except requests.RequestException as e:
        error = f"{type(e).__name__}: {e}"[:300]
    end = time.perf_counter()
    return RequestResult(
        ttft_s=(first or end) - started,
        total_s=end - started,
        tokens=usage_tokens if usage_tokens is not None else chunks,
        finish_reason=finish,
        error=error,
    )


def _summary(clients: int, results: list[RequestResult], wall: float, max_tokens: int) -> dict:
    ttfts = sorted(r.ttft_s for r in results)
    tokens = sum(r.tokens for r in results)
    errors = [r.error for r in results if r.error]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "short": sum(r.tokens < max_tokens for r in results),
        "finish_reasons": dict(Counter(str(r.finish_reason) for r in results)),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def _print(args, rows: list[dict], ready_s: float | None) -> None:
    ready = f"{ready_s:.2f} s" if ready_s is not None else "n/a (--url)"
    print(
        f"start -> ready: {ready}; max_tokens {args.max_tokens}, api {args.api}, {args.requests} request(s) per client"
    )
    print("| clients | requests | tokens | aggregate tok/s | TTFT p50 (s) | TTFT p95 (s) |")
    print("|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['tok_s']:.1f} | {r['ttft_p50_s']:.3f} | "
            f"{r['ttft_p95_s']:.3f} |"
        )
    for r in rows:
        if r["short"] or r["errors"]:
            print(
                f"{r['clients']} client(s): {r['short']} of {r['requests']} requests short of "
                f"{args.max_tokens} tokens, finish reasons {r['finish_reasons']}, {r['errors']} error(s); "
                f"first: {r['first_error']}"
            )
    if args.json:
        print(json.dumps({"ready_s": ready_s, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
