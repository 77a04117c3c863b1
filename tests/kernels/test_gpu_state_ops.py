"""The kernels of models with recurrent state on the GPU targets, without a GPU: qwen35's
Gated DeltaNet (ssm_conv, gated_delta_net, the sigmoid output gate) and lfm2's short_conv.
The runtime's GpuDevice (the bound step program, its state pool in device memory) over the
emulated kernels (gpu_emulator.py) against the reference device, both with state slots: a
40-token prefill of one sequence beside a 7-token one, then decode steps of both (each
continuing from the state its slot holds). Bounds: tests/bounds.py device_bounds for the GPU's
int8 activation rounding (the oracle's "q8_32"), as the other whole-model GPU tests; the greedy
token of every decode step is the reference's (or one within what that rounding can move, as
there). And the kernels use no local memory on sm_90 and gfx90a (what the cubin / code
object records, as test_gpu_resources checks the hot kernels).

The default run leaves out (`exhaustive`) what another fixture's run repeats: lfm2moe's
prefill and decode (lfm2's short_conv, the routed experts that the MoE fixtures of
test_gpu_kernels check) and nemotron_h's (its Mamba2 mixers are nemotron_h_moe's, whose run
adds the experts), and the builds of AS_CHECKED and the sm_90 ones of SM90_EXHAUSTIVE."""

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.targets import target_entry
from rfc.compiler.codegen.gpu_usage import bundle_usage
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.kv_cache import BlockManager
from tests.bounds import device_bounds
from tests.conftest import FIXTURES, shared_basetemp
from tests.kernels.gpu_emulator import emulated_step_device, load_emulated, needs_emulator
from tests.kernels.test_gpu_kernels import _assert_same_greedy_token
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, gpu_rounding, toolchain_marks  # noqa: F401

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

# each fixture and the kernels its state ops compile to (one each, shared by the layers)
STATE_KERNELS = {
    "qwen35-Q8_0": ("rfc_ssm_conv", "rfc_gated_delta_net", "rfc_glu_sigmoid"),
    "qwen35moe-Q8_0": ("rfc_ssm_conv", "rfc_gated_delta_net", "rfc_glu_sigmoid_row"),  # with its shared expert's gate
    "lfm2-Q8_0": ("rfc_short_conv",),
    "granitehybrid-Q8_0": ("rfc_ssm_conv", "rfc_ssm_scan"),  # Mamba2: the conv with its bias, the scan
    # 2 groups; relu^2 MLP
    "nemotron_h-Q8_0": ("rfc_ssm_conv", "rfc_ssm_scan", "rfc_rmsnorm_2x256_segw", "rfc_glu_relu"),
    "lfm2moe-Q8_0": ("rfc_short_conv",),  # lfm2's operators with sigmoid-routed experts
    # nemotron_h's mixers; its experts' relu(u)^2 over 4 slots of 256 and the shared expert's 512,
    # the router: sigmoid with a selection bias, renormalized and scaled by 2.5
    "nemotron_h_moe-Q8_0": ("rfc_glu_relu_1024", "rfc_glu_relu_512", "rfc_moe_route_8_4_sigmoid_bias_scaled"),
}
# fixtures whose state kernels another fixture's build compiles the same (width, kernel size)
AS_CHECKED = {"lfm2moe-Q8_0": "lfm2-Q8_0"}
# fixtures whose sm_90 build (~40 s on two busy cores) runs only in the exhaustive run: their
# state kernels are another fixture's, the rest checked when they were added (nemotron_h_moe: all
# 33 sm_90 kernels without stack or spills)
SM90_EXHAUSTIVE = {"nemotron_h_moe-Q8_0"}
# fixtures whose emulated prefill and decode another fixture's repeats (the docstring says whose)
EMULATED_EXHAUSTIVE = {"lfm2moe-Q8_0", "nemotron_h-Q8_0"}
NUM_BLOCKS, BLOCK_SIZE, SLOTS = 16, 16, 4


def _models(exhaustive: set[str]) -> list:
    return [pytest.param(m, marks=[pytest.mark.exhaustive] if m in exhaustive else []) for m in sorted(STATE_KERNELS)]


@pytest.mark.parametrize("target", [pytest.param("gfx90a", marks=toolchain_marks("gfx90a"))])
@pytest.mark.parametrize("model", _models(EMULATED_EXHAUSTIVE))
def test_prefill_and_decode_match_reference(model, target, gpu_bundle, tmp_path_factory):
    bundle = open_bundle(gpu_bundle(model, target))
    kv = bundle.plan.kv
    gpu = emulated_step_device(
        bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    ref = ReferenceDevice(bundle, kv, NUM_BLOCKS, BLOCK_SIZE)
    gpu.alloc_state(SLOTS)
    ref.alloc_state(SLOTS)
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE, prefix_caching=False, state_slots=SLOTS)
    tokens = np.load(FIXTURES / f"tiny-{model}.logits.npz")["tokens"].tolist()
    seqs = [tokens[:40], tokens[40:47]]
    formats = {t.format for t in bundle.layout.tensors}

    def step(chunks):
        for c in chunks:
            blocks.allocate(c.seq_id, c.start + len(c.tokens))
        batch = build_batch(chunks, blocks)
        return gpu.forward(batch), ref.forward(batch)

    prompt_lens = [len(s) for s in seqs]
    steps = [step([ScheduledChunk(i, 0, tuple(s), all_logits=True) for i, s in enumerate(seqs)])]
    for n in range(3):  # decode: each sequence's next greedy token, from the state in its slot
        want = steps[-1][1]
        nxt = [int(want[-1 if i else len(seqs[0]) - 1].argmax()) if n == 0 else int(want[i].argmax()) for i in range(2)]
        chunks = [ScheduledChunk(i, len(s), (t,)) for i, (s, t) in enumerate(zip(seqs, nxt))]
        for s, t in zip(seqs, nxt):
            s.append(t)
        steps.append(step(chunks))
    # The rounding's D teacher-forced once per sequence over all its tokens: a position's logits
    # depend on the tokens up to it alone, so row p is what each step's own prefix gives (the
    # float64 oracle is most of this test's time when run per step).
    d = [gpu_rounding(model, formats, s) for s in seqs]
    got, want = steps[0]
    ok, msg = device_bounds(model, got, want, np.concatenate([di[:p] for di, p in zip(d, prompt_lens)]))
    assert ok, msg
    for n, (got, want) in enumerate(steps[1:]):
        rounding = np.stack([di[p + n] for di, p in zip(d, prompt_lens)])
        ok, msg = device_bounds(model, got, want, rounding)
        assert ok, f"decode step {n}: {msg}"
        for g, w, r in zip(got, want, rounding):
            _assert_same_greedy_token(g, w, r, f"decode step {n}")
    gpu.close()


def _usage_exhaustive(model: str, target: str) -> bool:
    return model in AS_CHECKED or (target == "sm_90" and model in SM90_EXHAUSTIVE)


@pytest.mark.parametrize(
    "model,target",
    [
        pytest.param(m, t, marks=toolchain_marks(t) + [pytest.mark.exhaustive] * _usage_exhaustive(m, t))
        for t in ("sm_90", "gfx90a")
        for m in sorted(STATE_KERNELS)
    ],
)
def test_state_kernels_use_no_local_memory(model, target, gpu_bundle):
    bundle = open_bundle(gpu_bundle(model, target))
    usage = bundle_usage(bundle, target_entry(bundle.manifest, target))
    ours = {n: u for n, u in usage.items() if n.startswith(STATE_KERNELS[model])}
    # one kernel each, shared by the layers; a gated activation before an int8 tensor-core matmul also
    # has the prefill list's twin that rounds its output for it (gpu_plan.GLU_Q8)
    assert len({n.removesuffix("_q8") for n in ours}) == len(STATE_KERNELS[model]), sorted(usage)
    bad = [u.local_memory() for u in ours.values() if u.uses_local_memory]
    assert not bad, bad


def _greedy_with_logprobs(engine, prompt: list[int], n: int = 6) -> list[tuple[int, float]]:
    """`prompt`'s greedy tokens on `engine`, each with its logprob (sampled on the device)."""
    from rfc.runtime.engine.engine import GenerationRequest
    from rfc.runtime.sampling.sampler import SamplingParams

    state = engine.submit(
        GenerationRequest(prompt, SamplingParams(temperature=0.0), max_tokens=n, ignore_eos=True, logprobs=0)
    )
    while engine.step() or engine._queued is not None:
        pass
    assert state.finish_reason == "length", state.error
    events = []
    while not state.events.empty():
        events.append(state.events.get())
    return [(e.token, e.logprob) for e in events if e.token is not None]


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_a_repeated_prefix_resumes_from_its_state_checkpoint_on_the_device(target, gpu_bundle, tmp_path_factory):
    """Prefix caching with state on the GPU (GpuDevice.copy_state: slot copies on the step
    stream): qwen35's second prompt shares 41 tokens with the first, takes the two cached blocks
    of 16 and the Gated DeltaNet and conv state checkpointed after them (copied into its slot,
    which still holds the first request's state), prefills 15 tokens instead of 47, and its greedy
    tokens and their logprobs are those of the same prompt on a fresh engine, bit for bit (which
    also ends a chunk at 32)."""
    from rfc.runtime.engine.engine import Engine
    from rfc.runtime.engine.scheduler import SchedulerConfig

    bundle_dir = gpu_bundle("qwen35-Q8_0", target)
    build_dir = shared_basetemp(tmp_path_factory) / "gpu-emu"
    rng = np.random.default_rng(11)
    system = [1, *rng.integers(3, 512, size=40).tolist()]
    first, second = system + [5, 9], system + [17, 4, 8, 30, 2, 6]
    config = SchedulerConfig(max_batch=2, max_batch_tokens=64)
    models = [load_emulated(bundle_dir, target, build_dir, block_size=BLOCK_SIZE) for _ in range(2)]
    try:
        fresh, model = (Engine(m, config) for m in models)
        assert model.blocks.checkpoints is not None  # the device copies state: checkpoints kept
        want = _greedy_with_logprobs(fresh, second)
        _greedy_with_logprobs(model, first)
        fed = []
        forward = models[1].executor.launch_sampled

        def recording(batch, rows, feed=()):
            fed.append(batch.num_tokens)
            return forward(batch, rows, feed)

        models[1].executor.launch_sampled = recording
        assert _greedy_with_logprobs(model, second) == want
        assert model.blocks.cache.hit_tokens == 32 and model.blocks.checkpoints.restored == 1
        assert fed[0] == len(second) - 32
        slots = models[1].executor.device.runner.state_slots  # the sequences' and the checkpoints'
        with pytest.raises(DeviceError, match=f"outside the {slots} "):
            models[1].executor.device.copy_state([0], [slots])
    finally:
        for m in models:
            m.executor.device.close()


@pytest.mark.parametrize(
    "name,target",
    [
        pytest.param("mamba2-dense", "gfx90a", marks=toolchain_marks("gfx90a")),
        # Mamba-1's scan with a decay per channel and state (gpu_ssm_scan1.hip.j2), Falcon-Mamba's dt/B/C norms
        pytest.param("mamba-falcon", "sm_90", marks=toolchain_marks("sm_90")),
        # Kimi Delta Attention (gated_delta_net with a decay per key channel) beside RoPE-less MLA layers
        pytest.param("kimi-linear-heads", "gfx1100", marks=toolchain_marks("gfx1100")),
        # PLaMo 2's Mamba layers (one group, normed B, C and dt) beside attention layers normed per head
        pytest.param("plamo2-dense", "sm_90", marks=toolchain_marks("sm_90")),
        # MiniMax-01's lightning attention (linear attention decaying per head) in two layers of two slope scales
        pytest.param("minimax-01-deep", "gfx90a", marks=toolchain_marks("gfx90a")),
        # Ling 3's KDA safe gate (a lower-bounded sigmoid decay) beside rotated, head-gated MLA layers
        pytest.param("bailingmoe3-tight", "sm_90", marks=toolchain_marks("sm_90")),
        # RWKV-6's WKV (a bonus, decays per key channel) and token shifts, its data-dependent lerps, group norms
        pytest.param("rwkv6-dense", "gfx1100", marks=toolchain_marks("gfx1100")),
        # QRWKV6's gated linear attention over K/V heads shared by two receptance heads, RMS norms, one shift
        pytest.param("rwkv6qwen2-dense", "sm_90", marks=toolchain_marks("sm_90")),
        # RWKV-7's time mix (kk, k', a', the bonus), the value residual, sigmoid and bilinear gates
        pytest.param("rwkv7-dense", "gfx90a", marks=toolchain_marks("gfx90a")),
        # Kimi-K3's residual mixes over up to four banked streams (put_cols, res_mix), situ's bending tanh, the
        # KDA decay of -ssm_a beside gated MLA layers
        pytest.param("kimi-k3-deep", "gfx1100", marks=toolchain_marks("gfx1100")),
        # its saver file: the latent experts (routed down, normed sum, up) on the other vendor's kernels
        pytest.param("kimi-k3-moe", "sm_90", marks=toolchain_marks("sm_90")),
        # GLM5-Next's mHC streams (sharpened mixes: hc_gates without the post eps, hc_comb's Sinkhorn iterations,
        # hc_mix_post, hc_mean) around a KDA layer and a nope-only latent attention layer
        pytest.param("glm5-next-sharp", "gfx90a", marks=toolchain_marks("gfx90a")),
    ],
)
def test_recurrent_saver_files(name, target, gpu_build_cache, tmp_path):
    """Recurrent layers in llama.cpp's saver files (tests/e2e/test_llama_archs.py): mamba2's, mamba's and the
    RWKVs', plans whose KV cache has no layers (their whole context in the state), and kimi-linear's,
    bailingmoe3's, kimi-k3's, glm5-next's, plamo2's and minimax-01's beside attention layers. The step program
    binds, and a prompt, a decode step continuing from the slot's state and a step of two sequences (a second
    prompt beside the first sequence's next token) match the reference (the files' weights are F32: no
    activation rounding, the single-op bound of test_gpu_kernels)."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_llama_archs import _model
    from tests.kernels.test_gpu_kernels import _close

    out = tmp_path / "bundle"
    model = _model(name, tmp_path)
    emulator_compile(CompileOptions(model=model, out_dir=out, targets=(target,), cache_dir=gpu_build_cache))
    bundle = open_bundle(out)
    kv = bundle.plan.kv
    assert (kv.n_layers == 0) == name.startswith(("mamba", "rwkv"))
    gpu = emulated_step_device(bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, tmp_path / "gpu-emu")
    ref = ReferenceDevice(bundle, kv, NUM_BLOCKS, BLOCK_SIZE)
    gpu.alloc_state(SLOTS)
    ref.alloc_state(SLOTS)
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE, prefix_caching=False, state_slots=SLOTS)
    # a prompt, a decode step continuing from the slot's state, then a step of two sequences: a second prompt
    # beside the first sequence's next token (each sequence's rows and state its own)
    steps = ([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)], [ScheduledChunk(0, 13, (7,))],
             [ScheduledChunk(1, 0, (5, 9, 2, 31, 8), all_logits=True), ScheduledChunk(0, 14, (11,))])  # fmt: skip
    for chunks in steps:
        for chunk in chunks:
            blocks.allocate(chunk.seq_id, chunk.start + len(chunk.tokens))
        batch = build_batch(chunks, blocks)
        ok, msg = _close(gpu.forward(batch), ref.forward(batch))
        assert ok, msg
    gpu.close()
