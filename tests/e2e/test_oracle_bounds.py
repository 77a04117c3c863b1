"""Bounds that mean something (see tests/bounds.py): the reference device against the float64
oracle (tests/oracle.py), the cpu device against the reference at bounds derived per weight
format, and proof that a kernel 2% off fails each of them."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.targets import parse_target
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import device_bounds, oracle_bounds, rounding_kinds
from tests.conftest import FIXTURES, TINY_MODELS
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits
from tests.faults import scale_outputs
from tests.oracle import Oracle

pytestmark = pytest.mark.shared

# Fixtures the cpu target refuses (none today: every fixture architecture has cpu kernels).
CPU_REFUSED: tuple[str, ...] = ()
# Fixtures checked on the reference device only, for the suite's time: the 22-layer gemma3n step
# program takes ~47 s of CPU to build per weight format; its Q8_0 build is checked on cpu (bounds,
# llama.cpp, greedy), and the Q4_K / Q6_K cpu kernels its Q4_K_M file would add are the ones every
# other Q4_K_M fixture checks. Its Q4_K_M stays in test_reference_oracle's and the ref bounds.
CPU_FOR_TIME_REF_ONLY: tuple[str, ...] = ("tiny-gemma3n-Q4_K_M",)
CPU_MODELS = [n for n in TINY_MODELS if not n.startswith(CPU_REFUSED) and n not in CPU_FOR_TIME_REF_ONLY]
needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
)


@pytest.fixture(scope="session")
def oracle():
    """oracle(path, rounding={format: kind}) -> float64 teacher-forced logits over the
    fixture's tokens, cached per session."""
    cache: dict = {}

    def get(path: Path, rounding: dict[str, str] | None = None) -> np.ndarray:
        key = (str(path), tuple(sorted((rounding or {}).items())))
        if key not in cache:
            cache[key] = Oracle(path, act_rounding=rounding).logits(_tokens(path))
        return cache[key]

    return get


def _tokens(path: Path) -> list[int]:
    return np.load(path.with_suffix(".logits.npz"))["tokens"].tolist()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_reference_matches_the_float64_oracle(name, bundle_cache, oracle):
    path = FIXTURES / f"{name}.gguf"
    ref = teacher_forced_logits(bundle_cache(path, REFERENCE_ONLY), "ref", _tokens(path))
    ok, summary = oracle_bounds(name, ref, oracle(path))
    assert ok, summary


def test_phi3_long_context_rope_matches_the_oracle(bundle_cache, oracle, tmp_path):
    """LongRoPE as Phi-3 128k files carry it: factor tensors (the long set, since the context
    exceeds the original one) and rope.scaling.attn_factor; none is in the fixtures."""
    from tests.gguf_edit import rewrite_gguf

    src = FIXTURES / "tiny-phi3-F16.gguf"
    rng = np.random.default_rng(3)
    path = rewrite_gguf(src, tmp_path / "tiny-phi3-long.gguf",
                        metadata={"phi3.context_length": 8192, "phi3.rope.scaling.attn_factor": 1.19},
                        add_tensors={"rope_factors_long.weight": 1.0 + 3.0 * rng.random(16),
                                     "rope_factors_short.weight": np.ones(16)})  # fmt: skip
    shutil.copy(src.with_suffix(".logits.npz"), path.with_suffix(".logits.npz"))  # for the tokens
    bundle = bundle_cache(path, REFERENCE_ONLY)
    rope = next(op for op in load_model(bundle, LoadOptions(device="ref")).bundle.plan.ops if op.kind == "rope")
    assert rope.weights == ("rope_factors_long.weight",) and rope.attrs["attn_factor"] == pytest.approx(1.19)
    ref = teacher_forced_logits(bundle, "ref", _tokens(path))
    ok, summary = oracle_bounds(path.stem, ref, oracle(path))
    assert ok, summary
    assert np.abs(oracle(path) - oracle(src)).mean() > 0.05  # the factors and the attn_factor matter


@needs_cc
@pytest.mark.toolchain
def test_phi3_long_context_rope_on_the_cpu(bundle_cache, oracle, tmp_path):
    """The same LongRoPE file on the cpu step program (rope attn_factor 1.19), within its
    per-format bounds."""
    from tests.gguf_edit import rewrite_gguf

    src = FIXTURES / "tiny-phi3-F16.gguf"
    rng = np.random.default_rng(3)
    path = rewrite_gguf(src, tmp_path / "tiny-phi3-long-F16.gguf",
                        metadata={"phi3.context_length": 8192, "phi3.rope.scaling.attn_factor": 1.19},
                        add_tensors={"rope_factors_long.weight": 1.0 + 3.0 * rng.random(16),
                                     "rope_factors_short.weight": np.ones(16)})  # fmt: skip
    shutil.copy(src.with_suffix(".logits.npz"), path.with_suffix(".logits.npz"))
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary


def _latent_moe(tmp_path: Path, latent: int = 128) -> Path:
    """tiny-nemotron_h_moe with Nemotron 3 Super's latent MoE (none of the fixtures has one): its
    experts cut to a latent width (the first `latent` columns of up, rows of down: whole Q8_0
    blocks), ffn_latent_down [latent, 256] before them and ffn_latent_up [256, latent] after."""
    from tests.gguf_edit import rewrite_gguf

    src = FIXTURES / "tiny-nemotron_h_moe-Q8_0.gguf"
    cols = latent // 32 * 34  # Q8_0: 34 bytes per 32 values

    def cut(name, data, qtype):
        if name.endswith("ffn_up_exps.weight"):
            return data[..., :cols].copy(), qtype
        return (data[:, :latent].copy(), qtype) if name.endswith("ffn_down_exps.weight") else (data, qtype)

    rng = np.random.default_rng(26)
    extra = {
        f"blk.{i}.{n}.weight": rng.normal(0.0, 1.0 / np.sqrt(k), shape)
        for i in (1, 4)
        for n, shape, k in (("ffn_latent_down", (latent, 256), 256), ("ffn_latent_up", (256, latent), latent))
    }
    path = rewrite_gguf(src, tmp_path / "tiny-nemotron_h_moe-latent-Q8_0.gguf",
                        metadata={"nemotron_h_moe.moe_latent_size": latent}, tensor_fn=cut,
                        add_tensors=extra)  # fmt: skip
    shutil.copy(src.with_suffix(".logits.npz"), path.with_suffix(".logits.npz"))  # for the tokens
    return path


def test_nemotron_h_moe_latent_experts_match_the_oracle(bundle_cache, oracle, tmp_path):
    """The latent MoE (moe_latent_size: Nemotron 3 Super): ffn_latent_down, the experts in that
    width, their weighted sum, ffn_latent_up; the reference against the oracle."""
    path = _latent_moe(tmp_path)
    bundle = bundle_cache(path, REFERENCE_ONLY)
    ref = teacher_forced_logits(bundle, "ref", _tokens(path))
    ok, summary = oracle_bounds(path.stem, ref, oracle(path))
    assert ok, summary
    # the latent path matters
    assert np.abs(oracle(path) - oracle(FIXTURES / "tiny-nemotron_h_moe-Q8_0.gguf")).mean() > 0.05


@needs_cc
@pytest.mark.toolchain
@pytest.mark.slow  # its own cpu build: 24 s on two busy cores
def test_nemotron_h_moe_latent_experts_on_the_cpu(bundle_cache, oracle, tmp_path):
    """The latent MoE on the cpu step program (the experts' weighted sum not added to the
    residual but projected back by a matmul), within its per-format bounds."""
    path = _latent_moe(tmp_path)
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary


# LongRoPE on a llama file: llama's loader reads the long/short factors when the type says so
# (YaRN has a fixture of its own, tiny-qwen3yarn). llama.cpp 0.3.36 on this file against the
# oracle: max 0.016, mean 0.0024.
LONGROPE = {"llama.rope.scaling.type": "longrope", "llama.rope.scaling.original_context_length": 256,
            "llama.rope.scaling.attn_factor": 1.19}  # fmt: skip


def _longrope_llama(tmp_path: Path) -> Path:
    from tests.gguf_edit import rewrite_gguf

    src = FIXTURES / "tiny-llama-F16.gguf"
    factors = {
        "rope_factors_long.weight": 1.0 + 3.0 * np.random.default_rng(3).random(16),
        "rope_factors_short.weight": np.ones(16),
    }
    path = rewrite_gguf(src, tmp_path / "tiny-llamalongrope-F16.gguf", metadata=LONGROPE, add_tensors=factors)
    shutil.copy(src.with_suffix(".logits.npz"), path.with_suffix(".logits.npz"))  # for the tokens
    return path


def test_longrope_on_llama_matches_the_oracle(bundle_cache, oracle, tmp_path):
    path = _longrope_llama(tmp_path)
    bundle = bundle_cache(path, REFERENCE_ONLY)
    rope = next(op for op in load_model(bundle, LoadOptions(device="ref")).bundle.plan.ops if op.kind == "rope")
    assert rope.weights == ("rope_factors_long.weight",) and rope.attrs["attn_factor"] == pytest.approx(1.19)
    ok, summary = oracle_bounds(path.stem, teacher_forced_logits(bundle, "ref", _tokens(path)), oracle(path))
    assert ok, summary
    assert np.abs(oracle(path) - oracle(FIXTURES / "tiny-llama-F16.gguf")).mean() > 0.05  # the scaling matters


@needs_cc
@pytest.mark.toolchain
def test_longrope_on_llama_on_the_cpu(bundle_cache, oracle, tmp_path):
    path = _longrope_llama(tmp_path)
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary


# DeepSeek-V2-Lite's shape: no Q compression (attention.q_lora_rank 0), the query straight from
# attn_q; the tiny fixture with its Q path replaced (a random F32 attn_q per layer).
def _deepseek2_lite(tmp_path: Path) -> Path:
    from tests.gguf_edit import rewrite_gguf

    src = FIXTURES / "tiny-deepseek2-F16.gguf"
    rng = np.random.default_rng(5)
    q = {f"blk.{i}.attn_q.weight": rng.standard_normal((4 * 64, 256)) / 16 for i in range(2)}
    drop = tuple(f"blk.{i}.attn_q_{x}.weight" for i in range(2) for x in ("a", "a_norm", "b"))
    path = rewrite_gguf(src, tmp_path / "tiny-deepseek2lite-F16.gguf", metadata={"deepseek2.attention.q_lora_rank": 0},
                        drop_tensors=drop, add_tensors=q)  # fmt: skip
    shutil.copy(src.with_suffix(".logits.npz"), path.with_suffix(".logits.npz"))  # for the tokens
    return path


def test_deepseek2_lite_shape_matches_the_oracle(bundle_cache, oracle, tmp_path):
    path = _deepseek2_lite(tmp_path)
    ref = teacher_forced_logits(bundle_cache(path, REFERENCE_ONLY), "ref", _tokens(path))
    ok, summary = oracle_bounds(path.stem, ref, oracle(path))
    assert ok, summary
    assert np.abs(oracle(path) - oracle(FIXTURES / "tiny-deepseek2-F16.gguf")).mean() > 0.5  # another Q path


@needs_cc
@pytest.mark.toolchain
@pytest.mark.slow  # a cpu build of its own (~20 s on two busy cores)
def test_deepseek2_lite_shape_on_the_cpu(bundle_cache, oracle, tmp_path):
    path = _deepseek2_lite(tmp_path)
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary


def _cpu_check(path: Path, bundle, oracle, fault=None) -> tuple[bool, str]:
    tokens = _tokens(path)
    model = load_model(bundle, LoadOptions(device="cpu"))
    executor = model.executor
    if fault is not None:
        # The step program runs a whole step in one call: a fault goes into the same
        # library's per-op kernels, interpreted op by op (the building blocks of the step).
        from rfc.runtime.engine.executor import Executor
        from tests.kernels.kit.cpu import CpuOpDevice

        ops = CpuOpDevice(model.bundle, model.device_choice.target, model.bundle.plan.kv, model.kv_pool.num_blocks,
                       model.kv_pool.block_size)  # fmt: skip
        scale_outputs(ops, fault)
        executor = Executor(model.bundle.plan, ops)
    from rfc.runtime.engine.batch import ScheduledChunk, build_batch

    blocks = model.kv_pool.manager()
    blocks.allocate(0, len(tokens))
    cpu = executor.forward(build_batch([ScheduledChunk(0, 0, tuple(tokens), all_logits=True)], blocks))
    ref = teacher_forced_logits(bundle, "ref", tokens)
    formats = {t.format for t in model.bundle.layout.tensors}
    kinds = rounding_kinds(parse_target(model.device_choice.target), formats)
    rounding = oracle(path, kinds) - oracle(path) if kinds else None
    return device_bounds(path.stem, cpu, ref, rounding)


@needs_cc
@pytest.mark.toolchain
@pytest.mark.parametrize("name", CPU_MODELS)
def test_cpu_within_its_per_format_bounds(name, bundle_cache, oracle):
    path = FIXTURES / f"{name}.gguf"
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary


def _weight_format(bundle_dir: Path, fmt: str):
    """Selects the matmuls whose weight is stored in `fmt`."""
    from rfc.artifacts.bundle import open_bundle

    entries = open_bundle(bundle_dir).layout.by_name()
    return lambda op: op.kind == "matmul" and entries[op.weights[0]].format == fmt


@needs_cc
@pytest.mark.toolchain
@pytest.mark.parametrize(
    "name,fmt",
    [
        ("tiny-llama-Q4_K_M", "Q6_Kx8"),  # the minority format: output, some attn_v and ffn_down (Q6_K repacked)
        ("tiny-llama-Q3_K_M", "Q5_Kx8"),  # two tensors of a format the cpu kernels do not round (Q5_K repacked)
        ("tiny-llama-F16", "F16"),
        ("tiny-llama-IQ_MIX", "IQ1_M"),  # one 768 x 256 matrix (ffn_up of layer 0)
        ("tiny-llama-IQ_MIX", "IQ4_XSx8"),  # the output and an ffn_up (repacked for the cpu)
    ],
)
def test_a_cpu_kernel_2_percent_off_fails(name, fmt, bundle_cache, oracle):
    path = FIXTURES / f"{name}.gguf"
    bundle = bundle_cache(path, op_exports=True)  # the kit calls each op's kernel
    ok, summary = _cpu_check(path, bundle, oracle, fault=_weight_format(bundle, fmt))
    assert not ok, f"a {fmt} matmul kernel 2% off passed: {summary}"


@needs_cc
@pytest.mark.toolchain
def test_a_cpu_expert_matmul_2_percent_off_fails(bundle_cache, oracle):
    path = FIXTURES / "tiny-mixtral-Q4_K_M.gguf"
    bundle = bundle_cache(path, op_exports=True)
    ok, summary = _cpu_check(path, bundle, oracle, fault=lambda op: op.kind == "moe_matmul" and "down" in op.weights[0])
    assert not ok, f"an expert matmul 2% off passed: {summary}"


@pytest.mark.parametrize(
    "name,which",
    [
        ("tiny-gemma2-F16", "blk.1.post_attention_norm.weight"),  # inside a sublayer, gemma's post-norms undo a scale
        ("tiny-gemma2-Q8_0", "softcap"),
        ("tiny-gemma3-Q8_0", "blk.0.attn_q_norm.weight"),
        ("tiny-gemma4-Q8_0", "scale"),  # layer 0's layer_output_scale
        ("tiny-mixtral-Q8_0", "moe_combine"),
        ("tiny-qwen3-Q8_0", "blk.0.attn_v.weight"),
        ("tiny-deepseek2-Q8_0", "blk.1.attn_k_b.weight"),  # head_matmul: the query into latent space
        ("tiny-deepseek2-Q8_0", "blk.0.attn_v_b.weight"),  # head_matmul with a stride: the latent output per head
        ("tiny-deepseek2-Q8_0", "concat_heads"),  # the first: layer 0's query [latent, rope]
    ],
)
def test_a_reference_kernel_2_percent_off_fails(name, which, bundle_cache, oracle):
    """One op of one layer (selected by kind or by its weight) 2% off."""
    path = FIXTURES / f"{name}.gguf"
    model = load_model(bundle_cache(path, REFERENCE_ONLY), LoadOptions(device="ref"))
    first = next(op for op in model.bundle.plan.ops if op.kind == which or which in op.weights)
    scale_outputs(model.device, lambda op: op is first)
    from rfc.runtime.engine.batch import ScheduledChunk, build_batch

    tokens = _tokens(path)
    blocks = model.kv_pool.manager()
    blocks.allocate(0, len(tokens))
    ref = model.executor.forward(build_batch([ScheduledChunk(0, 0, tuple(tokens), all_logits=True)], blocks))
    ok, summary = oracle_bounds(name, ref, oracle(path))
    assert not ok, f"{which} 2% off passed: {summary}"
