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


def test_ai_sdk_tools_and_objects(tools_url):
    """generateText with tools (toolChoice required) gives a valid call, streamText the same
    call, generateObject an object its zod schema accepts (tests/node/tools.mjs)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        pytest.skip("the AI SDK is not installed: run `npm ci` in tests/node (.ci/run does)")
    from tests.e2e.clients.conftest import TOOLS_QWEN

    proc = subprocess.run(
        ["node", "tools.mjs", tools_url, TOOLS_QWEN], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["finishReason"] == "tool-calls"
    assert [c["toolName"] for c in out["calls"]] == ["get_weather"] and out["calls"] == out["streamedCalls"]
    assert out["calls"][0]["input"]["unit"] in ("C", "F")
    assert isinstance(out["object"]["name"], str) and 0 <= out["object"]["age"] <= 40


def test_ollama_provider_honours_tool_choice(tools_url):
    """ollama-ai-provider-v2 sends `tool_choice` on /api/chat; it was ignored,
    and the AI SDK raised AI_ToolChoiceViolationError (tests/node/ollama_tools.mjs)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "ollama-ai-provider-v2").is_dir():
        pytest.skip("the AI SDK is not installed: run `npm ci` in tests/node (.ci/run does)")
    from tests.e2e.clients.conftest import TOOLS_QWEN

    proc = subprocess.run(
        ["node", "ollama_tools.mjs", tools_url, TOOLS_QWEN], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["required"]["finishReason"] == "tool-calls" and out["required"]["calls"], out
    assert [c["toolName"] for c in out["named"]["calls"]] == ["get_time"], out
    assert out["none"]["calls"] == [], out


def test_ai_sdk_openai_provider_on_the_responses_api(responses_url):
    """The AI SDK's default `openai(id)` provider (the Responses API) does a
    tool round trip, generateObject with a zod schema, and a conversation by
    previous_response_id (tests/node/responses.mjs); another API key cannot read the
    responses it stored."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "@ai-sdk" / "openai").is_dir():
        pytest.skip("the AI SDK is not installed: run `npm ci` in tests/node (.ci/run does)")
    import requests

    from tests.e2e.clients.conftest import RESPONSES_KEYS, TOOLS_QWEN

    proc = subprocess.run(
        ["node", "responses.mjs", responses_url, TOOLS_QWEN, RESPONSES_KEYS[0]],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [s["calls"] for s in out["steps"]] == [["get_weather"], []], out
    assert out["executed"] and out["steps"][0]["results"][0]["temperature"] == 21
    assert out["steps"][1]["finishReason"] in ("stop", "length") and out["text"]
    assert isinstance(out["object"]["name"], str) and 0 <= out["object"]["age"] <= 30
    assert out["secondInputTokens"] > out["firstInputTokens"]  # the first turn is in the second's prompt
    mine = {"Authorization": f"Bearer {RESPONSES_KEYS[0]}"}
    theirs = {"Authorization": f"Bearer {RESPONSES_KEYS[1]}"}
    second = requests.get(f"{responses_url}/v1/responses/{out['secondId']}", headers=mine, timeout=10).json()
    assert second["previous_response_id"] == out["firstId"]
    for rid in (out["firstId"], out["secondId"]):
        assert requests.get(f"{responses_url}/v1/responses/{rid}", headers=theirs, timeout=10).status_code == 404
