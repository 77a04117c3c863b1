"""Registry references and the checks a pulled OCI artifact passes (cli/oci.py, cli/oci_layout.py)."""

import json

import pytest

from rfc.artifacts import BundleError
from rfc.cli.oci import Reference, is_loopback, parse_reference
from rfc.cli.oci_layout import MODEL_ARTIFACT, OCI_MANIFEST, _param_size, check_artifact, layer_media_type

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, ref",
    [
        ("localhost:5000/models/smollm2:q4_1-cpu", Reference("localhost:5000", "models/smollm2", "q4_1-cpu")),
        ("127.0.0.1:5000/demo", Reference("127.0.0.1:5000", "demo")),
        (f"ghcr.io/org/models/demo@{D}", Reference("ghcr.io", "org/models/demo", None, D)),
        (f"registry.example.com/a/b:v1@{D}", Reference("registry.example.com", "a/b", "v1", D)),
        ("[::1]:5000/demo:x", Reference("[::1]:5000", "demo", "x")),
    ],
)
def test_references(text, ref):
    assert parse_reference(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "bundles/demo",
        "demo:cpu",
        "./localhost:5000/x",
        "localhost:5000/Upper",
        "ghcr.io/x@sha256:short",
        "/abs/path",
        "localhost:5000/",
    ],
)
def test_not_references(text):
    assert parse_reference(text) is None


@pytest.mark.parametrize(
    "host, loop",
    [
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.1", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("ghcr.io", False),
        ("localhost.evil.com:5000", False),
    ],
)
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


CONFIG = {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": D, "size": 2}


def artifact(paths, sizes=None, **extra):
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": MODEL_ARTIFACT,
            "config": CONFIG,
            "layers": [
                {
                    "mediaType": "x",
                    "digest": D,
                    "size": (sizes or {}).get(p, 1),
                    "annotations": {"org.cncf.model.filepath": p},
                }
                for p in paths
            ],
            **extra,
        }
    ).encode()


def layer(**fields):
    return {
        "mediaType": "x",
        "digest": D,
        "size": 1,
        "annotations": {"org.cncf.model.filepath": "manifest.json"},
        **fields,
    }


def test_a_bundle_artifact_passes():
    _, layers = check_artifact(artifact(["manifest.json", "weights.bin"]))
    assert layers == [("manifest.json", D, 1), ("weights.bin", D, 1)]


@pytest.mark.parametrize(
    "data, message",
    [
        (artifact(["manifest.json", "../escape"]), "not a plain relative path"),
        (artifact(["manifest.json", "/etc/passwd"]), "not a plain relative path"),
        (artifact(["manifest.json", "a", "a"]), "appears twice"),
        (artifact(["weights.bin"]), "no manifest.json layer"),
        (
            artifact(
                ["manifest.json"],
                artifactType="application/vnd.oci.image.config.v1+json",
                config={**CONFIG, "mediaType": "application/vnd.oci.image.config.v1+json"},
            ),
            "not an rfc bundle",
        ),
        (
            json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}).encode(),
            "not an OCI image manifest",
        ),
        (b"\xff", "not JSON"),
        # every field is typed before use: a wrong type is a refusal, never an AttributeError
        (artifact([], layers=[layer(annotations="org.cncf.model.filepath")]), "annotations are not a map of strings"),
        (artifact([], layers=[layer(annotations=["manifest.json"])]), "annotations are not a map of strings"),
        (
            artifact([], layers=[layer(annotations={"org.cncf.model.filepath": 7})]),
            "annotations are not a map of strings",
        ),
        (artifact([], layers=[layer(annotations={})]), "not a plain relative path"),
        (artifact([], layers=["manifest.json"]), "layer 0 is not a descriptor"),
        (artifact([], layers=[layer(size=True)]), "has no size"),
        (artifact([], layers=[layer(size=1 << 50)]), "has no size"),
        (artifact([], layers=[layer(digest=["sha256:x"])]), "has no sha256 digest"),
        (artifact([], layers=[layer(mediaType={})]), "has no media type"),
        (artifact(["manifest.json"], config="application/vnd.cncf.model.config.v1+json"), "config is not a descriptor"),
        (artifact(["manifest.json"], config=[CONFIG]), "config is not a descriptor"),
        (json.dumps({"mediaType": OCI_MANIFEST, "config": "x", "layers": []}).encode(), "config is not a descriptor"),
        (artifact(["manifest.json"], artifactType={"a": 1}), "artifactType is not a string"),
        (artifact(["manifest.json"], layers={"a": 1}), "layers are missing"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (4 << 20) + b"{}", "larger than 4 MiB"),
        # files whose size the format bounds: refused from the descriptor, before a byte of them
        (artifact(["manifest.json"], {"manifest.json": (16 << 20) + 1}), "more than the 16 MiB"),
        (artifact(["manifest.json", "model.sig"], {"model.sig": 200_000_000}), "more than the 256 KiB"),
    ],
)
def test_hostile_artifacts_are_refused(data, message):
    with pytest.raises(BundleError, match=message):
        check_artifact(data)


def test_references_with_port_zero_are_refused():
    from rfc.cli.oci import OciBadReference, Registry, RegistryOptions

    for text in ("localhost:0/models/x:a", "127.0.0.1:65536/models/x:a", "[::1]:0/x"):
        ref = parse_reference(text)
        assert ref is not None  # a reference, refused as one (never a path, never port 80)
        with pytest.raises(OciBadReference, match="port is 1 to 65535"):
            Registry(ref, RegistryOptions(insecure=True))
