"""What `rfc serve` hands its server for models that arrive while it runs (the runtime neither
speaks to registries nor compiles, runtime/server/model_sources.py): a fetcher that pulls a
registry reference into the OCI cache or takes a bundle directory, and checks the signature
when --require-signature asks; and the re-reading of --models-dir on SIGHUP."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import read_manifest, read_plan
from rfc.artifacts.manifest import MANIFEST_FILE
from rfc.cli.gguf_cache import is_gguf
from rfc.runtime.server.model_sources import FetchError, PullProgress, Rescan
from rfc.runtime.server.models import BrokenModel, KvPages, Origin, discover_bundles, plan_models, sort_out

log = logging.getLogger("rfc.server")


class CliFetcher:
    """Pulls into `cache_dir`/oci as `rfc pull` does, with the docker config's credentials and
    `registry`'s settings (the startup's --insecure, --registry-timeout, --pull-timeout); every
    bundle, pulled or not, must be signed as `trust` says when one is given. A bundle
    directory that a client names must lie inside `models_dir` (--models-dir; None: clients
    may name references only): a path from a request never reaches the rest of the disk."""

    def __init__(self, cache_dir: Path, trust=None, models_dir: Path | None = None, registry=None):
        from rfc.cli.oci_cmd import registry_options

        self._cache_dir = Path(cache_dir)
        self._trust = trust
        self._models_dir = Path(models_dir).resolve() if models_dir is not None else None
        self._registry = registry if registry is not None else registry_options(False)

    def is_reference(self, source: str) -> bool:
        from rfc.cli.oci import is_reference

        return is_reference(source)

    def fetch(
        self, source: str, insecure: bool | None = None, progress: Callable[[PullProgress], None] | None = None
    ) -> Path:
        if self.is_reference(source):
            return self._pull(source, insecure, progress)
        return self.checked(self._directory(self._confined(source)))

    def checked(self, bundle: Path) -> Path:
        """`bundle`, once its signature is checked (when --require-signature asks for one): its
        real path then, the directory the signature was checked on."""
        if self._trust is not None:
            from rfc.cli.signing import SignatureError, verify_signature

            try:
                return verify_signature(bundle, self._trust)
            except SignatureError as e:
                raise FetchError(str(e)) from None
        return bundle

    def remove(self, bundle: Path) -> bool:
        from rfc.cli.oci_pull import remove_bundle

        return remove_bundle(bundle, self._cache_dir)

    def cached(self) -> list[Path]:
        from rfc.cli.oci_pull import cached_bundles

        return cached_bundles(self._cache_dir)

    def _pull(self, source: str, insecure: bool | None, progress: Callable[[PullProgress], None] | None) -> Path:
        from rfc.cli.oci import OciBadReference, OciError, OciNotFound, OciRefused, parse_reference
        from rfc.cli.oci_pull import pull_bundle

        report = None
        if progress is not None:
            report = lambda status, digest, total, completed: progress(PullProgress(status, digest, total, completed))  # noqa: E731
        options = self._registry if insecure is None else replace(self._registry, insecure=insecure)
        try:
            return pull_bundle(parse_reference(source), self._cache_dir, options, report, self._admit)
        except OciNotFound as e:
            raise FetchError(str(e), 404) from None
        except OciRefused as e:  # a damaged, oversized or unsigned artifact: the caller's to fix
            raise FetchError(str(e), 400) from None
        except OciBadReference as e:  # plain HTTP to another machine, a port out of range
            raise FetchError(str(e), 400) from None
        except OciError as e:  # the network, a timeout, the registry's own errors
            raise FetchError(str(e), 502) from None
        except BundleError as e:
            raise FetchError(f"{source}: {e}") from None
        except OSError as e:
            raise FetchError(f"{source}: {e.strerror or e}", 502) from None
        except Exception as e:  # whatever else a registry's answer provokes: one line, never a dead worker
            log.exception("pulling %s failed unexpectedly", source[:200])
            raise FetchError(f"{source}: the pull failed: {type(e).__name__}", 502) from None

    def _admit(self, bundle: Path) -> None:
        """What a pulled bundle passes before it enters the cache: its signature (when one is
        required) and a plan that reads; else the pull is refused and leaves nothing behind."""
        from rfc.cli.oci import OciRefused

        try:
            self.checked(bundle)
            read_plan(bundle, read_manifest(bundle))
        except (FetchError, BundleError) as e:
            raise OciRefused(str(e).replace(str(bundle), "the pulled bundle")) from None

    def _confined(self, source: str) -> Path:
        """The directory a client named, resolved (links too) inside --models-dir; else refused."""
        if self._models_dir is None:
            raise FetchError(
                f"'{source[:80]}' is not a registry reference, and this server has no --models-dir to "
                f"name a bundle directory in"
            )
        path = (self._models_dir / source).resolve()  # (an absolute source stays absolute)
        if path == self._models_dir or self._models_dir not in path.parents:
            raise FetchError(f"'{source[:80]}' is outside --models-dir: name a bundle directory inside it")
        return path

    def _directory(self, path: Path) -> Path:
        source = str(path)
        if is_gguf(path):
            raise FetchError(f"{source} is a GGUF: the server does not compile; `rfc compile` it and name the bundle")
        if not (path / MANIFEST_FILE).is_file():
            raise FetchError(f"{source}: not a bundle directory (no {MANIFEST_FILE}) nor a registry reference")
        return path


def models_dir_rescan(
    models_dir: Path,
    named: Sequence[Path],
    names: Sequence[str | None],
    fetcher: CliFetcher,
    load,
    kv_pages: Sequence[str],
    max_loaded: int | None,
) -> Callable[[], Rescan]:
    """What SIGHUP re-reads: the bundles and *.ref files of `models_dir`, planned beside the
    bundles named on the command line (`named`, whose ids may decide theirs) as at startup."""

    def rescan() -> Rescan:
        from rfc.cli.model_args import model_references

        try:
            refs = model_references(models_dir)
        except SystemExit:  # a .ref file that cannot be read: the reason is on stderr
            raise RuntimeError(f"a *.ref file of {models_dir} cannot be read") from None
        found, broken, verified = [], [], {}
        for source in [str(b) for b in discover_bundles(models_dir)] + refs:
            try:  # (the operator's own directory: its bundles may be links to anywhere, as at startup)
                if fetcher.is_reference(source):  # (pulled with the startup's options: --insecure, timeouts)
                    found.append(fetcher.fetch(source))
                else:
                    found.append(Path(source))
                    verified[found[-1]] = fetcher.checked(found[-1])
            except FetchError as e:
                name = Path(source).name if not fetcher.is_reference(source) else source
                broken.append(BrokenModel(name, Path(name), str(e)))
        given = dict(zip(named, names))
        try:
            good, optional, unreadable = sort_out(list(named) + found, [False] * len(named) + [True] * len(found))
            planned = plan_models(
                good, load, KvPages.parse(kv_pages), [given.get(b) for b in good], optional, max_loaded
            )
        except (BundleError, ValueError) as e:
            raise RuntimeError(str(e)) from None
        # named as found (the ids), served from the directory whose signature was checked
        planned = [replace(s, bundle=verified.get(s.bundle, s.bundle)) for s in planned]
        return Rescan(tuple(s for s in planned if s.origin is Origin.MODELS_DIR), tuple(broken + unreadable))

    return rescan
