"""Bundles through a real OCI registry (Debian's docker-registry, distribution 2.8, started on a
free 127.0.0.1 port and stopped by PID): push, pull into a clean cache, byte-identical bundle,
`rfc serve REF` generating what the local bundle generates, only changed layers uploaded,
the provenance attached as a referrer, concurrent and resumed pulls, and digests checked."""

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.oci_registry import REGISTRY, Registry, push

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REGISTRY is None, reason="docker-registry not installed (apt-get install docker-registry)"),
]
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (d / "pub.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return d


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    """Two signed builds of the demo that differ in one file: the chat template."""
    d = tmp_path_factory.mktemp("oci-bundles")
    out = {}
    for name in ("a", "b"):
        template = d / f"{name}.jinja"
        template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}" + ("" if name == "a" else "\n"))
        out[name] = d / name
        rfc(
            "compile",
            DEMO_MODEL,
            "-o",
            out[name],
            "-q",
            "--chat-template",
            template,
            "--sign",
            keys / "key.pem",
            check=True,
        )
    return out


def files_of(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_push_pull_serve_from_the_reference(registry, bundles, keys, tmp_path):
    ref = f"{registry.host}/models/demo:a"
    digest = push(bundles["a"], ref)
    cache = tmp_path / "cache"
    pulled = rfc("pull", ref, "--insecure", "--cache-dir", cache, "-o", tmp_path / "pulled", check=True)
    assert pulled.stdout.strip() == str(tmp_path / "pulled")
    assert files_of(tmp_path / "pulled") == files_of(bundles["a"])  # byte-identical, same files (the signature too)
    assert (cache / "oci" / "bundles" / digest.split(":")[1] / "manifest.json").is_file()
    pinned = rfc("pull", f"{registry.host}/models/demo@{digest}", "--insecure", "--cache-dir", cache, check=True)
    assert pinned.stdout.strip() == str(cache / "oci" / "bundles" / digest.split(":")[1])

    local = rfc("run", bundles["a"], "-p", PROMPT, "--temperature", "0", "-n", "24", check=True).stdout.rstrip("\n")
    server = ServerProcess(
        None,
        ref,
        "--insecure",
        "--cache-dir",
        tmp_path / "serve-cache",
        "--require-signature",
        keys / "pub.pem",
        log_dir=tmp_path,
    )
    try:
        server.wait_ready()
        r = requests.post(
            server.url + "/generate", json={"prompt": PROMPT, "max_tokens": 24, "temperature": 0}, timeout=60
        )
        assert r.status_code == 200, r.text
        assert r.json()["text"] == local
    finally:
        server.stop()


def test_a_second_bundle_uploads_only_what_changed(registry, bundles):
    push(bundles["a"], f"{registry.host}/models/delta:a")
    mark = registry.mark()
    out = rfc("push", bundles["b"], f"{registry.host}/models/delta:b", "--insecure", check=True)
    a, b = files_of(bundles["a"]), files_of(bundles["b"])
    changed = {rel for rel in b if a.get(rel) != b[rel]}
    # one file differs; the manifest (its hash), the provenance (its subjects) and the signature follow it
    assert changed == {"chat_template.jinja", "manifest.json", "provenance.json", "model.sig"}
    uploaded = registry.uploaded_since(mark)
    assert {b[rel] for rel in changed} <= uploaded
    unchanged = {b[rel] for rel in b if rel not in changed}
    assert not uploaded & unchanged, "unchanged layers went up again"
    # besides the changed files: the artifact's config (it lists the layer digests); nothing else
    assert len(uploaded - {b[rel] for rel in changed}) == 1
    assert "pushed 4 layers (8 already in the registry)" in out.stderr


def test_provenance_is_attached_as_a_referrer(registry, bundles):
    digest = push(bundles["a"], f"{registry.host}/models/prov:a")
    base = f"http://{registry.host}/v2/models/prov"
    # distribution 2.8 has no referrers API: the OCI 1.1 fallback tag lists the referrers
    index = requests.get(
        f"{base}/manifests/{digest.replace(':', '-')}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        timeout=10,
    )
    assert index.status_code == 200, index.text
    (entry,) = index.json()["manifests"]
    assert entry["artifactType"] == "application/vnd.in-toto+json"
    referrer = requests.get(
        f"{base}/manifests/{entry['digest']}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    ).json()
    assert referrer["subject"]["digest"] == digest
    (layer,) = referrer["layers"]
    blob = requests.get(f"{base}/blobs/{layer['digest']}", timeout=10).content
    assert blob == (bundles["a"] / "provenance.json").read_bytes()
    artifact = requests.get(
        f"{base}/manifests/a", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10
    ).json()
    assert artifact["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert artifact["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    manifest = json.loads((bundles["a"] / "manifest.json").read_text())
    assert artifact["annotations"]["io.rocmforge.rfc.bundle.id"] == manifest["bundle_id"]
    assert artifact["annotations"]["io.rocmforge.rfc.signed"] == "true"
    types = {layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"] for layer in artifact["layers"]}
    assert types["weights.bin"] == "application/vnd.cncf.model.weight.v1.raw"
    assert types["kernels/cpu/librfc_cpu.so"] == "application/vnd.cncf.model.code.v1.raw"
    assert types["model.sig"] == "application/vnd.dev.sigstore.bundle.v0.3+json"


def test_concurrent_pulls_of_one_digest_download_it_once(registry, bundles, tmp_path):
    ref = f"{registry.host}/models/conc:a"
    push(bundles["a"], ref)
    weights = files_of(bundles["a"])["weights.bin"]
    mark = registry.mark()
    results = [None, None]

    def pull(i):
        results[i] = rfc("pull", ref, "--insecure", "--cache-dir", tmp_path / "cache")

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout
    assert registry.blob_gets_since(mark, weights) == 1


@pytest.mark.parametrize("prefix", ["right", "wrong"])
def test_an_interrupted_pull_resumes(registry, bundles, tmp_path, prefix):
    ref = f"{registry.host}/models/resume:a"
    push(bundles["a"], ref)
    data = (bundles["a"] / "weights.bin").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blobs = tmp_path / "cache" / "oci" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (tmp_path / "cache").chmod(0o700), (tmp_path / "cache" / "oci").chmod(0o700)
    half = data[: len(data) // 2] if prefix == "right" else b"\0" * (len(data) // 2)
    (blobs / f"{digest}.partial").write_bytes(half)
    rfc("pull", ref, "--insecure", "--cache-dir", tmp_path / "cache", "-o", tmp_path / "out", check=True)
    assert (tmp_path / "out" / "weights.bin").read_bytes() == data
    assert not (blobs / f"{digest}.partial").exists()


def test_a_blob_altered_in_the_registry_is_refused(registry, bundles, tmp_path):
    ref = f"{registry.host}/models/tamper:a"
    push(bundles["a"], ref)
    digest = files_of(bundles["a"])["tokenizer.json"]
    stored = registry.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / digest[:2] / digest / "data"
    original = stored.read_bytes()
    try:
        stored.write_bytes(original.replace(b"<unk>", b"<UNK>", 1))
        out = rfc("pull", ref, "--insecure", "--cache-dir", tmp_path / "cache")
        assert out.returncode == 2
        (line,) = out.stderr.strip().splitlines()[-1:]
        assert line.startswith("rfc: error: blob sha256:" + digest) and "refused" in line
        assert not list((tmp_path / "cache" / "oci" / "bundles").glob("*/manifest.json"))
    finally:
        stored.write_bytes(original)


def test_models_dir_reference_file(registry, bundles, tmp_path):
    """A *.ref file pulled at startup over plain HTTP (--insecure), and again on SIGHUP with the
    same options: the new tag it names then serves under the same id."""
    ref = f"{registry.host}/models/dir:a"
    push(bundles["a"], ref)
    push(bundles["b"], f"{registry.host}/models/dir:b")
    models = tmp_path / "models"
    models.mkdir()
    (models / "demo.ref").write_text(f"# the demo, pulled at start\n{ref}\n")
    server = ServerProcess(
        None, "--models-dir", models, "--insecure", "--cache-dir", tmp_path / "cache", log_dir=tmp_path
    )
    try:
        server.wait_ready()
        ids = [m["id"] for m in requests.get(server.url + "/v1/models", timeout=10).json()["data"]]
        assert ids == ["stories260K"]

        def served() -> str | None:
            r = requests.post(
                server.url + "/v1/completions",
                json={"model": "stories260K", "prompt": "Once", "max_tokens": 2},
                timeout=30,
            )
            return r.headers.get("X-Model-Version")

        version = {name: json.loads((bundles[name] / "manifest.json").read_text())["bundle_id"] for name in "ab"}
        assert served() == version["a"]
        (models / "demo.ref").write_text(f"{registry.host}/models/dir:b\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while served() != version["b"]:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert "https://" not in server.log()  # (the startup's --insecure kept: plain HTTP again)
    finally:
        server.stop()


def test_insecure_is_only_for_this_machine(tmp_path):
    out = rfc("pull", "registry.example.com/models/demo:a", "--insecure", "--cache-dir", tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "rfc: error: --insecure (plain HTTP) is only for a registry on this machine, not registry.example.com"
    )


def test_a_registry_that_is_not_there_is_one_line(tmp_path):
    out = rfc("pull", f"127.0.0.1:{free_port()}/models/demo:a", "--insecure", "--cache-dir", tmp_path)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach the registry" in out.stderr


def test_credentials_come_from_the_docker_config(tmp_path, bundles):
    """A registry that wants a password (htpasswd, HTTP Basic): refused without one, in one
    line that says how to log in; served with the docker config's `auths` entry."""
    bcrypt = pytest.importorskip("bcrypt", reason="bcrypt not installed (pip install bcrypt)")
    import base64
    import os

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("ci:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    reg = Registry(tmp_path, htpasswd)
    try:
        ref = f"{reg.host}/models/private:a"
        env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "nowhere"), "HOME": str(tmp_path)}
        denied = rfc("push", bundles["a"], ref, "--insecure", env=env)
        assert denied.returncode == 2 and len(denied.stderr.strip().splitlines()) == 1
        assert "answered 401" in denied.stderr and "docker login" in denied.stderr
        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"ci:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        env["DOCKER_CONFIG"] = str(docker)
        rfc("push", bundles["a"], ref, "--insecure", env=env, check=True)
        rfc("pull", ref, "--insecure", "--cache-dir", tmp_path / "cache", "-o", tmp_path / "out", env=env, check=True)
        assert files_of(tmp_path / "out") == files_of(bundles["a"])
    finally:
        reg.stop()


def test_the_registry_starts_again_when_its_port_was_taken(tmp_path, monkeypatch):
    """docker-registry binds the port it is given: another process holding the first one picked makes
    it exit on the bind, and the fixture starts it again on another port."""
    import socket

    import tests.e2e.oci_registry as oci

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(oci, "free_port", lambda: next(ports, None) or free_port())
        registry = oci.Registry(tmp_path)
        try:
            assert registry.port != taken
            assert requests.get(f"http://{registry.host}/v2/", timeout=5).status_code == 200
        finally:
            registry.stop()
