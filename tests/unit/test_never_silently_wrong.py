"""A model is compiled exactly or refused: every tensor of the file is consumed by the plan or
named by the recipe as known and unused, every math-changing key is applied or at its neutral
value, and metadata arrays are bounded as llama.cpp bounds them (per-layer arrays of up to 512
entries as its model saver writes them, fixed-size ones by their size, keys no recipe reads
never decoded). Plans are inspected directly (no kernels, no device)."""

import numpy as np
import pytest
from gguf import GGUFValueType

from rfc.artifacts.plan import pack_plan
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from tests.conftest import FIXTURES
from tests.gguf_edit import assert_spec_refused, put_raw_array, rewrite_gguf, spec_of

pytestmark = pytest.mark.shared

LLAMA = FIXTURES / "tiny-llama-F32.gguf"  # 2 layers, 8 heads, 2 KV heads, FFN 768


def _u32_array(src, dst, key: str, values) -> object:
    payload = np.asarray(values, dtype="<u4").tobytes()
    return put_raw_array(src, dst, key, GGUFValueType.UINT32, len(values), payload)


def test_a_tensor_no_recipe_uses_is_refused_by_name(tmp_path):
    extra = {"blk.1.attn_mystery.weight": np.ones((4, 256), np.float32)}
    assert_spec_refused(
        LLAMA, tmp_path, {"add_tensors": extra}, "tensor blk.1.attn_mystery.weight is not used by rfc's llama recipe"
    )


def test_a_bias_the_recipe_does_not_read_is_refused(tmp_path):
    """RMS norms have no bias: a LayerNorm's bias in a file is refused, not run without it."""
    extra = {"blk.0.attn_norm.bias": np.ones(256, np.float32), "blk.1.ffn_norm.bias": np.ones(256, np.float32)}
    with pytest.raises(CompileError) as e:
        spec_of(FIXTURES / "tiny-gemma2-F16.gguf", tmp_path, add_tensors=extra)
    assert "tensor blk.0.attn_norm.bias (and 1 more) is not used by rfc's gemma2 recipe" in str(e.value), e.value


def test_an_input_scale_is_known_and_unused(tmp_path):
    """llama.cpp loads a matmul's .input_scale and never applies it: the plan is unchanged."""
    spec = spec_of(LLAMA, tmp_path, add_tensors={"blk.0.attn_k.input_scale": np.array([4.0], np.float32)})
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(LLAMA)).plan)


def test_a_weight_scale_scales_the_matmul_before_its_bias(tmp_path):
    extra = {
        "blk.0.attn_q.scale": np.array([-0.5], np.float32),
        "blk.0.attn_q.bias": np.ones(256, np.float32),
        "blk.1.ffn_down.scale": np.array([1.0], np.float32),
    }  # neutral: consumed, no op
    ops = spec_of(LLAMA, tmp_path, add_tensors=extra).plan.ops
    i = next(i for i, op in enumerate(ops) if op.weights == ("blk.0.attn_q.weight",))
    assert [(op.kind, op.attrs.get("factor"), op.weights) for op in ops[i + 1 : i + 3]] == [
        ("scale", -0.5, ()),
        ("add_bias", None, ("blk.0.attn_q.bias",)),
    ]
    assert sum(op.kind == "scale" for op in ops) == 1


def test_a_weight_scale_must_be_one_f32(tmp_path):
    assert_spec_refused(
        LLAMA,
        tmp_path,
        {"add_tensors": {"blk.0.ffn_up.scale": np.ones(2, np.float32)}},
        "blk.0.ffn_up.scale is F32 [2], not one F32 value",
    )


def test_an_ffn_bias_is_added_before_the_weight_scale(tmp_path):
    """llama.cpp's build_ffn: matmul, + bias, * scale (attention's build_lora_mm: scale, then bias)."""
    extra = {"blk.0.ffn_down.scale": np.array([-0.5], np.float32), "blk.0.ffn_down.bias": np.ones(256, np.float32)}
    ops = spec_of(LLAMA, tmp_path, add_tensors=extra).plan.ops
    i = next(i for i, op in enumerate(ops) if op.weights == ("blk.0.ffn_down.weight",))
    assert [(op.kind, op.attrs.get("factor"), op.weights) for op in ops[i + 1 : i + 3]] == [
        ("add_bias", None, ("blk.0.ffn_down.bias",)),
        ("scale", -0.5, ()),
    ]


@pytest.mark.parametrize(
    "key,value",
    [
        ("llama.final_logit_softcapping", 30.0),
        ("llama.attention.clamp_kqv", 8.0),
        ("llama.logit_scale", 0.5),
        ("llama.residual_scale", 0.25),
    ],
)
def test_a_math_key_llama_cpp_applies_and_the_recipe_does_not_is_refused_unless_neutral(
    key, value, tmp_path, monkeypatch
):
    """Were llama.cpp's llama loader to read the key (it reads none of these), rfc's llama recipe,
    which does not apply it, would refuse the file."""
    from rfc.compiler.arch import math_keys

    suffix = key.removeprefix("llama.")
    monkeypatch.setitem(math_keys.READ_BY, suffix, math_keys.READ_BY[suffix] | {"llama"})
    assert_spec_refused(LLAMA, tmp_path, {"metadata": {key: value}}, f"metadata {key} = {value} changes the math")


def test_math_keys_llama_cpp_does_not_read_for_the_architecture_change_nothing(tmp_path):
    """llama.cpp's model saver writes final_logit_softcapping 30, logit_scale 0 and
    router_logit_softcapping 30 into every file; its llama loader reads none of them, so they
    change nothing there, nor in rfc."""
    keys = {
        "llama.final_logit_softcapping": 30.0,
        "llama.logit_scale": 0.0,
        "llama.router_logit_softcapping": 30.0,
        "llama.attention.scale": 0.5,
        "llama.attention.clamp_kqv": 8.0,
    }
    spec = spec_of(LLAMA, tmp_path, metadata=keys)
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(LLAMA)).plan)


def test_neutral_math_keys_compile_to_the_same_plan(tmp_path):
    keys = {"llama.final_logit_softcapping": 0.0, "llama.attention.clamp_kqv": 0.0, "llama.logit_scale": 1.0}
    spec = spec_of(LLAMA, tmp_path, metadata=keys)
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(LLAMA)).plan)


def test_a_math_key_the_recipe_applies_is_not_refused(tmp_path):
    spec = spec_of(FIXTURES / "tiny-gemma2-F16.gguf", tmp_path, metadata={"gemma2.final_logit_softcapping": 20.0})
    assert [op.attrs["cap"] for op in spec.plan.ops if op.kind == "softcap"] == [20.0]


def test_per_layer_arrays_as_llama_cpp_saves_them(tmp_path):
    """llama.cpp's model saver writes every per-layer array at 512 entries (LLAMA_MAX_LAYERS),
    whatever the layer count: the first block_count are read."""
    model = _u32_array(LLAMA, tmp_path / "a.gguf", "llama.attention.head_count_kv", [2] * 512)
    model = _u32_array(model, tmp_path / "b.gguf", "llama.attention.head_count", [8] * 512)
    model = _u32_array(model, tmp_path / "c.gguf", "llama.feed_forward_length", [768] * 2 + [0] * 510)
    spec = build_spec(read_gguf(model))
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(LLAMA)).plan)


def test_a_per_layer_array_whose_layers_differ_is_refused_where_one_value_is_read(tmp_path):
    model = _u32_array(LLAMA, tmp_path / "a.gguf", "llama.attention.head_count_kv", [2, 4] + [2] * 510)
    with pytest.raises(CompileError, match="llama.attention.head_count_kv differs between layers"):
        build_spec(read_gguf(model))


def test_a_per_layer_array_over_512_entries_is_refused_when_read(tmp_path):
    model = _u32_array(LLAMA, tmp_path / "a.gguf", "llama.attention.head_count_kv", [2] * 513)
    with pytest.raises(CompileError, match=r"head_count_kv has 513 entries, more than 512 \(.*LLAMA_MAX_LAYERS\)"):
        build_spec(read_gguf(model))


def test_an_array_no_recipe_reads_is_skipped_whatever_its_length(tmp_path):
    model = _u32_array(LLAMA, tmp_path / "a.gguf", "llama.deepstack_mapping", [1] * 100_000)
    model = _u32_array(model, tmp_path / "b.gguf", "llama.rope.dimension_sections", [8] * 5)
    read = read_gguf(model)
    assert "llama.deepstack_mapping" not in read.metadata and "llama.rope.dimension_sections" not in read.metadata
    assert pack_plan(build_spec(read).plan) == pack_plan(build_spec(read_gguf(LLAMA)).plan)


def test_a_fixed_size_array_is_bounded_by_its_size(tmp_path):
    """M-RoPE's sections are 4 by definition, whatever the layer count (a 2-layer file too)."""
    src = FIXTURES / "tiny-qwen35-Q8_0.gguf"
    four = _u32_array(src, tmp_path / "four.gguf", "qwen35.rope.dimension_sections", [6, 5, 5, 0])
    build_spec(read_gguf(four))
    five = _u32_array(src, tmp_path / "five.gguf", "qwen35.rope.dimension_sections", [6, 5, 5, 0, 0])
    with pytest.raises(CompileError, match=r"dimension_sections has 5 entries, more than 4 \(M-RoPE's 4 sections\)"):
        build_spec(read_gguf(five))


def test_a_negative_learned_scalar_compiles(tmp_path):
    """gemma4's layer_output_scale is a learned value and may be negative: a scale op with that
    factor, not a traceback."""

    def negative(name, data, qtype):
        return (
            (np.array([-0.0701645240187645], np.float32), qtype)
            if name == "blk.1.layer_output_scale.weight"
            else (data, qtype)
        )

    spec = spec_of(FIXTURES / "tiny-gemma4-Q8_0.gguf", tmp_path, tensor_fn=negative)
    factors = [op.attrs["factor"] for op in spec.plan.ops if op.kind == "scale"]
    assert float(np.float32(-0.0701645240187645)) in factors


@pytest.mark.parametrize("name", ["tiny-ernie4_5-Q8_0", "tiny-ernie4_5-moe-Q8_0", "tiny-falcon-h1-Q8_0"])
def test_an_output_bias_llama_cpp_loads_and_does_not_add_is_known_and_unused(name, tmp_path):
    """ernie4_5's and falcon-h1's graphs call build_attn(wo, NULL): their attn_output.bias is
    loaded and never added. The plan is the one of the file without it."""
    src = FIXTURES / f"{name}.gguf"
    bias = {f"blk.{i}.attn_output.bias": np.ones(256, np.float32) for i in range(2)}
    spec = spec_of(src, tmp_path, add_tensors=bias)
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(src)).plan)


def test_hunyuan_applies_q_k_v_scales_before_its_norms_after_rope(tmp_path):
    """hunyuan builds its own attention (Q/K norms after RoPE): its projections take their weight
    scale and bias like every other recipe's (common.qkv_projections)."""
    extra = {"blk.0.attn_q.scale": np.array([-0.5], np.float32), "blk.1.attn_v.scale": np.array([2.0], np.float32)}
    ops = spec_of(FIXTURES / "tiny-hunyuan-dense-Q8_0.gguf", tmp_path, add_tensors=extra).plan.ops
    i = next(i for i, op in enumerate(ops) if op.weights == ("blk.0.attn_q.weight",))
    assert [(op.kind, op.attrs.get("factor"), op.weights) for op in ops[i + 1 : i + 3]] == [
        ("scale", -0.5, ()),
        ("add_bias", None, ("blk.0.attn_q.bias",)),
    ]
    j = next(j for j, op in enumerate(ops) if op.weights == ("blk.1.attn_v.weight",))
    assert (ops[j + 1].kind, ops[j + 1].attrs.get("factor")) == ("scale", 2.0)


def _first_expert_layer(path) -> tuple[int, int]:
    """(layer, expert count) of the first layer with experts."""
    tensors = read_gguf(path).tensors
    i = next(i for i in range(64) if f"blk.{i}.ffn_down_exps.weight" in tensors)
    return i, tensors[f"blk.{i}.ffn_down_exps.weight"].shape[0]


def test_expert_scales_a_graph_does_not_apply_are_known_and_unused(tmp_path):
    """llama.cpp's loader reads every expert's `.scale`; glm4moe's graph never passes them to
    build_moe_ffn, so they change nothing there, nor in rfc."""
    src = FIXTURES / "tiny-glm4moe-Q8_0.gguf"
    i, n = _first_expert_layer(src)
    extra = {f"blk.{i}.ffn_{x}_exps.scale": np.full(n, 1.5, np.float32) for x in ("gate", "up", "down")}
    spec = spec_of(src, tmp_path, add_tensors=extra)
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(src)).plan)


def test_expert_scales_a_graph_applies(tmp_path):
    """qwen3moe's graph applies them (build_lora_mm_id's w_s): gate's and up's scale each chosen
    expert's matmul output before the activation (moe_scale, between the expert matmuls and
    swiglu), down's its output, a factor of its weight in the sum (moe_route's expert_scale)."""
    src = FIXTURES / "tiny-qwen3moe-Q8_0.gguf"
    i, n = _first_expert_layer(src)
    extra = {
        f"blk.{i}.ffn_{x}_exps.scale": np.full(n, s, np.float32) for x, s in (("gate", 0.5), ("up", 1.5), ("down", 2.0))
    }
    ops = spec_of(src, tmp_path, add_tensors=extra).plan.ops
    routes = [op for op in ops if op.kind == "moe_route" and op.attrs.get("expert_scale")]
    assert [op.weights[-1] for op in routes] == [f"blk.{i}.ffn_down_exps.scale"]
    k = next(k for k, op in enumerate(ops) if op.kind == "moe_scale")
    assert [(op.kind, op.inputs, op.weights) for op in ops[k - 2 : k + 3]] == [
        ("moe_matmul", ("h", "expert_ids"), (f"blk.{i}.ffn_gate_exps.weight",)),
        ("moe_matmul", ("h", "expert_ids"), (f"blk.{i}.ffn_up_exps.weight",)),
        ("moe_scale", ("exp_gate", "expert_ids"), (f"blk.{i}.ffn_gate_exps.scale",)),
        ("moe_scale", ("exp_up", "expert_ids"), (f"blk.{i}.ffn_up_exps.scale",)),
        ("swiglu", ("exp_gate", "exp_up"), ()),
    ]
    assert sum(op.kind == "moe_scale" for op in ops) == 2


def test_llama_expert_scales_on_gate_and_up(tmp_path):
    """llama.cpp's llama graph (Mixtral-style experts, common.moe_ffn) passes build_moe_ffn the
    experts' scales too: an up scale alone scales the up outputs."""
    src = FIXTURES / "tiny-mixtral-Q8_0.gguf"
    i, n = _first_expert_layer(src)
    ops = spec_of(src, tmp_path, add_tensors={f"blk.{i}.ffn_up_exps.scale": np.full(n, 1.5, np.float32)}).plan.ops
    assert [(op.inputs, op.weights) for op in ops if op.kind == "moe_scale"] == [
        (("up", "expert_ids"), (f"blk.{i}.ffn_up_exps.scale",))
    ]


def test_fused_gate_up_experts_take_the_up_scale_on_both_halves(tmp_path):
    """build_moe_ffn's fused path (qwen35moe's ffn_gate_up_exps): one build_lora_mm_id with
    up_exps_s scales the gate and up halves alike, and gate_exps_s is never read."""
    src = FIXTURES / "tiny-qwen35moe-Q8_0.gguf"
    i, n = _first_expert_layer(src)
    gate = read_gguf(src).tensors[f"blk.{i}.ffn_gate_exps.weight"]
    fused = np.zeros((n, 2 * gate.shape[1], gate.shape[2]), np.float32)
    extra = {
        f"blk.{i}.ffn_gate_up_exps.weight": fused,
        f"blk.{i}.ffn_gate_exps.scale": np.full(n, 0.5, np.float32),
        f"blk.{i}.ffn_up_exps.scale": np.full(n, 1.5, np.float32),
    }
    spec = spec_of(
        src, tmp_path, add_tensors=extra, drop_tensors=tuple(f"blk.{i}.ffn_{x}_exps.weight" for x in ("gate", "up"))
    )
    assert [(op.inputs, op.weights) for op in spec.plan.ops if op.kind == "moe_scale"] == [
        ((buf, "expert_ids"), (f"blk.{i}.ffn_up_exps.scale",)) for buf in ("exp_gate", "exp_up")
    ]


def test_mamba2_weight_scales_scale_every_part_of_ssm_in(tmp_path):
    """build_lora_mm(ssm_in, cur, ssm_in_s): the scale multiplies z, xBC and dt alike; ssm_out's its output."""
    src = FIXTURES / "tiny-nemotron_h-Q8_0.gguf"
    i = next(i for i in range(64) if f"blk.{i}.ssm_in.weight" in read_gguf(src).tensors)
    extra = {
        f"blk.{i}.ssm_in.scale": np.array([0.5], np.float32),
        f"blk.{i}.ssm_out.scale": np.array([2.0], np.float32),
    }
    ops = spec_of(src, tmp_path, add_tensors=extra).plan.ops
    scaled = [ops[k - 1].weights for k, op in enumerate(ops)
              if op.kind == "scale" and op.attrs.get("factor") in (0.5, 2.0)]  # fmt: skip
    assert scaled == [(f"blk.{i}.ssm_in.weight:{x}",) for x in ("z", "xbc", "dt")] + [(f"blk.{i}.ssm_out.weight",)]


def test_qwen35_attention_biases_as_build_qkv_adds_them(tmp_path):
    """qwen35.cpp's build_qkv: attn_q, attn_k and attn_v each times its scale, then plus its bias;
    attn_q.bias holds each head's query entries and then its gate entries, as attn_q's rows."""
    from rfc.compiler.weights import _read_parts, check_use

    src = FIXTURES / "tiny-qwen35-Q8_0.gguf"
    tensors = read_gguf(src).tensors
    at = next(i for i in range(64) if f"blk.{i}.attn_q.weight" in tensors)
    p = f"blk.{at}."
    rows, kv = tensors[p + "attn_q.weight"].shape[0], tensors[p + "attn_k.weight"].shape[0]
    q_bias = np.arange(rows, dtype=np.float32)
    extra = {
        p + "attn_q.bias": q_bias,
        p + "attn_k.bias": np.ones(kv, np.float32),
        p + "attn_v.bias": np.ones(kv, np.float32),
        p + "attn_q.scale": np.array([0.5], np.float32),
    }
    model = read_gguf(rewrite_gguf(src, tmp_path / "biased.gguf", add_tensors=extra))
    spec = build_spec(model)
    ops = spec.plan.ops
    biased = [(ops[k - 1].kind, op.inputs, op.weights[0]) for k, op in enumerate(ops) if op.kind == "add_bias"]
    assert biased == [
        ("scale", ("q",), p + "attn_q.bias:q"),
        ("scale", ("qgate",), p + "attn_q.bias:gate"),
        ("matmul", ("k",), p + "attn_k.bias"),
        ("matmul", ("v",), p + "attn_v.bias"),
    ]
    hd = next(op.attrs["head_dim"] for op in ops if op.kind == "attention")
    heads = rows // (2 * hd)
    for half, first in (("q", 0), ("gate", hd)):
        use = next(w for w in spec.weights if w.name == f"{p}attn_q.bias:{half}")
        check_use(model, use)
        with open(model.path, "rb") as f:
            got = np.frombuffer(b"".join(_read_parts(f, model, use, 1 << 20)), np.float32)
        want = np.concatenate([q_bias[2 * h * hd + first : 2 * h * hd + first + hd] for h in range(heads)])
        np.testing.assert_array_equal(got, want)


def test_element_ranges_stay_inside_a_vector():
    """A weight made of elements of a vector (ModelBuilder.vector_ranges) is refused when its
    parts leave the vector or read a matrix: the bytes it would copy are another tensor's."""
    from rfc.compiler.weights import ElementRange, WeightUse, check_use

    model = read_gguf(FIXTURES / "tiny-qwen35-Q8_0.gguf")
    norm = next(n for n, t in model.tensors.items() if n.endswith("attn_norm.weight"))
    n = model.tensors[norm].shape[0]
    check_use(model, WeightUse("ok", "x", "F32", (4,), (ElementRange(norm, n - 4, n),)))
    for part in (ElementRange(norm, n - 2, n + 2), ElementRange(norm, 3, 3), ElementRange("token_embd.weight", 0, 4)):
        with pytest.raises(CompileError, match="cannot be made from elements"):
            check_use(
                model, WeightUse("bad", "x", model.tensors[part.tensor].format, (part.stop - part.start,), (part,))
            )


def test_llama4_applies_no_ffn_or_shared_expert_scale(tmp_path):
    """llama4.cpp passes build_ffn (dense and shared expert) and build_moe_ffn no weight scale."""
    src = FIXTURES / "tiny-llama4-Q8_0.gguf"
    tensors = read_gguf(src).tensors
    extra = {f"{name.removesuffix('.weight')}.scale": np.array([1.5], np.float32) for name in tensors
             if name.endswith(("ffn_gate_shexp.weight", "ffn_down.weight"))}  # fmt: skip
    assert extra
    spec = spec_of(src, tmp_path, add_tensors=extra)
    assert pack_plan(spec.plan) == pack_plan(build_spec(read_gguf(src)).plan)


def test_qwen35_weight_scales_as_its_graph_applies_them(tmp_path):
    """qwen35.cpp: build_lora_mm with wqkv_s / wqkv_gate_s / ssm_alpha_s / ssm_beta_s / ssm_out_s in
    the DeltaNet layers; build_qkv's wq_s on the query and gate rows of attn_q alike."""
    src = FIXTURES / "tiny-qwen35-Q8_0.gguf"
    tensors = read_gguf(src).tensors
    dn = next(i for i in range(64) if f"blk.{i}.ssm_alpha.weight" in tensors)
    at = next(i for i in range(64) if f"blk.{i}.attn_q.weight" in tensors)
    names = [f"blk.{dn}.{x}" for x in ("attn_qkv", "attn_gate", "ssm_alpha", "ssm_beta", "ssm_out")] + [
        f"blk.{at}.attn_q"
    ]
    extra = {n + ".scale": np.array([0.5], np.float32) for n in names}
    ops = spec_of(src, tmp_path, add_tensors=extra).plan.ops
    scaled = [ops[k - 1].weights[0] for k, op in enumerate(ops) if op.kind == "scale" and op.attrs.get("factor") == 0.5]
    assert scaled == [n + ".weight" for n in names[:5]] + [f"blk.{at}.attn_q.weight:q", f"blk.{at}.attn_q.weight:gate"]
