"""Architecture recipes read every hyperparameter as llama.cpp does, defaults included, and
say what they refuse by name. Plans are inspected directly (no kernels, no device)."""

import math

import numpy as np
import pytest

from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from tests.conftest import FIXTURES
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _spec(name: str, tmp_path=None, **edits) -> ModelSpec:
    path = FIXTURES / f"tiny-{name}.gguf"
    if edits:
        path = rewrite_gguf(path, tmp_path / "edited.gguf", **edits)
    return build_spec(read_gguf(path))


def _ops(spec: ModelSpec, kind: str) -> list:
    return [op for op in spec.plan.ops if op.kind == kind]


def _attention_by_layer(spec: ModelSpec) -> list[dict]:
    return [op.attrs for op in _ops(spec, "attention")]


def test_gemma2_reads_its_defaults_like_llama_cpp():
    spec = _spec("gemma2-Q8_0")
    hp = spec.hparams
    assert hp.rope_freq_base == 10000.0  # no rope.freq_base key in the file
    assert [op.attrs["freq_base"] for op in _ops(spec, "rope")] == [10000.0] * 4
    attn = _attention_by_layer(spec)
    assert [a.get("window") for a in attn] == [32, None, 32, None]  # even layers slide (pattern 2)
    assert {a["softcap"] for a in attn} == {8.0}
    assert {a["scale"] for a in attn} == {float(np.float32(1) / np.sqrt(np.float32(32)))}  # 1/sqrtf(head_dim)
    assert _ops(spec, "embed")[0].attrs["scale"] == 16.0  # sqrtf(256)
    (cap,) = _ops(spec, "softcap")
    assert cap.attrs["cap"] == 30.0 and cap.inputs == (spec.plan.output_logits,)
    assert _ops(spec, "matmul")[-1].weights == ("token_embd.weight",)  # always the tied embedding
    assert {op.attrs.get("activation") for op in _ops(spec, "swiglu")} == {"gelu_tanh"}
    norms = [op.weights[0] for op in _ops(spec, "rmsnorm")]
    assert norms[:4] == [
        "blk.0.attn_norm.weight",
        "blk.0.post_attention_norm.weight",
        "blk.0.ffn_norm.weight",
        "blk.0.post_ffw_norm.weight",
    ]


def test_gemma2_defaults_without_the_keys(tmp_path):
    spec = _spec(
        "gemma2-F16",
        tmp_path,
        drop_keys=(
            "gemma2.attn_logit_softcapping",
            "gemma2.final_logit_softcapping",
            "gemma2.attention.sliding_window",
        ),
    )
    assert {a["softcap"] for a in _attention_by_layer(spec)} == {50.0}
    assert _ops(spec, "softcap")[0].attrs["cap"] == 30.0
    assert [a.get("window") for a in _attention_by_layer(spec)] == [4096, None, 4096, None]


@pytest.mark.parametrize(
    "pattern,local",
    [
        (3, [True, True, False, True]),  # i % 3 < 2
        (0, [True] * 4),
        ([False, True, True], [False, True, True, False]),  # per-layer flags; missing layers are global
    ],
)
def test_sliding_window_pattern(pattern, local, tmp_path):
    spec = _spec("gemma2-F16", tmp_path, metadata={"gemma2.attention.sliding_window_pattern": pattern})
    assert [a.get("window") is not None for a in _attention_by_layer(spec)] == local


def test_gemma3_local_and_global_layers():
    spec = _spec("gemma3-Q8_0")
    attn, rope = _attention_by_layer(spec), [op.attrs for op in _ops(spec, "rope")]
    assert [a.get("window") for a in attn] == [32] * 5 + [None]  # default pattern 6
    assert [r["freq_base"] for r in rope] == [10000.0] * 5 + [1e6]  # rope.freq_base_swa on local layers
    assert [r["freq_scale"] for r in rope] == [1.0] * 5 + [0.125]  # linear scaling, factor 8, global only
    assert all("softcap" not in a for a in attn) and not _ops(spec, "softcap")
    q_norms = [op for op in _ops(spec, "rmsnorm") if "attn_q_norm" in op.weights[0]]
    assert len(q_norms) == 6 and {op.attrs["heads"] for op in q_norms} == {4}


def test_gemma3_without_a_sliding_window_is_global_everywhere(tmp_path):
    spec = _spec("gemma3-F16", tmp_path, drop_keys=("gemma3.attention.sliding_window",))
    assert all("window" not in a for a in _attention_by_layer(spec))
    assert {(op.attrs["freq_base"], op.attrs["freq_scale"]) for op in _ops(spec, "rope")} == {(1e6, 0.125)}


def test_qwen3_norms_q_and_k_per_head():
    spec = _spec("qwen3-F16")
    blk0 = {
        op.weights[0]: op.attrs.get("heads", 1) for op in _ops(spec, "rmsnorm") if op.weights[0].startswith("blk.0.")
    }
    assert blk0 == {
        "blk.0.attn_norm.weight": 1,
        "blk.0.attn_q_norm.weight": 8,
        "blk.0.attn_k_norm.weight": 2,
        "blk.0.ffn_norm.weight": 1,
    }
    assert spec.hparams.head_dim == 64 and spec.plan.buffer("q").shape == ("T", 512)  # attention width != n_embd
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"neox"}


def test_phi3_splits_its_fused_tensors_into_plain_weights():
    spec = _spec("phi3-Q8_0")
    parts = {w.name: (w.shape, [(p.tensor, p.start, p.stop) for p in w.parts]) for w in spec.weights if ":" in w.name}
    assert parts["blk.0.attn_qkv.weight:q"] == ((256, 256), [("blk.0.attn_qkv.weight", 0, 256)])
    assert parts["blk.0.attn_qkv.weight:v"] == ((256, 256), [("blk.0.attn_qkv.weight", 512, 768)])
    assert parts["blk.0.ffn_up.weight:gate"] == ((512, 256), [("blk.0.ffn_up.weight", 0, 512)])
    assert parts["blk.0.ffn_up.weight:up"] == ((512, 256), [("blk.0.ffn_up.weight", 512, 1024)])
    assert {op.kind for op in spec.plan.ops} <= {
        "embed",
        "rmsnorm",
        "matmul",
        "rope",
        "kv_write",
        "attention",
        "swiglu",
        "add",
        "gather_rows",
    }  # llama's ops: the cpu runs it
    assert all("window" not in a for a in _attention_by_layer(spec))  # llama.cpp ignores phi3's sliding_window
    assert _ops(spec, "rope")[0].attrs["n_rot"] == 32


def test_mixtral_routes_tokens_to_experts():
    spec = _spec("mixtral-Q4_K_M")
    (route, *_) = _ops(spec, "moe_route")
    assert route.attrs == {"n_used": 2} and spec.plan.buffer("expert_ids").dtype == "i32"
    shapes = {w.name: w.shape for w in spec.weights}
    assert shapes["blk.0.ffn_gate_exps.weight"] == (4, 512, 256) and shapes["blk.0.ffn_down_exps.weight"] == (
        4,
        256,
        512,
    )
    assert spec.hparams.extra == {"expert_count": 4, "expert_used_count": 2}
    assert len(_ops(spec, "moe_matmul")) == 6 and len(_ops(spec, "moe_combine")) == 2


def test_experts_need_both_counts(tmp_path):
    with pytest.raises(CompileError, match="expert_count 4 without an expert_used_count"):
        _spec("mixtral-Q8_0", tmp_path, drop_keys=("llama.expert_used_count",))


@pytest.mark.parametrize(
    "edits,scale,kind",
    [
        ({"metadata": {"llama.rope.scaling.factor": 4.0}}, 0.25, "linear"),  # no type key: linear, as in llama.cpp
        ({"metadata": {"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}}, 1.0, "none"),
        ({"metadata": {"llama.rope.scaling.type": "linear", "llama.rope.scale_linear": 2.0}}, 0.5, "linear"),
    ],
)
def test_rope_scaling_as_llama_cpp_reads_it(edits, scale, kind, tmp_path):
    spec = _spec("llama-Q8_0", tmp_path, **edits)
    assert {op.attrs["freq_scale"] for op in _ops(spec, "rope")} == {scale}
    assert spec.hparams.rope_scaling_type == kind


@pytest.mark.parametrize("kind", ["llama3", "dynamic"])
def test_rope_scaling_llama_cpp_does_not_know_is_refused_by_name(kind, tmp_path):
    with pytest.raises(
        CompileError,
        match=rf"llama.rope.scaling.type = '{kind}' is not supported \(supported: none, linear, yarn, "
        rf"longrope\)",
    ):
        _spec("llama-Q8_0", tmp_path, metadata={"llama.rope.scaling.type": kind})


def test_yarn_as_llama_cpp_sets_it_up(tmp_path):
    """ext_factor 1, llama.cpp's default betas (llama's loader reads no yarn_beta keys), the
    original context, and the magnitude ggml ends with: rope.scaling.attn_factor times
    get_mscale(4) = 1 + 0.1 ln 4 (llama_context's attn_factor / (1 + 0.1 ln 4), times ggml's own)."""
    spec = _spec("llama-Q8_0", tmp_path, metadata={
        "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
        "llama.rope.scaling.original_context_length": 128, "llama.rope.scaling.attn_factor": 1.5,
        "llama.rope.scaling.yarn_beta_fast": 8.0})  # fmt: skip
    (attrs,) = {tuple(sorted(op.attrs.items())) for op in _ops(spec, "rope")}
    attrs = dict(attrs)
    assert attrs["freq_scale"] == 0.25 and attrs["ext_factor"] == 1.0 and attrs["orig_ctx"] == 128
    assert (attrs["beta_fast"], attrs["beta_slow"]) == (32.0, 1.0)
    assert attrs["attn_factor"] == pytest.approx(1.5 * (1 + 0.1 * math.log(4.0)), rel=1e-12)
    assert spec.hparams.rope_scaling_type == "yarn"
    spec = _spec("llama-Q8_0", tmp_path, metadata={"llama.rope.scaling.type": "yarn"})  # no factor: no magnitude
    assert {op.attrs.get("attn_factor") for op in _ops(spec, "rope")} == {None}
    assert {op.attrs["orig_ctx"] for op in _ops(spec, "rope")} == {512}  # context_length


def test_yarn_ramp_mixes_the_frequencies():
    """rope_inv_freq: the pairs below the ramp keep their original frequency (extrapolated),
    those above it are interpolated by freq_scale, linear between."""
    from rfc.artifacts.plan import rope_inv_freq

    plain, yarn = rope_inv_freq(64, 10000.0, 0.25), rope_inv_freq(64, 10000.0, 0.25, 1.0, 32.0, 1.0, 4096)
    ratio = [y / p for y, p in zip(yarn, plain)]
    assert ratio[:11] == pytest.approx([4.0] * 11) and ratio[23:] == pytest.approx([1.0] * 9)  # low 10, high 23
    assert ratio[16] == pytest.approx(4.0 - 3.0 * 6 / 13)
    assert rope_inv_freq(64, 10000.0, 1.0, 1.0, 32.0, 1.0, 4096) == pytest.approx(rope_inv_freq(64, 10000.0, 1.0))


def test_longrope_on_llama_reads_the_long_or_short_factors(tmp_path):
    """llama's loader reads rope_factors_long/short (not rope_freqs) when the type is longrope:
    long when the context exceeds the original one."""
    extra = {"rope_factors_long.weight": np.full(16, 2.0), "rope_factors_short.weight": np.ones(16)}
    md = {"llama.rope.scaling.type": "longrope", "llama.rope.scaling.original_context_length": 256}
    spec = _spec("llama-Q8_0", tmp_path, metadata=md, add_tensors=extra)
    assert {op.weights for op in _ops(spec, "rope")} == {("rope_factors_long.weight",)}
    spec = _spec(
        "llama-Q8_0", tmp_path, metadata={**md, "llama.rope.scaling.original_context_length": 512}, add_tensors=extra
    )
    assert {op.weights for op in _ops(spec, "rope")} == {("rope_factors_short.weight",)}


def test_llama3_frequency_factors_reach_rope():
    spec = _spec("llama3rope-Q8_0")
    assert {op.weights for op in _ops(spec, "rope")} == {("rope_freqs.weight",)}
    assert spec.hparams.rope_freq_base == 500000.0 and spec.hparams.rope_freq_factors


def test_smollm3_leaves_every_fourth_layer_without_rope():
    """NoPE on layers 3, 7, ...: the layer writes its keys unrotated and attends as the others."""
    spec = _spec("smollm3-Q8_0")
    layer_of_rope = []
    for prev, op in zip(spec.plan.ops, spec.plan.ops[1:]):
        if op.kind == "kv_write":
            layer_of_rope.append((op.attrs["layer"], prev.kind == "rope"))
    assert layer_of_rope == [(0, True), (1, True), (2, True), (3, False)]
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"adjacent"}


def test_smollm3_refuses_partial_rotary(tmp_path):
    with pytest.raises(CompileError, match=r"smollm3.rope.dimension_count 16 != head size 32"):
        _spec("smollm3-Q8_0", tmp_path, metadata={"smollm3.rope.dimension_count": 16})


def test_olmo2_norms_the_sublayer_outputs_and_whole_q_k_rows():
    """No norm before the sublayers (attention reads the residual x), one RMS norm over each
    whole Q and K row, post-norms before each residual add."""
    spec = _spec("olmo2-Q8_0")
    ops = spec.plan.ops
    first = next(i for i, op in enumerate(ops) if op.kind == "matmul")
    assert ops[first].inputs == ("x",) and ops[first - 1].kind == "embed"
    norms = [(op.inputs, op.weights[0].split(".", 2)[-1], op.attrs.get("heads")) for op in ops[:ops.index(next(
        op for op in ops if op.kind == "kv_write")) + 8] if op.kind == "rmsnorm"]  # fmt: skip
    assert norms == [(("q",), "attn_q_norm.weight", None), (("k",), "attn_k_norm.weight", None),
                     (("h",), "post_attention_norm.weight", None)]  # fmt: skip
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"neox"}


def test_olmo3_slides_three_layers_of_four_with_unscaled_rope():
    """OLMo 3 (olmo2 with attention.sliding_window): the default period 4 makes layers 0-2
    sliding-window, whose RoPE llama.cpp's olmo2 graph leaves unscaled; layer 3 attends over the
    whole context with the file's YaRN."""
    spec = _spec("olmo3-Q8_0")
    assert [op.attrs.get("window") for op in _ops(spec, "attention")] == [16, 16, 16, None]
    ropes = _ops(spec, "rope")
    assert [
        (op.attrs["freq_scale"], op.attrs.get("ext_factor", 0.0), op.attrs.get("attn_factor", 1.0)) for op in ropes[:3]
    ] == [(1.0, 0.0, 1.0)] * 3
    assert ropes[3].attrs["freq_scale"] == 0.25 and ropes[3].attrs["ext_factor"] == 1.0
    assert {op.attrs["freq_base"] for op in ropes} == {500000.0}


def test_olmo3_reads_a_per_layer_pattern(tmp_path):
    spec = _spec(
        "olmo3-Q8_0", tmp_path, metadata={"olmo2.attention.sliding_window_pattern": [False, True, False, True]}
    )
    assert [op.attrs.get("window") for op in _ops(spec, "attention")] == [None, 16, None, 16]


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"drop_tensors": ["output.weight"]}, r"missing tensor output.weight"),
    ],
)
def test_olmo2_refuses_what_it_does_not_run(edit, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _spec("olmo2-Q8_0", tmp_path, **edit)


def test_mistral3_reads_the_yarn_keys():
    """mistral3's loader reads yarn_beta_fast/slow and yarn_log_multiplier (llama's ignores them:
    test_yarn_as_llama_cpp_sets_it_up). The magnitude: get_mscale(16, 1) / get_mscale(16, 0.5)."""
    (attrs,) = {tuple(sorted(op.attrs.items())) for op in _ops(_spec("mistral3-Q8_0"), "rope")}
    attrs = dict(attrs)
    assert (attrs["beta_fast"], attrs["beta_slow"], attrs["orig_ctx"], attrs["freq_scale"]) == (8.0, 2.0, 64, 1 / 16)
    assert attrs["attn_factor"] == pytest.approx((1 + 0.1 * math.log(16)) / (1 + 0.05 * math.log(16)), rel=1e-12)
    assert attrs["style"] == "adjacent"


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "attention.temperature_scale",
            float("nan"),
            r"mistral3.attention.temperature_scale = nan is not a finite number",
        ),
        (
            "attention.temperature_scale",
            1e9,
            r"mistral3.attention.temperature_scale = 1000000000.0 is not a finite number",
        ),
        ("rope.dimension_count", 16, r"mistral3.rope.dimension_count 16 != head size 32"),
        ("rope.scaling.yarn_beta_fast", float("nan"), r"mistral3.rope.scaling.yarn_beta_fast"),
        ("rope.scaling.yarn_log_multiplier", 1e9, r"mistral3.rope.scaling.yarn_log_multiplier"),
    ],
)
def test_mistral3_refuses_what_it_does_not_run(key, value, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _spec("mistral3-Q8_0", tmp_path, metadata={f"mistral3.{key}": value})


def test_granite_applies_its_four_multipliers():
    """embedding_scale on the embedding, residual_scale on both sublayers' outputs before their
    adds, attention.scale as the score scale, 1 / logit_scale on the logits (float32 values)."""
    spec = _spec("granite-Q8_0")
    ops = spec.plan.ops
    assert ops[0].kind == "embed" and ops[0].attrs["scale"] == 2.5
    scales = [op for op in ops if op.kind == "scale"]
    assert [(op.inputs, op.attrs["factor"]) for op in scales] == [(("h",), np.float32(0.6))] * 4 + [
        (("logits",), np.float32(1 / 0.75))
    ]
    assert all(ops[ops.index(op) + 1].kind == "add" for op in scales[:4]) and ops[-1] is scales[-1]
    assert {op.attrs["scale"] for op in _ops(spec, "attention")} == {0.125}


def test_granite_with_experts_is_granitemoe(tmp_path):
    """llama.cpp's granite loader builds experts when expert_count > 0 (granitemoe's graph under
    the name granite): tiny-granitemoe written as `granite` gets granitemoe's plan and weights
    (llama.cpp's logits for that file equal tiny-granitemoe's golden, measured)."""
    from dataclasses import replace

    from tests import testdata

    generator = testdata._generator()
    family, fmt = generator.FIXTURES["tiny-granitemoe-Q8_0"]
    generator.FIXTURES["tiny-granite-experts-Q8_0"] = (replace(family, arch="granite"), fmt)
    generator.write_fixture("tiny-granite-experts-Q8_0", tmp_path / "granite-experts.gguf")
    spec, moe = build_spec(read_gguf(tmp_path / "granite-experts.gguf")), _spec("granitemoe-Q8_0")
    assert spec.plan.ops == moe.plan.ops and spec.weights == moe.weights
    assert spec.hparams.architecture == "granite" and spec.hparams.extra["expert_count"] == 4


def test_granite_without_rope_when_not_finetuned(tmp_path):
    """llama.cpp's granite loader reads rope.scaling.finetuned as the switch for RoPE."""
    assert not _ops(_spec("granite-Q8_0", tmp_path, metadata={"granite.rope.scaling.finetuned": False}), "rope")
    with pytest.raises(CompileError, match=r"missing metadata granite.logit_scale"):
        _spec("granite-Q8_0", tmp_path, drop_keys=("granite.logit_scale",))


def test_llama_refuses_partial_rotary(tmp_path):
    with pytest.raises(CompileError, match="rope.dimension_count 16 != head size 32"):
        _spec("llama-Q8_0", tmp_path, metadata={"llama.rope.dimension_count": 16})


def test_every_new_recipe_validates():
    from rfc.artifacts.plan import validate_plan

    for name in ("qwen3-F16", "gemma2-F16", "gemma3-F16", "phi3-F16", "mixtral-Q8_0", "llama3rope-Q8_0"):
        validate_plan(_spec(name).plan)
    assert math.isclose(_spec("gemma3-F16").hparams.extra["query_scale"], 1 / 8, rel_tol=1e-7)


def test_command_r_runs_attention_and_ffn_side_by_side_after_a_layernorm():
    """One LayerNorm (centred by two float32 matmuls with compile-time weights, then an RMS norm)
    feeds both the attention and the FFN; both outputs are added to x; the output is the tied
    embedding times logit_scale."""
    spec = _spec("command-r-Q8_0")
    ops = spec.plan.ops
    consts = {w.name: w for w in spec.weights if w.name.startswith("rfc.layernorm.")}
    assert {n: w.shape for n, w in consts.items()} == {
        "rfc.layernorm.mean.256": (32, 256),
        "rfc.layernorm.spread.256": (256, 32),
    }
    first = [op for op in ops[:12] if op.kind in ("matmul", "add", "rmsnorm")][:4]
    assert [(op.kind, op.inputs, op.outputs) for op in first] == [
        ("matmul", ("x",), ("ln_part_T",)), ("matmul", ("ln_part_T",), ("ln_mean_T",)),
        ("add", ("x", "ln_mean_T"), ("h",)), ("rmsnorm", ("h",), ("h",))]  # fmt: skip
    reads = [op.weights[0].split(".", 2)[-1] for op in ops if op.kind == "matmul" and op.inputs == ("h",)][:5]
    assert reads == ["attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight", "ffn_up.weight"]
    assert [op.inputs for op in ops if op.kind == "add" and op.outputs == ("x",)][:2] == [("x", "h"), ("x", "a")]
    assert ops[-2].weights == ("token_embd.weight",) and ops[-1].kind == "scale" and ops[-1].attrs["factor"] == 0.0625
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"adjacent"}


def test_cohere2_rotates_only_its_sliding_window_layers():
    spec = _spec("cohere2-Q8_0")
    assert [op.attrs.get("window") for op in _ops(spec, "attention")] == [16, 16, 16, None]
    kv_writes = [i for i, op in enumerate(spec.plan.ops) if op.kind == "kv_write"]
    assert [spec.plan.ops[i - 1].kind == "rope" for i in kv_writes] == [True, True, True, False]


@pytest.mark.parametrize("name,edit,message", [
    ("command-r-Q8_0", {"add_tensors": {"blk.0.attn_q_norm.weight": np.ones((8, 32))}}, r"in a command-r of 2 layers"),
    ("cohere2-Q8_0", {"drop_keys": ("cohere2.logit_scale",)}, r"missing metadata cohere2.logit_scale"),
    ("cohere2-Q8_0", {"drop_keys": ("cohere2.attention.sliding_window",)},
     r"missing metadata cohere2.attention.sliding_window"),
])  # fmt: skip
def test_command_r_refuses_what_it_does_not_run(name, edit, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _spec(name, tmp_path, **edit)


def test_glm4_splits_its_fused_ffn_up_and_turns_m_rope_sections_as_neox(tmp_path):
    """GLM-4's ffn_up holds gate then up; plain files rotate adjacent pairs, M-RoPE files (GLM-4V's
    text stack: every section at the token's position) as NeoX."""
    spec = _spec("glm4-Q8_0")
    assert {w.name for w in spec.weights if "ffn_up" in w.name} == {
        f"blk.{i}.ffn_up.weight:{h}" for i in (0, 1) for h in ("gate", "up")
    }
    assert {(op.attrs["style"], op.attrs["n_rot"]) for op in _ops(spec, "rope")} == {("adjacent", 32)}
    # 4 blocks, the last 2 MTP ones (not run, their tensors not read): room for the 4 sections
    # under a per-layer array bound of block_count
    four = rewrite_gguf(FIXTURES / "tiny-glm4-Q8_0.gguf", tmp_path / "four.gguf",
                        metadata={"glm4.block_count": 4, "glm4.nextn_predict_layers": 2})  # fmt: skip
    mrope = build_spec(
        read_gguf(rewrite_gguf(four, tmp_path / "m.gguf", metadata={"glm4.rope.dimension_sections": [8, 8, 0, 0]}))
    )
    assert {op.attrs["style"] for op in _ops(mrope, "rope")} == {"neox"} and mrope.hparams.n_layers == 2
    too_wide = {"glm4.rope.dimension_sections": [32, 32, 1, 0]}
    with pytest.raises(
        CompileError, match=r"glm4.rope.dimension_sections \[32, 32, 1, 0\] add up to more than the head size 64"
    ):
        build_spec(read_gguf(rewrite_gguf(four, tmp_path / "w.gguf", metadata=too_wide)))


def test_exaone4_norms_after_the_sublayers_and_per_head():
    spec = _spec("exaone4-Q8_0")
    ops = spec.plan.ops
    first = next(i for i, op in enumerate(ops) if op.kind == "matmul")
    assert ops[first].inputs == ("x",) and ops[first - 1].kind == "embed"
    assert {op.attrs.get("heads") for op in _ops(spec, "rmsnorm") if op.inputs in (("q",), ("k",))} == {4, 2}
    assert [op.attrs.get("window") for op in _ops(spec, "attention")] == [None, None]  # 2 layers: no windows
    assert len(_ops(spec, "rope")) == 2 and all(op.weights == ("rope_freqs.weight",) for op in _ops(spec, "rope"))


def test_exaone4_slides_only_a_64_layer_model(tmp_path):
    """llama.cpp's loader enables sliding windows for 64 layers (the 32B) alone: then 3 layers of 4
    slide with RoPE and the 4th attends globally without positions. (That file at F16, made like
    this one, matches llama.cpp's logits to 0.12 max / 0.015 mean on std 3, the float64 oracle to
    0.01; without the windows the logits move by 2.7 on average.)"""
    from tests import testdata

    g = testdata._generator()
    family = g.Family("exaone4-64", "exaone4", "exaone4-64",
                      (("context_length", g.U32, 512), ("embedding_length", g.U32, 64), ("block_count", g.U32, 64),
                       ("feed_forward_length", g.U32, 128), ("attention.head_count", g.U32, 2),
                       ("attention.head_count_kv", g.U32, 1), ("attention.key_length", g.U32, 32),
                       ("attention.value_length", g.U32, 32), ("attention.layer_norm_rms_epsilon", g.F32V, 1e-5),
                       ("attention.sliding_window", g.U32, 8)),
                      g._model(64, [[t for t in g._layer(i, 64, 128, 64, 32, qk_norm=(32, 1.5), post_norms=True)
                                     if "attn_norm" not in t.name and "ffn_norm" not in t.name] for i in range(64)],
                               tied=True), ("F16",))  # fmt: skip
    g.FIXTURES["tiny-exaone4-64-F16"] = (family, "F16")
    g.write_fixture("tiny-exaone4-64-F16", tmp_path / "exaone4-64.gguf")
    spec = build_spec(read_gguf(tmp_path / "exaone4-64.gguf"))
    assert [op.attrs.get("window") for op in _ops(spec, "attention")] == [8, 8, 8, None] * 16
    kv_writes = [i for i, op in enumerate(spec.plan.ops) if op.kind == "kv_write"]
    assert [spec.plan.ops[i - 1].kind != "rope" for i in kv_writes] == [False, False, False, True] * 16


def test_hunyuan_norms_q_and_k_after_rope_and_scales_the_base_by_alpha():
    spec = _spec("hunyuan-dense-Q8_0")
    first_kv = next(i for i, op in enumerate(spec.plan.ops) if op.kind == "kv_write")
    kinds = [op.kind for op in spec.plan.ops[: first_kv + 1] if op.kind in ("rope", "rmsnorm", "kv_write")]
    assert kinds == ["rmsnorm", "rope", "rmsnorm", "rmsnorm", "kv_write"]  # attn_norm, rope, q norm, k norm
    base = float(np.float32(10000.0) * np.power(np.float32(1000.0), np.float32(64) / np.float32(62), dtype=np.float32))
    assert {op.attrs["freq_base"] for op in _ops(spec, "rope")} == {base} and base > 10000.0 * 1000
    moe = _spec("hunyuan-moe-Q8_0")
    assert {w.shape for w in moe.weights if w.name.endswith("ffn_gate_exps.weight")} == {(8, 256, 256)}
    assert {op.attrs["freq_base"] for op in _ops(moe, "rope")} == {10000.0}


def test_ernie4_5_moe_routes_from_the_first_layer_past_the_dense_lead(tmp_path):
    spec = _spec("ernie4_5-moe-Q8_0")
    assert [op.weights[0].split(".")[1] for op in _ops(spec, "moe_route")] == ["1", "2"]
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"adjacent"}
    with pytest.raises(CompileError, match=r"missing metadata ernie4_5-moe.interleave_moe_layer_step"):
        _spec("ernie4_5-moe-Q8_0", tmp_path, drop_keys=("ernie4_5-moe.interleave_moe_layer_step",))


def test_seed_oss_reads_its_ffn_norm_as_post_attention_norm():
    spec = _spec("seed_oss-Q8_0")
    assert {w.name.split(".", 2)[-1] for w in spec.weights if "norm" in w.name and w.name.startswith("blk.0.")} == {
        "attn_norm.weight",
        "post_attention_norm.weight",
    }
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"neox"} and len(_ops(spec, "add_bias")) == 6


@pytest.mark.parametrize("name", ["qwen3vl-Q8_0", "qwen3vlmoe-Q8_0"])
def test_qwen3vl_text_turns_its_m_rope_sections_as_neox(name, tmp_path):
    spec = _spec(name)
    assert {(op.attrs["style"], op.attrs["n_rot"]) for op in _ops(spec, "rope")} == {("neox", 64)}
    arch = name.rsplit("-", 1)[0]
    with pytest.raises(CompileError, match=rf"missing metadata {arch}.rope.dimension_sections"):
        _spec(name, tmp_path, drop_keys=(f"{arch}.rope.dimension_sections",))


@pytest.mark.parametrize("edit,message", [
    ({"drop_keys": ("minimax-m2.expert_gating_func",)}, r"missing metadata minimax-m2.expert_gating_func"),
    ({"drop_keys": ("minimax-m2.expert_feed_forward_length",)},
     r"missing metadata minimax-m2.expert_feed_forward_length"),
    ({"drop_tensors": ("blk.1.exp_probs_b.bias",)}, r"missing tensor blk.1.exp_probs_b.bias"),
    ({"drop_tensors": ("output.weight",)}, r"missing tensor output.weight"),
])  # fmt: skip
def test_minimax_m2_refuses_what_llama_cpp_refuses(edit, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _spec("minimax-m2-Q8_0", tmp_path, **edit)


def test_minimax_m2_norms_whole_q_k_rows_and_rotates_part_of_each_head():
    spec = _spec("minimax-m2-Q8_0")
    norms = {
        op.weights[0].split(".", 2)[-1]: op.attrs.get("heads")
        for op in _ops(spec, "rmsnorm")
        if op.inputs in (("q",), ("k",))
    }
    assert norms == {"attn_q_norm.weight": None, "attn_k_norm.weight": None}
    assert {(op.attrs["style"], op.attrs["n_rot"], op.attrs["head_dim"]) for op in _ops(spec, "rope")} == {
        ("neox", 32, 64)
    }
    assert {op.attrs["gating"] for op in _ops(spec, "moe_route")} == {"sigmoid"}


@pytest.mark.parametrize("edit,message", [
    ({"drop_keys": ("bailingmoe2.expert_gating_func",)}, r"missing metadata bailingmoe2.expert_gating_func"),
    ({"metadata": {"bailingmoe2.expert_shared_count": 0}}, r"bailingmoe2.expert_shared_count = 0 is outside"),
    ({"drop_tensors": ("output.weight",)}, r"missing tensor output.weight"),
])  # fmt: skip
def test_bailingmoe2_refuses_what_llama_cpp_refuses(edit, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _spec("bailingmoe2-Q8_0", tmp_path, **edit)


def test_bailingmoe2_splits_the_fused_qkv_and_routes_past_the_dense_lead():
    spec = _spec("bailingmoe2-Q8_0")
    assert {w.name for w in spec.weights if w.name.startswith("blk.0.attn_qkv")} == {
        f"blk.0.attn_qkv.weight:{x}" for x in "qkv"
    }
    routes = _ops(spec, "moe_route")
    assert len(routes) == 2 and {
        (op.attrs["gating"], op.attrs["scale"], op.attrs.get("norm", True)) for op in routes
    } == {("sigmoid", 2.5, True)}


def test_falcon_h1_runs_attention_and_mamba2_side_by_side():
    spec = _spec("falcon-h1-Q8_0")
    ops = spec.plan.ops
    assert [op.inputs for op in ops if op.kind == "matmul" and op.outputs in (("q",), ("ssm_z",))][:2] == [
        ("h",),
        ("h",),
    ]
    assert [op.inputs for op in ops if op.kind == "add" and op.outputs == ("x",)][:3] == [
        ("x", "a"),
        ("x", "m"),
        ("x", "h"),
    ]
    # conv + scan per layer
    assert "blk.0.ffn_norm" in {w.name for w in spec.weights} and len(spec.plan.state.tensors) == 4
    assert "blk.0.attn_output.bias" not in {w.name for w in spec.weights}


def test_mistral3_with_experts_is_llamas_mixture(tmp_path):
    """llama.cpp's mistral3 graph with experts is llama's Mixtral-style mixture (test-llama-archs
    writes such a file): tiny-mixtral written as mistral3 gets tiny-mixtral's plan."""
    from dataclasses import replace

    from tests import testdata

    g = testdata._generator()
    family, fmt = g.FIXTURES["tiny-mixtral-Q8_0"]
    g.FIXTURES["tiny-mistral3-moe-Q8_0"] = (replace(family, arch="mistral3"), fmt)
    g.write_fixture("tiny-mistral3-moe-Q8_0", tmp_path / "moe.gguf")
    spec, mixtral = build_spec(read_gguf(tmp_path / "moe.gguf")), _spec("mixtral-Q8_0")
    assert spec.plan.ops == mixtral.plan.ops and spec.weights == mixtral.weights
