"""The optional tensors llama.cpp applies to a llama model, applied: a `.bias` on every matmul its
llama graph adds one to (q, k, v, attention output, gate, up, down), the per-tensor weight
`.scale` it multiplies into a matmul's output (build_lora_mm's w_s; negative ones too; in the
FFN after the bias, as build_ffn orders them), and `.input_scale`, which llama.cpp loads and
never applies. Before, such a file compiled and gave wrong logits without a word; now the
reference device matches the float64 oracle (tests/oracle.py, which applies them as llama.cpp's
graph does), and the logits differ from the file without them. Architectures whose graph passes
build_ffn fewer of them (qwen2: none) leave the FFN's weight scales unused and refuse its biases."""

import shutil

import numpy as np
import pytest

from tests.bounds import device_bounds, oracle_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits
from tests.gguf_edit import rewrite_gguf
from tests.oracle import Oracle

pytestmark = pytest.mark.shared

NAME = "tiny-llama-F32"  # 256 wide, FFN 768, Q 256, K/V 64, vocabulary 512


def _extras() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)

    def bias(n: int) -> np.ndarray:
        return rng.normal(0.0, 0.2, n).astype(np.float32)

    return {
        "blk.0.attn_q.bias": bias(256),
        "blk.0.attn_output.bias": bias(256),
        "blk.0.ffn_gate.bias": bias(768),
        "blk.0.ffn_up.bias": bias(768),
        "blk.0.ffn_down.bias": bias(256),  # with its .scale: the bias first, then the scale
        "blk.1.ffn_down.bias": bias(256),
        "blk.0.attn_q.scale": np.array([0.5], np.float32),
        "blk.1.attn_v.scale": np.array([-1.25], np.float32),
        "blk.0.ffn_down.scale": np.array([1.5], np.float32),
        "blk.1.ffn_up.scale": np.array([1.0], np.float32),  # neutral: no op
        "output.scale": np.array([0.75], np.float32),
        "blk.0.attn_k.input_scale": np.array([3.0], np.float32),  # loaded and never applied by llama.cpp
    }


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    """The fixture with the extra tensors, written once (bundle_cache compiles it once per target)."""
    return rewrite_gguf(
        FIXTURES / f"{NAME}.gguf", tmp_path_factory.mktemp("extras") / "extras.gguf", add_tensors=_extras()
    )


def test_biases_and_weight_scales_are_applied(bundle_cache, extras):
    src, model = FIXTURES / f"{NAME}.gguf", extras
    tokens = np.load(FIXTURES / f"{NAME}.logits.npz")["tokens"].tolist()
    ref = teacher_forced_logits(bundle_cache(model, REFERENCE_ONLY), "ref", tokens)
    ok, summary = oracle_bounds(NAME, ref, Oracle(model).logits(tokens))
    assert ok, summary
    plain = teacher_forced_logits(bundle_cache(src, REFERENCE_ONLY), "ref", tokens)
    assert np.abs(ref - plain).mean() > 0.1  # the extras change the logits: the test can fail


@pytest.mark.toolchain
@pytest.mark.skipif(
    shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
)
def test_the_cpu_step_program_applies_them_too(bundle_cache, extras):
    """The same file on the cpu device (its step program: a negative scale literal, the biases)
    within the cpu's bounds of the reference device."""
    model = extras
    tokens = np.load(FIXTURES / f"{NAME}.logits.npz")["tokens"].tolist()
    ref = teacher_forced_logits(bundle_cache(model, REFERENCE_ONLY), "ref", tokens)
    cpu = teacher_forced_logits(bundle_cache(model), "cpu", tokens)
    ok, summary = device_bounds(NAME, cpu, ref, None)
    assert ok, summary


# Recipes that build their own attention (hunyuan's Q/K norms after RoPE) or whose graph leaves
# attn_output.bias out (ernie4_5, falcon-h1: llama.cpp's build_attn(wo, NULL)), falcon-h1's Mamba2
# mixer beside its attention, with the biases their loaders
# read and weight scales, negative ones among them. Against the float64 oracle, which applies them
# as those graphs do.
def _new_arch_extras(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)

    def bias(n: int) -> np.ndarray:
        return rng.normal(0.0, 0.2, n).astype(np.float32)

    extras = {  # every fixture here: 256 wide, FFN 512, Q 256, K/V 128, vocabulary 512
        "blk.0.attn_q.scale": np.array([-0.75], np.float32),
        "blk.1.attn_k.scale": np.array([1.5], np.float32),
        "blk.0.attn_v.scale": np.array([-1.25], np.float32),
        "blk.1.attn_output.scale": np.array([0.5], np.float32),
        "blk.0.ffn_up.scale": np.array([1.25], np.float32),
        "blk.1.ffn_down.scale": np.array([-0.5], np.float32),
        "blk.0.attn_output.bias": bias(256),
        "output.scale": np.array([-0.8], np.float32),
    }
    if name == "tiny-ernie4_5-Q8_0":  # Q/K/V biases too (the hunyuan fixture has them)
        extras |= {"blk.0.attn_q.bias": bias(256), "blk.1.attn_v.bias": bias(128)}
    if name == "tiny-falcon-h1-Q8_0":  # the Mamba2 mixer's projections: ssm_in's scale scales z, xBC and dt
        extras |= {
            "blk.0.ssm_in.scale": np.array([-0.5], np.float32),
            "blk.1.ssm_out.scale": np.array([1.5], np.float32),
        }
    return extras


@pytest.mark.parametrize("name", ["tiny-hunyuan-dense-Q8_0", "tiny-ernie4_5-Q8_0", "tiny-falcon-h1-Q8_0"])
def test_recipes_with_their_own_attention_apply_them(bundle_cache, tmp_path, name):
    src = FIXTURES / f"{name}.gguf"
    model = rewrite_gguf(src, tmp_path / f"{name}-extras.gguf", add_tensors=_new_arch_extras(name))
    tokens = np.load(FIXTURES / f"{name}.logits.npz")["tokens"].tolist()
    ref = teacher_forced_logits(bundle_cache(model, REFERENCE_ONLY), "ref", tokens)
    ok, summary = oracle_bounds(name, ref, Oracle(model).logits(tokens))
    assert ok, summary
    plain = teacher_forced_logits(bundle_cache(src, REFERENCE_ONLY), "ref", tokens)
    assert np.abs(ref - plain).mean() > 0.1  # the extras change the logits: the test can fail


def test_an_ffn_weight_scale_the_graph_does_not_pass_is_unused(bundle_cache, tmp_path):
    """qwen2's llama.cpp graph passes build_ffn no bias and no scale: a `.scale` there (which
    llama.cpp's loader reads for every weight) changes nothing, and a bias there is refused."""
    from rfc.compiler.errors import CompileError
    from rfc.compiler.pipeline import CompileOptions, compile_model

    src = FIXTURES / "tiny-qwen2-F32.gguf"
    tokens = np.load(FIXTURES / "tiny-qwen2-F32.logits.npz")["tokens"].tolist()
    scaled = rewrite_gguf(
        src, tmp_path / "scaled.gguf", add_tensors={"blk.0.ffn_down.scale": np.array([1.5], np.float32)}
    )
    got = teacher_forced_logits(bundle_cache(scaled, REFERENCE_ONLY), "ref", tokens)
    assert np.array_equal(got, teacher_forced_logits(bundle_cache(src, REFERENCE_ONLY), "ref", tokens))
    biased = rewrite_gguf(src, tmp_path / "biased.gguf", add_tensors={"blk.0.ffn_up.bias": np.zeros(768, np.float32)})
    with pytest.raises(CompileError, match="blk.0.ffn_up.bias"):
        compile_model(CompileOptions(model=biased, out_dir=tmp_path / "bundle", targets=()))
