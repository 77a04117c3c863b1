"""The web chat page (docs/serve.md, "Web chat page"): the static files of runtime/server/webui/,
served as they are (no build step, no external URL). A browser's `GET /` gets the page
(ollama_api.RootResource negotiates on `Accept: text/html`; everyone else keeps Ollama's
"Ollama is running"), and `GET /webui/{name}` its scripts, style sheet and icon, from an
allow-list read once at startup: a request never touches the file system.

The files hold no data, so they are open without the API key: the page asks for the key when
`/v1/models` answers 401 and sends it with each request it makes. `--no-webui` leaves all of
this out."""

from importlib import resources

import falcon

from rfc.runtime.server.errors import not_found
from rfc.runtime.server.openapi import Operation
from rfc.runtime.server.response_schemas import ANY_TEXT

PREFIX = "/webui/"
ROUTE = PREFIX + "{name}"
PAGE = "index.html"
HTML = "text/html"
_MEDIA_TYPES = {".html": HTML, ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# What /webui/{name} serves; the page itself is served at / only.
ASSETS = ("app.js", "markdown.js", "style.css", "favicon.svg")
# Scripts and styles from this origin only: no inline script, no eval, nothing from elsewhere;
# the page talks to this server alone (connect-src falls back to 'self').
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # small files, fetched again: an upgraded server serves its own page at once
}


def media_type(name: str) -> str:
    return _MEDIA_TYPES[name[name.rindex(".") :]]


def wants_html(req: falcon.Request) -> bool:
    """Whether the client names text/html in its Accept header, as browsers do when they load
    a page. A wildcard (`*/*`, curl's and most HTTP libraries' default) is no browser."""
    for part in (req.get_header("Accept") or "").split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        if media == HTML:
            return all(_quality(p) != 0 for p in params)
    return False


def _quality(param: str) -> float | None:
    name, _, value = param.partition("=")
    if name.strip() != "q":
        return None
    try:
        return float(value)
    except ValueError:
        return None


class WebUi:
    """The page and its assets, read from the package once."""

    def __init__(self) -> None:
        root = resources.files("rfc.runtime.server") / "webui"
        self._files = {name: (root / name).read_bytes() for name in (PAGE, *ASSETS)}

    def is_open(self, req: falcon.Request) -> bool:
        """Requests answered without the API key: the page, for a browser, and its assets."""
        if req.method not in ("GET", "HEAD"):
            return False
        return req.path.startswith(PREFIX) or (req.path == "/" and wants_html(req))

    def send(self, resp: falcon.Response, name: str) -> None:
        assert name in self._files, name
        resp.content_type = f"{media_type(name)}; charset=utf-8"  # every file is UTF-8 text
        resp.set_headers(_HEADERS)
        resp.data = self._files[name]


class WebUiAssetResource:
    """`GET /webui/{name}`: one of ASSETS, else 404."""

    _reply = {media: ANY_TEXT for media in sorted({media_type(name) for name in ASSETS})}
    operations = {
        "get": Operation(
            "A file of the web chat page (its scripts, style sheet, icon)", reply=_reply, errors=(404,), public=True
        ),
        "head": Operation("A file of the web chat page, headers only", reply=_reply, errors=(404,), public=True),
    }

    def __init__(self, webui: WebUi):
        self._webui = webui

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in ASSETS:  # the page is served at / only
            raise not_found(f"no web page file {name!r}")
        self._webui.send(resp, name)

    on_head = on_get
