"""A hostile registry (tests/e2e/hostile_registry.py: crafted manifests and blobs from a local
http.server) against `rfc pull` and the server's /api/pull and /admin/swap: every malformed
manifest is a one-line refusal (exit 2, or a 4xx whose stream ends with an error line), a silent
registry fails within --registry-timeout and a dripping one within --pull-timeout, oversized
manifest.json / model.sig layers are refused from their descriptor before a byte of them is
read, and a refused pull leaves nothing in the cache."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import rfc
from tests.e2e.conftest import ServerProcess
from tests.e2e.hostile_registry import HostileRegistry, SilentRegistry, drip, layer, manifest_of, zeros

ADMIN_KEY = "hostile-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

# manifests whose fields have the wrong types: each once crashed check_artifact
MALFORMED = {
    "annotations-string": manifest_of([layer("manifest.json", annotations="org.cncf.model.filepath")]),
    "annotations-list": manifest_of([layer("manifest.json", annotations=["manifest.json"])]),
    "config-string": {
        **manifest_of([layer("manifest.json")]),
        "config": "application/vnd.cncf.model.config.v1+json",
        "artifactType": None,
    },
    "config-list": {**manifest_of([layer("manifest.json")]), "config": [], "artifactType": None},
    "layer-string": manifest_of(["manifest.json"]),
}


@pytest.fixture(scope="module")
def hostile():
    reg = HostileRegistry()
    for tag, manifest in MALFORMED.items():
        reg.add_manifest(tag, manifest)
    yield reg
    reg.close()


def cache_files(cache: Path) -> list[str]:
    """Everything a pull left in the cache but its lock files and empty directories."""
    oci = cache / "oci"
    return (
        sorted(p.relative_to(oci).as_posix() for p in oci.rglob("*") if p.is_file() and p.parent.name != "locks")
        if oci.exists()
        else []
    )


def pull(reference: str, cache: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return rfc("pull", reference, "--insecure", "--cache-dir", cache, *args, timeout=120, **kwargs)


def one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rfc: error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("tag", sorted(MALFORMED))
def test_a_malformed_manifest_is_one_line(hostile, tmp_path, tag):
    line = one_line(pull(f"{hostile.host}/models/x:{tag}", tmp_path / "cache"))
    assert "is not a descriptor" in line or "annotations are not a map of strings" in line, line
    assert cache_files(tmp_path / "cache") == []


def test_a_silent_registry_fails_within_the_timeout(tmp_path):
    silent = SilentRegistry()
    try:
        started = time.monotonic()
        line = one_line(pull(f"{silent.host}/models/x:a", tmp_path / "cache", "--registry-timeout", "1"))
        assert time.monotonic() - started < 15
        assert "did not answer" in line and "--registry-timeout" in line, line
    finally:
        silent.close()


def test_a_dripping_registry_fails_within_the_pull_timeout(hostile, tmp_path):
    """One byte every 0.2 s is never silent for --registry-timeout; --pull-timeout ends it."""
    digest = "sha256:" + "cd" * 32
    hostile.blobs[digest] = drip(1000, 0.2)
    hostile.add_manifest("drip", manifest_of([layer("manifest.json", digest, 1000)]))
    started = time.monotonic()
    line = one_line(
        pull(f"{hostile.host}/models/x:drip", tmp_path / "cache", "--registry-timeout", "5", "--pull-timeout", "2")
    )
    assert time.monotonic() - started < 15
    assert "--pull-timeout" in line, line


@pytest.mark.parametrize(
    "path, size, words",
    [
        ("model.sig", 200_000_000, "more than the 256 KiB"),
        ("manifest.json", 300_000_000, "more than the 16 MiB"),
    ],
)
def test_an_oversized_layer_is_refused_before_a_byte(hostile, demo_bundle, tmp_path, path, size, words):
    """The 200 MB model.sig / 300 MB manifest.json a registry offers: refused from the
    descriptor, nothing of it sent, nothing left in the cache."""
    big = "sha256:" + ("ef" if path == "model.sig" else "fe") * 32
    hostile.blobs[big] = zeros(size)
    extra = (layer("model.sig", big, size),) if path == "model.sig" else ()
    if path == "manifest.json":
        hostile.add_manifest("big-manifest", manifest_of([layer("manifest.json", big, size)]))
        tag = "big-manifest"
    else:
        hostile.add_bundle("big-sig", demo_bundle, extra)
        tag = "big-sig"
    line = one_line(pull(f"{hostile.host}/models/x:{tag}", tmp_path / "cache"))
    assert f"layer {path} is {size} bytes, {words}" in line, line
    assert hostile.sent[big] == 0
    assert cache_files(tmp_path / "cache") == []


def test_a_blob_longer_than_its_descriptor_is_cut_off(hostile, tmp_path):
    """manifest.json said 1,000 bytes and 200 MB come: refused, the download stopped early."""
    liar = "sha256:" + "ce" * 32
    hostile.blobs[liar] = zeros(200_000_000)
    hostile.add_manifest("liar", manifest_of([layer("manifest.json", liar, 1000)]))
    line = one_line(pull(f"{hostile.host}/models/x:liar", tmp_path / "cache"))
    assert "longer than the 1000 bytes its descriptor says" in line, line
    time.sleep(0.5)
    assert hostile.sent[liar] < 16 << 20  # (the rest never left: socket buffers at most)
    assert cache_files(tmp_path / "cache") == []


def test_a_refused_pull_leaves_nothing_in_the_cache(hostile, demo_bundle, tmp_path):
    """manifest.json arrives and checks out, but the layers are not the files it lists: the
    blob it downloaded is deleted with the refusal."""
    digest = hostile.add_blob((demo_bundle / "manifest.json").read_bytes())
    size = (demo_bundle / "manifest.json").stat().st_size
    hostile.add_manifest("short", manifest_of([layer("manifest.json", digest, size)]))
    line = one_line(pull(f"{hostile.host}/models/x:short", tmp_path / "cache"))
    assert "do not match its manifest.json" in line, line
    assert hostile.sent[digest] == size  # it was downloaded...
    assert cache_files(tmp_path / "cache") == []  # ...and is gone


def test_a_manifest_over_4_mib_is_too_large_not_a_digest_mismatch(hostile, tmp_path):
    """By its Content-Length, or (none sent) by the bytes read: 4 MiB and one at most."""
    digest = hostile.add_manifest("huge", json.dumps(manifest_of([layer("manifest.json")])).encode() + b" " * (5 << 20))
    hostile.unsized.add(digest)
    for ref, sized in ((":huge", True), (f"@{digest}", False)):
        line = one_line(pull(f"{hostile.host}/models/x{ref}", tmp_path / "cache"))
        assert "than the 4 MiB an OCI manifest may be: refused" in line, line
        assert ("5243" in line) is sized, line  # (its size, when the registry said it)


def test_port_zero_is_refused(tmp_path):
    line = one_line(pull("127.0.0.1:0/models/x:a", tmp_path / "cache"))
    assert "port is 1 to 65535, not 0" in line


@pytest.mark.parametrize("verb", ["pull", "push"])
def test_without_the_distribute_extra_it_is_one_line(demo_bundle, tmp_path, verb):
    args = (
        ["127.0.0.1:5000/models/x:a", "--insecure", "--cache-dir", str(tmp_path)]
        if verb == "pull"
        else [str(demo_bundle), "127.0.0.1:5000/models/x:a", "--insecure"]
    )
    code = "import sys; sys.modules['oras'] = None; from rfc.cli.main import main; main()"  # as if not installed
    out = subprocess.run([sys.executable, "-c", code, verb, *args], capture_output=True, text=True, timeout=60)
    assert one_line(out) == "rfc: error: registries need the distribute extra: pip install 'rfc[distribute]'"


# -- the server's /api/pull and /admin/swap ---------------------------------------------------


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-server")
    proc = ServerProcess(
        demo_bundle,
        "--admin-api-key",
        ADMIN_KEY,
        "--cache-dir",
        str(root / "cache"),
        "--registry-timeout",
        "2",
        log_dir=root,
    )
    proc.cache = root / "cache"
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def streamed_pull(server, ref: str, timeout: float = 30) -> list[dict]:
    r = requests.post(
        server.url + "/api/pull", json={"model": ref, "insecure": True}, headers=ADMIN, stream=True, timeout=timeout
    )
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.iter_lines() if line]


def test_streamed_pulls_of_a_malformed_manifest_end_and_free_their_threads(server, hostile):
    """Each stream ends with an error line; 100 of them leave the server answering at once."""
    refs = [f"{hostile.host}/models/x:{tag}" for tag in sorted(MALFORMED)] * 20
    with ThreadPoolExecutor(8) as pool:
        streams = list(pool.map(lambda ref: streamed_pull(server, ref), refs))
    for lines in streams:
        assert lines[0] == {"status": "pulling manifest"} and "error" in lines[-1], lines
        assert "not a descriptor" in lines[-1]["error"] or "annotations" in lines[-1]["error"]
    started = time.monotonic()
    r = requests.get(server.url + "/v1/models", headers=ADMIN, timeout=5)
    assert r.status_code == 200 and time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/pull", {"stream": False}),
        ("/admin/swap", {"model": "stories260K"}),
    ],
)
def test_a_malformed_manifest_is_a_400_not_a_500(server, hostile, path, body):
    ref = f"{hostile.host}/models/x:annotations-string"
    r = requests.post(
        server.url + path,
        json={**body, ("source" if path == "/admin/swap" else "model"): ref, "insecure": True},
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert "annotations are not a map of strings" in r.json()["error"]


def test_unsafe_layer_paths_are_a_400_like_other_damaged_artifacts(server, hostile):
    hostile.add_manifest("escape", manifest_of([layer("manifest.json"), layer("../../etc/cron.d/x")]))
    r = requests.post(
        server.url + "/api/pull",
        json={"model": f"{hostile.host}/models/x:escape", "insecure": True, "stream": False},
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert "not a plain relative path" in r.json()["error"]


def test_a_silent_registry_ends_the_stream_within_the_timeout(server):
    silent = SilentRegistry()
    try:
        started = time.monotonic()
        lines = streamed_pull(server, f"{silent.host}/models/x:a")
        assert time.monotonic() - started < 15
        assert "did not answer" in lines[-1]["error"], lines
    finally:
        silent.close()


def test_cache_entries_never_served_are_listed_and_deleted(server, hostile, demo_bundle):
    """A bundle in the server's pull cache that no model serves (pulled by `rfc pull` into the
    same cache): /admin/models lists it, /api/delete removes it by digest, files and blobs."""
    digest = hostile.add_bundle("listed", demo_bundle)
    pulled = Path(pull(f"{hostile.host}/models/x:listed", server.cache).stdout.strip())
    assert pulled.name == digest.split(":")[1]
    cached = requests.get(server.url + "/admin/models", headers=ADMIN, timeout=10).json()["cached"]
    assert {"digest": digest, "name": "stories260K", "served": False} == {
        k: v for k, v in cached[0].items() if k != "bytes"
    }
    assert cached[0]["bytes"] == sum(p.stat().st_size for p in demo_bundle.rglob("*") if p.is_file())
    r = requests.delete(
        server.url + "/api/delete", json={"model": f"{hostile.host}/models/x@{digest}"}, headers=ADMIN, timeout=10
    )
    assert r.status_code == 200, r.text
    assert cache_files(server.cache) == []
    assert requests.get(server.url + "/admin/models", headers=ADMIN, timeout=10).json()["cached"] == []
    r = requests.delete(server.url + "/api/delete", json={"model": digest}, headers=ADMIN, timeout=10)
    assert r.status_code == 404  # (gone)


@pytest.mark.slow
def test_an_unsigned_pull_is_refused_and_leaves_nothing(hostile, demo_bundle, tmp_path):
    """--require-signature: a pulled bundle is checked before it enters the cache; refused, it
    leaves no bundle and no blob behind."""
    from tests.e2e.test_signing import make_key

    priv, pub = make_key(tmp_path, "k")
    signed = tmp_path / "signed"
    import shutil

    shutil.copytree(demo_bundle, signed)
    rfc("sign", signed, "--key", priv, check=True)
    hostile.add_bundle("unsigned", demo_bundle)
    big = "sha256:" + "ed" * 32
    hostile.blobs[big] = zeros(200_000_000)
    hostile.add_bundle("signed-big", demo_bundle, (layer("model.sig", big, 200_000_000),))
    proc = ServerProcess(
        signed,
        "--admin-api-key",
        ADMIN_KEY,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--require-signature",
        pub,
        log_dir=tmp_path,
    )
    try:
        proc.wait_ready()
        lines = streamed_pull(proc, f"{hostile.host}/models/x:unsigned")
        assert "is not signed" in lines[-1]["error"], lines
        assert cache_files(tmp_path / "cache") == []
        assert requests.get(proc.url + "/admin/models", headers=ADMIN, timeout=10).json()["cached"] == []
        # a 200 MB model.sig layer: refused unread, the server's memory where it was
        idle = rss_bytes(proc.proc.pid)
        for _ in range(3):
            lines = streamed_pull(proc, f"{hostile.host}/models/x:signed-big")
            assert "layer model.sig is 200000000 bytes" in lines[-1]["error"], lines
        assert hostile.sent[big] == 0 and cache_files(tmp_path / "cache") == []
        assert rss_bytes(proc.proc.pid) - idle < 50 << 20
    finally:
        proc.stop()


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) << 10
