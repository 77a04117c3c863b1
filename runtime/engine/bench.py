"""`rfc bench`'s measurements, on a loaded model: the numbers llama-bench reports (prefill and
decode tokens per second) plus what serving needs (batched decode, time to first token with
and without a cached prefix, load time, peak memory, the machine's read bandwidth).

Prefill and decode drive the executor directly, like llama-bench drives llama.cpp (no
scheduler: their own BlockManager over the KV pool); TTFT goes through the Engine, as a request
would. Decode feeds each sequence its greedy token: chosen on the device where the device
samples (a GPU: only the ids come back, as the engine serves), else the argmax of the logits.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.assemble import LoadedModel
from rfc.runtime.sampling.sampler import Sampler, SamplingParams


@dataclass(frozen=True)
class BenchConfig:
    prefill_lengths: tuple[int, ...] = (128, 512)
    decode_batches: tuple[int, ...] = (1, 8, 16)
    gen: int = 32  # decode steps per measurement
    repeat: int = 3  # runs per figure; the median counts
    ttft_prompt: int = 512


@dataclass
class BenchResult:
    figures: dict[str, list[float]] = field(default_factory=dict)  # name -> one value per run

    def add(self, name: str, value: float) -> None:
        self.figures.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.figures[name])


def prefill_tps(model: LoadedModel, blocks: BlockManager, n: int, rng: np.random.Generator) -> float:
    tokens = rng.integers(1, model.vocab_size, size=n).tolist()
    seconds = _timed(model, blocks, [(0, 0, tokens)])
    blocks.free(0)
    return n / seconds


def decode_tps(model: LoadedModel, blocks: BlockManager, batch: int, gen: int, rng: np.random.Generator) -> float:
    """Aggregate tokens per second of `batch` sequences decoding one token each per step,
    after a 16-token prompt each (greedy: the token fed back chosen on the device where it
    samples, the logits' argmax on the host otherwise)."""
    prompts = [rng.integers(1, model.vocab_size, size=16).tolist() for _ in range(batch)]
    executor = model.executor
    logits = _forward(model, blocks, [(s, 0, p) for s, p in enumerate(prompts)])
    tokens = [int(logits[s].argmax()) for s in range(batch)]
    samplers = None
    if executor.samples_on_device:
        greedy = SamplingParams(temperature=0.0)
        samplers = [Sampler(greedy, p, model.vocab_size, executor.host_sampling) for p in prompts]
    started = time.perf_counter()
    for step in range(gen):
        chunks = [(s, 16 + step, [tokens[s]]) for s in range(batch)]
        if samplers is None:
            logits = _forward(model, blocks, chunks)
            tokens = [int(logits[s].argmax()) for s in range(batch)]
        else:
            out = executor.forward_sampled(_batch(blocks, chunks), [(sampler, False) for sampler in samplers])
            tokens = [int(t) for t in out.tokens]
            for sampler, t in zip(samplers, tokens):
                sampler.record(t)
    seconds = time.perf_counter() - started
    for s in range(batch):
        blocks.free(s)
    return batch * gen / seconds


def ttft_s(engine: Engine, prompt: list[int]) -> float:
    """Seconds from submit to the first sampled token, the engine stepped in this thread."""
    started = time.perf_counter()
    state = engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0), max_tokens=1))
    while not state.finished:
        engine.step()
    return time.perf_counter() - started


def read_bandwidth_gbs(threads: int, mib: int = 512, rounds: int = 3) -> float:
    """Bytes per second that `threads` threads read from memory, each summing its own slice
    of an array far larger than the caches (numpy releases the GIL inside the reduction)."""
    data = np.ones(mib * (1 << 20) // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = float("inf")
    for _ in range(rounds):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_once(model: LoadedModel, config: BenchConfig, result: BenchResult, progress: Callable[[str], None]) -> None:
    """One run of every figure (the caller interleaves runs with llama-bench's)."""
    rng = np.random.default_rng(len(result.figures.get("decode_1", ())))
    blocks = model.kv_pool.manager()  # every page is free again before the Engine below takes the pool
    for n in config.prefill_lengths:
        result.add(f"prefill_{n}", prefill_tps(model, blocks, n, rng))
        progress(f"prefill {n}: {result.figures[f'prefill_{n}'][-1]:.1f} tok/s")
    for b in config.decode_batches:
        result.add(f"decode_{b}", decode_tps(model, blocks, b, config.gen, rng))
        progress(f"decode batch {b}: {result.figures[f'decode_{b}'][-1]:.1f} tok/s")
    engine = Engine(model)
    prompt = rng.integers(1, model.vocab_size, size=min(config.ttft_prompt, model.context_length - 1)).tolist()
    result.add("ttft", ttft_s(engine, prompt))
    # The same prompt again: its full blocks come from the prefix cache.
    result.add("ttft_cached", ttft_s(engine, prompt))
    progress(f"ttft: {result.figures['ttft'][-1]:.3f} s, repeated prompt {result.figures['ttft_cached'][-1]:.3f} s")


def _batch(blocks: BlockManager, chunks: list[tuple[int, int, list[int]]]):
    for seq, start, tokens in chunks:
        blocks.allocate(seq, start + len(tokens))
    return build_batch([ScheduledChunk(seq, start, tuple(tokens)) for seq, start, tokens in chunks], blocks)


def _forward(model: LoadedModel, blocks: BlockManager, chunks: list[tuple[int, int, list[int]]]) -> np.ndarray:
    return model.executor.forward(_batch(blocks, chunks))


def _timed(model: LoadedModel, blocks: BlockManager, chunks: list[tuple[int, int, list[int]]]) -> float:
    started = time.perf_counter()
    _forward(model, blocks, chunks)
    return time.perf_counter() - started
