"""The recipes written against llama.cpp's saver files (tests/e2e/test_llama_archs.py holds each to
llama.cpp's logits): what those files cannot show. Their MoE files route every token to all of
their 2 experts, so renormalizing the chosen weights changes nothing there; they hold every
multiplier key, so minicpm's defaults never apply; and what each loader would refuse (a tensor it
does not read, a tensor it requires) is refused here too, in one line."""

import numpy as np
import pytest

from rfc.compiler.errors import CompileError
from tests.e2e.test_llama_archs import _model, archs
from tests.gguf_edit import spec_of

pytestmark = pytest.mark.shared


def _edited(name, tmp_path, *, drop_keys=(), keys=None, drop_tensors=(), add_tensors=()):
    """The saver file `name` written from its description with keys and tensors dropped, keys set
    (key -> (GGUF type, value)) and F32 tensors added ((name, numpy shape)); seeded weights."""
    desc = archs.load(name)
    meta = [m for m in desc["metadata"] if m[0] not in drop_keys and m[0] not in (keys or {})]
    meta += [[k, t, v] for k, (t, v) in (keys or {}).items()]
    tensors = [t for t in desc["tensors"] if t[0] not in drop_tensors] + [[n, list(s), "F32"] for n, s in add_tensors]
    path = tmp_path / f"{name}-edited.gguf"
    archs.write_model({**desc, "metadata": meta, "tensors": tensors}, path, name)
    return path


def _refused(path, message: str) -> None:
    with pytest.raises(CompileError) as e:
        spec_of(path)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _routes(spec) -> list[dict]:
    return [op.attrs for op in spec.plan.ops if op.kind == "moe_route"]


@pytest.mark.parametrize(
    "name,attrs",
    [
        # build_moe_ffn(..., norm_w false, no scale, softmax): the chosen weights as the softmax gave them
        ("qwen2moe-moe", {"n_used": 2, "norm": False}),
        ("olmoe-moe", {"n_used": 2, "norm": False}),
        ("deepseek-moe", {"n_used": 2, "norm": False}),
        # the file's expert_gating_func 2 (sigmoid) and expert_weights_norm false
        ("dots1-moe", {"n_used": 2, "norm": False, "gating": "sigmoid"}),
    ],
)
def test_expert_weights_as_each_graph_makes_them(name, attrs, tmp_path):
    routes = _routes(spec_of(_model(name, tmp_path)))
    assert routes and all(r == attrs for r in routes), routes


def test_deepseek_and_dots1_keep_their_leading_dense_layer(tmp_path):
    for name in ("deepseek-moe", "dots1-moe"):
        spec = spec_of(_model(name, tmp_path))
        assert len(_routes(spec)) == spec.hparams.n_layers - 1
        assert any(w == "blk.0.ffn_gate.weight" for op in spec.plan.ops for w in op.weights)


def test_qwen2moe_gates_its_shared_expert_by_a_sigmoid(tmp_path):
    ops = spec_of(_model("qwen2moe-moe", tmp_path)).plan.ops
    gates = [op for op in ops if op.kind == "swiglu" and op.attrs.get("activation") == "sigmoid"]
    assert [op.inputs for op in gates] == [("shexp_logit", "shexp_up")] * 2


def test_minicpm_multipliers_default_as_its_loader_sets_them(tmp_path):
    """Without the keys: embedding 12, residual 1.4 / sqrtf(n_layer), logits / (256 / n_embd)."""
    keys = tuple(f"minicpm.{k}" for k in ("embedding_scale", "residual_scale", "logit_scale"))
    spec = spec_of(_edited("minicpm-dense", tmp_path, drop_keys=keys))
    n_layers, n_embd = spec.hparams.n_layers, spec.hparams.n_embd
    residual = np.float32(1.4) / np.sqrt(np.float32(n_layers))
    logit = np.float32(256.0) / np.float32(n_embd)
    ops = spec.plan.ops
    assert ops[0].kind == "embed" and ops[0].attrs["scale"] == 12.0
    # each sublayer's output before its residual add (the file's weight scales are scale ops too)
    residuals = [op for op, nxt in zip(ops, ops[1:]) if op.kind == "scale" and nxt.inputs == ("x", "h")]
    assert [op.attrs["factor"] for op in residuals] == [float(residual)] * (2 * n_layers)
    assert ops[-1].kind == "scale" and ops[-1].attrs["factor"] == pytest.approx(float(1 / logit), rel=1e-6)
    # and the file's own keys win over the defaults
    assert spec_of(_model("minicpm-dense", tmp_path)).hparams.extra["residual_scale"] == pytest.approx(
        3.556558847427368
    )


def test_minicpm_reads_no_attention_scale(tmp_path):
    """Only granite's loaders read attention.scale; minicpm's scores are scaled 1/sqrt(head_dim)."""
    spec = spec_of(_edited("minicpm-dense", tmp_path, keys={"minicpm.attention.scale": (6, 0.5)}))
    head_dim = spec.hparams.head_dim
    assert {op.attrs["scale"] for op in spec.plan.ops if op.kind == "attention"} == {1.0 / np.sqrt(head_dim)}


@pytest.mark.parametrize("name", ["xverse-dense", "orion-dense", "gemma-dense"])
def test_an_attn_output_bias_their_loader_has_no_place_for_is_refused(name, tmp_path):
    n_embd = spec_of(_model(name, tmp_path)).hparams.n_embd
    _refused(_edited(name, tmp_path, add_tensors=[("blk.0.attn_output.bias", (n_embd,))]), "blk.0.attn_output.bias")


@pytest.mark.parametrize(
    "name", ["internlm2-dense", "xverse-dense", "orion-dense", "qwen2moe-moe", "olmoe-moe", "dots1-moe"]
)
def test_a_tied_output_their_loader_refuses_is_refused(name, tmp_path):
    _refused(_edited(name, tmp_path, drop_tensors=("output.weight",)), "output.weight")


def test_gemma_always_ties_its_output(tmp_path):
    """gemma's loader reads no output.weight: a file with one is refused rather than run without it."""
    hp = spec_of(_model("gemma-dense", tmp_path)).hparams
    assert hp.tied_embeddings
    _refused(
        _edited("gemma-dense", tmp_path, add_tensors=[("output.weight", (hp.vocab_size, hp.n_embd))]), "output.weight"
    )


def test_dots1_needs_its_gating_function(tmp_path):
    """llama.cpp's build_moe_ffn aborts on gating function 0 (none), dots1's default."""
    _refused(_edited("dots1-moe", tmp_path, drop_keys=("dots1.expert_gating_func",)), "expert_gating_func")


def test_mistral4_runs_deepseek2s_recipe_under_its_own_keys(tmp_path):
    """llama.cpp's mistral4 is deepseek2's loader and graph: its keys under its own prefix."""
    spec = spec_of(_model("mistral4-moe", tmp_path))
    assert spec.hparams.architecture == "mistral4" and _routes(spec)
    assert any("attn_kv_a_mqa" in w for op in spec.plan.ops for w in op.weights)  # MLA


def test_codeshell_embeds_with_its_output_weight_when_the_file_has_no_token_embd(tmp_path):
    """codeshell's loader: token_embd.weight optional, output.weight the embedding without it."""
    spec = spec_of(_edited("codeshell-dense", tmp_path, drop_tensors=("token_embd.weight",)))
    embed = next(op for op in spec.plan.ops if op.kind == "embed")
    assert embed.weights == ("output.weight",)
    _refused(_edited("jais2-dense", tmp_path, drop_tensors=("token_embd.weight",)), "token_embd.weight")


def test_qwen_halves_its_ffn_width(tmp_path):
    spec = spec_of(_model("qwen-dense", tmp_path))
    gate = next(op for op in spec.plan.ops if op.kind == "matmul" and op.weights[0].endswith("ffn_gate.weight"))
    assert spec.plan.buffer(gate.outputs[0]).shape[-1] * 2 == 384  # the file's feed_forward_length


def test_baichuan_positions_follow_llama_cpps_size_switch(tmp_path, monkeypatch):
    """baichuan's graph: RoPE for 32 layers, ALiBi (maximum bias 8) for 40, none for other counts
    (the saver's 2-layer file, which matches llama.cpp without positions). The 40-layer branch is
    taken here by the 2-layer file, with the switch's count lowered to 2."""
    from rfc.compiler.arch import baichuan

    spec = spec_of(_model("baichuan-dense", tmp_path))
    assert not any(op.kind == "rope" for op in spec.plan.ops) and spec.hparams.extra["positions"] == "none"
    assert all(op.attr("alibi") is None for op in spec.plan.ops if op.kind == "attention")
    monkeypatch.setattr(baichuan, "ALIBI_LAYERS", 2)
    spec = spec_of(_model("baichuan-dense", tmp_path))
    attention = [op for op in spec.plan.ops if op.kind == "attention"]
    assert len(attention) == 2 and all(op.attr("alibi") == 8.0 for op in attention)
    assert not any(op.kind == "rope" for op in spec.plan.ops) and spec.hparams.extra["positions"] == "alibi 8"


def test_alibi_recipes_take_the_bias_as_llama_cpp_does(tmp_path):
    """bloom and refact: 8 whatever the file says (llama.cpp's loaders fix it); jais and mpt: the
    file's attention.max_alibi_bias, none without it. No RoPE in any of them."""

    def alibi(spec):
        assert not any(op.kind == "rope" for op in spec.plan.ops)
        return {op.attr("alibi") for op in spec.plan.ops if op.kind == "attention"}

    for name in ("bloom-dense", "refact-dense"):
        assert alibi(spec_of(_model(name, tmp_path))) == {8.0}
    assert alibi(spec_of(_model("jais-steep", tmp_path))) == {1.0}
    assert alibi(spec_of(_edited("jais-dense", tmp_path, drop_keys=("jais.attention.max_alibi_bias",)))) == {None}
    assert alibi(spec_of(_edited("jais-dense", tmp_path, keys={"jais.attention.max_alibi_bias": (6, 0.0)}))) == {None}
    _refused(_edited("jais-dense", tmp_path, keys={"jais.attention.max_alibi_bias": (6, 100.0)}), "max_alibi_bias")


def test_refact_leaves_what_its_graph_does_not_apply(tmp_path):
    """refact's loader reads attn_output and FFN biases and RoPE factors its graph never adds: the
    plan has none of them; its expert branch is refused."""
    spec = spec_of(_model("refact-dense", tmp_path))
    weights = {w for op in spec.plan.ops for w in op.weights}
    assert not any(
        w.endswith((".attn_output.bias", ".ffn_up.bias", ".ffn_down.bias", ".ffn_gate.bias")) for w in weights
    )
    assert not any(w.startswith("rope_") for w in weights)
    _refused(_model("refact-moe", tmp_path), "refact file with experts")


def test_chatglm_splits_its_fused_gate_and_up(tmp_path):
    ops = spec_of(_model("chatglm-dense", tmp_path)).plan.ops
    halves = [op.weights[0] for op in ops if op.kind == "matmul" and "ffn_up.weight:" in op.weights[0]]
    assert halves[:2] == ["blk.0.ffn_up.weight:gate", "blk.0.ffn_up.weight:up"]


def test_smallthinker_routes_the_layer_input_and_skips_rope_every_fourth_layer(tmp_path):
    """The router reads x before the layer's norm and attention; with a sliding window in the file,
    layer 0 (every 4th from 0) has no RoPE (n_no_rope_layer_step), and the window is 4096 whatever the
    file says; without the key every layer rotates. (llama.cpp's logits barely move with layer 0
    rotated in the saver's 2-layer file: 1.8e-4 against 3.4e-5, so the plan is checked here.)"""
    ops = spec_of(_model("smallthinker-moe", tmp_path)).plan.ops
    routers = [op for op in ops if op.kind == "matmul" and op.outputs == ("router",)]
    assert [op.inputs for op in routers] == [("x",), ("x",)]
    assert ops.index(routers[1]) < next(
        i for i, op in enumerate(ops) if op.kind == "attention" and op.attrs["layer"] == 1
    )
    assert [op.attrs.get("window") for op in ops if op.kind == "attention"] == [None, 4096]
    assert len([op for op in ops if op.kind == "rope"]) == 1
    plain = _edited("smallthinker-moe", tmp_path, drop_keys=("smallthinker.attention.sliding_window",))
    assert len([op for op in spec_of(plain).plan.ops if op.kind == "rope"]) == 2


def test_gpt2_learned_positions_cover_the_context(tmp_path):
    """gpt2 and starcoder add position_embd's row of each token's position: the table must hold
    one per position of the context a bundle serves (llama.cpp's loader requires [n_ctx_train])."""
    spec = spec_of(_model("gpt2-dense", tmp_path))
    ops = [op for op in spec.plan.ops if op.kind == "pos_embed"]
    assert len(ops) == 1 and ops[0].weights == ("position_embd.weight",) and spec.plan.ops[1] is ops[0]
    assert not any(op.kind == "rope" for op in spec.plan.ops)
    longer = _edited("gpt2-dense", tmp_path, keys={"gpt2.context_length": (4, 1024)})
    _refused(longer, "position_embd.weight")
    # a bundle's plan is checked against its weights on load: a table short of the context is refused
    from dataclasses import replace

    from rfc.artifacts.layout import TensorEntry, WeightLayout
    from rfc.artifacts.validate import check_plan_weights

    def layout(rows: int) -> WeightLayout:
        shape = {"position_embd.weight": (rows, spec.plan.n_embd)}
        return WeightLayout(64, tuple(TensorEntry(w.name, w.role, w.format, shape.get(w.name, w.shape), 0, 0, "")
                                      for w in spec.weights))  # fmt: skip

    check_plan_weights(spec.plan, layout(spec.plan.context_length))
    with pytest.raises(Exception, match="has not a row of 256 for each of 257 positions"):
        check_plan_weights(replace(spec.plan, context_length=spec.plan.context_length + 1), layout(256))


def test_mpt_norms_q_and_k_only_beside_an_attn_q_norm(tmp_path):
    """mpt's graph LayerNorms Q and K over their rows when a layer has attn_q_norm; the saver's file has
    attn_k_norm alone, which llama.cpp loads and leaves unapplied, and so does the plan. With both
    (MPT's qk_ln) the norms come after the clamp and before the cache. llama.cpp 0.3.36 aborts on
    such a file (ggml_is_contiguous in the norm of the fused QKV's view), so it has no golden."""

    def norms(spec):
        return [w for op in spec.plan.ops if op.kind == "rmsnorm" for w in op.weights if "_norm." in w and "attn_" in w
                and not w.endswith("attn_norm.weight")]  # fmt: skip

    assert norms(spec_of(_model("mpt-dense", tmp_path))) == []
    desc = archs.load("mpt-dense")
    tensors = []
    for t in desc["tensors"]:
        if ".attn_k_norm." in t[0]:
            tensors.append([t[0].replace(".attn_k_norm.", ".attn_q_norm."), t[1], t[2]])
        tensors.append(t)
    path = tmp_path / "mpt-qk-ln.gguf"
    archs.write_model({**desc, "tensors": tensors}, path, "mpt-qk-ln")
    ops = spec_of(path).plan.ops
    assert norms(spec_of(path)) == [f"blk.{i}.attn_{x}_norm.weight" for i in (0, 1) for x in "qk"]
    at = {w: i for i, op in enumerate(ops) for w in op.weights}
    write = next(i for i, op in enumerate(ops) if op.kind == "kv_write")
    clamps = [i for i, op in enumerate(ops[:write]) if op.kind == "clamp"]
    assert len(clamps) == 3 and max(clamps) < at["blk.0.attn_q_norm.weight"] < at["blk.0.attn_k_norm.weight"] < write


def test_phimoe_norms_add_their_biases_and_its_experts_are_renormalized(tmp_path):
    """phi3's graph with phimoe's loader: build_norm(LLM_NORM_RMS) adds attn_norm.bias, ffn_norm.bias and
    output_norm.bias after the weight; build_moe_ffn renormalizes the chosen weights, with no scale."""
    spec = spec_of(_model("phimoe-moe", tmp_path))
    biases = {op.weights[0] for op in spec.plan.ops if op.kind == "add_bias"}
    assert {"blk.0.attn_norm.bias", "blk.1.ffn_norm.bias", "output_norm.bias", "output.bias"} <= biases
    assert _routes(spec) == [{"n_used": 2}] * 2


def test_nanbeige_loops_reuse_the_weights_with_a_cache_per_pass(tmp_path):
    """num_loops 3 over 2 blocks: 6 attention layers with caches 0..5 reading blocks 0, 1, 0, 1, 0, 1,
    output_norm between passes; a looped file with weight .scale tensors is refused (llama.cpp loads
    them by logical layer and runs its later passes without them)."""
    spec = spec_of(_model("nanbeige-looped", tmp_path))
    attention = [op for op in spec.plan.ops if op.kind == "attention"]
    assert [op.attrs["layer"] for op in attention] == list(range(6)) and spec.plan.kv.n_layers == 6
    q = [op.weights[0] for op in spec.plan.ops if op.kind == "matmul" and op.weights[0].endswith("attn_q.weight")]
    assert q == [f"blk.{i % 2}.attn_q.weight" for i in range(6)]
    between = [op for op in spec.plan.ops if op.kind == "rmsnorm" and op.inputs == op.outputs == ("x",)]
    assert [op.weights for op in between] == [("output_norm.weight",)] * 2
    scaled = _edited("nanbeige-dense", tmp_path, keys={"nanbeige.num_loops": (4, 3)})
    _refused(scaled, "looped nanbeige with weight .scale tensors")


def test_grok_takes_old_grok_1_defaults_and_refuses_yarn(tmp_path):
    """Without the keys (old Grok-1 files) llama.cpp's defaults: the embedding x 78.38367, scores
    30 tanh(q.k x 0.0883883 / 30), logits x 0.57735; the saver's file has a dense FFN beside the
    experts (their sum x sqrt(2)/2). YaRN scaling is refused."""
    keys = ("grok.embedding_scale", "grok.attention.output_scale", "grok.attn_logit_softcapping", "grok.logit_scale")
    ops = spec_of(_edited("grok-moe", tmp_path, drop_keys=keys)).plan.ops
    assert next(op for op in ops if op.kind == "embed").attrs["scale"] == pytest.approx(78.38367176906169, rel=1e-7)
    att = next(op for op in ops if op.kind == "attention").attrs
    assert (att["scale"], att["softcap"]) == (pytest.approx(0.08838834764831845, rel=1e-7), 30.0)
    scales = [op.attrs["factor"] for op in ops if op.kind == "scale" and op.inputs[0] in ("a", "logits")]
    assert scales == [pytest.approx(0.70710677)] * 2 + [pytest.approx(0.5773502691896257, rel=1e-7)]
    _refused(_edited("grok-moe", tmp_path, keys={"grok.rope.scaling.type": (8, "yarn"),
                                                 "grok.rope.scaling.factor": (6, 4.0)}), "YaRN")  # fmt: skip


def test_deci_plans_each_layers_own_shape(tmp_path):
    """deci-varied's layers: attention of 2 heads over 2 and over 1 KV heads (buffers per geometry, the
    cache row the widest layer's), a linear attention (attn_output on the normed input, its bias and
    scale unapplied), a layer without attention; FFNs 384 and 256 wide. A layer with attention and no
    FFN is refused (llama.cpp drops its attention output)."""
    spec = spec_of(_model("deci-varied", tmp_path))
    attention = [op.attrs for op in spec.plan.ops if op.kind == "attention"]
    assert [(a["layer"], a["n_heads"], a["n_kv_heads"]) for a in attention] == [(0, 2, 2), (1, 2, 1)]
    assert spec.plan.kv.row == 256
    linear = [op for op in spec.plan.ops if op.kind == "matmul" and op.weights == ("blk.2.attn_output.weight",)]
    assert [(op.inputs, op.outputs) for op in linear] == [(("h",), ("lin",))]
    weights = {w for op in spec.plan.ops for w in op.weights}
    assert "blk.2.attn_output.bias" not in weights and not any(w.startswith("blk.3.attn") for w in weights)
    assert {op.outputs[0] for op in spec.plan.ops if op.kind == "matmul" and "ffn_up" in op.weights[0]} == {
        "up_384", "up_256"}  # fmt: skip
    heads = {
        "deci.attention.head_count": (9, [4, [2, 2, 2, 2]]),
        "deci.feed_forward_length": (9, [4, [384, 0, 384, 384]]),
    }
    _refused(_edited("deci-varied", tmp_path, keys=heads), "attention and no FFN")


def test_a_matmul_cannot_write_its_own_input():
    """The cpu and GPU matmul kernels read x while they write out: an in-place matmul would be
    silently wrong on them (deci's linear attention was, on the cpu device, before it had a buffer
    of its own), so the plan validator refuses one."""
    from dataclasses import replace

    from rfc.artifacts.plan import Op, validate_plan
    from tests.conftest import FIXTURES
    from tests.gguf_edit import spec_of as spec_of_file

    spec = spec_of_file(FIXTURES / "tiny-llama-Q8_0.gguf")
    i = next(i for i, op in enumerate(spec.plan.ops) if op.kind == "matmul" and op.inputs == ("h",))
    ops = list(spec.plan.ops)
    ops[i] = Op("matmul", ("h",), ("h",), ops[i].weights, ops[i].attrs)
    with pytest.raises(Exception, match="cannot write its own input"):
        validate_plan(replace(spec.plan, ops=tuple(ops)))


def test_granite_swa_reads_its_pattern_arrays_as_llama_cpp_does(tmp_path):
    """The sliding pattern must be an array (get_arr, required); a scalar rope_pattern is not read at
    all (every layer rotates); Granite Vision's deepstack inputs and sliding layers of another head
    size are refused."""
    a = "granite_swa"
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.attention.sliding_window_pattern": (4, 2)}), "per-layer array")
    ops = spec_of(_edited(f"{a}-dense", tmp_path, keys={f"{a}.attention.rope_pattern": (4, 0)})).plan.ops
    assert sum(op.kind == "rope" for op in ops) == 2
    ops = spec_of(_edited(f"{a}-dense", tmp_path, keys={f"{a}.attention.rope_pattern": (9, [4, [0, 1]])})).plan.ops
    assert sum(op.kind == "rope" for op in ops) == 1
    windows = [op.attrs.get("window") for op in ops if op.kind == "attention"]
    assert windows == [None, 32] and all(len(op.weights) == 1 for op in ops if op.kind == "attention")  # sinks
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.deepstack_mapping": (9, [5, [-1, 0]])}), "deepstack")
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.attention.key_length_swa": (4, 64)}), "one head size")


def test_granite_swa_refuses_fused_and_split_experts_together(tmp_path):
    name = "granite_swa-moe"
    _refused(_edited(name, tmp_path, add_tensors=[("blk.0.ffn_gate_exps.weight", (4, 384, 256))]),
             "has both")  # fmt: skip


def test_spark2_5_gates_each_head(tmp_path):
    """One sigmoid gate per head, [T, n_heads], over the attention output before attn_output; the cpu
    step program runs it as rows x heads segments (tests/e2e/test_llama_archs.py holds the result)."""
    ops = spec_of(_model("spark2_5-swa", tmp_path)).plan.ops
    gates = [op for op in ops if op.kind == "swiglu" and op.attrs.get("activation") == "sigmoid"]
    assert [g.inputs for g in gates] == [("attn_gate", "att")] * 2
    rotations = [(op.attrs["n_rot"], op.attrs["freq_base"]) for op in ops if op.kind == "rope"]
    assert rotations == [(128, 10000.0), (64, 1000.0)]


def test_muse_glimmer_norms_at_two_epsilons_and_refuses_yarn(tmp_path):
    ops = spec_of(_model("muse-glimmer-swa", tmp_path)).plan.ops
    eps = sorted({op.attrs["eps"] for op in ops if op.kind == "rmsnorm"})
    assert eps == [pytest.approx(1e-8), pytest.approx(1e-5)]
    a = "muse-glimmer"
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.rope.scaling.type": (8, "yarn"),
                                                   f"{a}.rope.scaling.factor": (6, 4.0)}), "YaRN")  # fmt: skip
    _refused(_edited(f"{a}-dense", tmp_path, drop_tensors=("output.weight",)), "output.weight")


def test_afmoe_requires_the_selection_bias(tmp_path):
    _refused(_edited("afmoe-moe", tmp_path, drop_tensors=("blk.1.exp_probs_b.bias",)), "exp_probs_b")


def test_cohere2moe_layer_norms_without_an_rms_epsilon(tmp_path):
    """No attention.layer_norm_rms_epsilon: LayerNorms at attention.layer_norm_epsilon (llama.cpp's LLM_NORM)."""
    a = "cohere2moe"
    spec = spec_of(_edited(f"{a}-moe", tmp_path, drop_keys=(f"{a}.attention.layer_norm_rms_epsilon",),
                           keys={f"{a}.attention.layer_norm_epsilon": (6, 1e-5)}))  # fmt: skip
    assert spec.hparams.extra["norm"] == "layernorm"
    assert "norm" not in spec_of(_model(f"{a}-moe", tmp_path)).hparams.extra


def test_laguna_reads_its_gate_shape_from_the_tensor(tmp_path):
    """One gate per head or one per value, by attn_gate's rows (laguna-xs has both); any other width is
    refused, as llama.cpp aborts on it; the selection bias is required."""
    ops = spec_of(_model("laguna-xs", tmp_path)).plan.ops
    gates = [op for op in ops if op.kind == "swiglu" and op.attrs.get("activation") == "softplus"]
    assert [g.inputs[0] for g in gates] == ["attn_gate_2x2", "attn_gate_4x2"]
    _refused(_edited("laguna-moe", tmp_path, drop_tensors=("blk.0.attn_gate.weight",),
                     add_tensors=[("blk.0.attn_gate.weight", (3, 160))]), "one per head")  # fmt: skip
    _refused(_edited("laguna-moe", tmp_path, drop_tensors=("blk.1.exp_probs_b.bias",)), "exp_probs_b")


def test_hy_v3_runs_experts_where_a_router_is(tmp_path):
    """Its layers' kinds come from the tensors: expert layers only after the dense ones (first_k_dense_replace),
    and the dense tensors llama.cpp loads in expert layers known and unused."""
    spec = spec_of(_model("hy_v3-lead", tmp_path))
    assert len(_routes(spec)) == 1 and spec.hparams.extra["expert_shared_count"] == 1
    assert not any("blk.1.ffn_gate.weight" in op.weights for op in spec.plan.ops)
    _refused(_edited("hy_v3-moe", tmp_path, drop_tensors=("blk.1.ffn_gate_inp.weight",)), "must follow")


def test_hrm_text_checks_its_cycles_and_refuses_prefix_lm(tmp_path):
    a = "hrm_text"
    spec = spec_of(_model(f"{a}-dense", tmp_path))
    assert sorted({op.attrs["layer"] for op in spec.plan.ops if op.kind == "attention"}) == list(range(6))
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.hrm.h_cycles": (4, 3)}), "is not layers_per_stack")
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.hrm.prefix_lm": (7, True)}), "prefix-LM")


def test_mamba2_plans_no_kv_layer_and_refuses_attention_in_one(tmp_path):
    """A plan with a KV cache of no layers: no op may write or read one (the plan validator's layer range)."""
    from dataclasses import replace

    from rfc.artifacts import BundleError
    from rfc.artifacts.plan import Op, validate_plan

    spec = spec_of(_model("mamba2-dense", tmp_path))
    assert spec.plan.kv.n_layers == 0 and not any(op.kind in ("attention", "kv_write") for op in spec.plan.ops)
    write = Op("kv_write", ("x", "x"), (), (), {"layer": 0})
    with pytest.raises(BundleError, match="layer"):
        validate_plan(replace(spec.plan, ops=(*spec.plan.ops, write)))


@pytest.mark.parametrize("name", ["deepseek32-moe", "glm-dsa-moe"])
def test_sparse_attention_serves_at_most_top_k_tokens(name, tmp_path):
    """DSA's indexer chooses every key while a sequence holds at most attention.indexer.top_k tokens: the
    dense attention is exact there, and the served context stops at top_k (the file's own is shown)."""
    a = name.rsplit("-", 1)[0]
    spec = spec_of(_edited(name, tmp_path, keys={f"{a}.attention.indexer.top_k": (4, 8)}))
    assert spec.hparams.context_length == 8 and spec.hparams.extra["context_length_of_file"] == 256
    assert spec.plan.context_length == 8


def test_mamba_scans_with_a_decay_per_state(tmp_path):
    """Mamba-1's scan: one head of one row per channel, A flattened [d_inner N] (decay 'state'); a file with
    some of jamba's dt/B/C norm weights and not all is refused."""
    spec = spec_of(_model("mamba-falcon", tmp_path))
    scans = [op for op in spec.plan.ops if op.kind == "ssm_scan"]
    assert [(op.attrs["n_heads"], op.attrs["head_dim"], op.attrs["decay"]) for op in scans] == [(512, 1, "state")] * 2
    assert sum(op.kind == "rmsnorm" and not op.weights for op in spec.plan.ops) == 6  # dt, B, C of 2 layers
    _refused(_edited("mamba-dense", tmp_path, add_tensors=[("blk.0.ssm_dt_norm.weight", (2,))]), "not all three")


def test_jamba_caches_its_attention_layers_only(tmp_path):
    spec = spec_of(_model("jamba-moe", tmp_path))
    assert spec.plan.kv.n_layers == 1 and spec.hparams.extra["attention_layers"] == [0]
    assert _routes(spec) == [{"n_used": 2, "norm": False}]
    a = "jamba"
    _refused(_edited(f"{a}-dense", tmp_path, keys={f"{a}.ssm.inner_size": (4, 256)}), "2 x n_embd")


def test_zero_bytes_are_zeros_in_every_gguf_format():
    """Values narrower than the keys are padded with zero rows in the weight's own format
    (compiler/weights.py ZeroRows): all-zero bytes must decode to zeros in every format a GGUF holds."""
    from rfc.artifacts.formats import FORMATS
    from rfc.runtime.model.quants import dequantize

    for name, f in FORMATS.items():
        if f.base is None:  # a format of the file, not a repacked layout
            x = dequantize(np.zeros(3 * f.block_bytes, np.uint8), name, (3 * f.block_elems,))
            assert not np.any(x), name


def test_minicpm3_pads_its_values_to_the_keys_head_size_and_cuts_them_after_attention(tmp_path):
    """minicpm3-narrow: keys of 64 + 32, values of 64. Each head's value rows of attn_kv_b, then 32
    zero rows (the KV cache's rows have one head size); the attention's output cut back to 64 per
    head before attn_output; one rope key per token, repeated per head."""
    from rfc.compiler.weights import RowRange, ZeroRows

    spec = spec_of(_model("minicpm3-narrow", tmp_path))
    uses = {w.name: w for w in spec.weights}
    values = uses["blk.0.attn_kv_b.weight:v"]
    assert values.shape == (2 * 96, 512)
    assert values.parts == (RowRange("blk.0.attn_kv_b.weight", 64, 128), ZeroRows(32),
                            RowRange("blk.0.attn_kv_b.weight", 192, 256), ZeroRows(32))  # fmt: skip
    keys = uses["blk.0.attn_kv_b.weight:k"]
    assert keys.parts == (RowRange("blk.0.attn_kv_b.weight", 0, 64), RowRange("blk.0.attn_kv_b.weight", 128, 192))
    assert uses["blk.0.attn_kv_a_mqa.weight:rope"].parts == (RowRange("blk.0.attn_kv_a_mqa.weight", 512, 544),) * 2
    cut = [op for op in spec.plan.ops if op.kind == "slice_heads"]
    assert len(cut) == 2 and cut[0].attrs == {"heads": 2, "width": 64}
    att = next(op for op in spec.plan.ops if op.kind == "attention")
    assert (att.attrs["n_kv_heads"], att.attrs["head_dim"], spec.plan.kv.head_dim) == (2, 96, 96)
    assert att.attrs["scale"] == pytest.approx(96**-0.5)
    out = next(op for op in spec.plan.ops if op.kind == "matmul" and op.weights[0] == "blk.0.attn_output.weight")
    assert out.inputs == cut[0].outputs


def test_mimo2_runs_the_biases_and_scales_its_graph_does(tmp_path):
    """mimo2's graph multiplies by Q, K and V alone (their biases and scales known and unused) and
    applies attn_output's scale; the value scale after attn_output; the sliding layer at its own base
    and scale 1; a dense FFN's tensors in a layer with a router are known and unused."""
    spec = spec_of(_model("mimo2-flash", tmp_path))
    ops = spec.plan.ops
    for proj in "qkv":
        assert not any(o.kind == "add_bias" and o.weights[0].startswith(f"blk.0.attn_{proj}") for o in ops)
    rope = [o.attrs for o in ops if o.kind == "rope"]
    assert [(r["freq_base"], r["freq_scale"], r["n_rot"], r["n_kv_heads"]) for r in rope] == [
        (10000.0, 1.0, 32, 1), (1000.0, 1.0, 32, 2)]  # fmt: skip
    att = [o for o in ops if o.kind == "attention"]
    assert [o.attrs.get("window") for o in att] == [None, 4] and [len(o.weights) for o in att] == [0, 1]
    assert spec.plan.kv.n_kv_heads * spec.plan.kv.head_dim == 2 * 96
    scales = [o.attrs["factor"] for o in ops if o.kind == "scale"]
    assert scales.count(pytest.approx(0.707)) == 2
    with pytest.raises(CompileError, match="attention.value_length 128 != key_length 96"):
        spec_of(_edited("mimo2-flash", tmp_path, keys={"mimo2.attention.value_length": (4, 128)}))


def test_step35_rotates_half_its_rope_dims_on_global_layers_and_caps_its_swiglus(tmp_path):
    """step35's loader halves rope.dimension_count for the global layers (64 -> 32) and leaves the
    sliding layers' rope.dimension_count_swa (96) whole; its clamps are min(silu(g), c) x clamp(u),
    the experts' by swiglu_clamp_exp, the shared expert's and the dense FFN's by swiglu_clamp_shexp."""
    spec = spec_of(_model("step35-dense", tmp_path))
    ops = spec.plan.ops
    assert [(o.attrs["n_rot"], o.attrs["freq_base"]) for o in ops if o.kind == "rope"] == [(32, 10000.0), (96, 1000.0)]
    glus = [o.attrs for o in ops if o.kind == "swiglu" and o.attrs.get("activation") == "silu_cap"]
    assert len(glus) == 3 and [g["limit"] for g in glus] == pytest.approx([0.4] * 3)
    assert sum(o.kind == "swiglu" and o.attrs.get("activation") == "sigmoid" for o in ops) == 2  # the per-head gates
    path = _edited("step35-dense", tmp_path, keys={"step35.rope.dimension_count": (4, 6)})
    _refused(path, "rotate half of it, which must be even")


def test_hy_v4_mixes_its_streams_around_every_sublayer(tmp_path):
    """hy_v4: the embedding repeated over 4 streams, each sublayer between hc_gates / hc_reduce and
    hc_post with its two scales read at compile time, the final mix of the logit rows; a gates op over
    streams that do not fit its mixes is refused by the validator."""
    import dataclasses

    from rfc.artifacts.ops.view import PlanError
    from rfc.artifacts.validate import check_plan

    spec = spec_of(_model("hy_v4-heads", tmp_path))
    ops = spec.plan.ops
    kinds = [o.kind for o in ops]
    assert kinds.count("concat_heads") == 3 + 2 * 2  # the streams' start (x2, x3, x4), MLA's q and k per layer
    assert kinds.count("hc_gates") == 2 * 2 + 1 and kinds.count("hc_reduce") == 5 and kinds.count("hc_post") == 4
    gates = [o for o in ops if o.kind == "hc_gates"]
    assert gates[0].attrs["streams"] == 4 and gates[0].attrs["magnitude"] == pytest.approx(2.0)
    assert "scale_post" not in gates[-1].attrs  # the final mix: weights only
    att = next(o for o in ops if o.kind == "attention")
    assert att.weights == ("blk.0.attn_sinks.weight",)
    broken = [o if o is not gates[0] else type(o)(o.kind, o.inputs, o.outputs, o.weights, {**o.attrs, "streams": 3})
              for o in ops]  # fmt: skip
    with pytest.raises(PlanError, match="mixes/gates"):
        check_plan(dataclasses.replace(spec.plan, ops=tuple(broken)))


def test_malformed_narrow_value_and_state_ops_are_refused(tmp_path):
    """The validator refuses slice_heads wider than its input's heads, and a gated_delta_net taking its
    per-head decay form over a KDA layer's alpha of one value per key channel."""
    import dataclasses

    from rfc.artifacts.ops.view import PlanError
    from rfc.artifacts.validate import check_plan

    def broken(spec, kind, **changes):
        op = next(o for o in spec.plan.ops if o.kind == kind)
        new = dataclasses.replace(op, **changes)
        return dataclasses.replace(spec.plan, ops=tuple(new if o is op else o for o in spec.plan.ops))

    spec = spec_of(_model("minicpm3-narrow", tmp_path))
    op = next(o for o in spec.plan.ops if o.kind == "slice_heads")
    with pytest.raises(PlanError, match="exceeds the input's heads"):
        check_plan(broken(spec, "slice_heads", attrs={**op.attrs, "width": 97}))
    spec = spec_of(_model("kimi-linear-heads", tmp_path))
    op = next(o for o in spec.plan.ops if o.kind == "gated_delta_net")
    with pytest.raises(PlanError, match="alpha is not"):
        check_plan(broken(spec, "gated_delta_net", attrs={**op.attrs, "decay": "head"}))


def test_rwkv_files_llama_cpp_cannot_run_are_refused(tmp_path):
    """What llama.cpp asserts or would read as a null tensor: a token-shift count other than its stack's (two
    for rwkv6 / rwkv7, one for the Qwen-based), rwkv6's K/V of fewer heads (only rwkv6qwen2 repeats them), an
    rwkv6qwen2 layer with time_mix_first (its graph would group-norm by a time_mix_ln its loader does not read),
    rwkv7 without its gate, and arwkv7's gate beside five lerps (the gate's mix is the sixth)."""
    _refused(_edited("rwkv6-dense", tmp_path, keys={"rwkv6.token_shift_count": (4, 1)}), "token_shift_count")
    _refused(_edited("rwkv6qwen2-dense", tmp_path, drop_keys=["rwkv6qwen2.token_shift_count"]), "token_shift_count")
    _refused(_edited("rwkv6-dense", tmp_path, keys={"rwkv6.attention.head_count_kv": (4, 2)}), "does not divide")
    first = ("blk.0.time_mix_first.weight", (4, 64))
    _refused(_edited("rwkv6qwen2-dense", tmp_path, add_tensors=[first]), "time_mix_ln")
    _refused(_edited("rwkv7-dense", tmp_path, drop_tensors=["blk.1.time_mix_g1.weight", "blk.1.time_mix_g2.weight"]),
             "rwkv7 requires both")  # fmt: skip
    fused = [f"blk.{i}.time_mix_lerp_fused.weight" for i in (0, 1)]
    five = [(n, (5, 1, 1, 256)) for n in fused]
    _refused(_edited("arwkv7-dense", tmp_path, drop_tensors=fused, add_tensors=five), "6 with the gate")


def test_rwkv_plans_their_state_and_no_kv_layer(tmp_path):
    """Per layer the token shifts' [1, n_embd] (two in rwkv6 / rwkv7, one in the Qwen-based stacks) and the WKV's
    [heads, S, S]; no KV cache layer; QRWKV6's K/V of 2 heads under 4 and its query scale 64^-0.5 as float32."""
    for name, shifts in (("rwkv6-dense", 2), ("rwkv6qwen2-dense", 1), ("rwkv7-dense", 2), ("arwkv7-plain", 1)):
        spec = spec_of(_model(name, tmp_path))
        assert spec.plan.kv.n_layers == 0
        shapes = [t.shape for t in spec.plan.state.tensors if t.layer == 1]
        assert shapes.count((1, 256)) == shifts and shapes.count((4, 64, 64)) == 1, (name, shapes)
    wkv = next(op for op in spec_of(_model("rwkv6qwen2-dense", tmp_path)).plan.ops if op.kind == "wkv6")
    assert (wkv.attrs["mode"], wkv.attrs["n_kv_heads"], wkv.attrs["scale"]) == ("gla", 2, 0.125)


def test_malformed_rwkv_ops_are_refused(tmp_path):
    """The validator refuses a lerp_data naming a mix past its rows' (a lerp's `part` outside any weight's), a
    wkv6 whose K/V heads do not divide its heads, and a wkv7 whose two outputs are one buffer."""
    import dataclasses

    from rfc.artifacts.ops.view import PlanError
    from rfc.artifacts.validate import check_plan

    def broken(spec, kind, **changes):
        op = next(o for o in spec.plan.ops if o.kind == kind)
        new = dataclasses.replace(op, **changes)
        return dataclasses.replace(spec.plan, ops=tuple(new if o is op else o for o in spec.plan.ops))

    spec = spec_of(_model("rwkv7-dense", tmp_path))
    op = next(o for o in spec.plan.ops if o.kind == "lerp_data")  # the value residual's, over [T, n_embd]
    with pytest.raises(PlanError, match="part"):
        check_plan(broken(spec, "lerp_data", attrs={**op.attrs, "part": 1}))
    op = next(o for o in spec.plan.ops if o.kind == "lerp")
    with pytest.raises(PlanError, match="part"):
        check_plan(broken(spec, "lerp", attrs={**op.attrs, "part": 1 << 40}))
    op = next(o for o in spec.plan.ops if o.kind == "wkv7")
    with pytest.raises(PlanError, match="one buffer"):
        check_plan(broken(spec, "wkv7", outputs=(op.outputs[0], op.outputs[0])))
    spec = spec_of(_model("rwkv6qwen2-dense", tmp_path))
    op = next(o for o in spec.plan.ops if o.kind == "wkv6")
    with pytest.raises(PlanError, match="n_kv_heads|multiple"):
        check_plan(broken(spec, "wkv6", attrs={**op.attrs, "n_kv_heads": 3}))


def test_grovemoe_routes_its_adjugate_experts_by_divided_ids(tmp_path):
    """A second router over the same logits, min(used, chunk experts) ids divided by experts_per_group, over the
    first experts' sum; llama.cpp's failures refused: experts_per_group not dividing expert_count, expert groups,
    a selection bias."""
    spec = spec_of(_model("grovemoe-groups", tmp_path))
    routes = [op for op in spec.plan.ops if op.kind == "moe_route"]
    got = [(op.inputs, op.attrs["n_used"], op.attr("id_div")) for op in routes[:2]]
    assert got == [(("router",), 2, 1), (("router",), 2, 2)]
    adjugate = [op for op in spec.plan.ops if op.kind == "moe_matmul" and op.inputs[1] == "adj_ids"]
    assert adjugate[0].inputs[0] == "moe_out" and spec.hparams.extra["expert_count"] == 4
    _refused(_edited("grovemoe-groups", tmp_path, keys={"grovemoe.experts_per_group": (4, 3)}), "does not divide")
    groups = {"grovemoe.expert_group_count": (4, 2), "grovemoe.expert_group_used_count": (4, 1)}
    _refused(_edited("grovemoe-groups", tmp_path, keys=groups), "expert groups")
    _refused(_edited("grovemoe-moe", tmp_path, add_tensors=[("blk.0.exp_probs_b.bias", (2,))]), "selection bias")


def test_dots3note_plans_each_mla_geometry_apart(tmp_path):
    """The sliding layer's latent attention in its own buffers and attention width (256 + 64), windowed, in rows
    of the full layers' 512 + 64; a layer without its selection bias refused (llama.cpp requires it)."""
    spec = spec_of(_model("dots3note-geoms", tmp_path))
    atts = [op for op in spec.plan.ops if op.kind == "attention"]
    got = [(op.inputs, op.attrs["head_dim"], op.attrs.get("window")) for op in atts]
    assert got == [(("q",), 576, None), (("q_g1",), 320, 4)]
    assert spec.plan.kv.head_dim == 576 and spec.hparams.extra["sliding_window_layers"] == [1]
    _refused(_edited("dots3note-moe", tmp_path, drop_tensors=["blk.1.exp_probs_b.bias"]), "exp_probs_b")


def test_graniteswitch_routes_adapters_in_the_graph_and_refuses_what_llama_cpp_does(tmp_path):
    """The router attends over its own KV layer (n_layer) with one head of 8, its slot picked by rounding; a logit
    scale of 0, an activation token outside the vocabulary and one named twice are refused; a router that picks
    by index more than one expert is refused by the validator."""
    import dataclasses

    from rfc.artifacts.ops.view import PlanError
    from rfc.artifacts.validate import check_plan

    name, a = "graniteswitch-dense", "graniteswitch"
    spec = spec_of(_model(name, tmp_path))
    router = next(op for op in spec.plan.ops if op.kind == "attention")
    assert (router.attrs["layer"], router.attrs["head_dim"], spec.plan.kv.n_layers) == (2, 8, 3)
    route = next(op for op in spec.plan.ops if op.kind == "moe_route")
    assert route.attr("pick") == "index" and route.attrs["n_used"] == 1
    _refused(_edited(name, tmp_path, keys={f"{a}.logit_scale": (6, 0.0)}), "logit_scale")
    _refused(_edited(name, tmp_path, keys={f"{a}.adapters.token_ids_activate": (9, [5, [459, 4096]])}), "outside")
    _refused(_edited(name, tmp_path, keys={f"{a}.adapters.token_ids_activate": (9, [5, [459, 459]])}), "twice")
    twice = dataclasses.replace(route, outputs=route.outputs, attrs={**route.attrs, "n_used": 2})
    plan = dataclasses.replace(spec.plan, ops=tuple(twice if o is route else o for o in spec.plan.ops))
    with pytest.raises(PlanError, match="pick 'index'|ids/weights"):
        check_plan(plan)


def test_minimax_m3_serves_its_sparse_attention_budget_densely(tmp_path):
    """While a sequence holds at most top_k blocks of block_size tokens every block is chosen: the served context
    is capped there; every FFN is swiglu_oai; an indexer head count other than head_count_kv is refused."""
    a = "minimax-m3"
    keys = {f"{a}.attention.indexer.top_k": (4, 8), f"{a}.attention.indexer.block_size": (4, 4)}
    spec = spec_of(_edited(f"{a}-moe", tmp_path, keys=keys))
    assert spec.hparams.context_length == spec.plan.context_length == 32
    assert spec.hparams.extra["context_length_of_file"] == 256
    glus = {op.attr("activation") for op in spec.plan.ops if op.kind == "swiglu"}
    assert glus == {"swiglu_oai"}
    _refused(_edited(f"{a}-moe", tmp_path, keys={f"{a}.attention.indexer.head_count": (4, 1)}), "indexer")


def test_kimi_k3_banks_its_residuals_and_mixes_them_before_every_sublayer(tmp_path):
    """kimi-k3-deep (5 layers banked every 2): layers 0, 2 and 4 bank their raw residual (put_cols into slots 0, 1,
    2) and restart it from the attention output (a copy, not an add); every mix puts the current residual after
    the banks and mixes banks + 1 streams (none before the first bank: layer 0's attention reads x); situ with
    the file's betas everywhere a SwiGLU would be; KDA's decay reads -ssm_a (its sign bits flipped) where
    kda.gate_lower_bound is set, ssm_a as it is where not."""
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.weights import ElementRange

    spec = spec_of(_model("kimi-k3-deep", tmp_path))
    ops = spec.plan.ops
    mixes = [o.attrs["streams"] for o in ops if o.kind == "res_mix"]
    # layer 0: ffn 2; layer 1: 2, 2; layer 2: 2 (before its bank), 3; layer 3: 3, 3; layer 4: 3, 4; the output: 4
    assert mixes == [2, 2, 2, 2, 3, 3, 3, 3, 4, 4]
    puts = [o.attrs["offset"] // 128 for o in ops if o.kind == "put_cols"]
    assert puts == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]  # layers 2 and 4 bank what their attention's mix put there
    assert spec.plan.buffer("stack").shape == ("T", 4 * 128)
    copies = [o for o in ops if o.kind == "scale" and o.outputs == ("x",)]
    assert len(copies) == 3 and all(o.inputs == ("h",) and o.attrs["factor"] == 1.0 for o in copies)
    glus = {(o.attrs.get("activation"), o.attrs.get("alpha"), o.attrs.get("limit")) for o in ops if o.kind == "swiglu"}
    assert glus == {("situ", 0.5, float(np.float32(0.4))), ("sigmoid", None, None)}
    decays = [o for o in ops if o.kind == "gated_delta_net"]
    assert [o.attrs["decay"] for o in decays] == ["key_sigmoid"] * 3 and decays[0].weights[0] == "blk.1.ssm_a:negated"
    use = next(w for w in spec.weights if w.name == "blk.1.ssm_a:negated")
    assert use.parts == (ElementRange("blk.1.ssm_a", 0, 1, negate=True),)
    path = _edited("kimi-k3-deep", tmp_path, drop_keys=["kimi-k3.kda.gate_lower_bound"])
    plain = spec_of(path)
    decays = [o for o in plain.plan.ops if o.kind == "gated_delta_net"]
    assert [o.attrs["decay"] for o in decays] == ["key"] * 3 and decays[0].weights[0] == "blk.1.ssm_a"
    assert read_gguf(path).tensors["blk.1.ssm_a"].format == "F32"


def test_negated_vectors_flip_every_sign_exactly(tmp_path):
    """ModelBuilder.negated's bytes: each element of an F32, F16 or BF16 vector negated (zeros to -0), nothing else."""
    import io

    from rfc.compiler.weights import ElementRange, WeightUse, _read_parts

    values = np.array([1.5, -2.25, 0.0, 3e-8, -7.0, 65504.0], np.float32)
    for fmt, dtype in (("F32", np.float32), ("F16", np.float16)):
        data = values.astype(dtype).tobytes()
        t = type("T", (), {"offset": 0, "shape": (6,), "format": fmt, "nbytes": len(data)})()
        model = type("M", (), {"tensors": {"v": t}, "path": tmp_path / "m.gguf"})()
        use = WeightUse("v:negated", "v", fmt, (6,), (ElementRange("v", 0, 6, negate=True),))
        got = np.frombuffer(b"".join(_read_parts(io.BytesIO(data), model, use, 1 << 20)), dtype)
        np.testing.assert_array_equal(got, -values.astype(dtype))
        assert np.signbit(got[2])
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    t = type("T", (), {"offset": 0, "shape": (6,), "format": "BF16", "nbytes": len(bf16)})()
    model = type("M", (), {"tensors": {"v": t}, "path": tmp_path / "m.gguf"})()
    use = WeightUse("v:negated", "v", "BF16", (6,), (ElementRange("v", 0, 6, negate=True),))
    got = np.frombuffer(b"".join(_read_parts(io.BytesIO(bf16), model, use, 1 << 20)), np.uint16)
    np.testing.assert_array_equal(got, np.frombuffer(bf16, np.uint16) ^ 0x8000)


def test_kimi_k3_refuses_what_it_cannot_compute_exactly(tmp_path):
    """A lower bound of 0 or above (a decay over 1), a situ beta of 0 (a division by zero), a linear beta too
    small to divide by, MLA layers disagreeing on the q_lora bottleneck or the output gate, the MHA fallback
    (attn_kv_b), the selection bias missing; and the validator refuses a mix of more streams than the stack
    holds and a put_cols past its stack's width."""
    import dataclasses

    from rfc.artifacts.ops.view import PlanError
    from rfc.artifacts.validate import check_plan

    a = "kimi-k3"
    _refused(_edited(f"{a}-deep", tmp_path, keys={f"{a}.kda.gate_lower_bound": (6, 0.5)}), "gate_lower_bound")
    _refused(_edited(f"{a}-deep", tmp_path, keys={f"{a}.activation.situ_beta": (6, 0.0)}), "situ_beta")
    _refused(_edited(f"{a}-deep", tmp_path, keys={f"{a}.activation.situ_linear_beta": (6, 1e-8)}), "too small")
    _refused(_edited(f"{a}-deep", tmp_path, drop_tensors=["blk.3.attn_q_a_norm.weight"]), "attn_q_a_norm")
    _refused(_edited(f"{a}-deep", tmp_path, drop_tensors=["blk.3.attn_gate.weight"]), "output gate")
    _refused(_edited(f"{a}-moe", tmp_path, add_tensors=[("blk.0.attn_kv_b.weight", (256, 512))]), "MHA fallback")
    _refused(_edited(f"{a}-moe", tmp_path, drop_tensors=["blk.1.exp_probs_b.bias"]), "exp_probs_b")

    def broken(spec, kind, index, **attrs):
        op = [o for o in spec.plan.ops if o.kind == kind][index]
        new = dataclasses.replace(op, attrs={**op.attrs, **attrs})
        return dataclasses.replace(spec.plan, ops=tuple(new if o is op else o for o in spec.plan.ops))

    spec = spec_of(_model(f"{a}-deep", tmp_path))
    check_plan(spec.plan)
    with pytest.raises(PlanError, match="holds no 5 streams"):
        check_plan(broken(spec, "res_mix", -1, streams=5))
    with pytest.raises(PlanError, match="overrun"):
        check_plan(broken(spec, "put_cols", 0, offset=4 * 128 - 1))


def test_glm5_next_mixes_its_streams_by_sinkhorn_matrices(tmp_path):
    """glm5-next: the embedding repeated over 4 streams; around each sublayer the 24 mixes split into the gates'
    8 rows and the matrix's 16 (hc_*_fn and hc_*_base sliced), hc_gates with magnitude 2 and no post eps, hc_comb
    with the file's iterations and scale[2], hc_mix_post into the other stream buffer; hc_mean for the logit rows;
    nope-only latent attention over a latent-only cache, the served context capped at the indexer's top_k; the
    KDA's Q/K L2 norm at 1e-6."""
    spec = spec_of(_model("glm5-next-sharp", tmp_path))
    ops = spec.plan.ops
    kinds = [o.kind for o in ops]
    assert kinds.count("hc_gates") == kinds.count("hc_comb") == kinds.count("hc_mix_post") == 4
    assert kinds.count("hc_mean") == 1 and "hc_post" not in kinds and "rope" not in kinds
    gates = [o for o in ops if o.kind == "hc_gates"]
    assert all(o.attrs["magnitude"] == 2.0 and o.attrs["post_eps"] is False for o in gates)
    combs = [o for o in ops if o.kind == "hc_comb"]
    assert all(o.attrs["iters"] == 3 and o.attrs["eps"] == pytest.approx(0.01) for o in combs)
    assert combs[0].weights == ("blk.0.hc_attn_base.weight:comb",)
    posts = [o for o in ops if o.kind == "hc_mix_post"]
    assert [(o.inputs[1], o.outputs[0]) for o in posts] == [("hs", "hs_b"), ("hs_b", "hs")] * 2
    att = next(o for o in ops if o.kind == "attention")
    assert att.inputs == ("q_latent",) and att.attrs["head_dim"] == 512
    assert spec.plan.kv.head_dim == 512 and spec.plan.kv.n_layers == 1
    assert next(o for o in ops if o.kind == "gated_delta_net").attrs["eps"] == 1e-6
    assert spec.hparams.context_length == 256 and spec.hparams.extra["indexer_top_k"] == 131072


def test_glm5_next_refuses_what_llama_cpp_asserts_or_rfc_cannot_compute(tmp_path):
    """Streams other than 4, RoPE on its latent attention, top_k not a multiple of kpool (llama.cpp asserts each),
    the k-pool indexer without the tail (each query would skip its newest keys); the validator refuses an
    hc_mix_post writing its residual in place and an hc_comb whose matrix is not n x n."""
    import dataclasses

    from rfc.artifacts.ops.view import PlanError
    from rfc.artifacts.validate import check_plan

    a = "glm5-next"
    _refused(_edited(f"{a}-moe", tmp_path, keys={f"{a}.hyper_connection.count": (4, 2)}), "must be 4")
    _refused(_edited(f"{a}-moe", tmp_path, keys={f"{a}.rope.dimension_count": (4, 64)}), "nope-only")
    _refused(_edited(f"{a}-moe", tmp_path, keys={f"{a}.attention.indexer.top_k": (4, 130)}), "multiple of kpool")
    _refused(_edited(f"{a}-moe", tmp_path, keys={f"{a}.attention.indexer.kpool_select_tail": (7, False)}), "newest")
    spec = spec_of(_model(f"{a}-moe", tmp_path))
    post = next(o for o in spec.plan.ops if o.kind == "hc_mix_post")
    broken = dataclasses.replace(post, outputs=(post.inputs[1],))
    with pytest.raises(PlanError, match="new buffer"):
        check_plan(dataclasses.replace(spec.plan, ops=tuple(broken if o is post else o for o in spec.plan.ops)))
    comb = next(o for o in spec.plan.ops if o.kind == "hc_comb")
    broken = dataclasses.replace(comb, attrs={**comb.attrs, "streams": 3})
    with pytest.raises(PlanError, match="mix/comb"):
        check_plan(dataclasses.replace(spec.plan, ops=tuple(broken if o is comb else o for o in spec.plan.ops)))
