"""The cpu kernel library's host sampling (kernels/cpu_sample.h) against exact float64 math.

The header is built on its own with each cpu target's flags (the AVX2 path where this CPU
has it, the portable path always), and once inside a real bundle's library, which the cpu
step device hands to the engine's samplers.

The oracle: the kept set of top_k -> top_p -> min_p computed in float64 with a full sort
(ties by lowest id), and the inverse-CDF draw over it in id order. The kernel draws by the
same inverse CDF (so for every u it must return the oracle's token) except for a large
top_p head below temperature 1, where it draws by rejection: there the test checks the kept
set and the distribution (chi-square).
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.targets import CPU_TARGETS
from rfc.compiler.codegen import cpu
from rfc.kernels import __file__ as _kernels_init
from rfc.runtime.devices.cpu import cpu_flags
from rfc.runtime.sampling.sampler import Sampler, SamplingError, SamplingParams
from rfc.runtime.core.sampling_kernels import KernelLogitsError, SamplingKernels
from tests.conftest import FIXTURES

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

KERNELS = Path(_kernels_init).parent
SOURCE = """#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "rfc_blocks.h"
#include "cpu_simd.h"
#define RFC_EXPORT __attribute__((visibility("default")))
#include "cpu_sample.h"
"""


def _isa_params():
    flags = cpu_flags()
    out = [pytest.param("cpu-generic", id="generic")]
    lacking = [f for f in CPU_TARGETS["cpu"].isa if f not in flags]
    out.append(pytest.param("cpu", id="avx2", marks=pytest.mark.skipif(
        bool(lacking), reason=f"this CPU lacks {', '.join(lacking)}")))  # fmt: skip
    return out


@pytest.fixture(scope="module", params=_isa_params())
def kernels(request, tmp_path_factory) -> SamplingKernels:
    target = CPU_TARGETS[request.param]
    out = tmp_path_factory.mktemp(f"sample-{request.param}")
    (out / "s.c").write_text(SOURCE)
    command = [
        cpu.CC,
        *cpu.BASE_FLAGS,
        *target.cflags,
        "-Wall",
        "-Wextra",
        f"-I{KERNELS}",
        "-o",
        "lib.so",
        "s.c",
        "-lm",
    ]
    proc = subprocess.run(command, cwd=out, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning" not in proc.stderr, proc.stderr[-2000:]
    found = SamplingKernels.from_library(ctypes.CDLL(str(out / "lib.so")))
    assert found is not None
    return found


# -- the float64 oracle ------------------------------------------------------------------------


def kept_set(x: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Ids top_k -> top_p -> min_p keep (llama.cpp's order), ascending."""
    x64 = x.astype(np.float64)
    order = np.lexsort((np.arange(x.size), -x64))  # descending, ties by lowest id
    cand = order[:top_k] if 0 < top_k < x.size else order
    w = np.exp(x64[cand] - x64[cand[0]])
    keep = cand
    if top_p < 1:
        cut = int(np.searchsorted(np.cumsum(w), top_p * w.sum(), side="left")) + 1
        keep = cand[:cut]
        w = w[:cut]
    if min_p > 0:
        keep = keep[w >= min_p]
    return np.sort(keep)


def inverse_cdf(x: np.ndarray, kept: np.ndarray, temperature: float, u: float) -> int:
    x64 = x.astype(np.float64)[kept]
    c = np.cumsum(np.exp((x64 - x64.max()) / temperature))
    return int(kept[np.searchsorted(c, u * c[-1], side="right")])


def rows(rng: np.random.Generator):
    """(name, logits) of the shapes that matter: peaked, flat, heavy heads, exact ties (with
    -0.0 beside 0.0), -inf entries, tiny and odd sizes (the vector loops' tails)."""
    yield "flat-128k", (rng.standard_normal(128_256) * 0.3).astype(np.float32)
    x = (rng.standard_normal(128_256) * 2.5).astype(np.float32)
    x[rng.integers(0, x.size, 8)] += 12.0
    yield "heads-128k", x
    yield "peaked-32k", (rng.standard_normal(32_000) * 4.0).astype(np.float32)
    t = np.round(rng.standard_normal(5_003)).astype(np.float32)
    t[t == 0] = np.where(rng.random(int((t == 0).sum())) < 0.5, -0.0, 0.0)
    yield "ties-5003", t
    m = (rng.standard_normal(3_001) * 2).astype(np.float32)
    m[rng.integers(0, m.size, 300)] = -np.inf
    yield "neg-inf-3001", m
    for n in (1, 2, 7, 9, 63):
        yield f"tiny-{n}", (rng.standard_normal(n) * 2).astype(np.float32)


FILTERS = [  # (temperature, top_k, top_p, min_p)
    (1.0, 0, 1.0, 0.0), (0.7, 0, 1.0, 0.0), (1.5, 0, 1.0, 0.0),
    (1.0, 40, 1.0, 0.0), (0.8, 1, 1.0, 0.0), (1.0, 2000, 1.0, 0.0),
    (1.0, 0, 0.95, 0.0), (1.3, 0, 0.5, 0.0), (1.0, 0, 0.1, 0.0),
    (1.0, 0, 1.0, 0.05), (2.0, 0, 1.0, 0.5),
    (1.0, 40, 0.95, 0.05), (1.0, 0, 0.9, 0.01), (1.2, 1000, 0.5, 0.2),
]  # fmt: skip


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", FILTERS)
def test_draw_is_the_inverse_cdf_over_the_kept_tokens(kernels, temperature, top_k, top_p, min_p):
    rng = np.random.default_rng(7)
    for name, x in rows(rng):
        kept = kept_set(x, top_k, top_p, min_p)
        for u in [0.0, 0.999999, *rng.random(12)]:
            got, _ = kernels.sample(x, temperature, top_k, min_p, top_p, float(u))
            assert got == inverse_cdf(x, kept, temperature, float(u)), (name, u)


@pytest.mark.parametrize("temperature, top_p, min_p", [(0.7, 0.95, 0.0), (0.3, 0.9, 0.0), (0.5, 0.99, 0.001)])
def test_rejection_draw_keeps_the_head_and_its_distribution(kernels, temperature, top_p, min_p):
    """A flat row's top_p head holds most of it: below temperature 1 the kernel proposes by
    the temperature-1 weights and accepts with w^(1/T - 1). Chi-square over the kept tokens
    grouped by probability; a wrong acceptance exponent moves it by hundreds."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(4096) * 0.5).astype(np.float32)
    kept = kept_set(x, 0, top_p, min_p)
    assert kept.size * 16 >= x.size  # the masked, rejection path
    draws = 40_000
    tokens = np.array([kernels.sample(x, temperature, 0, min_p, top_p, float(u))[0] for u in rng.random(draws)])
    assert np.isin(tokens, kept).all()
    p = np.exp((x[kept].astype(np.float64) - x[kept].max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    groups = np.array_split(order, 40)  # 40 groups of similar probability
    counts = np.bincount(np.searchsorted(kept, tokens), minlength=kept.size)
    observed = np.array([counts[g].sum() for g in groups])
    expected = np.array([p[g].sum() for g in groups]) * draws
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 95, chi2  # 39 degrees of freedom: p ~ 1e-6 at 95


def test_bad_rows_are_refused(kernels):
    for x in (np.array([0.0, np.nan, 1.0], np.float32), np.array([0.0, np.inf], np.float32),
              np.full(20, -np.inf, np.float32)):  # fmt: skip
        with pytest.raises(KernelLogitsError):
            kernels.sample(x, 1.0, 0, 0.0, 1.0, 0.5)
    lse, ids = kernels.logprobs(np.array([0.0, np.nan, 1.0], np.float32), 1)
    assert math.isnan(lse) and ids is None
    sampler = Sampler(SamplingParams(temperature=0.8, top_p=0.9), [1], 3, kernels)
    with pytest.raises(SamplingError) as e:
        sampler.sample(np.array([0.0, np.nan, 1.0], np.float32))
    assert e.value.field == "logits"


@pytest.mark.parametrize("k", [1, 5, 20, 40, 64, 65, 1000])
def test_logprobs_normalizer_and_top_ids(kernels, k):
    rng = np.random.default_rng(11)
    for name, x in rows(rng):
        lse, ids = kernels.logprobs(x, k)
        x64 = x.astype(np.float64)
        peak = x64.max()
        assert lse == pytest.approx(peak + math.log(np.exp(x64 - peak).sum()), rel=1e-6, abs=1e-6), name
        if 0 < k < x.size:
            want = np.sort(np.lexsort((np.arange(x.size), -x64))[:k])
            assert ids is not None and (ids == want).all(), name
        # the joint call gives the same from the passes of a draw
        for temperature, top_k, top_p in ((0.8, 0, 0.95), (1.0, 40, 1.0), (0.7, 0, 1.0)):
            _, (jl, jids) = kernels.sample(x, temperature, top_k, 0.0, top_p, 0.5, k)
            assert jl == pytest.approx(lse, rel=1e-6, abs=1e-6), name
            assert (jids is None) == (ids is None) and (jids is None or (jids == ids).all()), name


def test_sampler_with_kernels_matches_numpy_where_both_are_exact(kernels):
    """Greedy is numpy's argmax either way; logprobs agree with the numpy sampler's; a seed
    repeats its tokens."""
    rng = np.random.default_rng(5)
    vocab = 50_000
    logits = (rng.standard_normal((20, vocab)) * 3).astype(np.float32)
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_p=0.9, seed=3),
                   SamplingParams(temperature=1.1, top_k=40, min_p=0.05, repetition_penalty=1.2, seed=9)):  # fmt: skip
        a = Sampler(params, [1, 2, 3], vocab, kernels)
        b = Sampler(params, [1, 2, 3], vocab)
        again = Sampler(params, [1, 2, 3], vocab, kernels)
        for row in logits:
            ta = a.sample(row, 5)
            assert again.sample(row, 5) == ta
            if params.is_greedy:
                assert ta == b.sample(row)
            la, top_a = a.logprobs(row, ta, 5)
            lb, top_b = b.logprobs(row, ta, 5)
            assert la == pytest.approx(lb, abs=2e-5)
            assert [i for i, _ in top_a] == [i for i, _ in top_b]
            assert np.allclose([v for _, v in top_a], [v for _, v in top_b], atol=2e-5)


def test_bundle_library_carries_the_sampling_functions(bundle_cache):
    """A compiled bundle's cpu library exports them and the step device hands them on."""
    from rfc.runtime.engine.assemble import LoadOptions, load_model

    model_path = FIXTURES / "tiny-llama-Q4_0.gguf"
    if not model_path.exists():
        pytest.skip(f"fixture {model_path} missing")
    model = load_model(bundle_cache(model_path), LoadOptions(device="cpu"))
    found = model.executor.host_sampling
    assert isinstance(found, SamplingKernels)
    x = np.random.default_rng(1).standard_normal(model.vocab_size).astype(np.float32)
    kept = kept_set(x, 0, 0.9, 0.0)
    assert found.sample(x, 1.0, 0, 0.0, 0.9, 0.25)[0] == inverse_cdf(x, kept, 1.0, 0.25)


def test_out_of_range_integers_reach_the_kernel_as_off(kernels):
    """top_k validates as any integer and logprobs as any count: beyond the vocabulary both
    mean all of it, and neither may overflow the kernel's int64."""
    x = np.random.default_rng(2).standard_normal(100).astype(np.float32)
    a = Sampler(SamplingParams(temperature=0.8, top_k=10**30, seed=1), [1], 100, kernels)
    b = Sampler(SamplingParams(temperature=0.8, seed=1), [1], 100, kernels)
    assert a.sample(x, 10**30) == b.sample(x)
    lp, top = a.logprobs(x, 0, 10**30)
    assert len(top) == 100 and lp == pytest.approx(b.logprobs(x, 0, 0)[0])
