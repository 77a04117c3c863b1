"""One request must never crash or starve the server. Each test reproduces one
finding against `rfc serve` in a subprocess (or the component it names) and fails on the
code before the fix (f31c958)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import rfc
from tests.e2e.conftest import ServerProcess, sse_events

JSON = {"Content-Type": "application/json"}


def _ref_chain(n: int) -> dict:
    """d0 -> d1 -> ... -> dn: {"type": "string"}: 3,000 links took the server down (SIGSEGV)."""
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


def _rule_chain(n: int) -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "x"\n'


def _alive(proc: ServerProcess) -> None:
    assert proc.proc.poll() is None, proc.log()[-3000:]
    assert requests.get(proc.url + "/health", timeout=10).status_code == 200
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def served(demo_bundle, tmp_path_factory):
    proc = ServerProcess(demo_bundle, log_dir=tmp_path_factory.mktemp("limits"))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


# -- findings 1 and 2: grammars that crash the grammar library ---------------------------------

CHAIN = _ref_chain(3000)
SCHEMA_ROUTES = [
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": CHAIN}},
        },
        "response_format",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "json_schema": CHAIN},
        "json_schema",
    ),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "json_schema": CHAIN}, "json_schema"),
    ("/api/generate", {"model": "stories260K", "prompt": "Hi", "stream": False, "format": CHAIN}, "format"),
    (
        "/api/chat",
        {"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "stream": False, "format": CHAIN},
        "format",
    ),
]


@pytest.mark.parametrize("path, body, field", SCHEMA_ROUTES, ids=[f"{p}:{f}" for p, _, f in SCHEMA_ROUTES])
def test_a_3000_long_ref_chain_is_a_400_not_a_crash(served, path, body, field):
    r = requests.post(served.url + path, data=json.dumps(body), headers=JSON, timeout=60)
    assert r.status_code == 400, r.text
    assert field in r.text and "$ref" in r.text and "512" in r.text, r.text
    _alive(served)


def test_a_6000_rule_gbnf_chain_is_a_400_not_a_crash(served):
    body = {"prompt": "Hi", "max_tokens": 4, "grammar": _rule_chain(6000)}
    r = requests.post(served.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and "grammar" in r.text and "2000" in r.text, r.text
    deep = {"prompt": "Hi", "max_tokens": 4, "grammar": _rule_chain(1500)}  # under the rule count, over the depth
    r = requests.post(served.url + "/v1/completions", json=deep, timeout=60)
    assert r.status_code == 400 and "grammar" in r.text and "deep" in r.text, r.text
    _alive(served)


def test_chains_the_limits_admit_compile_and_constrain(served):
    """The limits leave real schemas and grammars alone: 400 links of $ref and 400 rules work."""
    schema = _ref_chain(400)
    r = requests.post(
        served.url + "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 6, "json_schema": schema, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"].startswith('"')
    r = requests.post(
        served.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "grammar": _rule_chain(400)}, timeout=60
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "x", r.text


def test_a_grammar_in_a_native_library_cannot_reach_the_stack_limit(demo_bundle):
    """The mechanism, not the payload: a grammar compiled on a grammar worker survives a
    nesting that overflows an 8 MiB stack when the limits are set past it (a compile in an
    HTTP thread of 8 MiB died at 3,000 links)."""
    import subprocess
    import sys

    code = (
        "from rfc.runtime.sampling.constraints import GrammarWorkers; import llguidance, json;"
        "n=8000; d={f'd{i}': {'$ref': f'#/$defs/d{i+1}'} for i in range(n)}; d[f'd{n}']={'type':'string'};"
        "w=GrammarWorkers(threads=1);"
        "t=w.run(lambda: llguidance.LLMatcher.grammar_from_json_schema({'$ref':'#/$defs/d0','$defs':d}));"
        f"tok=llguidance.LLTokenizer(open({str(demo_bundle / 'tokenizer.json')!r}).read(), n_vocab=512);"
        "print(w.run(lambda: llguidance.LLMatcher.validate_grammar_with_warnings(t, tok))[0])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


# -- finding 4: constrained requests kept their lexer states -------------------------------------


def test_exploding_repetitions_are_refused_before_compiling(served):
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": "^(x{1000}){100}$"}},
        "required": ["a"],
    }
    r = requests.post(
        served.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "json_schema": schema}, timeout=60
    )
    assert r.status_code == 400 and "100000" in r.text and "10000" in r.text, r.text
    r = requests.post(
        served.url + "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 4, "grammar": 'root ::= ("x"{100}){1000}'},
        timeout=60,
    )
    assert r.status_code == 400 and "grammar" in r.text, r.text


# -- finding 5: refused prompts tokenized in full -------------------------------------------------


def test_long_prompts_are_refused_after_bounded_work(demo_bundle):
    """20 concurrent 900 KB prompts to a model whose longest token lets them past the byte
    check: each is refused after tokenizing a piece of it, on a pool of two threads, and the
    process's peak RSS stays within 200 MB of idle (the whole text was tokenized before:
    333,332 tokens each on an 8k model)."""
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.server.errors import ApiError
    from rfc.runtime.server.prompt_cache import PromptCache
    from rfc.runtime.core.work_pool import WorkPool

    model = load_model(demo_bundle, LoadOptions(device="ref"))
    model.context_length = 8192  # an 8k model, as in the finding
    cache = PromptCache(model, pool=WorkPool("tokenization", 2, 32, timeout_s=60))
    cache._max_text_bytes = 1 << 30  # a vocabulary with a long token: the byte bound proves nothing
    prompts = [f"{i} " + "lorem ipsum dolor sit amet " * 33_000 for i in range(20)]  # ~900 KB each
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    idle = _rss(os.getpid())
    errors: list = []

    def send(text: str) -> None:
        try:
            cache.encode(text)
            errors.append("accepted")
        except ApiError as e:
            errors.append(e.message)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    peak = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    assert all("cannot fit" in e for e in errors), errors[:3]
    assert peak - idle < 200 << 20, f"peak RSS {peak - idle >> 20} MiB over idle"
    assert elapsed < 10, f"{elapsed:.1f} s for 20 refusals"


# -- finding 6: other clients' requests ----------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(demo_bundle, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("# two clients\nalice-key\nbob-key\n")
    proc = ServerProcess(
        demo_bundle,
        "--api-key-file",
        str(keys),
        "--admin-api-key",
        "root-key",
        "--trace-sample-rate",
        "1",
        log_dir=keys.parent,
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _as(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_traces_are_private_by_default(served):
    requests.post(served.url + "/generate", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    for query in ("", "?clear=true"):
        r = requests.get(served.url + "/traces" + query, timeout=10)
        assert r.status_code == 403 and "--admin-api-key" in r.json()["error"], r.text


def test_one_client_cannot_read_or_cancel_anothers_request(keyed):
    url = keyed.url
    done = requests.post(
        url + "/generate", json={"prompt": "Once", "max_tokens": 4}, headers=_as("alice-key"), timeout=60
    ).json()
    rid = done["request_id"]
    assert requests.get(f"{url}/status/{rid}", headers=_as("alice-key"), timeout=10).json()["text"] == done["text"]
    for path, method in ((f"/status/{rid}", requests.get), (f"/cancel/{rid}", requests.post)):
        r = method(url + path, headers=_as("bob-key"), timeout=10)
        assert r.status_code == 404 and done["text"] not in r.text, r.text  # as for an id that never existed
    assert requests.get(f"{url}/status/{rid}", headers=_as("root-key"), timeout=10).status_code == 200
    for key in ("alice-key", "bob-key"):
        assert requests.get(url + "/traces", headers=_as(key), timeout=10).status_code == 403
        assert requests.get(url + "/traces?clear=true", headers=_as(key), timeout=10).status_code == 403
    traced = requests.get(url + "/traces", headers=_as("root-key"), timeout=10).json()
    ids = {
        a["value"]["intValue"]
        for s in traced["resource_spans"][0]["scope_spans"][0]["spans"]
        for a in s["attributes"]
        if a["key"] == "request_id"
    }
    assert str(rid) in ids
    assert requests.get(url + "/generate", timeout=10).status_code == 401  # no key at all


def test_no_response_holds_the_servers_directories(served, demo_bundle):
    root = str(demo_bundle.resolve())
    for path, method, body in (
        ("/models", "get", None),
        ("/v1/models", "get", None),
        ("/api/tags", "get", None),
        ("/api/show", "post", {"model": "stories260K"}),
        ("/api/ps", "get", None),
    ):
        r = getattr(requests, method)(served.url + path, json=body, timeout=10)
        assert r.status_code == 200 and root not in r.text and str(demo_bundle.parent) not in r.text, (
            path,
            r.text[:300],
        )


# -- finding 7: SIGTERM cut every stream --------------------------------------------------------


def _stream(url: str, out: list, i: int) -> None:
    # (ignore_eos: every stream runs its 480 tokens, so all 16 are still running when the signal
    # comes; a greedy story that ended early had the server drain nothing and exit at once)
    body = {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0, "stream": True, "ignore_eos": True}
    try:
        with requests.post(url + "/v1/completions", json=body, stream=True, timeout=120) as r:
            events = list(sse_events(r))
        out[i] = events
    except requests.RequestException as e:
        out[i] = e


@pytest.mark.parametrize("grace", [0.5, 60.0])
def test_sigterm_drains_every_stream_to_its_final_event(demo_bundle, tmp_path, grace):
    """16 streams when SIGTERM arrives: /ready turns 503 at once, new requests get 503, and
    every stream ends with its final chunk and [DONE] (finished within the grace period, or
    ended by the drain with finish_reason "abort"); exit 0."""
    proc = ServerProcess(
        demo_bundle, "--shutdown-timeout", str(grace), "--max-batch", "16", log_dir=tmp_path
    ).wait_ready()
    out: list = [None] * 16
    threads = [threading.Thread(target=_stream, args=(proc.url, out, i)) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every stream admitted and producing
        if requests.get(proc.url + "/health", timeout=5).json()["checks"]["requests"]["active"] == 16:
            break
        time.sleep(0.05)
    sent = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert requests.get(proc.url + "/ready", timeout=5).status_code == 503
    refused = requests.post(proc.url + "/generate", json={"prompt": "Hi", "max_tokens": 2}, timeout=5)
    assert refused.status_code == 503 and refused.headers.get("Retry-After"), refused.text
    assert requests.get(proc.url + "/health", timeout=5).status_code == 200  # alive: a liveness probe must not kill it
    for t in threads:
        t.join(timeout=120)
    assert proc.proc.wait(timeout=60) == 0, proc.log()[-3000:]
    took = time.monotonic() - sent
    reasons = []
    for events in out:
        assert isinstance(events, list) and events and events[-1] == "[DONE]", (
            events if not isinstance(events, list) else events[-3:]
        )
        final = json.loads(events[-2])
        reasons.append(final["choices"][0]["finish_reason"])
    if grace < 1:
        assert set(reasons) <= {"abort", "length"} and "abort" in reasons, reasons
        assert took < grace + 10, took
    else:
        assert set(reasons) == {"length"}, reasons
    assert "Traceback" not in proc.log()


# -- finding 8: one broken bundle stopped every model ---------------------------------------------


def test_a_damaged_bundle_in_models_dir_is_skipped(demo_bundle, tmp_path):
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(demo_bundle, models / "good")
    shutil.copytree(demo_bundle, models / "broken")
    (models / "broken" / "manifest.json").write_text("{ not json")
    proc = ServerProcess(None, "--models-dir", str(models), log_dir=tmp_path)
    try:
        proc.wait_ready()
        listed = requests.get(proc.url + "/v1/models", timeout=10).json()["data"]
        broken = [m for m in listed if m.get("status") == "failed"]
        assert [m["id"] for m in broken] == ["broken"] and "manifest.json" in broken[0]["error"], listed
        assert any(m.get("status") != "failed" for m in listed)
        r = requests.post(
            proc.url + "/v1/completions", json={"model": "broken", "prompt": "Hi", "max_tokens": 2}, timeout=10
        )
        assert r.status_code == 503 and "manifest.json" in r.text, r.text
        good = next(m["id"] for m in listed if m.get("status") != "failed")
        r = requests.post(
            proc.url + "/v1/completions", json={"model": good, "prompt": "Hi", "max_tokens": 2}, timeout=60
        )
        assert r.status_code == 200, r.text
        assert "broken" in proc.log() and "manifest.json" in proc.log()
    finally:
        proc.stop()


def test_a_kernel_library_rewritten_under_the_server_cannot_reach_it(demo_bundle, tmp_path):
    """Overwriting a served bundle's kernel library in place killed the server (SIGTRAP): the
    library is loaded from a checked private copy, and --no-mmap keeps the weights private."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    proc = ServerProcess(bundle, "--no-mmap", "--device", "cpu", log_dir=tmp_path).wait_ready()
    try:
        before = requests.post(
            proc.url + "/generate", json={"prompt": "Once", "max_tokens": 8, "temperature": 0}, timeout=60
        ).json()
        for lib in (bundle / "kernels").rglob("*.so"):
            with open(lib, "r+b") as f:  # in place, as a careless deploy would
                size = f.seek(0, 2)
                f.seek(0)
                f.write(b"\xcc" * size)
        weights = bundle / "weights.bin"
        with open(weights, "r+b") as f:
            f.truncate(16)
        after = requests.post(
            proc.url + "/generate", json={"prompt": "Once", "max_tokens": 8, "temperature": 0}, timeout=60
        ).json()
        assert after["text"] == before["text"]
        _alive(proc)
    finally:
        proc.stop()


LONG_STOP = "a" * 1025  # runtime/text/stopping.py MAX_STOP_CHARS + 1
STOP_ROUTES = [
    ("/v1/completions", {"prompt": "Once", "max_tokens": 4, "stop": [LONG_STOP]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stop": LONG_STOP}),
    ("/api/generate", {"model": "stories260K", "prompt": "Once", "stream": False, "options": {"stop": [LONG_STOP]}}),
    (
        "/v1/messages",
        {
            "model": "stories260K",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}],
            "stop_sequences": [LONG_STOP],
        },
    ),
]


@pytest.mark.parametrize("path, body", STOP_ROUTES, ids=[p for p, _ in STOP_ROUTES])
def test_a_stop_string_over_the_bound_is_a_400(served, path, body):
    """Each streamed piece is matched against the held-back text in time proportional to the
    stop strings' lengths: 4.4 ms a piece for a 100,000-character stop string."""
    r = requests.post(served.url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert "stop" in r.text and "1024" in r.text, r.text
    _alive(served)


# -- finding 10: 500s and tracebacks ---------------------------------------------------------------


def test_ollama_options_null_mean_default(served):
    options = {
        k: None for k in ("num_predict", "temperature", "top_k", "top_p", "stop", "seed", "repeat_penalty", "mirostat")
    }
    r = requests.post(
        served.url + "/api/generate",
        json={"model": "stories260K", "prompt": "Once", "stream": False, "options": options},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    _alive(served)


def test_rfc_serve_refuses_a_models_dir_with_nothing_servable(demo_bundle, tmp_path):
    models = tmp_path / "models"
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "manifest.json").write_text("[]")
    proc = rfc("serve", "--models-dir", models, "--port", "0", timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "broken" in proc.stderr, proc.stderr
