"""Encoders (bert, nomic-bert) served: a real `rfc serve` on 127.0.0.1 over the llama-archs files
tools/fixtures/llama_archs.py writes, whose embeddings are llama.cpp's final hidden states
(tests/data/llama-archs/NAME.hidden.npz) pooled by the file's pooling type and L2-normalized, as
llama-server's /v1/embeddings computes them; every generation route refuses such a model with a
400 naming `model`."""

import json
import shutil

import numpy as np
import pytest
import requests

from rfc.compiler.errors import CompileError
from rfc.compiler.pipeline import CompileOptions, compile_model
from tests.conftest import ROOT, VOCAB
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_llama_archs import _model as _gguf, archs  # the saver-layout files and their goldens
from tests.unigram_vocab import with_small_t5_vocab

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu target needs a C compiler ('cc' not found)"),
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Each encoder's cpu bundle, and bert-dense with a Unigram (`t5`) vocabulary."""
    work = tmp_path_factory.mktemp("encoders")
    out = {}
    for name in ("bert-dense", "nomic-bert-dense", "bert-rank"):
        out[name] = work / name
        compile_model(CompileOptions(model=_gguf(name, work), out_dir=out[name], targets=("cpu",)))
    t5 = with_small_t5_vocab(_gguf("bert-dense", work), work / "bert-dense-t5.gguf", VOCAB)
    out["bert-dense-t5"] = work / "bert-dense-t5"
    compile_model(CompileOptions(model=t5, out_dir=out["bert-dense-t5"], targets=("cpu",)))
    return out


@pytest.fixture(scope="module")
def servers(bundles):
    """One server per encoder."""
    procs = {}
    try:
        for name, bundle in bundles.items():
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
        (lambda meta: [[k, t, 4 if k == "bert.pooling_type" else v] for k, t, v in meta], "rank pooling needs cls"),
    ],
    ids=["no token type count", "rank pooling without a head"],
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


@pytest.mark.parametrize("device", ["ref", "cpu"])
@pytest.mark.parametrize("name", ["bert-rank", "bert-rank-tanh", "qwen3-rank", "neo-bert-rank", "jina-bert-v2-rank"])
def test_rerank_scores_are_llama_cpps(name, device, tmp_path):
    """A reranker's classifier (tanh(cls h + b), then cls.output) at the first token's row of each
    input, against llama.cpp's rank pooling over the same tokens (scores of 0.003 to 0.027 here,
    llama.cpp's own from its hidden states to 1e-7; rfc's hidden states differ from its by ~1e-5,
    which the classifier's 256-wide dot products carry to ~4e-4). bert-rank-tanh: jina-reranker-v1-tiny's
    head, `cls` without `cls.output`, the tanh's first output the score (0.706 to 0.719). qwen3-rank:
    Qwen3-Reranker's "yes"/"no" head at each input's last token, softmaxed (0.13 to 0.65). neo-bert-rank:
    NeoBERT's RMS-normed pre-norm blocks under bert's classifier head. jina-bert-v2-rank: jina-reranker-v1's
    `cls` [1, n_embd] alone, tanh(cls h + b) the score."""
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.engine.embedding import rank_scores
    from rfc.runtime.engine.engine import Engine

    golden = np.load(archs.DATA / f"{name}.{'logits' if name == 'qwen3-rank' else 'hidden'}.npz")
    tokens = golden["tokens"].tolist()
    bundle = tmp_path / "bundle"
    compile_model(
        CompileOptions(model=_gguf(name, tmp_path), out_dir=bundle, targets=("cpu",) if device == "cpu" else ())
    )
    engine = Engine(load_model(bundle, LoadOptions(device=device)))
    got = _finish(rank_scores(engine, [tokens[lo:hi] for lo, hi in archs.RANK_SLICES], 256))
    want = golden["scores"][:, 0]
    bound = 1e-4 if name == "qwen3-rank" else 1e-3  # qwen3-rank: 8.2e-6 on ref and cpu
    assert np.abs(np.asarray(got) - want).max() < bound, (got, want)
    assert np.argsort(got).tolist() == np.argsort(want).tolist()


def test_rerank_routes(servers, bundles):
    """Jina's shape on /v1/rerank (sorted, top_n, documents as strings or {text}), TEI's on /rerank,
    each score the one the engine gives the pair laid out as llama-server lays it."""
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.engine.embedding import rank_scores, rerank_tokens
    from rfc.runtime.engine.engine import Engine

    url = servers["bert-rank"].url
    docs = ["there was a cat", "the dog ran home", {"text": "a little girl named Lily"}]
    body = {"query": "once upon a time", "documents": docs, "top_n": 2, "return_documents": True}
    r = requests.post(url + "/v1/rerank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    reply = r.json()
    engine = Engine(load_model(bundles["bert-rank"], LoadOptions(device="cpu")))
    tok, info = engine.model.tokenizer, engine.model.tokenizer_info
    assert info["rerank"] == {"prefix": [1], "between": [], "suffix": []}  # the stories vocabulary's: BOS alone
    ids = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    pairs = [rerank_tokens(info, ids("once upon a time"), ids(d if isinstance(d, str) else d["text"])) for d in docs]
    want = [_finish(rank_scores(engine, [pair], 1))[0] for pair in pairs]  # each pair alone: the server batches them
    best = sorted(range(3), key=lambda i: -want[i])[:2]
    assert [x["index"] for x in reply["results"]] == best
    assert [x["relevance_score"] for x in reply["results"]] == pytest.approx([want[i] for i in best], abs=1e-6)
    assert reply["results"][0]["document"]["text"] in (
        "there was a cat",
        "the dog ran home",
        "a little girl named Lily",
    )
    tei = requests.post(url + "/rerank", json={"query": "once upon a time", "texts": ["a", "b c"]}, timeout=60).json()
    assert isinstance(tei, list) and {x["index"] for x in tei} == {0, 1} and "score" in tei[0]
    for bad, field in (({"query": "q", "documents": []}, "documents"), ({"query": "q"}, "documents"),
                       ({"query": "q", "documents": [3]}, "documents[0]"),
                       ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n")):  # fmt: skip
        r = requests.post(url + "/v1/rerank", json=bad, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = requests.post(servers["bert-dense"].url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model" and "not a reranker" in r.text


RERANK_TEMPLATE = "<|im_start|>Judge: <Query>: {query}\n<Document>: {document}<|im_end|>\nyes or no?"


def test_a_decoder_reranker_is_served_through_its_rerank_template(tmp_path):
    """qwen3-rank (Qwen3-Reranker's layout) with a rerank template, as llama.cpp's converter writes
    one (tokenizer.chat_template.rerank): /v1/rerank lays each pair out through it ({query}, then
    {document}, replaced; special tokens parsed) and scores it as the engine does alone, P("yes") at
    the pair's last token; the model still generates with its LM head."""
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.engine.embedding import rank_scores, rerank_prompt
    from rfc.runtime.engine.engine import Engine
    from tests.gguf_edit import rewrite_gguf

    template = {"tokenizer.chat_template.rerank": RERANK_TEMPLATE}
    model = rewrite_gguf(_gguf("qwen3-rank", tmp_path), tmp_path / "templated.gguf", metadata=template)
    bundle = tmp_path / "bundle"
    compile_model(CompileOptions(model=model, out_dir=bundle, targets=("cpu",)))
    engine = Engine(load_model(bundle, LoadOptions(device="cpu")))
    assert engine.model.tokenizer_info["rerank"] == {"template": RERANK_TEMPLATE}
    docs = ["there was a cat", "the dog ran home {query}", "a little girl named Lily"]
    tok = engine.model.tokenizer
    pairs = [tok.encode(rerank_prompt(RERANK_TEMPLATE, "once upon a time", d), add_special_tokens=False).ids
             for d in docs]  # fmt: skip
    assert len({tuple(p) for p in pairs}) == 3
    assert rerank_prompt(RERANK_TEMPLATE, "q", docs[1]).count("{query}") == 1  # a document's own stays as it is
    want = [_finish(rank_scores(engine, [pair], 1))[0] for pair in pairs]
    assert all(0.0 < w < 1.0 for w in want)
    server = ServerProcess(bundle, "--ctx-size", "256")
    try:
        url = server.wait_ready().url
        r = requests.post(url + "/v1/rerank", json={"query": "once upon a time", "documents": docs}, timeout=60)
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert [got[i] for i in range(3)] == pytest.approx(want, abs=1e-6)
        r = requests.post(url + "/v1/completions", json={"prompt": "once upon", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
        # the query repeated in 2048 pairs: 2048 x 10,000 characters to tokenize, over MAX_TEMPLATED_CHARS
        heavy = {"query": "a" * 10_000, "documents": ["b"] * 2048}
        r = requests.post(url + "/v1/rerank", json=heavy, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "query", r.text
    finally:
        server.stop()


def test_a_unigram_vocabulary_is_served_with_llama_cpps_ids(servers):
    """bert-dense with a 512-piece `t5` vocabulary (XLM-R's first pieces and its charsmap:
    tests/unigram_vocab.py): /tokenize gives the ids llama.cpp gave for that file
    (tests/fixtures/tokenizer/unigram.json, "small"), and an embedding wraps them in <s> and </s>
    (the file's add_bos and add_eos)."""
    record = json.loads((ROOT / "tests" / "fixtures" / "tokenizer" / "unigram.json").read_text(encoding="utf-8"))
    url = servers["bert-dense-t5"].url
    for text, ids in zip(record["inputs"], record["small"]["ids"], strict=False):
        r = requests.post(url + "/tokenize", json={"content": text}, timeout=30)
        assert r.status_code == 200 and r.json()["tokens"] == [int(i) for i in ids.split()], (text, r.text)
    text = record["inputs"][0]
    r = requests.post(url + "/tokenize", json={"content": text, "add_special": True}, timeout=30)
    assert r.json()["tokens"] == [0, *map(int, record["small"]["ids"][0].split()), 2]
    r = requests.post(url + "/v1/embeddings", json={"input": text}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(record["small"]["ids"][0].split()) + 2


@pytest.mark.parametrize("device", ["ref", "cpu"])
def test_inputs_batched_in_a_step_embed_as_alone(bundles, device):
    """An encoder's inputs share steps (whole_embeddings: several sequences a step, each attending
    its own keys alone): the same vectors as each input in a step of its own."""
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.engine.embedding import Pooling, whole_embeddings
    from rfc.runtime.engine.engine import Engine

    engine = Engine(load_model(bundles["bert-dense"], LoadOptions(device=device)))
    rng = np.random.default_rng(3)
    inputs = [rng.integers(3, 500, n).tolist() for n in (16, 3, 8, 1, 200, 40)]

    def run(step_tokens: int) -> list[np.ndarray]:
        job = whole_embeddings(engine, inputs, Pooling.MEAN, step_tokens)
        steps = 0
        with pytest.raises(StopIteration) as done:
            while True:
                next(job)
                steps += 1
        return done.value.value, steps

    together, steps = run(256)
    alone, one_each = run(1)
    assert (steps, one_each) == (2, 6)  # 16 + 3 + 8 + 1, then 200 + 40
    for a, b in zip(together, alone):
        assert np.abs(a - b).max() < 1e-6


def _finish(job):
    """Runs an engine job (a generator) to its end; its result."""
    with pytest.raises(StopIteration) as done:
        while True:
            next(job)
    return done.value.value
