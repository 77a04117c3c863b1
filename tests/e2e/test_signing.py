"""Signed bundles (OpenSSF model-signing, ECDSA P-256 keys) and their provenance: `rfc compile
--sign` stays byte-reproducible and equals `rfc sign` after the fact; `rfc verify
--public-key`; `rfc serve --require-signature` serves a signed bundle and refuses, before
anything loads, with one line and exit 2: any one byte changed in any file, a file added, the
signature removed, another key, an unsigned bundle."""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess, free_port

PROMPT = "Once upon a time"


def make_key(d: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = d / f"{name}.pem", d / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"ours": make_key(d, "ours"), "other": make_key(d, "other")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("signed") / "stories260K"
    rfc(
        "compile",
        DEMO_MODEL,
        "-o",
        out,
        "-q",
        "--sign",
        keys["ours"][0],
        check=True,
        env=_env(SOURCE_DATE_EPOCH="1700000000"),
    )
    return out


def _env(**extra):
    import os

    return {**os.environ, **extra}


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_signing_is_reproducible_and_sign_equals_compile_sign(signed, keys, tmp_path):
    """A second compile --sign gives the same bytes, model.sig included (RFC 6979 nonces); an
    unsigned compile signed afterwards with `rfc sign` is the same bundle: signing changes
    neither the manifest nor the bundle id."""
    again = tmp_path / "stories260K"
    rfc(
        "compile",
        DEMO_MODEL,
        "-o",
        again,
        "-q",
        "--sign",
        keys["ours"][0],
        check=True,
        env=_env(SOURCE_DATE_EPOCH="1700000000"),
    )
    assert files_of(again) == files_of(signed)
    later = tmp_path / "later" / "stories260K"
    rfc("compile", DEMO_MODEL, "-o", later, "-q", check=True, env=_env(SOURCE_DATE_EPOCH="1700000000"))
    assert not (later / "model.sig").exists()
    rfc("sign", later, "--key", keys["ours"][0], check=True)
    assert files_of(later) == files_of(signed)


def test_verify_with_a_public_key(signed, keys, tmp_path):
    ok = rfc("verify", signed, "--public-key", keys["ours"][1])
    assert ok.returncode == 0 and "model.sig is a valid signature of every file" in ok.stdout
    wrong = rfc("verify", signed, "--public-key", keys["other"][1])
    assert wrong.returncode == 1 and "signature check failed" in wrong.stderr
    assert rfc("verify", signed).returncode == 0  # without a key: the hashes alone, as before


def test_upstream_model_signing_verifies_it(signed, keys):
    """The signature is model-signing's own format: its CLI checks it unchanged."""
    cli = shutil.which("model_signing")
    if cli is None:
        pytest.skip("model_signing CLI not on PATH (pip install model-signing)")
    out = subprocess.run(
        [
            cli,
            "verify",
            "key",
            str(signed),
            "--signature",
            str(signed / "model.sig"),
            "--public_key",
            str(keys["ours"][1]),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_serve_requires_and_accepts_the_signature(signed, keys, rfc_run, tmp_path):
    server = ServerProcess(signed, "--require-signature", keys["ours"][1], log_dir=tmp_path)
    try:
        server.wait_ready()
        r = requests.post(
            server.url + "/generate", json={"prompt": PROMPT, "max_tokens": 16, "temperature": 0}, timeout=60
        )
        assert r.status_code == 200 and r.json()["text"] == rfc_run(PROMPT, 16)
    finally:
        server.stop()


def refused(bundle: Path, pub: Path) -> str:
    """`rfc serve --require-signature` on `bundle`: exit 2, one line on stderr, nothing on stdout,
    and nothing loaded (no listening, no loading: the server never started)."""
    port = free_port()
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rfc.cli.main import main; main()",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--require-signature",
            str(pub),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert out.stdout == "" and "listening" not in out.stderr and "loading" not in out.stderr
    assert time.monotonic() - started < 30
    return lines[0]


SIGNED_FILES = [
    "manifest.json",
    "model.sig",
    "provenance.json",
    "weights.bin",
    "layout.msgpack",
    "plan.msgpack",
    "tokenizer.json",
    "kernels/cpu/librfc_cpu.so",
    "kernels/cpu/program.msgpack",
    "kernels/cpu/rfc_cpu.c",
    "kernels/cpu/rfc_sample.c",
]


@pytest.mark.parametrize("rel", SIGNED_FILES)
def test_one_byte_changed_in_any_file_is_refused(signed, keys, tmp_path, rel):
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    assert sorted(files_of(copy)) == sorted(SIGNED_FILES)
    data = bytearray((copy / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / rel).write_bytes(data)
    line = refused(copy, keys["ours"][1])
    assert line.startswith(f"rfc: error: bundle {copy}: signature check failed: ")
    if rel != "model.sig":
        assert f"changed since signing: {rel}" in line


def test_a_file_added_is_refused(signed, keys, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    (copy / "kernels" / "cpu" / "extra.so").write_bytes(b"\x7fELF")
    assert refused(copy, keys["ours"][1]).endswith("not covered by the signature: kernels/cpu/extra.so")


def test_a_git_file_added_is_refused_too(signed, keys, tmp_path):
    """model-signing's default hashing skips .git*: ours covers every file."""
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    (copy / ".gitattributes").write_text("* filter=evil\n")
    assert "not covered by the signature: .gitattributes" in refused(copy, keys["ours"][1])


def test_the_signature_removed_is_refused(signed, keys, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    (copy / "model.sig").unlink()
    assert refused(copy, keys["ours"][1]) == f"rfc: error: bundle {copy} is not signed (no model.sig)"


def test_another_key_is_refused(signed, keys):
    assert "Key mismatch" in refused(signed, keys["other"][1])


def test_a_signature_from_another_key_in_place_is_refused(signed, keys, tmp_path):
    """Re-signed by someone else's key, verified against ours."""
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    rfc("sign", copy, "--key", keys["other"][0], check=True)
    assert "signature check failed" in refused(copy, keys["ours"][1])


def test_an_unsigned_bundle_is_refused(demo_bundle, keys):
    assert refused(demo_bundle, keys["ours"][1]).endswith("is not signed (no model.sig)")


def test_provenance_is_in_the_bundle_and_signed(signed):
    from in_toto_attestation.v1.statement import Statement
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2

    manifest = json.loads((signed / "manifest.json").read_text())
    assert manifest["provenance"] == "provenance.json" and "provenance.json" in manifest["files"]
    statement = json.loads((signed / "provenance.json").read_text())
    pb = json_format.ParseDict(statement, statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()  # in-toto's own checks: type, subjects with digests, predicate
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {rel: meta["sha256"] for rel, meta in manifest["files"].items() if rel != "provenance.json"}
    build = statement["predicate"]["buildDefinition"]
    gguf = DEMO_MODEL.read_bytes()
    assert build["externalParameters"]["model"] == {
        "file": DEMO_MODEL.name,
        "sha256": hashlib.sha256(gguf).hexdigest(),
        "size": len(gguf),
    }
    assert build["externalParameters"]["targets"] == ["cpu"]
    assert build["internalParameters"]["source_date_epoch"] == 1700000000
    assert build["internalParameters"]["toolchains"]["cpu"] == manifest["targets"][0]["toolchain"]
    assert statement["predicate"]["runDetails"]["builder"]["version"]["cc"] == manifest["targets"][0]["toolchain"]
    shown = json.loads(rfc("inspect", signed, "--json", check=True).stdout)
    assert shown["signed"] is True
    assert shown["provenance"]["source_date_epoch"] == 1700000000
    text = rfc("inspect", signed, check=True).stdout
    assert "provenance  provenance.json: SLSA v1" in text and "SOURCE_DATE_EPOCH=1700000000" in text


def test_a_bad_source_date_epoch_is_one_line(tmp_path):
    out = rfc("compile", DEMO_MODEL, "-o", tmp_path / "x", "-q", env=_env(SOURCE_DATE_EPOCH="yesterday"))
    assert out.returncode == 2
    assert (
        out.stderr.strip() == "rfc: error: SOURCE_DATE_EPOCH must be a non-negative integer of seconds, not 'yesterday'"
    )


def test_serve_a_signed_bundle_behind_a_symlink(signed, keys, rfc_run, tmp_path):
    """The swap layout (models/x -> builds/v1) with --require-signature: the link is resolved
    once, the real directory verified and served; a link inside the bundle is still refused."""
    (tmp_path / "builds").mkdir()
    shutil.copytree(signed, tmp_path / "builds" / "v1")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x").symlink_to(tmp_path / "builds" / "v1")
    rfc("verify", tmp_path / "models" / "x", "--public-key", keys["ours"][1], check=True)
    server = ServerProcess(tmp_path / "models" / "x", "--require-signature", keys["ours"][1], log_dir=tmp_path)
    try:
        server.wait_ready()
        r = requests.post(
            server.url + "/generate", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0}, timeout=60
        )
        assert r.status_code == 200 and r.json()["text"] == rfc_run(PROMPT, 8)
    finally:
        server.stop()
    inside = tmp_path / "builds" / "v2"
    shutil.copytree(signed, inside)
    (inside / "tokenizer.json").unlink()
    (inside / "tokenizer.json").symlink_to(tmp_path / "builds" / "v1" / "tokenizer.json")
    (tmp_path / "models" / "y").symlink_to(inside)
    assert "signature check failed" in refused(tmp_path / "models" / "y", keys["ours"][1])


def test_an_oversized_signature_is_refused_unread(signed, keys, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    with open(copy / "model.sig", "r+b") as f:
        f.truncate(200_000_000)  # sparse: 200 MB that were never written
    assert refused(copy, keys["ours"][1]) == (
        f"rfc: error: bundle {copy}: model.sig is larger than the 256 KiB a signature may be: refused unread"
    )
