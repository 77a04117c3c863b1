"""rfc run: chat mode, template sandbox, bad input."""

import pytest

from tests.conftest import DEMO_MODEL, rfc
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _bundle_with_template(tmp_path, template: str):
    model = rewrite_gguf(DEMO_MODEL, tmp_path / "m.gguf", metadata={"tokenizer.chat_template": template})
    out = tmp_path / "bundle"
    rfc("compile", model, "-o", out, "-q", check=True)
    return out


def test_chat_uses_the_bundle_template(tmp_path):
    bundle = _bundle_with_template(tmp_path, "{% for m in messages %}{{ m['content'] }}. {% endfor %}")
    chat = rfc(
        "run",
        bundle,
        "--chat",
        "-p",
        "Once upon a time",
        "--temperature",
        "0",
        "-n",
        "20",
        "--device",
        "ref",
        check=True,
    )
    plain = rfc(
        "run", bundle, "-p", "Once upon a time. ", "--temperature", "0", "-n", "20", "--device", "ref", check=True
    )
    assert chat.stdout == plain.stdout and chat.stdout.strip()


def test_template_reaching_python_internals_is_refused(tmp_path):
    bundle = _bundle_with_template(tmp_path, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    proc = rfc("run", bundle, "--chat", "-p", "hi", "-n", "5", "--device", "ref")
    assert proc.returncode == 2
    assert "unsafe attribute" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_prompt_filling_the_context_is_refused(tmp_path, bundle_cache):
    bundle = bundle_cache(DEMO_MODEL)
    proc = rfc("run", bundle, "-p", "Once upon a time " * 200, "--device", "ref")
    assert proc.returncode == 2 and "context" in proc.stderr


def test_missing_bundle_is_a_clear_error(tmp_path):
    proc = rfc("run", tmp_path / "nothing")
    assert proc.returncode == 2 and "not a bundle directory" in proc.stderr
