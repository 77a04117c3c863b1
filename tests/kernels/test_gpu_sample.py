"""The GPU sampling kernel (templates/gpu_sample.hip.j2) against runtime/sampling/sampler.py, run on
the host by the GPU emulator (tests/kernels/gpu_emu.h): greedy tokens equal (ties to the
lowest id), penalties applied bit for bit, the kept sets of top_k/top_p/min_p identical, the
seeded draw deterministic per (seed, step) and distributed as the host's probabilities, and
rows without the device flag left untouched for the host. No GPU needed; g++ builds it."""

import ctypes
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.program import SAMPLE_FLAG_FED, SAMPLE_WORDS
from rfc.compiler.codegen.gpu import render_source
from rfc.compiler.codegen.gpu_sample import plan_sample_kernel
from rfc.compiler.targets import parse_target
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.devices.gpu_program import write_sample_row
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from tests.kernels.gpu_emulator import EMU_CXX_FLAGS, EMU_HEADER, emulated_step_device, needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401
from tests.conftest import shared_basetemp

pytestmark = needs_emulator

W = len(SAMPLE_WORDS)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu-sample")


class SampleKernel:
    """The planned sampling kernel for one vocabulary, emulated."""

    def __init__(self, vocab: int, build_dir: Path):
        self.vocab = vocab
        spec = plan_sample_kernel(parse_target("sm_90"), vocab)
        self.threads = spec.threads
        source = render_source(parse_target("sm_90"), [spec])
        text = (
            f'#define RFC_GPU_EMULATED 1\n#include "{EMU_HEADER}"\n{source}\n'
            f'extern "C" void launch(int rows, void **params) {{ rfc_emu::launch({spec.name}, rows, 1, 1, '
            f"{spec.threads}, params); }}\n"
        )
        key = hashlib.sha256(text.encode() + EMU_HEADER.read_bytes()).hexdigest()[:16]
        lib = build_dir / f"sample-{key}.so"
        if not lib.is_file():
            src = build_dir / f"sample-{key}.cpp"
            src.write_text(text)
            proc = subprocess.run(
                ["g++", *EMU_CXX_FLAGS, "-o", str(lib), str(src)],
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, proc.stderr[-4000:]
        self.lib = ctypes.CDLL(str(lib))
        self.lib.launch.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self.lib.rfc_emu_set_order.argtypes = [ctypes.c_int]

    def run(self, logits: np.ndarray, samplers: list, steps=None, logprob: bool = False, host_rows=(), fed=None):
        """Samples every row of `logits` (modified in place, as on the device) with its
        Sampler's parameters and penalty window; returns (tokens, logprobs). `fed` (row -> a
        token): rows queued behind the step that samples that token, their lists staged as
        StepRunner stages them (penalty_counts_ahead, then the token's pair, its id already
        copied in) and flagged SAMPLE_FLAG_FED."""
        fed = fed or {}
        rows = logits.shape[0]
        assert logits.dtype == np.float32 and logits.flags.c_contiguous
        params = np.zeros((rows, W), dtype=np.int32)
        lists = [s.penalty_counts_ahead() if r in fed else s.penalty_counts() for r, s in enumerate(samplers)]
        capacity = max(1, sum(len(c or {}) + (r in fed) for r, c in enumerate(lists)))  # staged exactly
        pen = np.zeros((capacity, 2), dtype=np.int32)  # (token, f32 count bits) pairs
        pen_raw = np.zeros(capacity, dtype=np.float32)
        start = 0
        for r, s in enumerate(samplers):
            counts = lists[r] or {}
            n = len(counts)
            pen[start : start + n, 0] = list(counts.keys())
            pen.view(np.float32)[start : start + n, 1] = list(counts.values())
            if r in fed:
                pen[start + n, 0], pen.view(np.float32)[start + n, 1] = fed[r], 1.0
                n += 1
            step = s.drawn if steps is None else steps[r]
            write_sample_row(params[r], s.params, self.vocab, s.device_seed, step, start, n, logprob)
            if r in fed:
                params[r, 0] |= SAMPLE_FLAG_FED
            if r in host_rows:
                params[r, 0] = 0
            start += n
        out = np.full((3, rows), -7, dtype=np.int32)  # the tokens, the logprobs' bits, the fed ids
        self._launch(rows, capacity, out, logits, params, pen, pen_raw)
        device = [r for r in range(rows) if r not in host_rows]
        assert (out[2, device] == np.maximum(out[0, device], 0)).all()  # what a next step may be fed
        return out[0].copy(), out[1].view(np.float32).copy()

    def _launch(self, rows, capacity, *arrays):
        values = [ctypes.c_void_p(a.ctypes.data) for a in arrays] + [ctypes.c_int(capacity), ctypes.c_int(rows)]
        ptrs = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        self.lib.launch(rows, ptrs)


def _sampler(vocab: int, prompt=(), **kw) -> Sampler:
    return Sampler(SamplingParams(**kw), list(prompt), vocab)


def _kept(sampler: Sampler, logits: np.ndarray) -> set[int]:
    """The host's kept set (top_k -> top_p -> min_p) over the processed logits."""
    ids, _ = sampler._candidates(sampler.processed_logits(logits))
    return set(range(logits.size)) if ids is None else {int(i) for i in ids}


@pytest.fixture(scope="module")
def k128(build_dir):
    return SampleKernel(128, build_dir)


def test_greedy_equals_the_host_with_ties(k128):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (24, 128)).astype(np.float32)
    logits[8:16] = np.round(logits[8:16] / 2)  # few distinct values: many ties for the maximum
    logits[16:, :] = 1.5  # all equal: id 0
    logits[20, 100:] = 7.0  # ties at the end of the row
    samplers = [_sampler(128, temperature=0.0) for _ in range(24)]
    want = [s.sample(row) for s, row in zip(samplers, logits)]
    tokens, _ = k128.run(logits.copy(), [_sampler(128, temperature=0.0) for _ in range(24)])
    assert tokens.tolist() == want


def test_penalties_change_logits_exactly_as_the_host(k128):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (6, 128)).astype(np.float32)
    kw = [
        dict(repetition_penalty=1.3),
        dict(presence_penalty=0.7),
        dict(frequency_penalty=0.45),
        dict(repetition_penalty=0.8, presence_penalty=-0.3, frequency_penalty=1.7),
        dict(repetition_penalty=2.0, penalty_last_n=-1),
        dict(frequency_penalty=3.0, penalty_last_n=5),
    ]
    samplers = [_sampler(128, rng.integers(0, 128, 40), temperature=0.0, **k) for k in kw]
    processed = np.stack([s.processed_logits(row) for s, row in zip(samplers, logits)])
    want = [int(np.argmax(p)) for p in processed]
    x = logits.copy()
    tokens, _ = k128.run(x, samplers)
    assert np.array_equal(x.view(np.int32), processed.view(np.int32))
    assert tokens.tolist() == want


def test_a_fed_token_counts_in_the_window_as_the_host_records_it(k128):
    """A row queued behind the step that samples its last token: the window as recording that
    token leaves it (penalty_counts_ahead) plus the token's pair, merged on the device, give
    the logits the host gives after recording it, bit for bit: the token already in the window
    (its count merged) or not, pushing the oldest token out of a full window (itself, or
    another) or over the whole context."""
    rng = np.random.default_rng(2)
    cases = [  # (penalties, prompt, the fed token)
        (dict(frequency_penalty=1.7, penalty_last_n=8), [3, 9, 3, 40, 41, 42], 3),  # in the window, not full
        (dict(frequency_penalty=0.9, presence_penalty=0.3, penalty_last_n=5), [7, 8, 9, 10, 11], 9),  # full: 7 out
        (dict(frequency_penalty=1.1, penalty_last_n=5), [7, 8, 9, 10, 11], 7),  # full: pushes its own copy out
        (dict(repetition_penalty=1.4, frequency_penalty=0.6, penalty_last_n=4), [5, 5, 6, 7], 5),  # 5 out, 5 in
        (dict(repetition_penalty=0.7, penalty_last_n=3), [20, 21, 22], 99),  # new: its own pair
        (dict(frequency_penalty=2.5, penalty_last_n=-1), [1, 2, 2, 3, 2], 2),  # the whole context
    ]
    logits = rng.normal(0, 4, (len(cases), 128)).astype(np.float32)
    samplers = [_sampler(128, prompt, temperature=0.0, **kw) for kw, prompt, _ in cases]
    x = logits.copy()
    tokens, _ = k128.run(x, samplers, fed={r: token for r, (_, _, token) in enumerate(cases)})
    for s, (_, _, token) in zip(samplers, cases):
        s.record(token)
    processed = np.stack([s.processed_logits(row) for s, row in zip(samplers, logits)])
    assert np.array_equal(x.view(np.int32), processed.view(np.int32))
    assert tokens.tolist() == [int(np.argmax(p)) for p in processed]


def _support(kernel, logits_row, sampler, draws: int) -> set[int]:
    rows = np.repeat(logits_row[None], draws, axis=0).copy()
    tokens, _ = kernel.run(rows, [sampler] * draws, steps=list(range(draws)))
    assert (tokens >= 0).all()
    return set(tokens.tolist())


@pytest.mark.parametrize(
    "kw",
    [
        dict(top_k=7),
        dict(top_k=1),
        dict(top_p=0.5),
        dict(top_p=0.95),
        dict(min_p=0.05),
        dict(min_p=0.3),
        dict(top_k=20, top_p=0.6),
        dict(top_k=30, min_p=0.1),
        dict(top_p=0.9, min_p=0.02),
        dict(top_k=25, top_p=0.8, min_p=0.01, repetition_penalty=1.5, presence_penalty=0.2),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_kept_sets_equal_the_host(k128, kw):
    """A near-flat temperature draws every kept token within a few hundred draws and never
    one outside the set: the support of the draws is the kernel's kept set."""
    rng = np.random.default_rng(abs(hash(str(kw))) % 1000)
    logits = rng.normal(0, 2, 128).astype(np.float32)
    host = _sampler(128, rng.integers(0, 128, 30), temperature=1e4, seed=3, **kw)
    want = _kept(host, logits)
    assert 1 <= len(want) < 128 or kw.get("min_p") == 0.02
    draws = max(64, 12 * len(want))
    assert _support(k128, logits, host, draws) == want


@pytest.mark.parametrize(
    "kw",
    [dict(top_k=300), dict(top_k=400, top_p=0.9), dict(min_p=0.1)],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_kept_sets_larger_than_a_block(build_dir, kw):
    """Kept sets of more tokens than the block has threads (no thread-maxima bound)."""
    kernel = SampleKernel(512, build_dir)
    assert kernel.threads < 300
    rng = np.random.default_rng(21)
    logits = rng.normal(0, 0.7, 512).astype(np.float32)
    host = _sampler(512, temperature=1e4, seed=8, **kw)
    want = _kept(host, logits)
    assert kernel.threads < len(want) < 512
    assert _support(kernel, logits, host, 12 * len(want)) == want


def test_ties_at_the_top_k_cut_keep_the_lowest_ids(k128):
    logits = np.zeros(128, dtype=np.float32)
    logits[[3, 9]] = 5.0
    logits[[10, 40, 41, 90]] = 2.0  # top_k=4 cuts these ties: 10 and 40 stay
    host = _sampler(128, temperature=1e4, top_k=4, seed=1)
    assert _support(k128, logits, host, 200) == {3, 9, 10, 40}


def test_draw_is_deterministic_and_independent_of_the_batch(k128):
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (8, 128)).astype(np.float32)
    samplers = [_sampler(128, seed=100 + i, top_p=0.9) for i in range(8)]
    a, _ = k128.run(logits.copy(), samplers, steps=[3] * 8)
    b, _ = k128.run(logits.copy(), samplers, steps=[3] * 8)
    assert a.tolist() == b.tolist()
    # the same row in another position of another batch draws the same token
    order = [5, 2, 7]
    c, _ = k128.run(logits[order].copy(), [samplers[i] for i in order], steps=[3] * 3)
    assert c.tolist() == a[order].tolist()
    # and the step moves the draw
    d, _ = k128.run(np.repeat(logits[:1], 64, axis=0).copy(), [samplers[0]] * 64, steps=list(range(64)))
    assert len(set(d.tolist())) > 1


def _chi_square(tokens: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    n = tokens.size
    observed = np.bincount(tokens, minlength=probs.size).astype(np.float64)
    assert observed[probs == 0].sum() == 0, "drew a token the host cannot draw"
    expected = probs * n
    big = expected >= 5  # pool the rare tokens into one bin
    chi = ((observed[big] - expected[big]) ** 2 / expected[big]).sum()
    rest_o, rest_e = observed[~big].sum(), expected[~big].sum()
    if rest_e > 0:
        chi += (rest_o - rest_e) ** 2 / rest_e
    return float(chi), int(big.sum())


@pytest.mark.parametrize(
    "kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=12, top_p=0.9)], ids=["plain", "filtered"]
)
def test_draws_follow_the_host_probabilities(build_dir, kw):
    """4,000 draws of a fixed seed over steps 0..3999: the seed is fixed, so the statistic is
    a constant of the code, bounded far out (p < 1e-6 for a correct sampler)."""
    kernel = SampleKernel(32, build_dir)
    rng = np.random.default_rng(9)
    logits = rng.normal(0, 1.5, 32).astype(np.float32)
    host = _sampler(32, seed=1234, **kw)
    kept = sorted(_kept(host, logits))
    scaled = logits[kept].astype(np.float64) / kw["temperature"]
    probs = np.zeros(32)
    probs[kept] = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
    n = 4000
    tokens, _ = kernel.run(np.repeat(logits[None], n, axis=0).copy(), [host] * n, steps=list(range(n)))
    chi, bins = _chi_square(tokens, probs)
    assert chi < bins + 10 * np.sqrt(2 * bins) + 20, (chi, bins)


def test_logprobs_are_the_raw_log_softmax(k128):
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 3, (4, 128)).astype(np.float32)
    samplers = [
        _sampler(128, rng.integers(0, 128, 20), temperature=t, repetition_penalty=1.4, seed=2)
        for t in (0.0, 0.8, 1.0, 0.0)
    ]
    tokens, logprobs = k128.run(logits.copy(), samplers, logprob=True)
    for r, s in enumerate(samplers):
        want, _ = s.logprobs(logits[r], int(tokens[r]), 0)
        assert logprobs[r] == pytest.approx(want, abs=2e-5)


def test_host_rows_are_left_alone(k128):
    rng = np.random.default_rng(12)
    logits = rng.normal(0, 3, (3, 128)).astype(np.float32)
    samplers = [_sampler(128, rng.integers(0, 128, 20), temperature=0.0, repetition_penalty=1.4) for _ in range(3)]
    x = logits.copy()
    tokens, _ = k128.run(x, samplers, host_rows=(1,))
    assert tokens[1] == -7  # untouched output
    assert np.array_equal(x[1], logits[1])


@pytest.mark.parametrize("vocab", [128, 1000])
def test_reversed_thread_and_block_order_gives_the_same_results(build_dir, vocab):
    """Rows of every kind (greedy, penalized, filtered draws; of 1,000 ids, a kept set larger than
    the block's 256 threads) with the emulator's blocks and threads in reverse order
    (tests/kernels/test_gpu_order.py says what that finds): the same tokens, log-probabilities
    and processed logits, bit for bit."""
    kernel = SampleKernel(vocab, build_dir)
    rng = np.random.default_rng(17)
    logits = rng.normal(0, 2, (6, vocab)).astype(np.float32)
    logits[0, [3, 9]] = 9.0  # a greedy tie: the lowest id
    prompt = rng.integers(0, vocab, 30)
    samplers = [
        _sampler(vocab, prompt, temperature=0.0),
        _sampler(vocab, prompt, temperature=0.0, repetition_penalty=1.3, presence_penalty=0.4),
        _sampler(vocab, prompt, top_k=20, top_p=0.9, seed=4),
        _sampler(vocab, prompt, min_p=0.05, temperature=0.8, seed=5),
        _sampler(vocab, prompt, top_k=vocab // 2, temperature=1e4, seed=6),  # 500 kept of 1,000: over 256 threads
        _sampler(vocab, prompt, frequency_penalty=0.3, seed=7),
    ]
    runs = []
    try:
        for order in (1, -1):
            kernel.lib.rfc_emu_set_order(order)
            x = logits.copy()
            tokens, logprobs = kernel.run(x, samplers, steps=[2] * 6, logprob=True)
            runs.append((tokens, logprobs, x))
    finally:
        kernel.lib.rfc_emu_set_order(1)  # the library is the module's other tests' too
    (t0, l0, x0), (t1, l1, x1) = runs
    assert t0.tolist() == t1.tolist() and t0[0] == 3
    assert np.array_equal(l0.view(np.int32), l1.view(np.int32))
    assert np.array_equal(x0.view(np.int32), x1.view(np.int32))


def test_non_finite_logits_fail_the_row(k128):
    logits = np.zeros((3, 128), dtype=np.float32)
    logits[0, 5] = np.nan
    logits[1, :] = -np.inf
    logits[2, 7] = np.inf
    tokens, _ = k128.run(logits, [_sampler(128, temperature=t) for t in (0.0, 1.0, 1.0)])
    assert tokens.tolist() == [-1, -1, -1]


def test_large_vocabulary(build_dir):
    """262,144 logits (the largest vocabulary the issue names): greedy and a filtered draw."""
    kernel = SampleKernel(262144, build_dir)
    rng = np.random.default_rng(13)
    logits = rng.normal(0, 2, (2, 262144)).astype(np.float32)
    logits[0, 200000] = 30.0
    samplers = [_sampler(262144, temperature=0.0), _sampler(262144, top_k=40, top_p=0.9, seed=5)]
    want_kept = _kept(samplers[1], logits[1])
    tokens, _ = kernel.run(logits.copy(), samplers)
    assert tokens[0] == 200000
    assert int(tokens[1]) in want_kept


@pytest.mark.parametrize("vocab", [1000, 20000])
def test_rows_that_end_inside_a_pass(build_dir, vocab):
    """A thread loads its ids ahead, as many as it has up to gpu_sample.SAMPLE_AHEAD: 1,000
    logits over 256 threads take 4 a pass, the row ending inside it; 20,000 take 32 over three
    passes, the last one partial. Greedy with its maximum in the last thread's last ids, a
    penalized row, a filtered draw and the raw log-probability, each as the host computes them."""
    from rfc.compiler.codegen.gpu_sample import SAMPLE_AHEAD

    kernel = SampleKernel(vocab, build_dir)
    ahead = min(SAMPLE_AHEAD["cuda"], -(-vocab // kernel.threads))
    assert vocab % (kernel.threads * ahead) != 0
    rng = np.random.default_rng(vocab)
    logits = rng.normal(0, 2, (4, vocab)).astype(np.float32)
    logits[0, vocab - 1] = 40.0  # the last id of the row
    logits[1, vocab - 3] = 40.0
    samplers = [
        _sampler(vocab, temperature=0.0),
        _sampler(vocab, [vocab - 3, 5, 5], temperature=0.0, repetition_penalty=8.0, frequency_penalty=3.0),
        _sampler(vocab, temperature=1e4, top_k=30, top_p=0.95, seed=4),
        _sampler(vocab, temperature=0.0),
    ]
    processed = [s.processed_logits(row) for s, row in zip(samplers, logits)]
    x = logits.copy()
    tokens, logprobs = kernel.run(x, samplers, logprob=True)
    assert tokens[0] == vocab - 1
    assert np.array_equal(x[1].view(np.int32), processed[1].view(np.int32))
    assert tokens[1] == int(np.argmax(processed[1])) != vocab - 3
    assert int(tokens[2]) in _kept(samplers[2], logits[2])
    assert tokens[3] == int(np.argmax(logits[3]))
    for r in (0, 3):
        want, _ = samplers[r].logprobs(logits[r], int(tokens[r]), 0)
        assert logprobs[r] == pytest.approx(want, abs=2e-5)


# -- the step device: sampling after the step program, over the emulated kernels --------------------

GPU_TARGET = "gfx1100"


@pytest.mark.parametrize("model", [pytest.param("llama-Q4_K_M", marks=toolchain_marks(GPU_TARGET))])
@pytest.mark.parametrize("host_row", [False, True], ids=["device-rows", "a-host-row"])
def test_step_device_samples_like_the_host(model, host_row, gpu_bundle, tmp_path_factory):
    """Two sequences decoded together: a greedy row with a repetition penalty on the device,
    the other greedy row on the device too or (logit_bias) on the host. Every device token
    equals the host's greedy token over the same step's logits, a host row's logits come back
    bit for bit, and per decode step the driver sees one copy in, one graph launch (the
    forward pass and the sampling kernel), the token ids back (and the host row's logits),
    one sync: no other launch, no allocation. (The event recorded after the copy in marks when
    the staging may be written again, for a step queued ahead.)"""
    bundle = open_bundle(gpu_bundle(model, GPU_TARGET))
    dev = emulated_step_device(
        bundle, GPU_TARGET, bundle.plan.kv, 48, 16, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    assert dev.samples_on_device
    vocab = bundle.plan.vocab_size
    blocks = BlockManager(48, 16)
    a, b = (5, 17, 33, 2, 9, 41, 7), (100, 3, 77, 250)
    second = {"logit_bias": {5: 2.0}} if host_row else {}
    device_s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.3), list(a), vocab)
    other_s = Sampler(SamplingParams(temperature=0.0, **second), list(b), vocab)
    check = [
        Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.3), list(a), vocab),
        Sampler(SamplingParams(temperature=0.0), list(b), vocab),
    ]
    chunks = [ScheduledChunk(1, 0, a), ScheduledChunk(2, 0, b)]
    lengths = [len(a), len(b)]
    n_launches = len(dev.runner.program.launches) + 1  # the step program, then the sampling kernel
    for step in range(4):
        for c in chunks:
            blocks.allocate(c.seq_id, c.start + len(c.tokens))
        batch = build_batch(chunks, blocks)
        dev.runner._driver.calls.clear()
        out = dev.forward_sampled(batch, [(device_s, False), None if host_row else (other_s, False)])
        calls = list(dev.runner._driver.calls)
        logits = dev.forward(batch)  # the same step again (the KV writes repeat): the host's view
        want = [check[0].sample(logits[0]), None]
        assert int(out.tokens[0]) == want[0], f"step {step}"
        device_s.record(want[0])
        if host_row:
            assert sorted(out.logits) == [1] and np.array_equal(out.logits[1], logits[1])
            want[1] = other_s.sample(out.logits[1])
        else:
            want[1] = check[1].sample(logits[1])
            assert out.logits == {} and int(out.tokens[1]) == want[1], f"step {step}"
            other_s.record(want[1])
        if step:
            d2h = [("d2h", 2 * 8)] + ([("d2h", vocab * 4)] if host_row else [])
            graphs = [c for c in calls if c[0] == "capture"]
            assert graphs in ([], [("capture", n_launches)]), calls  # the first decode step captures
            assert [c for c in calls if c[0] != "capture"] == [
                ("h2d", calls[0][1]),
                ("record",),
                ("graph_launch", n_launches),
                *d2h,
                ("sync",),
            ], calls
        chunks = [ScheduledChunk(1, lengths[0], (want[0],)), ScheduledChunk(2, lengths[1], (want[1],))]
        lengths = [lengths[0] + 1, lengths[1] + 1]


# -- what Nsight Compute profiles on a card (tools/gpu_experiment.py's steps) ---------------------


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_the_profiled_steps_end_with_a_step_sampled_on_the_device(
    target, gpu_bundle, tmp_path, tmp_path_factory, monkeypatch
):
    """gpu_experiment.py's steps (run under ncu on a card) end with a decode step as `rfc serve`
    runs it: its graph's last kernel is the sampling kernel, so `--ncu-detail 'rfc_sample_.*'`
    profiles it. The real loader and GpuDevice over the emulated kernels."""
    import importlib.util

    import rfc.runtime.devices as devices
    from tests.kernels.gpu_emulator import build_emulator, graph_kernels, loader_driver_class

    bundle_dir = gpu_bundle("stories260K", target)
    lib = build_emulator(open_bundle(bundle_dir), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    graphs: list = []
    Driver = loader_driver_class(lib, graphs)
    monkeypatch.setattr(devices, "gpu_driver_class", lambda family: Driver)
    spec = importlib.util.spec_from_file_location(
        "gpu_experiment", Path(__file__).parents[2] / "tools" / "gpu_experiment.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.run_steps(bundle_dir, tmp_path / "lists.json")
    names = [graph_kernels(graph) for graph in graphs]
    assert len(names) == 2, "the profiled steps: one plain graph decode step, one sampled"
    assert names[1][-1].startswith("rfc_sample_") and names[1][:-1] == names[0]
    assert not any(k.startswith("rfc_sample_") for k in names[0])
