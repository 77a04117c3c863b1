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


def run_llama_bench(binary: Path, gguf: Path, threads: int, prefill_lengths: tuple[int, ...], gen: int,
                    timeout_s: float = 1800) -> LlamaFigures:
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json",
           "-p", ",".join(map(str, prefill_lengths)), "-n", str(gen)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamaBenchError(f"cannot run {binary}: {e}") from e
    if proc.returncode != 0:
        raise LlamaBenchError(f"{binary} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    try:
        rows = json.loads(proc.stdout)
        prefill = {int(r["n_prompt"]): float(r["avg_ts"]) for r in rows if r["n_gen"] == 0}
        decode = next(float(r["avg_ts"]) for r in rows if r["n_prompt"] == 0 and r["n_gen"] > 0)
        build = f"{rows[0].get('build_commit', '?')} ({rows[0].get('cpu_info', '?')})"
    except (ValueError, KeyError, TypeError, StopIteration) as e:
        raise LlamaBenchError(f"unexpected llama-bench output: {e}") from e
    return LlamaFigures(prefill, decode, build)
