"""`rfc push` / `rfc pull` / `rfc serve REF`: bundles in OCI registries, through the oras SDK
(its request and auth machinery: docker config, credential helpers, bearer tokens). This
module speaks to a registry (references, requests with their timeouts and bounds, pushing);
cli/oci_pull.py pulls into the cache."""

import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import read_manifest, verify_files
from rfc.artifacts.hashing import sha256_bytes
from rfc.artifacts.manifest import MANIFEST_FILE
from rfc.artifacts.provenance import PROVENANCE_FILE
from rfc.artifacts.signature import unlisted_files
from rfc.cli import oci_layout as layout

_REFERENCE = re.compile(
    r"(?P<registry>localhost(?::\d+)?|\[[0-9A-Fa-f:.]+\](?::\d+)?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d+)?|[A-Za-z0-9-]+:\d+)"
    r"/(?P<repository>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_CHUNK = 1 << 20
_MONOLITHIC_MAX = 64 << 20  # larger blobs go up in chunks
_ATTEMPTS = 3
_MAX_REPLY = 1 << 20  # any registry reply other than a manifest or a blob (errors, upload answers)


class OciError(Exception):
    """A registry, reference or pulled artifact problem; the message is one line."""


class OciNotFound(OciError):
    """The registry holds no artifact by that name."""


class OciRefused(OciError):
    """What the registry sent is refused: not an rfc bundle, damaged, larger than its kind may
    be, or a file that does not hash to its digest (the artifact's fault, not the network's)."""


class OciBadReference(OciError):
    """The reference or its options cannot be used as given (a port out of range, plain HTTP
    to another machine): the caller's to fix."""


DISTRIBUTE_EXTRA = "registries need the distribute extra: pip install 'rfc[distribute]'"


# How far a pull is, in Ollama's words (its /api/pull stream): (status, digest, total, completed).
Progress = Callable[[str, "str | None", "int | None", "int | None"], None]


@dataclass(frozen=True)
class Reference:
    """registry/repository[:tag][@sha256:...]; the registry is always named (no Docker Hub
    shorthand: `rfc serve models/x` stays a path)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What the registry's manifest URL names: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (
            f"{self.registry}/{self.repository}"
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


def parse_reference(text: str) -> Reference | None:
    m = _REFERENCE.fullmatch(text)
    if m is None:
        return None
    return Reference(m["registry"], m["repository"], m["tag"], m["digest"])


def is_reference(text: str) -> bool:
    """A model argument names a registry artifact when it is no existing path and reads as a
    reference with a registry host (`localhost:5000/models/x:tag`, `ghcr.io/org/x@sha256:...`)."""
    return not os.path.lexists(text) and parse_reference(text) is not None


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry[1 : registry.index("]")]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PULL_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class RegistryOptions:
    """`--insecure`: plain HTTP, for a registry on this machine only. `docker_config`: an
    extra docker config.json (the CLI passes $DOCKER_CONFIG/config.json; ~/.docker/config.json
    is always read, with its credHelpers and credsStore). `timeout_s` (--registry-timeout):
    the connect timeout and the read timeout (the longest silence) of every registry request.
    `pull_timeout_s` (--pull-timeout): the whole of one pull, manifest to last byte."""

    insecure: bool = False
    docker_config: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S

    def __post_init__(self) -> None:
        if not (0 < self.timeout_s <= 86400 and 0 < self.pull_timeout_s <= 7 * 86400):
            raise ValueError("registry timeouts must be positive (at most a day per request, a week per pull)")


def registry_port(registry: str) -> int | None:
    """The port a registry host names (None: the scheme's default)."""
    tail = registry.rsplit("]", 1)[-1]
    return int(tail.rsplit(":", 1)[1]) if ":" in tail else None


class Registry:
    """One registry host, spoken to through oras's session and auth backend."""

    def __init__(self, reference: Reference, options: RegistryOptions, deadline: float | None = None):
        port = registry_port(reference.registry)
        if port is not None and not 0 < port < 65536:
            raise OciBadReference(f"{reference.registry}: a registry's port is 1 to 65535, not {port}")
        if options.insecure and not is_loopback(reference.registry):
            raise OciBadReference(
                f"--insecure (plain HTTP) is only for a registry on this machine, not {reference.registry}"
            )
        try:
            import oras.container
            import oras.provider
        except ImportError:
            raise OciError(DISTRIBUTE_EXTRA) from None

        self.options = options
        # time.monotonic() by which everything must be done (None: each request's own timeout)
        self.deadline = deadline
        self.base = f"{'http' if options.insecure else 'https'}://{reference.registry}/v2/{reference.repository}"
        self._oras = oras.provider.Registry(hostname=reference.registry, insecure=options.insecure)
        self._oras.auth = _basic_or_token_auth(self._oras.auth)
        self._container = oras.container.Container(f"{reference.registry}/{reference.repository}:x")
        configs = [str(options.docker_config)] if options.docker_config and options.docker_config.is_file() else None
        self._oras.auth.load_configs(self._container, configs=configs)
        # oras's do_request retries a dead connection for two minutes; one call here is one try
        self._request = oras.provider.Registry.do_request.__wrapped__
        # oras passes no timeout: every request of its session (token fetches too) gets ours
        session = self._oras.session
        send = session.request
        session.request = lambda method, url, **kw: send(method, url, **{**kw, "timeout": self.timeout()})

    def timeout(self) -> float:
        """Connect and read timeout for the next request: --registry-timeout, or what is left
        of the pull's deadline if that is less."""
        if self.deadline is None:
            return self.options.timeout_s
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OciError(f"the pull took longer than --pull-timeout ({self.options.pull_timeout_s:g} s): stopped")
        return min(self.options.timeout_s, left)

    def check_deadline(self) -> None:
        self.timeout()

    def request(self, method: str, url: str, *, headers: dict | None = None, data: Any = None, stream: bool = False):
        import requests

        for attempt in range(_ATTEMPTS):
            try:
                # always streamed: a reply the caller reads whole is read here, _MAX_REPLY at most
                r = self._request(
                    self._oras,
                    url if url.startswith("http") else self.base + url,
                    method,
                    data=data,
                    headers=dict(headers or {}),
                    stream=True,
                )
                if not stream:
                    with r:
                        body = self._read(r, _MAX_REPLY + 1)
                    if len(body) > _MAX_REPLY:
                        raise OciRefused(
                            f"the registry answered {method} {url[:120]} with more than {_MAX_REPLY >> 10} KiB: refused"
                        )
                    r._content, r._content_consumed = body, True
                return r
            except requests.exceptions.Timeout:  # (a connect timeout is also a ConnectionError: not retried)
                raise OciError(
                    f"the registry at {self.base.split('/v2/')[0]} did not answer {method} {url[:120]} "
                    f"within {self.options.timeout_s:g} s (--registry-timeout)"
                ) from None
            except requests.exceptions.ConnectionError as e:
                if attempt == _ATTEMPTS - 1:
                    raise OciError(
                        f"cannot reach the registry at {self.base.split('/v2/')[0]}: {_first_line(e)}"
                    ) from None
                time.sleep(0.5 * (attempt + 1))
            except (requests.exceptions.RequestException, ValueError) as e:
                raise OciError(f"registry request {method} {url[:120]} failed: {_first_line(e)}") from None

    def get_manifest(self, ref: str, accept: str = layout.OCI_MANIFEST) -> tuple[bytes, str] | None:
        """(bytes, sha256 digest) of a manifest, None when the registry has none by that name."""
        r = self.request("GET", f"/manifests/{ref}", headers={"Accept": accept}, stream=True)
        with r:
            if r.status_code == 404:
                return None
            _check(r, f"manifest {ref}")
            told_size = _content_length(r)
            if told_size is not None and told_size > layout.MAX_MANIFEST_BYTES:
                raise OciRefused(
                    f"the manifest {ref} is {told_size} bytes, more than the "
                    f"{layout.MAX_MANIFEST_BYTES >> 20} MiB an OCI manifest may be: refused"
                )
            data = self._read(r, layout.MAX_MANIFEST_BYTES + 1)
        if len(data) > layout.MAX_MANIFEST_BYTES:
            raise OciRefused(
                f"the manifest {ref} is larger than the {layout.MAX_MANIFEST_BYTES >> 20} MiB an OCI "
                f"manifest may be: refused"
            )
        digest = "sha256:" + sha256_bytes(data)
        told = r.headers.get("Docker-Content-Digest")
        if ref.startswith("sha256:") and digest != ref:
            raise OciRefused(f"the registry sent a manifest whose digest is {digest}, not the {ref} asked for: refused")
        if told and told.startswith("sha256:") and told != digest:
            raise OciRefused(f"the registry says the manifest is {told[:80]} but its bytes hash to {digest}: refused")
        return data, digest

    def _read(self, r, limit: int) -> bytes:
        """At most `limit` bytes of a streamed body, the pull's deadline checked between reads."""
        out = bytearray()
        for chunk in self._chunks(r):
            out += chunk
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    def _chunks(self, r):
        """A streamed body as it arrives: each read returns what one socket read gave (never
        waiting to fill a buffer), so the deadline is checked at least once per read timeout."""
        import requests
        import urllib3

        read = getattr(r.raw, "read1", None)
        try:
            if read is None:  # (urllib3 before 2.3)
                yield from r.iter_content(_CHUNK)
                return
            while True:
                self.check_deadline()
                chunk = read(_CHUNK, decode_content=True)
                if not chunk:
                    return
                yield chunk
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            timed_out = isinstance(e, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
            raise OciError(
                f"the registry at {self.base.split('/v2/')[0]} "
                + (
                    f"went silent for {self.options.timeout_s:g} s (--registry-timeout)"
                    if timed_out
                    else f"broke off a download: {_first_line(e)}"
                )
            ) from None

    def put_manifest(self, ref: str, data: bytes, media_type: str):
        r = self.request("PUT", f"/manifests/{ref}", data=data, headers={"Content-Type": media_type})
        _check(r, f"manifest {ref}")
        return r

    def has_blob(self, digest: str) -> bool:
        r = self.request("HEAD", f"/blobs/{digest}")
        return r.status_code == 200

    def upload_blob(self, source: Path | bytes, digest: str, size: int) -> None:
        r = self.request("POST", "/blobs/uploads/", headers={"Content-Length": "0"})
        _check(r, "blob upload")
        location = self._location(r)
        if isinstance(source, bytes) or size <= _MONOLITHIC_MAX:
            # bytes, not a file object: a request answered 401 is sent again with credentials,
            # and a file object would be sent again empty
            body = source if isinstance(source, bytes) else Path(source).read_bytes()
            r = self.request(
                "PUT",
                _with_digest(location, digest),
                data=body,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        else:
            with open(source, "rb") as f:
                start = 0
                while chunk := f.read(16 << 20):
                    r = self.request(
                        "PATCH",
                        location,
                        data=chunk,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(len(chunk)),
                            "Content-Range": f"{start}-{start + len(chunk) - 1}",
                        },
                    )
                    _check(r, "blob chunk")
                    location = self._location(r)
                    start += len(chunk)
            r = self.request("PUT", _with_digest(location, digest), headers={"Content-Length": "0"})
        _check(r, f"blob {digest[:19]}")

    def download_blob(
        self, digest: str, size: int, partial: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """Into `partial`, resuming what it already holds; raises unless the whole file then
        hashes to `digest`. `progress` hears the bytes held after each chunk."""
        h = hashlib.sha256()
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        with open(partial, "ab") as out:
            with open(partial, "rb") as old:
                while chunk := old.read(_CHUNK):
                    h.update(chunk)
            if have < size:
                r = self.request(
                    "GET", f"/blobs/{digest}", headers={"Range": f"bytes={have}-"} if have else None, stream=True
                )
                with r:
                    if r.status_code == 200 and have:  # the registry ignored the range: start over
                        out.truncate(0)
                        out.seek(0)
                        h, have = hashlib.sha256(), 0
                    elif r.status_code not in (200, 206):
                        _check(r, f"blob {digest[:19]}")
                    for chunk in self._chunks(r):
                        have += len(chunk)
                        if have > size:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        if progress is not None:
                            progress(have)
        if have > size:
            partial.unlink(missing_ok=True)
            raise OciRefused(f"blob {digest} is longer than the {size} bytes its descriptor says: refused")
        if have != size or "sha256:" + h.hexdigest() != digest:
            partial.unlink(missing_ok=True)  # a wrong prefix must not be resumed again
            raise OciRefused(f"blob {digest} arrived as {have} bytes hashing to sha256:{h.hexdigest()}: refused")

    def _location(self, r) -> str:
        loc = r.headers.get("Location", "")
        if not loc:
            raise OciError("the registry opened an upload without a Location")
        return loc if loc.startswith("http") else self.base.split("/v2/")[0] + loc


def _basic_or_token_auth(auth):
    """oras's token backend with one addition: a registry that challenges with HTTP Basic
    (distribution with htpasswd, many on-premises registries) gets the docker config's
    credentials as Basic auth; bearer-token registries go through oras's token flow."""
    from oras.auth.token import TokenAuth

    class BasicOrTokenAuth(TokenAuth):
        def authenticate_request(self, original, headers, refresh=False):
            challenge = original.headers.get("Www-Authenticate", "")
            if challenge.lower().startswith("basic"):
                # without credentials the retry gets the same 401, which the caller reports
                creds = getattr(self, "_basic_auth", None)
                return {**(headers or {}), **({"Authorization": f"Basic {creds}"} if creds else {})}, True
            return super().authenticate_request(original, headers, refresh)

    replacement = BasicOrTokenAuth()
    replacement.session, replacement.prefix, replacement._tls_verify = auth.session, auth.prefix, auth._tls_verify
    return replacement


@dataclass
class PushResult:
    digest: str
    uploaded: list[str] = field(default_factory=list)  # bundle paths whose layers went up
    reused: list[str] = field(default_factory=list)  # already in the registry
    referrer: str | None = None  # the provenance artifact's digest


def push_bundle(root: Path, reference: Reference, options: RegistryOptions) -> PushResult:
    """Pushes a bundle that verifies (hashes, nothing unlisted) as one artifact, tagged as
    `reference` says; then its provenance as a referrer."""
    root = Path(root)
    registry = Registry(reference, options)  # (first: a refused reference or no oras says so before any hashing)
    manifest = read_manifest(root)
    problems = verify_files(root, manifest) + [
        f"{rel}: not listed in the manifest" for rel in unlisted_files(root, manifest)
    ]
    if problems:
        raise BundleError(f"will not push {root}: " + "; ".join(problems[:5]))
    manifest_bytes = (root / MANIFEST_FILE).read_bytes()
    signature = layout.signature_bytes(root)
    layers = layout.bundle_layers(manifest, manifest_bytes, signature)
    config = layout.model_config(manifest, layers)
    artifact = layout.artifact_manifest(manifest, config, layers, signature is not None)
    result = PushResult(digest="sha256:" + sha256_bytes(artifact))
    for layer in layers:
        rel = layer["annotations"][layout.FILEPATH]
        if registry.has_blob(layer["digest"]):
            result.reused.append(rel)
            continue
        registry.upload_blob(root / rel, layer["digest"], layer["size"])
        result.uploaded.append(rel)
    _ensure_blob(registry, config)
    registry.put_manifest(reference.tag or result.digest, artifact, layout.OCI_MANIFEST)
    if manifest.get("provenance") == PROVENANCE_FILE:
        result.referrer = _push_provenance(
            registry,
            artifact,
            next(layer for layer in layers if layer["annotations"][layout.FILEPATH] == PROVENANCE_FILE),
            manifest["bundle_id"],
        )
    return result


def _push_provenance(registry: Registry, subject: bytes, provenance: dict[str, Any], bundle: str) -> str:
    _ensure_blob(registry, layout.EMPTY_JSON)
    referrer = layout.provenance_referrer(subject, provenance, bundle)
    digest = "sha256:" + sha256_bytes(referrer)
    r = registry.put_manifest(digest, referrer, layout.OCI_MANIFEST)
    if not r.headers.get("OCI-Subject"):
        # no referrers API (distribution 2.x): list it in the fallback tag's index instead
        tag = layout.referrers_tag("sha256:" + sha256_bytes(subject))
        found = registry.get_manifest(tag, layout.OCI_INDEX)
        try:
            index = json.loads(found[0]) if found else None
        except (ValueError, RecursionError):
            index = None  # not an index: replaced by one
        descriptor = {
            "mediaType": layout.OCI_MANIFEST,
            "digest": digest,
            "size": len(referrer),
            "artifactType": json.loads(referrer)["artifactType"],
            "annotations": json.loads(referrer)["annotations"],
        }
        registry.put_manifest(
            tag, json.dumps(layout.add_referrer(index, descriptor), sort_keys=True).encode(), layout.OCI_INDEX
        )
    return digest


def _ensure_blob(registry: Registry, data: bytes) -> None:
    digest = "sha256:" + sha256_bytes(data)
    if not registry.has_blob(digest):
        registry.upload_blob(data, digest, len(data))


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + digest


def _check(r, what: str) -> None:
    if r.status_code not in (200, 201, 202, 204, 206):
        try:
            body = r.content if r._content_consumed else r.raw.read(_MAX_REPLY, decode_content=True)
            errors = json.loads(body).get("errors") or []
            detail = "; ".join(str(e.get("message", e)) for e in errors if isinstance(e, dict))
        except Exception:  # (only the detail of an error already being reported)
            detail = ""
        if r.status_code in (401, 403):
            detail = (
                detail + "; " if detail else ""
            ) + "log in with `docker login` (rfc reads the docker config and its credential helpers)"
        raise OciError(f"registry answered {r.status_code} for {what}" + (f": {detail[:200]}" if detail else ""))


def _content_length(r) -> int | None:
    try:
        n = int(r.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return n if n >= 0 else None


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
