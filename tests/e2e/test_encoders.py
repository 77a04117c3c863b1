"""Encoders (bert, nomic-bert) served: a real `rfc serve` on 127.0.0.1 over the llama-archs files
tools/fixtures/llama_archs.py writes, whose embeddings are llama.cpp's final hidden states
(tests/data/llama-archs/NAME.hidden.npz) pooled by the file's pooling type and L2-normalized, as
llama-server's /v1/embeddings computes them; every generation route refuses such a model with a
400 naming `model`."""

import importlib.util
import shutil
import sys

import numpy as np
import pytest
import requests

from rfc.compiler.errors import CompileError
from rfc.compiler.pipeline import CompileOptions, compile_model
from tests import testdata
from tests.e2e.conftest import ServerProcess

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu target needs a C compiler ('cc' not found)"),
]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "llama_archs", testdata.ROOT / "tools" / "fixtures" / "llama_archs.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama_archs"] = module
    spec.loader.exec_module(module)
    return module


archs = _tool()


def _gguf(name: str, where) -> object:
    path = where / f"{name}.gguf"
    archs.write_model(archs.load(name), path, name)
    assert testdata.sha256(path) == archs.manifest()["fixtures"][name]["sha256"]
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per encoder, each on its cpu bundle."""
    work = tmp_path_factory.mktemp("encoders")
    procs = {}
    try:
        for name in ("bert-dense", "nomic-bert-dense"):
            bundle = work / name
            compile_model(CompileOptions(model=_gguf(name, work), out_dir=bundle, targets=("cpu",)))
            procs[name] = ServerProcess(bundle, "--ctx-size", "256")
        yield {name: p.wait_ready() for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()


def _expected(name: str) -> tuple[list[int], np.ndarray]:
    """llama.cpp's hidden states pooled as the file says (bert-dense: CLS, nomic-bert-dense: mean), normalized."""
    golden = np.load(archs.DATA / f"{name}.hidden.npz")
    hidden = golden["hidden"].astype(np.float64)
    pooled = hidden[0] if name == "bert-dense" else hidden.mean(axis=0)
    return golden["tokens"].tolist(), pooled / np.linalg.norm(pooled)


@pytest.mark.parametrize("name", ["bert-dense", "nomic-bert-dense"])
def test_embeddings_are_llama_cpps(servers, name):
    from openai import OpenAI

    tokens, want = _expected(name)
    client = OpenAI(base_url=servers[name].url + "/v1", api_key="none")
    got = client.embeddings.create(model=name, input=[tokens, tokens[:5]])
    vector = np.asarray(got.data[0].embedding)
    assert got.usage.prompt_tokens == len(tokens) + 5
    # the whole input in one step: each token sees the ones after it (a causal pass is off by ~1e-2 here)
    assert np.abs(vector - want).max() < 2e-4, np.abs(vector - want).max()
    assert abs(np.linalg.norm(np.asarray(got.data[1].embedding)) - 1) < 1e-5


def test_ollama_lists_an_encoder_as_embedding_only(servers):
    url = servers["bert-dense"].url
    show = requests.post(url + "/api/show", json={"model": "bert-dense"}, timeout=30).json()
    assert show["capabilities"] == ["embedding"]
    embed = requests.post(url + "/api/embed", json={"model": "bert-dense", "input": ["once upon a time"]}, timeout=30)
    assert embed.status_code == 200 and len(embed.json()["embeddings"][0]) == 256


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/messages", {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ("/api/generate", {"prompt": "hi"}),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/generate", {"prompt": "hi"}),
    ],
)
def test_generation_is_refused_naming_the_model(servers, route, body):
    r = requests.post(servers["bert-dense"].url + route, json={"model": "bert-dense", **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert "embedding model" in r.text
    if route.startswith("/v1/chat") or route == "/v1/completions":
        assert r.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: [m for m in meta if m[0] != "tokenizer.ggml.token_type_count"], "token_type_count"),
        (lambda meta: [[k, t, 4 if k == "bert.pooling_type" else v] for k, t, v in meta], "reranker"),
    ],
    ids=["no token type count", "rank pooling"],
)
def test_what_llama_cpp_refuses_or_rfc_does_not_serve_is_refused(edit, message, tmp_path):
    desc = archs.load("bert-dense")
    path = tmp_path / "edited.gguf"
    archs.write_model({**desc, "metadata": edit(desc["metadata"])}, path, "bert-dense-edited")
    with pytest.raises(CompileError, match=message):
        compile_model(CompileOptions(model=path, out_dir=tmp_path / "b", targets=()))


def test_a_file_that_says_causal_is_planned_causal(tmp_path):
    """llama.cpp masks causally where `attention.causal` is true or absent; so does the plan."""
    from rfc.artifacts.bundle import open_bundle

    desc = archs.load("bert-dense")
    meta = [m for m in desc["metadata"] if m[0] != "bert.attention.causal"]
    path = tmp_path / "causal.gguf"
    archs.write_model({**desc, "metadata": meta}, path, "bert-dense-causal")
    compile_model(CompileOptions(model=path, out_dir=tmp_path / "b", targets=()))
    plan = open_bundle(tmp_path / "b").plan
    assert plan.causal and not plan.generates
