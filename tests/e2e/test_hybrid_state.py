"""Recurrent state (hybrid models) end to end on the lfm2 fixture: the plan's StateSpec, the
state slots the block manager hands out beside KV pages, and the engine carrying each
sequence's state across decode steps, prefill chunks and preemptions on the reference device
(the oracle; tests/e2e/test_oracle_bounds.py checks its logits against llama.cpp's)."""

import numpy as np
import pytest

from rfc.artifacts.errors import BundleError
from rfc.artifacts.plan import StateSpec, StateTensor, pack_plan, unpack_plan
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.engine.speculative import SpecConfig, SpecType
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.sampling.sampler import SamplingParams
from tests.conftest import FIXTURES, assert_compile_refused
from tests.e2e.test_prefix_cache import Recorder
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits

pytestmark = pytest.mark.shared

LFM2 = FIXTURES / "tiny-lfm2-Q8_0.gguf"
GREEDY = SamplingParams(temperature=0)


def test_state_slots_are_admitted_with_blocks_and_freed_with_them():
    blocks = BlockManager(num_blocks=8, block_size=4, prefix_caching=False, state_slots=2)
    blocks.allocate(10, 5)
    blocks.allocate(11, 1)
    assert (blocks.state_slot(10), blocks.state_slot(11)) == (0, 1) and blocks.num_free_states() == 0
    assert not blocks.can_allocate(12, 1)  # pages are free, no slot is
    blocks.allocate(10, 9)  # a sequence that holds a slot grows without another
    blocks.free(10)
    assert blocks.can_allocate(12, 1)
    blocks.allocate(12, 1)
    assert blocks.state_slot(12) == 0 and blocks.state_slot(10) == -1
    blocks.free(11), blocks.free(12)
    assert blocks.num_free_states() == 2 and blocks.num_used() == 0


def test_plan_state_round_trips_and_bad_state_is_refused(bundle_cache):
    plan = load_model(bundle_cache(LFM2, REFERENCE_ONLY), LoadOptions(device="ref")).bundle.plan
    assert plan.state == StateSpec((StateTensor(0, (2, 256)), StateTensor(2, (2, 256))))
    assert plan.state.slot_bytes == 2 * 2 * 256 * 4 and plan.kv.n_layers == 2  # KV for the attention layers only
    assert unpack_plan(pack_plan(plan)) == plan
    for bad in ((StateTensor(0, (2, 128)),) * 2, (StateTensor(0, (1 << 20, 1 << 20)),) * 2, ()):
        with pytest.raises(BundleError):
            pack_plan(plan.__class__(**{**plan.__dict__, "state": StateSpec(bad)}))


def test_inspect_reports_the_state_per_sequence(bundle_cache):
    import json

    from tests.conftest import rfc

    info = json.loads(rfc("inspect", bundle_cache(LFM2, REFERENCE_ONLY), "--json", check=True).stdout)
    assert info["recurrent_state"] == {"tensors": 2, "layers": [0, 2], "bytes_per_sequence": 4096}
    assert "4,096 bytes per sequence" in rfc("inspect", bundle_cache(LFM2, REFERENCE_ONLY), check=True).stdout


def _lfm2(tmp_path, **metadata):
    from tests.gguf_edit import rewrite_gguf

    return rewrite_gguf(LFM2, tmp_path / "bad.gguf", metadata=metadata)


@pytest.mark.parametrize(
    "metadata, words",
    [
        ({"lfm2.shortconv.l_cache": 1}, "shortconv.l_cache"),
        ({"lfm2.shortconv.l_cache": 5}, "shape mismatch for blk.0.shortconv.conv.weight"),
        ({"lfm2.attention.head_count_kv": [2, 2, 0, 2]}, "layer 0 is a attention layer"),
        ({"lfm2.attention.head_count_kv": [0, 2, 0]}, "has 3 entries for 4 layers"),
        ({"lfm2.attention.head_count_kv": [0, 0, 0, 0]}, "marks no attention layer"),
    ],
)
def test_malformed_lfm2_is_refused_before_allocation(tmp_path, metadata, words):
    assert_compile_refused(_lfm2(tmp_path, **metadata), tmp_path, words)


def test_state_carries_over_decode_steps_and_prefill_chunks(bundle_cache):
    """Token by token, in chunks of 5, and as one prefill: the same logits (the reference sums
    in float64, so only the state's path differs)."""
    bundle = bundle_cache(LFM2, REFERENCE_ONLY)
    tokens = np.load(LFM2.with_suffix(".logits.npz"))["tokens"].tolist()[:20]
    whole = teacher_forced_logits(bundle, "ref", tokens)
    model = load_model(bundle, LoadOptions(device="ref"))
    for step in (1, 5):
        blocks = model.kv_pool.manager()
        rows = []
        for start in range(0, len(tokens), step):
            chunk = tuple(tokens[start : start + step])
            blocks.allocate(7, start + len(chunk))
            rows.extend(model.executor.forward(build_batch([ScheduledChunk(7, start, chunk, all_logits=True)], blocks)))
        np.testing.assert_allclose(np.array(rows), whole, atol=1e-4, rtol=0)


def _greedy(engine: Engine, prompts: list[list[int]], max_tokens: int = 6) -> list[list[int]]:
    states = [engine.submit(GenerationRequest(p, GREEDY, max_tokens=max_tokens, ignore_eos=True)) for p in prompts]
    while engine.step():
        pass
    assert all(s.finished and s.finish_reason == "length" for s in states), [s.error for s in states]
    return [s.seq.output_ids for s in states]


def test_engine_batches_chunks_and_preempts_sequences_with_state(bundle_cache):
    """Six prompts through 2 state slots, 4-token prefill chunks and a pool so small that
    sequences are preempted (their state dropped and recomputed): each gives the tokens it
    gives alone, and no page or slot is left held."""
    bundle = bundle_cache(LFM2, REFERENCE_ONLY)
    rng = np.random.default_rng(5)
    prompts = [[1, *rng.integers(3, 512, size=n).tolist()] for n in (3, 9, 14, 6, 11, 2)]
    alone = load_model(bundle, LoadOptions(device="ref", kv_max_sequences=1))
    expected = [_greedy(Engine(alone, SchedulerConfig(max_batch=1, max_batch_tokens=64)), [p])[0] for p in prompts]
    model = load_model(bundle, LoadOptions(device="ref", kv_max_sequences=2, kv_blocks=4, block_size=8, ctx_size=32))
    engine = Engine(model, SchedulerConfig(max_batch=4, max_batch_tokens=4))
    assert _greedy(engine, prompts) == expected
    counts = engine.counts()
    assert (counts["state_slots_used"], counts["state_slots_total"], counts["pages_used"]) == (0, 2, 0)
    assert engine.scheduler.num_preemptions > 0


def test_speculative_decoding_is_refused_for_models_with_state(bundle_cache):
    model = load_model(bundle_cache(LFM2, REFERENCE_ONLY), LoadOptions(device="ref"))
    with pytest.raises(ValueError, match="recurrent state"):
        Engine(model, SchedulerConfig(spec=SpecConfig(type=SpecType.NGRAM)))


def _second_after_first(bundle, device: str, first: list[int], second: list[int]):
    """Greedy `second` on an engine that ran `first` before it (recorded: what it fed, its logit
    rows), and on a fresh engine (recorded alike); the greedy tokens must agree.
    (engine, its recorder, the fresh one's, the checkpoints the engine saved running `first`)."""
    config = SchedulerConfig(max_batch=2, max_batch_tokens=64)
    fresh = load_model(bundle, LoadOptions(device=device))
    want = Recorder(fresh)
    expected = _greedy(Engine(fresh, config), [second])

    model = load_model(bundle, LoadOptions(device=device))
    engine = Engine(model, config)
    _greedy(engine, [first])
    saved = engine.blocks.checkpoints.saved
    got = Recorder(model)
    assert _greedy(engine, [second]) == expected
    return engine, got, want, saved


@pytest.mark.parametrize("device", ["ref", pytest.param("cpu", marks=pytest.mark.toolchain)])
@pytest.mark.parametrize("path", [LFM2, FIXTURES / "tiny-granitehybrid-Q8_0.gguf"], ids=["lfm2", "granitehybrid"])
def test_a_repeated_prefix_resumes_from_its_state_checkpoint(device, path, bundle_cache):
    """The second prompt shares 43 tokens with the first: it takes the two whole cached blocks
    and the state checkpointed after them (granitehybrid: Mamba2's conv windows and scan
    matrices), prefills 15 tokens instead of 47, and its logits are those of the same prompt run
    on a fresh engine, bit for bit."""
    bundle = bundle_cache(path) if device == "cpu" else bundle_cache(path, REFERENCE_ONLY)
    rng = np.random.default_rng(11)
    system = [1, *rng.integers(3, 512, size=40).tolist()]
    first, second = system + [5, 9], system + [17, 4, 8, 30, 2, 6]
    engine, got, want, _ = _second_after_first(bundle, device, first, second)
    assert engine.blocks.cache.hit_tokens == 32 and engine.blocks.checkpoints.restored == 1
    # the fresh run checkpoints at 32 too
    assert got.fed[0] == len(second) - 32 and want.fed[:2] == [32, len(second) - 32]
    np.testing.assert_array_equal(np.array(got.rows), np.array(want.rows))
    counts = engine.counts()
    assert (counts["state_slots_used"], counts["pages_used"]) == (0, 0)


@pytest.mark.parametrize("device", ["ref", pytest.param("cpu", marks=pytest.mark.toolchain)])
def test_a_prompt_with_another_question_resumes_from_an_earlier_checkpoint(device, bundle_cache):
    """A 90-token document, then a 20-token question, asked twice with different questions: the
    block ending at 96 holds question tokens, so the second prompt resumes from the checkpoint
    64 tokens before the end (at 32) and prefills 78 tokens instead of 110, logits bit for bit
    those of a fresh run of it."""
    bundle = bundle_cache(LFM2) if device == "cpu" else bundle_cache(LFM2, REFERENCE_ONLY)
    rng = np.random.default_rng(12)
    document = [1, *rng.integers(3, 512, size=89).tolist()]
    first, second = (document + rng.integers(3, 512, size=20).tolist() for _ in range(2))
    engine, got, want, saved = _second_after_first(bundle, device, first, second)
    assert saved == 2  # at 32 (64 tokens before the last) and at 96
    assert engine.blocks.checkpoints.restored == 1
    assert got.fed[:2] == [64, 14] and want.fed[:3] == [32, 64, 14]
    np.testing.assert_array_equal(np.array(got.rows), np.array(want.rows))
