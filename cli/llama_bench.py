"""Runs llama.cpp's `llama-bench` for `rfc bench --llama-bench` (never a dependency: the user names the
binary) and reads its JSON output."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path


class LlamaBenchError(RuntimeError):
    """llama-bench failed or printed something that is not its JSON report."""


@dataclass(frozen=True)
class LlamaFigures:
    prefill: dict[int, float]  # prompt length -> tokens per second
    decode: float  # tokens per second at batch 1
    build: str


def run_llama_bench(
    binary: Path,
    gguf: Path,
    threads: int,
    prefill_lengths: tuple[int, ...],
    gen: int,
    env: dict[str, str] | None = None,
    timeout_s: float = 1800,
    cache_types: tuple[str, str] = ("f16", "f16"),
) -> LlamaFigures:
    """One llama-bench run. `env`: the environment the user started rfc with. rfc sets
    OMP_WAIT_POLICY=PASSIVE for its own kernels; inherited, it makes llama.cpp's OpenMP
    threads sleep at every barrier and cut its decode from 43 to 26 tok/s (1.1B Q4_0, 2
    threads), which flattered every ratio rfc bench printed before this was passed.
    `cache_types`: rfc's (K, V) cache types by llama.cpp's names, so both sides store the same
    cache (llama-bench's -ctk/-ctv; the f16 default is not passed)."""
    cmd = [
        str(binary),
        "-m",
        str(gguf),
        "-t",
        str(threads),
        "-r",
        "1",
        "-o",
        "json",
        "-p",
        ",".join(map(str, prefill_lengths)),
        "-n",
        str(gen),
    ]
    if cache_types != ("f16", "f16"):
        cmd += ["-ctk", cache_types[0], "-ctv", cache_types[1]]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamaBenchError(f"cannot run {binary}: {e}") from e
    if proc.returncode != 0:
        raise LlamaBenchError(f"{binary} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    try:
        rows = json.loads(proc.stdout)
        prefill = {int(r["n_prompt"]): float(r["avg_ts"]) for r in rows if r["n_gen"] == 0}
        decode = next(float(r["avg_ts"]) for r in rows if r["n_prompt"] == 0 and r["n_gen"] > 0)
        build = f"{rows[0].get('build_commit', '?')} ({rows[0].get('cpu_info', '?')})"
        if rows[0].get("build_commit") in (None, "unknown"):
            build = f"{_version_note(binary) or 'unknown build'} ({rows[0].get('cpu_info', '?')})"
    except (ValueError, KeyError, TypeError, StopIteration) as e:
        raise LlamaBenchError(f"unexpected llama-bench output: {e}") from e
    return LlamaFigures(prefill, decode, build)


def _version_note(binary: Path) -> str | None:
    """The line tools/build_llama_cpp.sh leaves beside the binaries (which sdist it built)."""
    try:
        return (binary.parent / "LLAMA_CPP_VERSION").read_text(encoding="utf-8").strip()[:200] or None
    except OSError:
        return None
