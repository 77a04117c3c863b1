"""--gpu-memory-utilization and --kv-memory: the memory budget the KV pool is sized from
(runtime/kv_budget.py has the arithmetic; docs/serve.md the policy)."""

import click

from rfc.cli.errors import fail


def memory_options(fn):
    fn = click.option(
        "--kv-memory", envvar="RFC_KV_MEMORY", default=None, metavar="BYTES|FRACTION",
        help="cpu/ref devices: KV-cache budget, a size (8GiB, 512M) or a fraction of host memory (0.25). "
             "Default: 0.25 of host memory, at most 4 full contexts per model.")(fn)
    fn = click.option(
        "--gpu-memory-utilization", envvar="RFC_GPU_MEMORY_UTILIZATION", default="0.90", show_default=True, metavar="F",
        help="GPU devices: fraction of device memory (0 < F <= 1) this server may use; the KV cache gets what the "
             "weights, activations and other processes leave of it.")(fn)
    return fn


def parse_memory_options(gpu_memory_utilization: str, kv_memory: str | None) -> tuple[float, float | int | None]:
    """The validated values, or a one-line error naming the flag (exit status 2)."""
    from rfc.runtime.kv_budget import parse_kv_memory, parse_utilization

    try:
        return parse_utilization(gpu_memory_utilization), (parse_kv_memory(kv_memory) if kv_memory is not None else None)
    except ValueError as e:
        fail(str(e))
