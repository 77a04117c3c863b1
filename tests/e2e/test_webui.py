"""The web chat page: `/` negotiated between the page (browsers) and Ollama's
"Ollama is running" (everyone else), its files and their headers, `--no-webui`; then the page
itself in a real browser, Debian's chromium driven through chromium-driver by selenium:
it asks for the API key, picks the model, streams a reply, stops one (and the server cancels
it), renders `<script>` and `<img onerror>` as text, shows reasoning collapsed. A screenshot
lands in the test's directory, and where RFC_WEBUI_SCREENSHOT names a file (docs/img/webui.png
was made so), there too."""

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.slow

KEY = "webui-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
# chromium on a machine with no network: no sandbox (containers), no GPU, and none of the
# background fetches (updates, sync, QUIC probes) that would flood refused connections.
HEALTH_POLL_S = 3.2  # the page polls /health every 3 s
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@pytest.fixture(scope="module")
def keyed_server(demo_bundle, tmp_path_factory):
    """An API key, and the numpy reference device: slow enough (about 400 tokens/s) that a
    reply streams for a second, long enough to press Stop in the middle of it."""
    proc = ServerProcess(demo_bundle, "--device", "ref", "--api-key", KEY, log_dir=tmp_path_factory.mktemp("webui"))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


# -- HTTP: / negotiated, the files, --no-webui ----------------------------------------------


def test_root_gives_browsers_the_page_and_ollama_clients_the_text(server):
    page = requests.get(server.url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == CSP and page.headers["Vary"] == "Accept"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="webui/app.js">' in page.text
    # nothing inline, nothing external
    assert "<script>" not in page.text and " style=" not in page.text and "http" not in page.text
    for accept in (None, "*/*", "application/json", "text/plain", "text/html;q=0"):
        r = requests.get(server.url + "/", headers={"Accept": accept} if accept else {}, timeout=10)
        assert (r.status_code, r.text, r.headers["Content-Type"]) == (
            200,
            "Ollama is running",
            "text/plain; charset=utf-8",
        ), accept
    head = requests.head(server.url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Type"].startswith("text/html") and not head.content


def test_files_come_from_an_allow_list_with_their_types(server):
    for name, media in (
        ("app.js", "text/javascript"),
        ("markdown.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        r = requests.get(f"{server.url}/webui/{name}", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"] == f"{media}; charset=utf-8", name
        assert r.headers["Content-Security-Policy"] == CSP and r.content
    for name in ("index.html", "nope.js", "..%2F__init__.py", "%2e%2e", "app.js%00", "APP.JS", "webui_routes.py"):
        r = requests.get(f"{server.url}/webui/{name}", timeout=10)
        assert r.status_code == 404 and r.json()["status"] == "error", name
    for name in ("../service_routes.py", "../../artifacts/__init__.py"):
        assert requests.get(f"{server.url}/webui/{name}", timeout=10).status_code == 404
    names = {p.name for p in Path(__file__).parents[2].joinpath("runtime", "server", "webui").iterdir()}
    assert names == {"index.html", "app.js", "markdown.js", "style.css", "favicon.svg"}  # what the allow-list names
    for path in ("/", "/webui/{name}"):
        assert path in requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]


def test_with_a_key_the_page_is_open_and_the_rest_is_not(keyed_server):
    url = keyed_server.url
    assert requests.get(url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10).status_code == 200
    assert requests.get(url + "/webui/app.js", timeout=10).status_code == 200
    assert requests.get(url + "/", timeout=10).status_code == 401  # Ollama's probe: as before
    assert requests.get(url + "/", headers=AUTH, timeout=10).text == "Ollama is running"
    assert requests.get(url + "/v1/models", headers={"Accept": BROWSER_ACCEPT}, timeout=10).status_code == 401
    assert requests.post(url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10).status_code == 401


def test_no_webui_turns_the_page_off(demo_bundle, tmp_path):
    for args, env in ((("--no-webui",), None), ((), {"RFC_NO_WEBUI": "1"})):
        proc = ServerProcess(demo_bundle, *args, env=env, log_dir=tmp_path)
        try:
            proc.wait_ready()
            r = requests.get(proc.url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
            assert (r.status_code, r.text) == (200, "Ollama is running") and "Vary" not in r.headers
            assert requests.get(proc.url + "/webui/app.js", timeout=10).status_code == 404
            doc = requests.get(proc.url + "/openapi.json", timeout=10).json()
            assert "/webui/{name}" not in doc["paths"] and list(
                doc["paths"]["/"]["get"]["responses"]["200"]["content"]
            ) == ["text/plain"]
        finally:
            proc.stop()


# -- the page in chromium --------------------------------------------------------------------


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    missing = [what for what, found in (("chromium", browser), ("chromedriver", driver)) if not found]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _by(kind: str, value: str):
    from selenium.webdriver.common.by import By

    return (getattr(By, kind), value)


def _wait(driver, condition, timeout: float = 30, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.01).until(condition, message)


def _replies(driver) -> list:
    return driver.find_elements(*_by("CSS_SELECTOR", "article.assistant"))


def _open(driver, url: str, key: str | None) -> None:
    """Loads the page in a tab that holds `key` (None: no key yet)."""
    driver.get(url + "/")
    driver.execute_script(
        "sessionStorage.clear(); if (arguments[0]) sessionStorage.setItem('rfc.apiKey', arguments[0]);", key
    )
    driver.refresh()


def _send(driver, text: str):
    """Types `text` (Shift+Enter between its lines), presses Enter; the new reply's element."""
    from selenium.webdriver.common.keys import Keys

    before = len(_replies(driver))
    box = driver.find_element(*_by("ID", "prompt"))
    box.send_keys(text.replace("\n", Keys.SHIFT + Keys.ENTER + Keys.NULL))
    box.send_keys(Keys.ENTER)
    _wait(driver, lambda d: len(_replies(d)) > before, 10, "no reply element after sending")
    return _replies(driver)[-1]


def _metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", headers=AUTH, timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


# A renderer's worst day: markup, an event handler, a script in a code fence, links of every scheme.
HOSTILE = """# Title <b>not bold</b>

Text with <img src=x onerror="window.pwned=2"> and `<code>`
and **bold <i>x</i>**.

```html
<script>window.pwned=3</script>
```

- [safe](https://example.com/a?b=1) and [bad](javascript:window.pwned=4) and [Bad](JaVaScRiPt:alert(1))
- [data](data:text/html,<script>alert(1)</script>) and ![img](https://example.com/x.png) and https://example.org/x.
  1. nested

> quoted <svg onload="window.pwned=5">"""


def test_the_markdown_renderer_builds_text_never_markup(browser, keyed_server):
    _open(browser, keyed_server.url, KEY)
    got = browser.execute_async_script(
        """
        const [source, done] = arguments;
        import("./webui/markdown.js").then(({renderMarkdown}) => {
          const root = document.createElement("div");
          root.append(renderMarkdown(source));
          done({tags: [...root.querySelectorAll("*")].map(e => e.tagName.toLowerCase()),
                links: [...root.querySelectorAll("a")].map(a => [a.textContent, a.href, a.rel, a.target]),
                code: [...root.querySelectorAll("pre code")].map(c => [c.dataset.lang, c.textContent]),
                h1: root.querySelector("h1").textContent, text: root.textContent,
                attributes: [...root.querySelectorAll("*")].flatMap(e => e.getAttributeNames())});
        }, e => done({error: String(e)}));
    """,
        HOSTILE,
    )
    assert "error" not in got, got
    assert not {"script", "img", "svg", "b", "i", "iframe"} & set(got["tags"])
    assert {"h1", "p", "code", "strong", "pre", "ul", "ol", "li", "blockquote", "a", "br"} <= set(got["tags"])
    assert got["h1"] == "Title <b>not bold</b>"
    assert '<img src=x onerror="window.pwned=2">' in got["text"] and '<svg onload="window.pwned=5">' in got["text"]
    assert got["code"] == [["html", "<script>window.pwned=3</script>"]]
    rel = ("noopener noreferrer nofollow", "_blank")
    assert got["links"] == [
        ["safe", "https://example.com/a?b=1", *rel],
        ["img", "https://example.com/x.png", *rel],
        ["https://example.org/x", "https://example.org/x", *rel],
    ]
    assert (
        "[bad](javascript:window.pwned=4)" in got["text"]
        and "[data](data:text/html,<script>alert(1)</script>)" in got["text"]
    )
    assert not {"onerror", "onload", "style", "src"} & set(got["attributes"])
    assert browser.execute_script("return typeof window.pwned") == "undefined"


def test_the_page_in_chromium(browser, keyed_server, tmp_path):
    """Key, model, a streamed reply, Stop (cancelled on the server), hostile text as text."""
    from selenium.webdriver.support import expected_conditions as ec

    url = keyed_server.url
    _open(browser, url, None)
    # The server wants a key: the page asks for it, keeps it in the tab, lists the models.
    dialog = _wait(browser, ec.visibility_of_element_located(_by("ID", "key-dialog")), 10, "no API key dialog")
    assert browser.find_element(*_by("ID", "key")).get_attribute("type") == "password"
    browser.find_element(*_by("ID", "key")).send_keys(KEY + "\ue007")
    _wait(browser, ec.invisibility_of_element(dialog), 10)
    _wait(
        browser,
        lambda d: d.find_element(*_by("CSS_SELECTOR", "#model option")).text == "stories260K",
        10,
        "no model listed",
    )
    assert browser.execute_script("return sessionStorage.getItem('rfc.apiKey')") == KEY
    _wait(browser, lambda d: d.find_element(*_by("ID", "health-status")).text == "healthy", 10, "no health shown")
    assert browser.find_element(*_by("ID", "health-queued")).text == "0"

    # A streamed reply: its text grows while it is streaming, then it ends with its numbers.
    reply = _send(browser, "Once upon a time")
    seen = []
    while (state := reply.get_attribute("data-state")) in ("waiting", "streaming"):
        if state == "streaming":
            seen.append(len(reply.find_element(*_by("CSS_SELECTOR", ".body")).text))
        time.sleep(0.01)
    assert state == "done", reply.text
    assert len(set(seen) - {0}) >= 3, seen  # text on the page at several sizes before the reply ended
    stats = reply.find_element(*_by("CSS_SELECTOR", ".stats")).text
    assert re.fullmatch(r"TTFT \d+ ms · \d+\.\d tok/s · \d+ tokens · (stop|length)", stats), stats
    assert len(reply.find_element(*_by("CSS_SELECTOR", ".body")).text) > 100

    # Hostile text from the user goes through the renderer the model's replies go through.
    browser.find_element(*_by("ID", "new-chat")).click()
    cancelled = _metric(url, "rocmforge_requests_cancelled_total")
    hostile = (
        "<script>window.pwned=1</script> **Markdown** and <img src=x onerror=window.pwned=2>\n```html\n<b>code</b>\n```"
    )
    reply = _send(browser, hostile)
    user = browser.find_elements(*_by("CSS_SELECTOR", "article.user .body"))[-1]
    assert "<script>window.pwned=1</script> Markdown and <img src=x onerror=window.pwned=2>" in user.text
    assert user.find_element(*_by("CSS_SELECTOR", "strong")).text == "Markdown"
    assert user.find_element(*_by("CSS_SELECTOR", "pre code")).text == "<b>code</b>"
    assert not browser.find_elements(*_by("CSS_SELECTOR", "#transcript script, #transcript img, #transcript b"))

    # Stop, in the middle of the reply: the fetch is aborted and the server cancels the request.
    stop = browser.find_element(*_by("ID", "stop"))
    _wait(browser, lambda d: reply.get_dom_attribute("data-state") == "streaming", 30, "the reply never streamed")
    stop.click()
    _wait(browser, lambda d: reply.get_attribute("data-state") != "streaming", 10)
    assert reply.get_attribute("data-state") == "stopped", reply.text
    assert reply.find_element(*_by("CSS_SELECTOR", ".stats")).text.endswith("tokens · stopped")
    assert browser.find_element(*_by("ID", "send")).is_displayed()
    deadline = time.monotonic() + 10
    while _metric(url, "rocmforge_requests_cancelled_total") != cancelled + 1:
        assert time.monotonic() < deadline, "the server did not cancel the stopped request"
        time.sleep(0.05)
    assert requests.get(url + "/health", timeout=10).json()["checks"]["requests"] == {"active": 0, "queued": 0}
    assert browser.execute_script("return typeof window.pwned") == "undefined"

    # The conversation goes on after a stop (the partial reply is part of it).
    reply = _send(browser, "Tell me about the *cat*:\n- a `hat`\n- a **boat**")
    _wait(browser, lambda d: reply.get_attribute("data-state") == "done", 30)
    browser.set_window_size(1280, 1000)
    time.sleep(HEALTH_POLL_S)  # the health line caught up
    shot = tmp_path / "webui.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RFC_WEBUI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["RFC_WEBUI_SCREENSHOT"])
    # no CSP violation, no script error; the 401 of /v1/models before the key is expected
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "status of 401" not in e["message"]]
    assert not errors, errors


def test_reasoning_is_shown_collapsed(browser, keyed_server):
    """The demo model does not reason: fetch is replaced, in the test only, by one that
    streams OpenAI's `reasoning_content` deltas and then content with markup in it."""
    _open(browser, keyed_server.url, KEY)
    _wait(browser, lambda d: d.find_elements(*_by("CSS_SELECTOR", "#model option")), 10, "no model listed")
    browser.execute_script("""
        const chunks = [{reasoning_content: "The user wants <b>code</b>."}, {reasoning_content: " Keep it short."},
                        {content: "Here:\\n```js\\n<script>window.pwned=6</script>\\n```\\n"}, {content: "<img src=x onerror=window.pwned=7>"}];
        const body = chunks.map(d => `data: ${JSON.stringify({choices: [{index: 0, delta: d, finish_reason: null}]})}\\n\\n`).join("")
          + `data: ${JSON.stringify({choices: [], usage: {prompt_tokens: 3, completion_tokens: 4, total_tokens: 7}})}\\n\\ndata: [DONE]\\n\\n`;
        const real = window.fetch;
        window.fetch = (url, init) => url === "v1/chat/completions"
          ? Promise.resolve(new Response(body, {headers: {"Content-Type": "text/event-stream"}})) : real(url, init);
    """)  # noqa: E501 (the page's own JavaScript, kept as one would write it)
    reply = _send(browser, "Show me a script tag")
    _wait(browser, lambda d: reply.get_attribute("data-state") == "done", 10)
    details = reply.find_element(*_by("CSS_SELECTOR", "details.reasoning"))
    assert details.is_displayed() and details.get_attribute("open") is None  # collapsed
    assert details.find_element(*_by("TAG_NAME", "summary")).text == "Reasoning"
    details.find_element(*_by("TAG_NAME", "summary")).click()
    assert "The user wants <b>code</b>. Keep it short." in details.text
    body = reply.find_element(*_by("CSS_SELECTOR", ".body"))
    assert body.find_element(*_by("CSS_SELECTOR", "pre code")).text == "<script>window.pwned=6</script>"
    assert "<img src=x onerror=window.pwned=7>" in body.text
    assert not reply.find_elements(*_by("CSS_SELECTOR", "script, img, b"))
    assert reply.find_element(*_by("CSS_SELECTOR", ".stats")).text.endswith("4 tokens")
    assert browser.execute_script("return typeof window.pwned") == "undefined"
