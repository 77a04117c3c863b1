"""A bundle is trusted exactly as far as its hashes.

Every path in a manifest stays inside the bundle and is hashed; the layout and plan are
checked against each other and the format table before any library loads or kernel runs.
Each tampered bundle here is *resealed* (file hashes and bundle_id recomputed), as an
attacker would, so verification alone cannot be what stops it.
"""

import json
import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest

from rfc.artifacts.hashing import sha256_file
from rfc.artifacts.manifest import bundle_id, dump_manifest
from tests.conftest import rfc

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from tests.conftest import DEMO_MODEL

    out = tmp_path_factory.mktemp("pristine") / "demo"
    rfc("compile", DEMO_MODEL, "-o", out, "-q", check=True)
    return out


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


@pytest.fixture(scope="module")
def evil_library(tmp_path_factory) -> tuple[Path, Path]:
    """A shared library whose constructor creates a marker file: loading it is the exploit."""
    d = tmp_path_factory.mktemp("evil")
    marker = d / "pwned"
    src = d / "evil.c"
    src.write_text(
        f'#include <fcntl.h>\n__attribute__((constructor)) static void pwn(void) {{ creat("{marker}", 0644); }}\n'
    )
    lib = d / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib, marker


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def reseal(b: Path, m: dict) -> None:
    """Rehash every listed file that exists and recompute bundle_id, as an attacker would."""
    for rel, meta in m["files"].items():
        p = b / rel
        if p.is_file():
            meta.update(sha256=sha256_file(p), size=p.stat().st_size)
    m["bundle_id"] = bundle_id(m)
    (b / "manifest.json").write_bytes(dump_manifest(m))


def refused(b: Path, *extra: str, expect: str) -> None:
    """`rfc verify` fails and `rfc run` (also with --no-verify) refuses in one line."""
    assert rfc("verify", b).returncode != 0
    for flags in ((), ("--no-verify",)):
        proc = rfc("run", b, "-p", "Once", "-n", "1", *flags, *extra)
        assert proc.returncode == 2, (flags, proc.stderr)
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("rfc: warning:")]
        assert len(lines) == 1 and expect in lines[0] and "Traceback" not in proc.stderr, (flags, proc.stderr)


# -- finding 2: paths ---------------------------------------------------------------------------


def test_absolute_kernel_path_is_never_loaded(bundle, evil_library):
    lib, marker = evil_library
    m = manifest(bundle)
    m["targets"][0]["kernels"] = str(lib)
    reseal(bundle, m)
    refused(bundle, expect="not a plain relative path")
    assert not marker.exists()


def test_parent_kernel_path_is_refused_even_when_hashed(bundle, evil_library):
    lib, marker = evil_library
    shutil.copy(lib, bundle.parent / "evil.so")
    m = manifest(bundle)
    m["targets"][0]["kernels"] = "../evil.so"
    m["files"]["../evil.so"] = {"sha256": sha256_file(lib), "size": lib.stat().st_size}
    reseal(bundle, m)
    refused(bundle, expect="not a plain relative path")
    assert not marker.exists()


def test_unlisted_kernel_path_is_refused(bundle, evil_library):
    lib, marker = evil_library
    shutil.copy(lib, bundle / "kernels" / "cpu" / "evil.so")
    m = manifest(bundle)
    m["targets"][0]["kernels"] = "kernels/cpu/evil.so"
    reseal(bundle, m)
    refused(bundle, expect="not in the hashed file map")
    assert not marker.exists()


def test_symlink_out_of_the_bundle_is_refused(bundle, evil_library):
    lib, marker = evil_library
    target = bundle / "kernels" / "cpu" / "librfc_cpu.so"
    target.unlink()
    target.symlink_to(lib)
    reseal(bundle, manifest(bundle))
    refused(bundle, expect="outside the bundle")
    assert not marker.exists()


def test_chat_template_outside_the_bundle_is_refused(bundle):
    m = manifest(bundle)
    m["chat_template"] = "/etc/passwd"
    reseal(bundle, m)
    refused(bundle, expect="not a plain relative path")


def test_file_entries_outside_the_bundle_are_refused(bundle, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    m = manifest(bundle)
    m["files"]["../secret.txt"] = {"sha256": sha256_file(outside), "size": outside.stat().st_size}
    reseal(bundle, m)
    proc = rfc("verify", bundle)
    assert proc.returncode != 0 and "not a plain relative path" in proc.stderr


def test_serve_refuses_a_tampered_manifest_before_binding(bundle, evil_library):
    lib, marker = evil_library
    m = manifest(bundle)
    m["targets"][0]["kernels"] = str(lib)
    reseal(bundle, m)
    proc = rfc("serve", bundle, "--port", "0", timeout=60)
    assert proc.returncode == 2 and "not a plain relative path" in proc.stderr
    assert not marker.exists()


# -- finding 3: layout and plan checked before any kernel runs -------------------------------------


def edit_msgpack(b: Path, rel: str, edit) -> None:
    raw = msgpack.unpackb((b / rel).read_bytes())
    edit(raw)
    (b / rel).write_bytes(msgpack.packb(raw))
    reseal(b, manifest(b))


def _tensor(raw: dict, name: str) -> dict:
    return next(t for t in raw["tensors"] if t["name"] == name)


def test_reshaped_embedding_with_the_same_bytes_is_refused(bundle):
    def edit(raw):
        t = _tensor(raw, "token_embd.weight")
        t["shape"] = [t["shape"][0] * 2, t["shape"][1] // 2]  # same byte count

    edit_msgpack(bundle, "layout.msgpack", edit)
    refused(bundle, expect="token_embd.weight")


def test_tensor_bytes_that_disagree_with_its_format_are_refused(bundle):
    edit_msgpack(bundle, "layout.msgpack", lambda raw: _tensor(raw, "blk.0.attn_q.weight").update(nbytes=4))
    refused(bundle, expect="bytes, but shape")


def test_tensor_past_the_end_of_the_weights_is_refused(bundle):
    edit_msgpack(bundle, "layout.msgpack", lambda raw: _tensor(raw, "blk.4.ffn_down.weight").update(offset=1 << 40))
    refused(bundle, expect="blk.4.ffn_down.weight")


def test_plan_embedding_width_that_disagrees_with_the_weights_is_refused(bundle):
    def edit(raw):
        raw["n_embd"] = 4096
        for b in raw["buffers"]:
            if b[1][1:] == [64]:
                b[1][1] = 4096

    edit_msgpack(bundle, "plan.msgpack", edit)
    refused(bundle, expect="plan op")


def test_absurd_context_length_is_refused(bundle):
    edit_msgpack(bundle, "plan.msgpack", lambda raw: raw.update(context_length=1 << 40))
    refused(bundle, expect="context_length")


def test_attention_heads_that_disagree_with_the_cache_are_refused(bundle):
    def edit(raw):
        op = next(o for o in raw["ops"] if o["kind"] == "attention")
        op["attrs"]["n_kv_heads"] = 1

    edit_msgpack(bundle, "plan.msgpack", edit)
    refused(bundle, expect="head sizes disagree")


@pytest.mark.parametrize("rel", ["plan.msgpack", "layout.msgpack"])
def test_damaged_msgpack_is_one_line(bundle, rel):
    (bundle / rel).write_bytes(b"\xc1\xff\x00garbage" * 10)
    reseal(bundle, manifest(bundle))
    refused(bundle, expect=rel)


def test_damaged_manifest_json_is_one_line(bundle):
    (bundle / "manifest.json").write_text('{"magic": "rfc-bundle", ' + "[" * 100000)
    proc = rfc("run", bundle, "-n", "1")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_damaged_tokenizer_json_is_one_line(bundle):
    """Same size, bytes overwritten: --no-verify does not re-hash, so the tokenizer's loader
    is what refuses it (and verification, with its hash)."""
    path = bundle / "tokenizer.json"
    path.write_bytes(b"\x00garbage{" * (path.stat().st_size // 9) + b"}" * (path.stat().st_size % 9))
    refused(bundle, expect="tokenizer.json")
    proc = rfc("run", bundle, "--no-verify", "-p", "Once", "-n", "1")
    assert "not a tokenizer" in proc.stderr, proc.stderr
