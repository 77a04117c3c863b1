"""Ollama's model verbs on compiled bundles, through the real `ollama`
Python client against `rfc serve` on 127.0.0.1 and a real OCI registry (docker-registry):
/api/pull streams Ollama's progress and serves the reference, /api/chat answers on it (the
greedy text `rfc run --chat` gives for the same bundle), /api/copy names it twice,
/api/delete stops serving it and deletes its pulled files; keep_alive unloads a model and the
next request loads it again, its load time in load_duration. Model management is the admin
key's, and a bundle directory a client names stays inside --models-dir."""

import hashlib
import shutil
import time
from pathlib import Path

import ollama
import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess
from tests.e2e.oci_registry import REGISTRY, Registry, push

pytestmark = pytest.mark.skipif(
    REGISTRY is None, reason="docker-registry not installed (apt-get install docker-registry)"
)

ADMIN_KEY, CLIENT_KEY = "verbs-admin", "verbs-client"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
PROMPT = "Once upon a time"
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The demo with a chat template that is the messages' text alone."""
    d = tmp_path_factory.mktemp("verbs-bundle")
    (d / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rfc("compile", DEMO_MODEL, "-o", d / "a", "-q", "--chat-template", d / "t.jinja", check=True)
    return d / "a"


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("verbs-server")
    (root / "models").mkdir()
    proc = ServerProcess(
        demo_bundle,
        "--admin-api-key",
        ADMIN_KEY,
        "--api-key",
        CLIENT_KEY,
        "--cache-dir",
        str(root / "cache"),
        "--models-dir",
        str(root / "models"),
        log_dir=root,
    )
    proc.cache = root / "cache"
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def loaded(server) -> set[str]:
    return {m.model for m in ollama.Client(host=server.url, headers=CLIENT).ps().models}


def test_pull_then_chat_copy_and_delete_with_the_ollama_client(server, registry, bundle):
    ref = f"{registry.host}/models/verbs:a"
    digest = push(bundle, ref)
    admin = ollama.Client(host=server.url, headers=ADMIN)
    steps = list(admin.pull(ref, insecure=True, stream=True))
    statuses = [s.status for s in steps]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layers = {s.digest: (s.total, s.completed) for s in steps if s.digest}  # each layer's last event
    files = {p for p in bundle.rglob("*") if p.is_file()}
    assert len(layers) == len(files) and all(total == completed for total, completed in layers.values())
    assert sum(total for total, _ in layers.values()) == sum(p.stat().st_size for p in files)
    pulled = server.cache / "oci" / "bundles" / digest.split(":")[1]
    assert (pulled / "manifest.json").is_file()

    client = ollama.Client(host=server.url, headers=CLIENT)
    assert ref in {m.model for m in client.list().models}
    assert ref not in loaded(server)  # pulled, not loaded until a request names it
    messages = [{"role": "user", "content": PROMPT}]
    first = client.chat(model=ref, messages=messages, options=GREEDY)
    local = rfc("run", bundle, "--chat", "-p", PROMPT, "--temperature", "0", "-n", "24", check=True).stdout.rstrip("\n")
    assert first.message.content == local
    assert first.load_duration > 0 and client.chat(model=ref, messages=messages, options=GREEDY).load_duration == 0

    assert admin.copy(ref, "tale:v1").status == "success"
    assert {ref, "tale:v1"} <= {m.model for m in client.list().models}
    assert client.generate(model="tale:v1", prompt=PROMPT, options=GREEDY, raw=True).response
    assert admin.delete("tale:v1").status == "success"  # a copy's name alone goes
    assert "tale:v1" not in {m.model for m in client.list().models} and pulled.is_dir()

    assert admin.delete(ref).status == "success"
    assert ref not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=ref, messages=messages)
    assert e.value.status_code == 404
    assert not pulled.exists()  # the server's pull, deleted with it
    weights = hashlib.sha256((bundle / "weights.bin").read_bytes()).hexdigest()
    assert not (server.cache / "oci" / "blobs" / "sha256" / weights).exists()  # its blobs too
    assert client.chat(model="stories260K", messages=messages, options=GREEDY).message.content  # the others still serve


def test_pull_of_a_missing_tag_is_an_error_in_the_stream(server, registry):
    with pytest.raises(ollama.ResponseError) as e:
        admin = ollama.Client(host=server.url, headers=ADMIN)
        list(admin.pull(f"{registry.host}/models/none:x", insecure=True, stream=True))
    assert "no such artifact" in str(e.value)
    r = requests.post(
        server.url + "/api/pull",
        json={"model": f"{registry.host}/models/none:x", "insecure": True, "stream": False},
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 404 and "no such artifact" in r.json()["error"]
    r = requests.post(server.url + "/api/pull", json={"model": "llama3.2", "stream": False}, headers=ADMIN, timeout=30)
    assert r.status_code == 400 and "'model'" in r.json()["error"]  # Ollama's library names are not references


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/pull", {"model": "127.0.0.1:5000/models/x:a"}),
        ("DELETE", "/api/delete", {"model": "stories260K"}),
        ("POST", "/api/copy", {"source": "stories260K", "destination": "other"}),
        ("POST", "/admin/swap", {"model": "stories260K", "source": "b"}),
        ("GET", "/admin/models", None),
    ],
)
def test_model_management_needs_the_admin_key(server, method, path, body):
    r = requests.request(method, server.url + path, json=body, headers=CLIENT, timeout=30)
    assert r.status_code == 403, r.text
    assert "admin key" in r.text
    assert requests.request(method, server.url + path, json=body, timeout=30).status_code == 401


def test_keep_alive_unloads_and_the_next_request_loads_again(server):
    client = ollama.Client(host=server.url, headers=CLIENT)
    client.generate(model="stories260K", prompt=PROMPT, options=GREEDY, keep_alive="5m")
    (entry,) = [m for m in client.ps().models if m.model == "stories260K"]
    left = entry.expires_at.timestamp() - time.time()
    assert 280 < left <= 300, entry.expires_at
    client.generate(model="stories260K", prompt=PROMPT, options=GREEDY, keep_alive=0)  # unloaded once idle
    deadline = time.monotonic() + 10
    while "stories260K" in loaded(server):
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.1)
    assert "stories260K" in {m.model for m in client.list().models}  # still offered
    again = client.generate(model="stories260K", prompt=PROMPT, options=GREEDY, keep_alive=-1)
    assert again.load_duration > 0 and again.response
    assert "stories260K" in loaded(server)
    # `ollama stop`: an empty prompt with keep_alive 0 unloads without loading first
    stop = client.generate(model="stories260K", prompt="", keep_alive=0)
    assert stop.done_reason == "unload"


def test_a_bundle_directory_from_a_client_stays_inside_models_dir(server, demo_bundle, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(demo_bundle, outside)
    for source in (str(outside), "../" + outside.name, "/etc"):
        r = requests.post(
            server.url + "/admin/swap", json={"model": "stories260K", "source": source}, headers=ADMIN, timeout=30
        )
        assert r.status_code == 400, r.text
        assert "--models-dir" in r.json()["error"]


def test_delete_keeps_the_blobs_another_pulled_bundle_shares(server, registry, bundle, tmp_path):
    """Two builds differing in the chat template share weights.bin's blob in the pull cache:
    deleting one leaves it for the other; deleting both removes it."""
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}\n")
    rfc("compile", DEMO_MODEL, "-o", tmp_path / "b", "-q", "--chat-template", tmp_path / "t.jinja", check=True)
    refs = [f"{registry.host}/models/shared:a", f"{registry.host}/models/shared:b"]
    for source, ref in zip((bundle, tmp_path / "b"), refs):
        push(source, ref)
    admin = ollama.Client(host=server.url, headers=ADMIN)
    for ref in refs:
        assert admin.pull(ref, insecure=True).status == "success"
    weights = (
        server.cache / "oci" / "blobs" / "sha256" / hashlib.sha256((bundle / "weights.bin").read_bytes()).hexdigest()
    )
    assert weights.is_file()
    admin.delete(refs[0])
    assert weights.is_file()
    client = ollama.Client(host=server.url, headers=CLIENT)
    assert client.generate(model=refs[1], prompt=PROMPT, options=GREEDY, raw=True).response
    admin.delete(refs[1])
    assert not weights.exists()


def test_max_loaded_models_loads_on_demand_and_unloads_the_least_recent(demo_bundle, bundle, tmp_path):
    """--max-loaded-models 1 with two models: the first loads at startup; a request for the
    second loads it (load_duration) and unloads the first, which the next request loads back."""
    server = ServerProcess(demo_bundle, str(bundle), "--max-loaded-models", "1", log_dir=tmp_path)
    try:
        server.wait_ready()
        client = ollama.Client(host=server.url)
        first, second = [m.model for m in client.list().models]
        assert loaded(server) == {first}
        reply = client.generate(model=second, prompt=PROMPT, options=GREEDY, raw=True)
        assert reply.load_duration > 0 and reply.response
        assert loaded(server) == {second}
        again = client.generate(model=first, prompt=PROMPT, options=GREEDY, raw=True)
        assert again.load_duration > 0 and loaded(server) == {first}
        assert client.generate(model=first, prompt=PROMPT, options=GREEDY, raw=True).load_duration == 0
    finally:
        server.stop()
