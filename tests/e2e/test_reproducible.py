"""Reproducibility proven with Debian's reprotest: the demo bundle, signed, built twice with
varied time (faketime), time zone, locale, umask, build path, HOME, PATH, kernel personality,
CPU count, ASLR, hostname and domain name, and directory order (disorderfs), must be
byte-identical. A build that embeds the time must fail the same check: it can fail.

Not varied here: user_group (needs a second account that can run this Python environment
and sudo; see docs/reproducible.md)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_MODEL

REPROTEST = shutil.which("reprotest")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        REPROTEST is None, reason="reprotest not installed (apt-get install reprotest faketime disorderfs)"
    ),
]

BUILD = """#!/bin/sh
set -e
export SOURCE_DATE_EPOCH=1700000000
{prepare}
"{python}" -c "from rfc.cli.main import main; main()" compile model.gguf -o out/bundle -q --no-cache --sign key.pem {extra}
"""  # noqa: E501 (a shell script: its one command stays on one line)


def source_tree(root: Path, prepare: str = "", extra: str = "") -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    src = root / "src"
    src.mkdir()
    shutil.copyfile(DEMO_MODEL, src / "model.gguf")
    key = ec.generate_private_key(ec.SECP256R1())
    (src / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (src / "build.sh").write_text(BUILD.format(python=sys.executable, prepare=prepare, extra=extra))
    return src


def reprotest(src: Path, store: Path) -> subprocess.CompletedProcess:
    variations = ["--vary=-user_group"]
    if not Path("/dev/fuse").exists() or shutil.which("disorderfs") is None:
        variations.append("--vary=-fileordering")
    cmd = [
        REPROTEST,
        "--no-diffoscope",
        "--min-cpus",
        "1",
        "--store-dir",
        str(store),
        *variations,
        "-c",
        "sh build.sh",
        str(src),
        "out/bundle",
        "--",
        "null",
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    )


def test_the_signed_demo_bundle_is_reproducible_under_reprotest(tmp_path):
    out = reprotest(source_tree(tmp_path), tmp_path / "store")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "Reproduction successful" in out.stdout
    sums = out.stdout.split("No differences in", 1)[1]
    for rel in ("weights.bin", "manifest.json", "provenance.json", "model.sig", "kernels/cpu/librfc_cpu.so"):
        assert f"out/bundle/{rel}" in sums


def test_a_build_that_embeds_the_time_fails_the_same_check(tmp_path):
    """The chat template is written at build time with the date in it: reprotest's faketime
    moves the second build's clock, so the bundles differ and the check says so."""
    prepare = 'date "+{# built %Y-%m-%d %H:%M:%S #}" > template.jinja'
    out = reprotest(source_tree(tmp_path, prepare, "--chat-template template.jinja"), tmp_path / "store")
    assert out.returncode == 1, out.stdout[-4000:] + out.stderr[-4000:]
    assert "chat_template.jinja" in out.stdout + out.stderr
