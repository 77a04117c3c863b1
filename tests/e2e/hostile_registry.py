"""A registry that serves what a test tells it (an http.server on 127.0.0.1, one thread per
connection): crafted OCI manifests, blobs from generators (each byte it manages to send
counted), blobs that drip; and a silent one that accepts connections and never answers.
tests/e2e/test_oci_hostile.py drives `rfc pull` and `/api/pull` against them."""

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rfc.artifacts.bundle import read_manifest
from rfc.cli import oci_layout as layout

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
D = "sha256:" + "ab" * 32


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_of(layers: list[dict], **extra) -> dict:
    """An rfc bundle's OCI manifest around `layers` (the config's blob is never fetched)."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": layout.MODEL_ARTIFACT,
        "config": {"mediaType": layout.MODEL_CONFIG, "digest": D, "size": 2},
        "layers": layers,
        **extra,
    }


def layer(path: str, digest: str = D, size: int = 1, **extra) -> dict:
    return {
        "mediaType": layout.layer_media_type(path),
        "digest": digest,
        "size": size,
        "annotations": {layout.FILEPATH: path, layout.TITLE: path},
        **extra,
    }


class HostileRegistry:
    """`manifests[ref]` is served for /v2/<any repo>/manifests/<ref>; `blobs[digest]` is a
    function giving the blob's chunks. `sent[digest]` counts the bytes written to clients."""

    def __init__(self):
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, Callable[[], Iterator[bytes]]] = {}
        self.sent: Counter = Counter()
        self.requests: list[str] = []
        self.unsized: set[str] = set()  # manifests sent without a Content-Length (read to the end)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self):
                super().setup()
                # a small send buffer: what `sent` counts is close to what the client took
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                registry.requests.append(self.path)
                if self.path == "/v2/":
                    return self._reply(200, b"{}")
                if "/manifests/" in self.path:
                    data = registry.manifests.get(self.path.rsplit("/", 1)[1])
                    if data is None:
                        return self._reply(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}')
                    return self._reply(
                        200, data, OCI_MANIFEST, sized=self.path.rsplit("/", 1)[1] not in registry.unsized
                    )
                if "/blobs/" in self.path:
                    digest = self.path.rsplit("/", 1)[1]
                    chunks = registry.blobs.get(digest)
                    if chunks is None:
                        return self._reply(404, b"{}")
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    try:
                        for chunk in chunks():
                            self.wfile.write(chunk)
                            registry.sent[digest] += len(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return None
                return self._reply(404, b"{}")

            def _reply(self, status: int, body: bytes, content_type: str = "application/json", sized: bool = True):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if sized:
                    self.send_header("Content-Length", str(len(body)))
                if status == 200 and content_type == OCI_MANIFEST:
                    self.send_header("Docker-Content-Digest", digest_of(body))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # (the client stopped reading: what the test wants)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add_manifest(self, tag: str, manifest: dict | bytes) -> str:
        """Served under `tag` and under its digest; returns the digest."""
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        digest = digest_of(data)
        self.manifests[tag] = self.manifests[digest] = data
        return digest

    def add_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = lambda: iter([data])
        return digest

    def add_bundle(self, tag: str, root: Path, extra_layers: tuple[dict, ...] = ()) -> str:
        """A compiled bundle as `rfc push` lays it out, every file a blob."""
        manifest = read_manifest(root)
        manifest_bytes = (root / "manifest.json").read_bytes()
        layers = layout.bundle_layers(manifest, manifest_bytes, layout.signature_bytes(root))
        for entry in layers:
            self.add_blob((root / entry["annotations"][layout.FILEPATH]).read_bytes())
        config = layout.model_config(manifest, layers)
        self.add_blob(config)
        body = json.loads(layout.artifact_manifest(manifest, config, layers, False))
        body["layers"] += list(extra_layers)
        return self.add_manifest(tag, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def zeros(total: int, chunk: int = 64 << 10) -> Callable[[], Iterator[bytes]]:
    """A blob of `total` zero bytes, made as it is sent."""

    def gen() -> Iterator[bytes]:
        left = total
        while left > 0:
            yield b"\0" * min(chunk, left)
            left -= chunk

    return gen


def drip(total: int, every_s: float) -> Callable[[], Iterator[bytes]]:
    """One byte every `every_s` seconds: never silent for long, never done."""

    def gen() -> Iterator[bytes]:
        for _ in range(total):
            yield b"{"
            time.sleep(every_s)

    return gen


class SilentRegistry:
    """A socket that accepts connections (the kernel's backlog) and never answers a byte."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()
