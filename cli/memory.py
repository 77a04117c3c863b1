"""--gpu-memory-utilization and --kv-memory: the memory budget the KV pool is sized from
(runtime/engine/kv_budget.py has the arithmetic; docs/serve.md the policy); --ctx-size: the
context served, which sets what one full context costs."""

from collections.abc import Mapping
from pathlib import Path

import click

from rfc.cli.errors import fail


def memory_options(fn):
    fn = click.option(
        "--kv-memory",
        envvar="RFC_KV_MEMORY",
        default=None,
        metavar="BYTES|FRACTION",
        help="cpu/ref devices: KV-cache budget, a size (8GiB, 512M) or a fraction of host memory (0.25). "
        "Default: 0.25 of host memory, at most 4 full contexts per model.",
    )(fn)
    fn = click.option(
        "--gpu-memory-utilization",
        envvar="RFC_GPU_MEMORY_UTILIZATION",
        default="0.90",
        show_default=True,
        metavar="F",
        help="GPU devices: fraction of device memory (0 < F <= 1) this server may use; the KV cache gets what the "
        "weights, activations and other processes leave of it.",
    )(fn)
    return fn


def parse_memory_options(gpu_memory_utilization: str, kv_memory: str | None) -> tuple[float, float | int | None]:
    """The validated values, or a one-line error naming the flag (exit status 2)."""
    from rfc.runtime.engine.kv_budget import parse_kv_memory, parse_utilization

    try:
        return parse_utilization(gpu_memory_utilization), (
            parse_kv_memory(kv_memory) if kv_memory is not None else None
        )
    except ValueError as e:
        fail(str(e))


def ctx_size_option(several_models: bool):
    more = (
        " With several models, each serves min(N, its own context length); N may not exceed the longest."
        if several_models
        else ""
    )
    return click.option(
        "--ctx-size",
        "--max-model-len",
        "ctx_size",
        envvar="RFC_CTX_SIZE",
        default=None,
        type=click.IntRange(min=1),
        metavar="N",
        help="Serve at most N tokens per sequence (prompt + generated), at most the model's context length "
        f"(the default), so a long-context model fits a smaller KV budget.{more}",
    )


def check_ctx_size(ctx_size: int | None, bundles: Mapping[str, Path]) -> None:
    """Exit status 2, one line, when --ctx-size exceeds the context of every model (by id)."""
    from rfc.artifacts import BundleError
    from rfc.artifacts.bundle import read_plan
    from rfc.runtime.model.loader import ContextSizeError, check_ctx_size as check

    if ctx_size is None:
        return
    try:
        check(ctx_size, {name: read_plan(path).context_length for name, path in bundles.items()})
    except (BundleError, ContextSizeError) as e:
        fail(str(e))
