"""The compile pipeline: read GGUF → spec → plan → tokenizer → weights → kernels → bundle.

`compile_model` is the one entry point; each stage is a module of its own.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rfc.artifacts import BundleError
from rfc.artifacts.hashing import sha256_file
from rfc.artifacts.bundle import CHAT_TEMPLATE_FILE, TOKENIZER_FILE, BundleWriter
from rfc.artifacts.layout import LAYOUT_FILE, WEIGHTS_FILE, pack_layout
from rfc.artifacts.plan import PLAN_FILE, pack_plan
from rfc.artifacts.provenance import PROVENANCE_FILE, dump_provenance, provenance_statement
from rfc.compiler.codegen import CodegenInput, build_target
from rfc.compiler.codegen.cache import BuildCache, default_cache_dir
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel, read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from rfc.compiler.targets import Target, parse_targets
from rfc.compiler.tokenizer import TokenizerError, build_tokenizer, rerank_layout, strip_spec, unigram_spec
from rfc.compiler.weight_plan import WeightPlan, plan_weights
from rfc.compiler.weights import write_weights

DEMO_MODEL = "stories260K.gguf"


@dataclass(frozen=True)
class CompileOptions:
    model: Path
    out_dir: Path
    targets: tuple[str, ...] = ("cpu",)
    force: bool = False
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no build cache
    # A Jinja chat template that replaces the GGUF's own (llama-server's --chat-template-file),
    # for a model whose file has none or a broken one.
    chat_template: Path | None = None
    # SOURCE_DATE_EPOCH of the build, read by the CLI: recorded in the provenance, nothing else.
    source_date_epoch: int | None = None
    # The cpu library also exports each op's kernel alone, for the kernel tests' op-by-op device
    # (tests/kernels/kit/cpu.py); a bundle's library exports what the runtime calls, nothing else.
    op_exports: bool = False


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    manifest: dict[str, Any]
    size: int
    seconds: float


class Progress:
    """Callbacks the CLI hooks a progress bar onto; silent by default."""

    def start(self, total: int) -> None: ...

    def advance(self, name: str) -> None: ...

    def finish(self) -> None: ...


def demo_model_path() -> Path:
    return Path(str(resources.files("rfc.compiler.demo").joinpath(DEMO_MODEL)))


def compile_model(options: CompileOptions, progress: Progress | None = None) -> CompileResult:
    progress = progress or Progress()
    started = time.monotonic()
    targets = parse_targets(options.targets)
    model = read_gguf(options.model)
    spec = build_spec(model)
    plan = spec.plan
    try:
        tokenizer_json, tok_info = build_tokenizer(model.metadata)
        # a reranker's pair layout (runtime/server/rerank.py); only theirs: other manifests keep their bytes
        rerank = {"rerank": rerank_layout(model.metadata)} if plan.output_scores else {}
        # a Unigram vocabulary's search (runtime/model/ugm.py); likewise only theirs
        unigram = {"unigram": ugm} if (ugm := unigram_spec(model.metadata)) else {}
        # special tokens llama.cpp strips ASCII whitespace beside (runtime/model/special_strip.py); only theirs
        strip = {"strip": strips} if (strips := strip_spec(model.metadata)) else {}
    except TokenizerError as e:
        raise CompileError(f"{model.path.name}: {e}") from e
    try:
        writer = BundleWriter(options.out_dir, force=options.force)
    except BundleError as e:
        raise CompileError(str(e)) from e
    with writer:
        writer.write_bytes(TOKENIZER_FILE, tokenizer_json.encode())
        chat_template = _chat_template(options, model)
        if chat_template:
            writer.write_bytes(CHAT_TEMPLATE_FILE, chat_template.encode("utf-8", "replace"))
        writer.write_bytes(PLAN_FILE, pack_plan(plan))
        progress.start(len(spec.weights))
        weights = plan_weights(spec, targets)
        layout = write_weights(model, weights.uses, writer.path(WEIGHTS_FILE), progress.advance)
        progress.finish()
        writer.write_bytes(LAYOUT_FILE, pack_layout(layout))
        cache = BuildCache(options.cache_dir) if options.cache_dir is not None else None
        target_entries = _build_targets(targets, spec, weights, layout, writer, cache, options.op_exports)
        body = {
            "source": {"file": model.path.name, "sha256": sha256_file(model.path), "size": model.size},
            "model": _model_section(model, spec),
            "targets": target_entries,
            "tokenizer": {"file": TOKENIZER_FILE, **_jsonable(asdict(tok_info)), **rerank, **unigram, **strip},
            "chat_template": CHAT_TEMPLATE_FILE if chat_template else None,
        }
        files = writer.file_map()
        writer.write_bytes(PROVENANCE_FILE, dump_provenance(_provenance(options, files, body)))
        manifest = writer.commit({**body, "provenance": PROVENANCE_FILE}, known=files)
    size = sum(f["size"] for f in manifest["files"].values())
    return CompileResult(options.out_dir, manifest, size, time.monotonic() - started)


def _provenance(options: CompileOptions, files: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The in-toto/SLSA statement of this build (artifacts/provenance.py): inputs and options
    by content, never by path, so two builds from the same inputs write the same bytes."""
    chosen = {
        "reference_only": not body["targets"],
        "chat_template_file_sha256": sha256_file(options.chat_template) if options.chat_template else None,
    }
    return provenance_statement(files, body["source"], body["targets"], chosen, options.source_date_epoch)


def _chat_template(options: CompileOptions, model: GGUFModel) -> str | None:
    if options.chat_template is None:
        template = model.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None  # a template is text; nothing else is used
    try:
        return options.chat_template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CompileError(f"cannot read the chat template {options.chat_template}: {e}") from None


def _build_targets(targets: list[Target], *args) -> list[dict[str, Any]]:
    """Each target's manifest entry, in the given order. Several targets build at once, one
    thread each up to the host's cores: most of a build is its toolchain's process (cc, nvcc,
    hipcc), which runs beside the others; each target writes its own files (kernels/<target>/),
    so the bundle holds the same bytes as built one after another."""
    if len(targets) < 2:
        return [_build_target(t, *args) for t in targets]
    with ThreadPoolExecutor(max_workers=min(len(targets), os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_build_target, t, *args) for t in targets]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:  # a failed target ends the compile: the ones not started never start
                f.cancel()
            raise


def _build_target(
    target: Target,
    spec: ModelSpec,
    weights: WeightPlan,
    layout,
    writer: BundleWriter,
    cache: BuildCache | None,
    op_exports: bool,
) -> dict[str, Any]:
    entry = build_target(
        CodegenInput(target, spec.hparams, spec.plan, layout, writer, cache, weights.weight_maps[target], op_exports)
    )
    return {"name": target.name, "family": target.family.value, "wave_size": target.wave_size, **entry}


def _model_section(model: GGUFModel, spec: ModelSpec) -> dict[str, Any]:
    formats: dict[str, int] = {}
    params = 0
    for t in spec.sources.values():
        formats[t.format] = formats.get(t.format, 0) + 1
        n = 1
        for d in t.shape:
            n *= d
        params += n
    return {
        "name": spec.hparams.name,
        "architecture": spec.hparams.architecture,
        "hparams": spec.hparams.as_dict(),
        "parameter_count": params,
        "formats": dict(sorted(formats.items())),
        "gguf_metadata": _scalar_metadata(model.metadata),
    }


def _scalar_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """GGUF metadata worth showing (GET /models): scalars, without the tokenizer's arrays."""
    out = {}
    for k, v in sorted(metadata.items()):
        if k.startswith("tokenizer.") or isinstance(v, (list, tuple, dict)):
            continue
        out[k] = _jsonable(v)
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars become Python numbers, tuples become lists."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value
