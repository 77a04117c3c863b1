"""The Vercel AI SDK (`ai`) with `@ai-sdk/openai-compatible` and with `ollama-ai-provider-v2`
against `rfc serve` (tests/node/clients.mjs): streamText gives generateText's text at
temperature 0. `.ci/run` installs the packages (`npm ci` in tests/node)."""

import json
import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests.e2e.clients.conftest import CHAT

pytestmark = [pytest.mark.shared, pytest.mark.slow]
NODE_DIR = ROOT / "tests" / "node"


def test_ai_sdk_stream_text_equals_generate_text(url):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        pytest.skip("the AI SDK is not installed: run `npm ci` in tests/node (.ci/run does)")
    proc = subprocess.run(["node", "clients.mjs", url, CHAT], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for provider in ("openaiCompatible", "ollama"):
        got = result[provider]
        assert got["generated"] == got["streamed"] != "", provider
        assert got["outputTokens"] <= 16 and got["finishReason"] in ("stop", "length"), provider
    assert result["openaiCompatible"]["generated"].startswith("The capital of France is Paris")
