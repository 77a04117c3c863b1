"""One `rfc serve` with two bundles for every client test: the demo model (stories260K, no
chat template) and SmolLM2-135M-Instruct (a real instruct model with its own ChatML
template, slow enough on 2 cores, ~50 tok/s, that a stream can be watched and interrupted)."""

import pytest

from tests.conftest import CHAT_TEMPLATES, rfc, skip_reason, smollm2
from tests.e2e.conftest import ServerProcess

SMOLLM2 = smollm2()
DEMO = "stories260K"
CHAT = "SmolLM2-135M-Instruct"
KV_PAGES = 1024  # split evenly: 512 pages each, one full 8192-token context of SmolLM2


@pytest.fixture(scope="session")
def clients_bundles(tmp_path_factory, demo_bundle):
    if not SMOLLM2.is_file():
        pytest.skip(skip_reason(SMOLLM2))
    chat = tmp_path_factory.mktemp("clients") / CHAT
    rfc("compile", SMOLLM2, "-o", chat, "-q", check=True)
    return demo_bundle, chat


@pytest.fixture(scope="session")
def clients_server(clients_bundles):
    demo, chat = clients_bundles
    proc = ServerProcess(
        demo,
        str(chat),
        "--kv-pages",
        str(KV_PAGES),
        "--trace-sample-rate",
        "1.0",
        "--public-traces",
        log_dir=chat.parent,
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def url(clients_server) -> str:
    return clients_server.url


TOOLS_QWEN = "smollm2-qwen25-tools"  # SmolLM2 with Qwen2.5's template: hermes `<tool_call>` calls
TOOLS_LLAMA = "smollm2-llama31-tools"  # SmolLM2 with Llama 3.1's template: bare JSON calls


@pytest.fixture(scope="session")
def tools_server(tmp_path_factory):
    """SmolLM2 compiled twice with real tool-capable templates from tests/data/chat-templates."""
    if not SMOLLM2.is_file():
        pytest.skip(skip_reason(SMOLLM2))
    root = tmp_path_factory.mktemp("tools")
    bundles = []
    for name, template in (
        (TOOLS_QWEN, "Qwen-Qwen2.5-7B-Instruct.jinja"),
        (TOOLS_LLAMA, "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    ):
        rfc("compile", SMOLLM2, "-o", root / name, "-q", "--chat-template", CHAT_TEMPLATES / template, check=True)
        bundles.append(root / name)
    proc = ServerProcess(bundles[0], str(bundles[1]), "--kv-pages", str(KV_PAGES), log_dir=root)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def tools_url(tools_server) -> str:
    return tools_server.url


MISTRAL_NEMO = "smollm2-mistral-nemo"  # SmolLM2 with Mistral-Nemo's template: 9-character tool-call ids
MISTRAL_SMALL = "smollm2-mistral-small"  # and with Mistral-Small-3.2's
DEEPSEEK_V31 = "smollm2-deepseek-v31"  # and with DeepSeek-V3.1's: an enable_thinking switch, off unless set


@pytest.fixture(scope="session")
def mistral_url(tmp_path_factory):
    """SmolLM2 compiled with the two Mistral templates that check tool-call ids, and with
    DeepSeek-V3.1's (whose thinking is off unless enable_thinking is set)."""
    if not SMOLLM2.is_file():
        pytest.skip(skip_reason(SMOLLM2))
    root = tmp_path_factory.mktemp("mistral")
    bundles = []
    for name, template in (
        (MISTRAL_NEMO, "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
        (MISTRAL_SMALL, "Mistral-Small-3.2-24B-Instruct-2506.jinja"),
        (DEEPSEEK_V31, "deepseek-ai-DeepSeek-V3.1.jinja"),
    ):
        rfc("compile", SMOLLM2, "-o", root / name, "-q", "--chat-template", CHAT_TEMPLATES / template, check=True)
        bundles.append(root / name)
    proc = ServerProcess(bundles[0], *map(str, bundles[1:]), "--kv-pages", str(KV_PAGES * 3 // 2), log_dir=root)
    try:
        yield proc.wait_ready().url
    finally:
        proc.stop()


RESPONSES_KEYS = ("responses-key-one", "responses-key-two")  # two clients: neither sees the other's responses


@pytest.fixture(scope="session")
def responses_url(tmp_path_factory):
    """SmolLM2 with Qwen2.5's template (hermes tool calls), behind two API keys."""
    if not SMOLLM2.is_file():
        pytest.skip(skip_reason(SMOLLM2))
    root = tmp_path_factory.mktemp("responses")
    rfc(
        "compile",
        SMOLLM2,
        "-o",
        root / TOOLS_QWEN,
        "-q",
        "--chat-template",
        CHAT_TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja",
        check=True,
    )
    proc = ServerProcess(
        root / TOOLS_QWEN,
        "--kv-pages",
        str(KV_PAGES // 2),
        *(a for k in RESPONSES_KEYS for a in ("--api-key", k)),
        log_dir=root,
    )
    try:
        yield proc.wait_ready().url
    finally:
        proc.stop()
