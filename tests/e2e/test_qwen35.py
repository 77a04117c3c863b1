"""qwen35 (Gated DeltaNet + gated attention) through steps that carry recurrent state: the
fixture's teacher-forced logits are checked against llama.cpp and the float64 oracle by the
parametrized files (test_reference_oracle, test_oracle_bounds, test_cpu_device); what those
cannot see is a state carried from one step to the next, which decoding needs:

- greedy decoding on ref and cpu gives the same tokens (a first difference only where the
  reference's top two logits are within NEAR_TIE: int8 activation rounding on the cpu), for
  qwen35moe and qwen3next too (the same state ops beside experts; qwen3next's repeated key heads);
- decoding token by token after a prefill gives what one teacher-forced step gives (ref: to
  1e-3, the state being float32 between steps; cpu: within llama.cpp's bounds, int8 roundings
  may flip between the paths);
- sequences prefilling and decoding side by side in one step (each with its own state slot)
  give what each gives alone.
"""

import shutil

import numpy as np
import pytest

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import llama_cpp_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_cpu_device import assert_greedy_decoding_agrees
from tests.e2e.test_reference_oracle import batched_last_logits, teacher_forced_logits

pytestmark = [
    pytest.mark.shared,
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
    ),
]

NAME = "tiny-qwen35-Q8_0"


@pytest.fixture(scope="module")
def bundle(bundle_cache):
    return bundle_cache(FIXTURES / f"{NAME}.gguf")


@pytest.mark.parametrize("name", [NAME, "tiny-qwen35moe-Q8_0", "tiny-qwen3next-Q8_0"])
def test_greedy_decoding_is_the_same_on_ref_and_cpu(name, bundle_cache):
    assert_greedy_decoding_agrees(name, bundle_cache)


def _prefill_then_decode(bundle, device: str, tokens: list[int], prefill: int) -> np.ndarray:
    model = load_model(bundle, LoadOptions(device=device))
    blocks = model.kv_pool.manager()
    blocks.allocate(0, prefill)
    out = list(
        model.executor.forward(build_batch([ScheduledChunk(0, 0, tuple(tokens[:prefill]), all_logits=True)], blocks))
    )
    for pos in range(prefill, len(tokens)):
        blocks.allocate(0, pos + 1)
        out.append(model.executor.forward(build_batch([ScheduledChunk(0, pos, (tokens[pos],))], blocks))[0])
    return np.array(out)


@pytest.mark.parametrize("device", ["ref", "cpu"])
def test_decoding_continues_the_state_of_the_prefill(bundle, device):
    golden = np.load(FIXTURES / f"{NAME}.logits.npz")
    tokens = golden["tokens"].tolist()[:24]
    steps = _prefill_then_decode(bundle, device, tokens, 10)
    if device == "ref":  # float64 matmuls and recurrence; the state is rounded to float32 between steps
        np.testing.assert_allclose(steps, teacher_forced_logits(bundle, "ref", tokens), atol=1e-3, rtol=0)
    ok, summary = llama_cpp_bounds(NAME, steps, golden["logits"][:24])
    assert ok, summary


@pytest.mark.parametrize("device", ["ref", "cpu"])
def test_batching_does_not_change_logits(bundle, device):
    """Four sequences of 5, 17, 1 and 33 tokens: a prefill of all but each one's last token,
    then one step of the four last tokens (three decodes beside a 1-token prefill)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 512, size=n).tolist() for n in (5, 17, 1, 33)]
    expected = [teacher_forced_logits(bundle, device, p)[-1] for p in prompts]
    got = batched_last_logits(bundle, device, prompts)
    for g, w in zip(got, expected):
        np.testing.assert_allclose(g, w, atol=1e-3 if device == "ref" else 2e-3, rtol=0)
