"""Registry references and the checks a pulled OCI artifact passes (cli/oci.py, cli/oci_layout.py)."""

import json

import pytest

from rfc.artifacts import BundleError
from rfc.cli.oci import Reference, is_loopback, parse_reference
from rfc.cli.oci_layout import MODEL_ARTIFACT, OCI_MANIFEST, _param_size, check_artifact, layer_media_type

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, ref", [
    ("localhost:5000/models/smollm2:q4_1-cpu", Reference("localhost:5000", "models/smollm2", "q4_1-cpu")),
    ("127.0.0.1:5000/demo", Reference("127.0.0.1:5000", "demo")),
    (f"ghcr.io/org/models/demo@{D}", Reference("ghcr.io", "org/models/demo", None, D)),
    (f"registry.example.com/a/b:v1@{D}", Reference("registry.example.com", "a/b", "v1", D)),
    ("[::1]:5000/demo:x", Reference("[::1]:5000", "demo", "x")),
])
def test_references(text, ref):
    assert parse_reference(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize("text", ["bundles/demo", "demo:cpu", "./localhost:5000/x", "localhost:5000/Upper", "ghcr.io/x@sha256:short",
                                  "/abs/path", "localhost:5000/"])
def test_not_references(text):
    assert parse_reference(text) is None


@pytest.mark.parametrize("host, loop", [("localhost:5000", True), ("127.0.0.1:5000", True), ("127.8.9.1", True), ("[::1]:5000", True),
                                         ("10.0.0.1:5000", False), ("ghcr.io", False), ("localhost.evil.com:5000", False)])
def test_loopback(host, loop):
    assert is_loopback(host) is loop


def test_layer_media_types():
    assert layer_media_type("weights.bin") == "application/vnd.cncf.model.weight.v1.raw"
    assert layer_media_type("tokenizer.json") == "application/vnd.cncf.model.weight.config.v1.raw"
    assert layer_media_type("kernels/sm_90/kernels.cubin") == "application/vnd.cncf.model.code.v1.raw"
    assert layer_media_type("provenance.json") == "application/vnd.in-toto+json"
    assert layer_media_type("model.sig") == "application/vnd.dev.sigstore.bundle.v0.3+json"


def test_param_size():
    assert [_param_size(n) for n in (260032, 1_100_048_384, 135_000_000, 999)] == ["260K", "1.1B", "135M", "999"]


def artifact(paths, **extra):
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODEL_ARTIFACT, **extra,
                       "layers": [{"mediaType": "x", "digest": D, "size": 1, "annotations": {"org.cncf.model.filepath": p}} for p in paths]}).encode()


def test_a_bundle_artifact_passes():
    _, layers = check_artifact(artifact(["manifest.json", "weights.bin"]))
    assert layers == [("manifest.json", D, 1), ("weights.bin", D, 1)]


@pytest.mark.parametrize("data, message", [
    (artifact(["manifest.json", "../escape"]), "not a plain relative path"),
    (artifact(["manifest.json", "/etc/passwd"]), "not a plain relative path"),
    (artifact(["manifest.json", "a", "a"]), "appears twice"),
    (artifact(["weights.bin"]), "no manifest.json layer"),
    (artifact(["manifest.json"], artifactType="application/vnd.oci.image.config.v1+json"), "not an rfc bundle"),
    (json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}).encode(), "not an OCI image manifest"),
    (b"\xff", "not JSON"),
])
def test_hostile_artifacts_are_refused(data, message):
    with pytest.raises(BundleError, match=message):
        check_artifact(data)
