"""A weight format is a row of the format table (artifacts/formats.py). A row added here, and
in no other table, reaches the codegen constants (the preludes' RFC_QK_/RFC_TS_/RFC_UNIT_/
RFC_ACT_, its row decoder and cpu steps), the cpu and GPU planners' block geometry, the
layout arithmetic and, as a layout row, the weight planner's repack policy. Nothing is
compiled: the fake format has no kernels to build (tests/kernels build the real ones)."""

import pytest

from rfc.artifacts.formats import FORMATS, GGUF_FORMATS, PLANAR_FORMATS, Kernels, WeightFormat, tensor_nbytes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
from rfc.compiler.codegen import CodegenInput, cpu, gpu, gpu_plan
from rfc.compiler.spec import HParams
from rfc.compiler.targets import parse_target
from rfc.compiler.weight_plan import layout_format
from rfc.compiler.weights import RowRange, WeightUse

# 64 elements in 40 bytes, int8 dots on the cpu (q8_32 activations), kernels on every target
FAKE = WeightFormat("FAKE", 64, 40, "q8_0", Kernels.CPU | Kernels.GPU, cpu_act="q8_32")
# its planar GPU layout: two planes
FAKE_P = WeightFormat(
    "FAKEp", 64, 40, "q8_0", Kernels.GPU, base="FAKE", ops=frozenset({"matmul", "moe_matmul"}), planes=(8, 32)
)
N, K = 24, 256


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(FORMATS, FAKE.name, FAKE)
    monkeypatch.setitem(FORMATS, FAKE_P.name, FAKE_P)


def _cpu_source() -> str:
    """The cpu library of a plan with one FAKE matmul (and no step program)."""
    hp = HParams(architecture="llama", name="fake", context_length=64, n_embd=K, n_ff=K, n_layers=1, n_heads=8,
                 n_kv_heads=8, head_dim=32, n_rot=32, rope_style="neox", rope_freq_base=1e4, rope_freq_scale=1.0,
                 rope_scaling_type="linear", rms_eps=1e-5, vocab_size=N, tied_embeddings=False, qkv_bias=False,
                 rope_freq_factors=False)  # fmt: skip
    plan = Plan(buffers=(Buffer("x", ("T", K)), Buffer("y", ("T", N))), ops=(Op("matmul", ("x",), ("y",), ("w",)),),
                kv=KVSpec(1, 8, 32), input_tokens="tokens", output_logits="y", output_hidden="x", vocab_size=N,
                n_embd=K, context_length=64)  # fmt: skip
    layout = WeightLayout(256, (TensorEntry("w", "w", "FAKE", (N, K), 0, tensor_nbytes("FAKE", (N, K)), ""),))
    return cpu.render_source(CodegenInput(parse_target("cpu"), hp, plan, layout, None, None), step=False)


def test_a_fake_row_reaches_the_cpu_constants_and_the_cpu_planner(fake):
    source = _cpu_source()
    for line in ("#define RFC_QK_FAKE 64", "#define RFC_TS_FAKE 40", "#define RFC_UNIT_FAKE 64",
                 "#define RFC_UNIT_BYTES_FAKE 40", "#define RFC_ACT_FAKE q8_32",
                 "RFC_STATIC_ASSERT(sizeof(rfc_block_fake) == RFC_TS_FAKE",
                 "RFC_DEFINE_DEQUANT_ROW(fake, RFC_QK_FAKE, RFC_TS_FAKE)",
                 "RFC_DEFINE_FLOAT_STEP(fake, RFC_QK_FAKE)", "RFC_DOT8_BY_STEPS(fake, RFC_UNIT_BYTES_FAKE)",
                 # the matmul the planner specialized: its step and activations from the row
                 "RFC_STATIC_ASSERT(RFC_UNIT_FAKE == 64 && RFC_UNIT_BYTES_FAKE == 40",
                 "rfc_matmul_fake("):  # fmt: skip
        assert line in source, line
    params = cpu._matmul_params("FAKE", cpu.CpuTuning())
    assert (params["unit"], params["unit_bytes"], params["act_elem_bytes"], params["tail"]) == (64, 40, 1, False)


def test_a_fake_row_reaches_the_gpu_constants_and_the_gpu_planner(fake):
    source = gpu.render_source(parse_target("sm_90"), [])
    for line in ("#define RFC_QK_FAKE 64", "#define RFC_TS_FAKE 40", "#define RFC_QK_FAKEp 64",
                 "#define RFC_TS_FAKEp 40", "RFC_DEFINE_DEQUANT_ROW(fake, RFC_QK_FAKE, RFC_TS_FAKE)"):  # fmt: skip
        assert line in source, line
    assert "RFC_UNIT_FAKE" not in source  # the cpu dot's steps are the cpu prelude's
    w = gpu_plan.weight_geometry("FAKEp", N, K)
    assert (w["qk"], w["ts"], w["blocks_per_row"], w["planar"], w["plane_offsets"]) == (64, 40, 4, True, [32])
    assert gpu_plan.is_int8("FAKE") and gpu_plan.is_int8("FAKEp")


def test_a_fake_layout_row_is_the_weight_planners_repack_policy(fake):
    assert "FAKE" in GGUF_FORMATS and "FAKEp" in PLANAR_FORMATS
    use = WeightUse("w", "w", "FAKE", (N, K), (RowRange("t", 0, N),))
    assert layout_format(use, {"matmul"}, Kernels.GPU) == "FAKEp"
    assert layout_format(use, {"matmul", "embed"}, Kernels.GPU) == "FAKE"  # the embed kernel reads GGUF rows
    assert layout_format(use, {"matmul"}, Kernels.CPU) == "FAKE"  # no cpu layout row
    assert tensor_nbytes("FAKEp", (N, K)) == N * (32 + 128)  # 4 blocks: planes of 4 x 8 and 4 x 32 bytes


def test_expert_tensors_take_an_x8_layout_where_an_expert_is_whole_groups():
    """[E, N, K] experts read by moe_matmul alone: repacked as E * N rows when N is whole groups
    of 8 (each expert's slice repacked), else GGUF (a group would span two experts)."""

    def use(fmt, shape):
        return WeightUse("w", "w", fmt, shape, (RowRange("t", 0, shape[0] * shape[1]),))

    assert layout_format(use("Q4_K", (4, 16, 256)), {"moe_matmul"}, Kernels.CPU) == "Q4_Kx8"
    assert layout_format(use("Q8_0", (4, 40, 64)), {"moe_matmul"}, Kernels.CPU) == "Q8_0x8"
    assert layout_format(use("Q4_K", (4, 12, 256)), {"moe_matmul"}, Kernels.CPU) == "Q4_K"
    # deepseek2's per-head matmuls
    assert layout_format(use("Q4_K", (4, 16, 256)), {"head_matmul"}, Kernels.CPU) == "Q4_K"
    assert layout_format(use("Q5_0", (4, 16, 64)), {"moe_matmul"}, Kernels.CPU) == "Q5_0"  # no x8 layout
    assert tensor_nbytes("Q4_Kx8", (4, 16, 256)) == 4 * 16 * 148


def test_the_table_is_back_to_its_rows_after_the_fake_ones():
    assert "FAKE" not in FORMATS and "FAKE" not in GGUF_FORMATS and "FAKEp" not in PLANAR_FORMATS
