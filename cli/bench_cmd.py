"""`rfc bench MODEL`: prefill, decode (batch 1 and aggregate), TTFT, load time, peak RSS and
the machine's read bandwidth, as a markdown table; with --llama-bench, llama.cpp's
llama-bench on the same GGUF, interleaved run by run, and the ratios."""

import os
import time
from pathlib import Path

import click

from rfc.cli.errors import fail
from rfc.cli.cache_types import cache_type_options, parse_cache_types
from rfc.cli.threads import apply_threads, threads_option


def _lengths(ctx, param, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("a comma-separated list of positive integers") from None
    if not out or min(out) < 1:
        raise click.BadParameter("a comma-separated list of positive integers")
    return out


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path, exists=True))
@click.option("--device", default="auto", show_default=True, help="auto, ref, cpu, hip or cuda.")
@threads_option
@cache_type_options
@click.option(
    "--prefill", "prefill_lengths", default="128,512", show_default=True, callback=_lengths, help="Prompt lengths."
)
@click.option("--batches", default="1,8,16", show_default=True, callback=_lengths, help="Decode batch sizes.")
@click.option("--gen", default=32, show_default=True, type=click.IntRange(min=1), help="Decode steps per figure.")
@click.option(
    "--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Interleaved runs; medians are reported."
)
@click.option(
    "--llama-bench",
    "llama_bench",
    envvar="RFC_LLAMA_BENCH",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="llama.cpp's llama-bench binary: run it on the same GGUF between rfc's runs and print ratios.",
)
@click.option(
    "--gguf",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The GGUF for llama-bench when MODEL is a bundle.",
)
@click.option(
    "--chart",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also draw a PNG bar chart here (needs matplotlib: pip install 'rfc[bench]').",
)
@click.option(
    "--arch",
    "targets",
    multiple=True,
    metavar="TARGET",
    help="For a GGUF: compile for this target (default cpu; repeatable).",
)
@click.option(
    "--cache-dir",
    envvar="RFC_CACHE_DIR",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="rfc's cache (default: ~/.cache/rfc); a GGUF is compiled into DIR/bundles.",
)
def bench_cmd(
    model,
    device,
    compute_threads,
    cache_type_k,
    cache_type_v,
    prefill_lengths,
    batches,
    gen,
    repeat,
    llama_bench,
    gguf,
    chart,
    targets,
    cache_dir,
):
    """Measure MODEL (a GGUF, compiled into the cache on first use, or a bundle)."""
    user_env = dict(os.environ)  # llama-bench runs in this, not in what rfc sets for itself
    threads = apply_threads(compute_threads)  # before the runtime (numpy, kernels) loads
    cache_types = parse_cache_types(cache_type_k, cache_type_v)
    from rfc.artifacts import BundleError
    from rfc.cli.gguf_cache import is_gguf
    from rfc.cli.model_args import bundle_paths
    from rfc.runtime.engine import bench
    from rfc.runtime.devices import DeviceError
    from rfc.cli.llama_bench import LlamaBenchError, run_llama_bench
    from rfc.runtime.engine.assemble import LoadOptions, load_model

    gguf = model if is_gguf(model) else gguf
    if llama_bench is not None and gguf is None:
        fail("--llama-bench needs the GGUF: give MODEL as a .gguf, or --gguf with a bundle")
    (bundle,) = bundle_paths([model], targets, None, cache_dir)
    config = bench.BenchConfig(
        prefill_lengths=prefill_lengths,
        decode_batches=batches,
        gen=gen,
        repeat=repeat,
        ttft_prompt=max(prefill_lengths),
    )
    started = time.perf_counter()
    try:
        loaded = load_model(bundle, LoadOptions(device=device, threads=threads.threads, cache_types=cache_types))
    except (BundleError, DeviceError, ValueError) as e:  # ValueError: a cache type the model cannot take, a budget
        fail(str(e))
    load_s = time.perf_counter() - started
    say = lambda line: click.echo(f"rfc bench: {line}", err=True)  # noqa: E731
    say(
        f"{bundle.name} on {loaded.device_choice.name}, {threads.describe()}, KV cache {cache_types.describe()}, "
        f"loaded in {load_s:.2f} s"
    )

    result, llama = bench.BenchResult(), []
    for run in range(repeat):
        say(f"run {run + 1}/{repeat}")
        bench.run_once(loaded, config, result, say)
        if llama_bench is not None:
            try:
                llama.append(
                    run_llama_bench(
                        llama_bench,
                        gguf,
                        threads.threads,
                        prefill_lengths,
                        gen,
                        env=user_env,
                        cache_types=(cache_types.k.value, cache_types.v.value),
                    )
                )
            except LlamaBenchError as e:
                fail(str(e), status=1)  # the comparison tool failed, not the user's input
            say(f"llama-bench: prefill {llama[-1].prefill}, decode {llama[-1].decode:.1f} tok/s")
    bandwidth = bench.read_bandwidth_gbs(threads.threads)
    weight_bytes = _weight_bytes(loaded)
    table = _table(result, llama, config, load_s, bench.peak_rss_mib(), bandwidth, weight_bytes)
    click.echo(
        f"\n{bundle.name} · {loaded.device_choice.name} · {threads.describe()} · median of {repeat} runs"
        + (f" · llama.cpp {llama[0].build}" if llama else "")
        + f"\n\n{table}"
    )
    if chart is not None:
        _chart(chart, result, llama, config, bundle.name)


def _weight_bytes(loaded) -> int:
    weights = loaded.bundle.weights
    return len(weights) if weights is not None else 0


def _table(result, llama, config, load_s, rss_mib, bandwidth_gbs, weight_bytes) -> str:
    import statistics

    def ratio(ours: float, theirs: float | None) -> str:
        return f"{ours / theirs:.2f}" if theirs else ""

    def num(value: float | None) -> str:
        return f"{value:.1f}" if value else ""

    rows = ["| figure | rfc | llama.cpp | ratio |", "|---|--:|--:|--:|"]
    for n in config.prefill_lengths:
        ours = result.median(f"prefill_{n}")
        theirs = statistics.median(run.prefill[n] for run in llama) if llama else None
        rows.append(f"| prefill {n} (tok/s) | {ours:.1f} | {num(theirs)} | {ratio(ours, theirs)} |")
    for b in config.decode_batches:
        ours = result.median(f"decode_{b}")
        theirs = statistics.median(run.decode for run in llama) if llama and b == 1 else None
        label = "decode batch 1 (tok/s)" if b == 1 else f"decode batch {b}, aggregate (tok/s)"
        rows.append(f"| {label} | {ours:.1f} | {num(theirs)} | {ratio(ours, theirs)} |")
    rows.append(f"| TTFT, {config.ttft_prompt}-token prompt (s) | {result.median('ttft'):.3f} | | |")
    rows.append(f"| TTFT, the same prompt again: prefix cache (s) | {result.median('ttft_cached'):.3f} | | |")
    rows.append(f"| load time (s) | {load_s:.2f} | | |")
    rows.append(f"| peak RSS (MiB) | {rss_mib:.0f} | | |")
    rows.append(f"| read bandwidth, measured (GB/s) | {bandwidth_gbs:.1f} | | |")
    if weight_bytes:
        streamed = result.median("decode_1") * weight_bytes / 1e9
        rows.append(
            f"| decode batch 1 × weight bytes (GB/s) | {streamed:.1f} | | {streamed / bandwidth_gbs:.2f} of measured |"
        )
    return "\n".join(rows)


def _chart(path: Path, result, llama, config, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        click.echo("rfc bench: --chart needs matplotlib (pip install 'rfc[bench]'); no chart drawn", err=True)
        return
    import statistics

    labels = [f"pp{n}" for n in config.prefill_lengths] + [f"tg b{b}" for b in config.decode_batches]
    ours = [result.median(f"prefill_{n}") for n in config.prefill_lengths] + [
        result.median(f"decode_{b}") for b in config.decode_batches
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="rfc")
    if llama:
        theirs = [statistics.median(run.prefill[n] for run in llama) for n in config.prefill_lengths]
        theirs += [statistics.median(run.decode for run in llama) if b == 1 else 0 for b in config.decode_batches]
        ax.bar([x + 0.2 for x in xs], theirs, width=0.4, label="llama.cpp")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    click.echo(f"rfc bench: chart written to {path}", err=True)
