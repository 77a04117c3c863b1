"""The ops every transformer plan is made of: the embedding (and learned positions), norms, matmuls and biases, RoPE,
the paged KV cache's write and attention over it, the gated linear unit, the residual add and
the gather of the rows whose logits are wanted. Their cpu and GPU lowerings are the step's
backbone (the matmul fusions of compiler/codegen/cpu_step.py and gpu_fuse.py start from them).
"""

import struct

from rfc.artifacts.formats import weight_format
from rfc.artifacts.limits import MAX_CONTEXT, MAX_HEAD_DIM, MAX_HEADS
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import OpView

# swiglu's `activation`
GLU_ACTIVATIONS = (
    "silu", "gelu_tanh", "swiglu_oai", "sigmoid", "relu", "silu_clamp", "softplus", "silu_cap", "linear", "situ",
)  # fmt: skip
ROW_GATED = ("sigmoid", "softplus")  # the activations whose gate may be [rows, k] over k segments of up's row
ROPE_STYLES = ("adjacent", "neox")
# rope's optional attributes that shape a variant's frequency table (YaRN: rope_inv_freq)
ROPE_TABLE = ("ext_factor", "beta_fast", "beta_slow", "orig_ctx")


def _embed(v: OpView) -> None:
    (tokens,), (out,) = v.op.inputs, v.op.outputs
    v.need(v.buffers[tokens].dtype == "i32" and v.shape(tokens) == ("T",), "tokens are not an i32 [T] buffer")
    v.float_rows(out)
    v.need(v.rows(out) == "T", "output is not [T, width]")
    column, width = v.int_attr("column", 0, 1 << 40), v.width(out)
    w = v.weight_shape(0)
    v.need(
        w is None or (len(w) == 2 and w[0] == v.plan.vocab_size and column + width <= w[1]),
        f"table {w} has no columns {column}..{column + width} of vocab_size rows",
    )
    if w is not None and w[1] != width:  # a slice of each row (Gemma 4's per-layer table): whole blocks
        block = weight_format(v.entries[v.op.weights[0]].format).block_elems
        v.need(
            column % block == 0 and width % block == 0,
            f"columns {column}..{column + width} are not whole {block}-value blocks",
        )
    v.real_attr("scale", 0.0, 1e6, open_lo=True)


def _pos_embed(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.shape(x) == v.shape(out) and v.rows(x) == "T", "input and output are not the same [T, width]")
    w = v.weight_shape(0)
    # a row per position the runtime can reach: it serves at most the plan's context
    v.need(
        w is None or (len(w) == 2 and w[1] == v.width(x) and w[0] >= v.plan.context_length),
        f"table {w} has not a row of {v.width(x)} for each of {v.plan.context_length} positions",
    )


def _rmsnorm(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.shape(x) == v.shape(out), "input and output shapes differ")
    v.real_attr("eps", 0.0, 1.0)  # 0 as llama.cpp runs it (qwen2vl's loader reads none): an all-zero row gives NaN
    heads = v.int_attr("heads", 1, v.width(x))
    v.need(v.width(x) % heads == 0, f"a row of {v.width(x)} is not {heads} equal segments")
    w = v.weight_shape(0) if v.op.weights else None  # no weight: the norm alone (gemma4's V)
    per_seg = heads > 1 and w == (v.width(x),)  # a weight per segment (Mamba2's grouped norm)
    v.need(w is None or w == (v.width(x) // heads,) or per_seg, f"weight {w} is not [{v.width(x) // heads}]")


def _matmul(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(x != out, "a matmul cannot write its own input (the kernels read x while they write out)")
    v.need(v.rows(x) == v.rows(out), "input and output rows differ")
    w = v.weight_shape(0)
    v.need(w is None or w == (v.width(out), v.width(x)), f"weight {w} is not [{v.width(out)}, {v.width(x)}]")


def _add_bias(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.shape(x) == v.shape(out), "input and output shapes differ")
    w = v.weight_shape(0)
    v.need(w is None or w == (v.width(x),), f"bias {w} is not [{v.width(x)}]")


def _rope(v: OpView) -> None:
    q, k = v.op.inputs
    v.need(tuple(v.op.outputs) == (q, k), "rope works in place: outputs must be its inputs")
    v.float_rows(q, k)
    nh = v.int_attr("n_heads", 1, MAX_HEADS)
    nkv = v.int_attr("n_kv_heads", 1, MAX_HEADS)
    hd = v.int_attr("head_dim", 1, MAX_HEAD_DIM)
    n_rot = v.int_attr("n_rot", 2, hd)
    v.need(n_rot % 2 == 0, "n_rot is odd")
    v.choice_attr("style", ROPE_STYLES)
    v.real_attr("freq_base", 0.0, 1e12, open_lo=True)
    v.real_attr("freq_scale", 0.0, 1e6, open_lo=True)
    v.real_attr("attn_factor", 0.0, 1e6, open_lo=True)
    if v.real_attr("ext_factor", 0.0, 1e3):  # YaRN: the ramp's parameters (rope_inv_freq)
        v.real_attr("freq_base", 1.0, 1e12, open_lo=True)
        v.real_attr("beta_fast", 0.0, 1e6, open_lo=True)
        v.real_attr("beta_slow", 0.0, 1e6, open_lo=True)
        v.int_attr("orig_ctx", 1, MAX_CONTEXT)
    if v.real_attr("temp_scale", -1e3, 1e3):  # q times 1 + temp_scale ln(floor(pos / temp_floor) + 1)
        v.int_attr("temp_floor", 1, MAX_CONTEXT)
        v.need(n_rot == hd, "rope temp_scale needs n_rot == head_dim (the whole q row is scaled with its pairs)")
    v.need(v.shape(q) == ("T", nh * hd) and v.shape(k) == ("T", nkv * hd), "q/k widths disagree with the head counts")
    if v.op.weights:
        w = v.weight_shape(0)
        v.need(w is None or w == (n_rot // 2,), f"frequency factors {w} are not [{n_rot // 2}]")


def _layer(v: OpView) -> None:
    v.int_attr("layer", 0, v.plan.kv.n_layers - 1)


def _kv_write(v: OpView) -> None:
    """k and v alike, [T, width] with width at most the KV cache row (a layer narrower than the
    widest writes the first `width` values of its rows: KVSpec)."""
    _layer(v)
    row = v.plan.kv.row
    k, val = v.op.inputs
    v.float_rows(k, val)
    v.need(v.shape(k) == v.shape(val), "k and v differ in shape")
    v.need(v.shape(k)[0] == "T" and 1 <= v.shape(k)[1] <= row, f"{k} is not [T, <= {row}] (the KV cache row)")


def _attention(v: OpView) -> None:
    _layer(v)
    (q,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(q, out)
    nh = v.int_attr("n_heads", 1, MAX_HEADS)
    nkv = v.int_attr("n_kv_heads", 1, MAX_HEADS)
    hd = v.int_attr("head_dim", 1, MAX_HEAD_DIM)
    v.need(nkv * hd <= v.plan.kv.row, "kv heads x head_dim exceed the KV cache row")
    v.need(nh % nkv == 0, "n_heads is not a multiple of n_kv_heads")
    # the rows it reads are those its layer's kv_write wrote: the same kv heads x head_dim
    layer = v.op.attr("layer")
    writer = next(
        (op for op in reversed(v.plan.ops[: v.index]) if op.kind == "kv_write" and op.attr("layer") == layer), None
    )
    v.need(writer is not None, f"no kv_write of layer {layer} before it")
    v.need(
        v.shape(writer.inputs[0])[1] == nkv * hd,
        f"head sizes disagree with the KV rows layer {layer} writes ({nkv} x {hd} != {v.shape(writer.inputs[0])[1]})",
    )
    # a layer that reads another layer's cache (Gemma 4's shared KV) masks as its first reader does: a
    # sliding-window cache's old rows may be gone, a global reader of it would miss them
    first = next(op for op in v.plan.ops[: v.index + 1] if op.kind == "attention" and op.attr("layer") == layer)
    v.need(
        first is v.op
        or (first.attr("n_kv_heads"), first.attr("head_dim"), first.attr("window")) == (nkv, hd, v.op.attr("window")),
        f"it reads layer {layer}'s cache with another window or head geometry",
    )
    v.real_attr("scale", 0.0, 1e6, open_lo=True)
    if v.op.attr("window") is not None:
        v.int_attr("window", 1, MAX_CONTEXT)
    if v.op.attr("softcap") is not None:
        v.real_attr("softcap", 0.0, 1e6, open_lo=True)
    if v.op.attr("alibi") is not None:
        v.real_attr("alibi", 0.0, MAX_ALIBI_BIAS, open_lo=True)
    causal = v.op.attr("causal")
    v.need(isinstance(causal, bool), f"attribute causal = {str(causal)[:20]!r} is not a boolean")
    v.need(v.shape(q) == ("T", nh * hd) == v.shape(out), "q/output are not [T, n_heads * head_dim]")
    reach = v.op.attr("pos_bias")
    if reach is not None:  # T5's relative-position bias: the weight is its table, for an encoder's attention
        reach = v.int_attr("pos_bias", 1, MAX_POS_BIAS_REACH)
        v.need(not causal, "pos_bias is an encoder's (causal = false)")
        v.need(v.op.attr("alibi") is None, "pos_bias and alibi both bias the scores: one at most")
        v.need(len(v.op.weights) == 1, "pos_bias needs its table as the weight")
        w = v.weight_shape(0)
        size = (2 * reach + 1) * nh
        v.need(w is None or w == (size,), f"the position-bias table {w} is not [{size}] ((2 pos_bias + 1) x n_heads)")
    elif v.op.weights:
        w = v.weight_shape(0)
        v.need(w is None or w == (nh,), f"attention sinks {w} are not [{nh}] (one per query head)")


MAX_ALIBI_BIAS = 64.0  # ALiBi's maximum bias (8 in every released model)
# The farthest key distance a position-bias table tells apart (T5: 128, where its buckets end)
MAX_POS_BIAS_REACH = 4096


def alibi_bases(n_heads: int, max_bias: float) -> tuple[int, float, float]:
    """ALiBi's slope bases as ggml's soft_max_ext computes them in float32: n_head_log2 (the largest
    power of two <= n_heads), m0 = 2^(-max_bias / n_head_log2), m1 = 2^(-max_bias / 2 / n_head_log2)."""
    nlog2 = 1 << (n_heads.bit_length() - 1)
    bias = _f32(max_bias)
    return nlog2, _f32(2.0 ** _f32(-bias / nlog2)), _f32(2.0 ** _f32(-(bias / 2.0) / nlog2))


def alibi_slopes(n_heads: int, max_bias: float) -> list[float]:
    """Query head h's slope: m0^(h + 1) for the first n_head_log2 heads, m1^(2 (h - n_head_log2) + 1)
    after them (float32 values)."""
    nlog2, m0, m1 = alibi_bases(n_heads, max_bias)
    return [_f32(m0 ** (h + 1)) if h < nlog2 else _f32(m1 ** (2 * (h - nlog2) + 1)) for h in range(n_heads)]


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same_shape(v: OpView) -> None:
    names = (*v.op.inputs, *v.op.outputs)
    v.float_rows(*names)
    v.need(len({v.shape(n) for n in names}) == 1, "buffers differ in shape")


def _swiglu(v: OpView) -> None:
    activation = v.choice_attr("activation", GLU_ACTIVATIONS)
    g, u = v.op.inputs
    if activation in ROW_GATED and v.shape(g) != v.shape(u):
        # k gates per row, gate j over the row's j-th of k equal segments: one (qwen35moe's shared
        # expert), one per attention head (spark2_5's and laguna's output gates)
        v.float_rows(g, u, *v.op.outputs)
        k = v.width(g)
        v.need(v.rows(g) == v.rows(u) and k >= 1 and v.width(u) % k == 0,
               f"gate {g} is neither {u}'s shape nor [rows, k] with k dividing its width")  # fmt: skip
        v.need(v.shape(v.op.outputs[0]) == v.shape(u), "output and up differ in shape")
        return
    same_shape(v)
    if activation == "swiglu_oai":
        v.real_attr("alpha", 0.0, 1e6, open_lo=True)
    if activation in ("swiglu_oai", "silu_clamp", "silu_cap"):
        v.real_attr("limit", 0.0, 1e6, open_lo=True)
    if activation == "situ":
        v.real_attr("alpha", 1e-6, 1e6)
        limit = v.real_attr("limit", 0.0, 1e6)
        v.need(limit == 0.0 or limit >= 1e-6, f"situ's limit {limit} is neither 0 (none) nor at least 1e-6")


def _gather_rows(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.rows(x) == "T" and v.rows(out) == "R" and v.width(x) == v.width(out), "not [T, n] -> [R, n]")


DEFS = (
    OpDef(
        kind="embed",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            optional=(("scale", 1.0), ("column", 0)),
            doc="x[T, n_embd] = dequant(weight)[tokens] * scale (gemma: scale = sqrt(n_embd) as a float32); with a "
            "column, out[T, W] = dequant(weight)[tokens, column : column + W] * scale, a slice of a wider table's "
            "rows (Gemma 4's per-layer embeddings: layer i's W values at column i * W), column a whole number of "
            "the format's blocks",
        ),
        check=_embed,
        reference="op_embed",
        cpu=CpuPart(("cpu_embed.c.j2",), lower="_embed", attrs=("scale", "column")),
        gpu=GpuPart(
            ("gpu_embed.hip.j2",),
            lower="_embed",
            args=(("out", PTR), ("tokens", PTR), ("weight", PTR), ("n_rows", I32)),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="pos_embed",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            doc="out[T, n] = x + dequant(weight)[positions] (learned absolute position embeddings: gpt2, "
            "starcoder); the table [rows, n] has a row for every position below the plan's context_length",
        ),
        check=_pos_embed,
        reference="op_pos_embed",
        cpu=CpuPart(("cpu_pos_embed.c.j2",), lower="_pos_embed"),
        gpu=GpuPart(
            ("gpu_pos_embed.hip.j2",),
            lower="_pos_embed",
            args=(("out", PTR), ("x", PTR), ("positions", PTR), ("weight", PTR), ("n_rows", I32)),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="rmsnorm",
        schema=OpSchema(
            1,
            1,
            (0, 1),
            ("eps",),
            optional=(("heads", 1),),
            doc="each row is `heads` equal segments s (1: the whole row; n_heads: per-head Q/K norms), each "
            "normalized on its own: out = s / sqrt(mean(s^2) + eps) * weight, weight [width / heads] (or [width] "
            "with heads > 1: a weight per segment, Mamba2's grouped norm); without a weight out = s / "
            "sqrt(mean(s^2) + eps) (gemma4's V norm)",
        ),
        check=_rmsnorm,
        reference="op_rmsnorm",
        cpu=CpuPart(("cpu_rmsnorm.c.j2",), lower="_rmsnorm", attrs=("heads",), per_op=("heads", "eps"), vectors_from=0),
        gpu=GpuPart(
            ("gpu_rmsnorm.hip.j2",),
            lower="_rmsnorm",
            args=(("out", PTR), ("x", PTR), ("weight", PTR), ("n_rows", I32)),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="matmul",
        schema=OpSchema(1, 1, (1, 1), doc="out[M, N] = x[M, K] @ weight[N, K]^T, weight in its stored format"),
        check=_matmul,
        reference="op_matmul",
        cpu=CpuPart(("cpu_matmul.c.j2", "cpu_matmul_x8.c.j2"), lower="_matmul"),
        gpu=GpuPart(
            ("gpu_matmul.hip.j2", "gpu_matmul_float.hip.j2"),
            lower="_matmul",
            args=(("out", PTR), ("x", PTR), ("weight", PTR), ("n_rows", I32)),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="add_bias",
        schema=OpSchema(1, 1, (1, 1), doc="x[M, N] += bias[N]"),
        check=_add_bias,
        reference="op_add_bias",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_add_bias", vectors_from=0),
        gpu=GpuPart(
            ("gpu_add_bias.hip.j2",),
            lower="_add_bias",
            args=(("out", PTR), ("x", PTR), ("bias", PTR), ("n_rows", I32)),
            weights=("bias",),
        ),
    ),
    OpDef(
        kind="rope",
        schema=OpSchema(
            2,
            2,
            (0, 1),
            ("n_heads", "n_kv_heads", "head_dim", "n_rot", "style", "freq_base", "freq_scale"),
            optional=(
                ("attn_factor", 1.0),
                ("ext_factor", 0.0),
                ("beta_fast", 32.0),
                ("beta_slow", 1.0),
                ("orig_ctx", 0),
                ("temp_scale", 0.0),
                ("temp_floor", 0),
            ),
            doc="rotary embedding of q and k in place; style 'adjacent' (pairs 2i, 2i+1: llama) or 'neox' (pairs i, i "
            "+ n_rot/2); freq_i = rope_inv_freq(...)_i / factor_i (factors: the optional weight): freq_scale * "
            "base^(-2i/n_rot), or with ext_factor > 0 (YaRN) base^(-2i/n_rot) mixed between scaled and unscaled "
            "by a ramp over the pairs (beta_fast, beta_slow, orig_ctx: see rope_inv_freq); the rotated pair is (a "
            "cos - b sin, a sin + b cos) * attn_factor (the magnitude: LongRoPE's and YaRN's correction, as the "
            "compiler computed it); with temp_scale != 0 (llama 4 style attention temperature tuning: mistral3) "
            "the rotated q row is then multiplied by float32(1 + temp_scale * ln(floor(pos / temp_floor) + 1)), "
            "computed in double (q only; needs n_rot == head_dim)",
        ),
        check=_rope,
        reference="op_rope",
        cpu=CpuPart(
            ("cpu_rope.c.j2",),
            lower="_rope",
            attrs=("attn_factor", "temp_scale", "temp_floor", *ROPE_TABLE),
            per_op=("freq_base", "freq_scale", "attn_factor", "temp_scale", "temp_floor", *ROPE_TABLE),
            vectors_from=0,
        ),
        gpu=GpuPart(
            ("gpu_rope.hip.j2",),
            lower="_rope",
            args=(("q", PTR), ("k", PTR), ("positions", PTR), ("freq_factors", PTR), ("n_rows", I32)),
            outputs=("q", "k"),
            weights=("freq_factors",),
        ),
    ),
    OpDef(
        kind="kv_write",
        schema=OpSchema(
            2, 0, (0, 0), ("layer",), doc="store k, v rows [T, n_kv_heads*head_dim] in the layer's paged cache"
        ),
        check=_kv_write,
        reference="op_kv_write",
        cpu=CpuPart(("cpu_attention.c.j2",), lower="_kv_write"),
        gpu=GpuPart(
            ("gpu_kv_write.hip.j2",),
            lower="_kv_write",
            args=(
                ("k_cache", PTR),
                ("v_cache", PTR),
                ("k", PTR),
                ("v", PTR),
                ("slots", PTR),
                ("n_rows", I32),
                ("k_type", I32),
                ("v_type", I32),
            ),
            outputs=(),
        ),
    ),
    OpDef(
        kind="attention",
        schema=OpSchema(
            1,
            1,
            (0, 1),
            ("layer", "n_heads", "n_kv_heads", "head_dim", "scale"),
            optional=(("window", None), ("softcap", None), ("alibi", None), ("causal", True), ("pos_bias", None)),
            doc="causal attention of q over the paged cache of layer `layer` (positions <= the token's own): its own, "
            "or an earlier layer's that it shares (Gemma 4 E2B/E4B: no kv_write of its own; the validator "
            "requires that layer's kv_write before it, the same KV heads x head_dim and the same window); query "
            "head h reads kv head h // (n_heads / n_kv_heads); score = scale * q.k, then softcap * tanh(score / "
            "softcap) with a softcap; with a window only keys at positions > pos - window take part (sliding "
            "window); with alibi (the maximum bias, ALiBi: bloom, mpt, jais, refact, jina-bert-v2) query head h's "
            "scores gain -slope_h * |key position - query position| (llama.cpp's mask -|p0 - p1| times the slope; a "
            "causal attention's keys are never after the query), slope_h as ggml's soft_max_ext makes it "
            "(alibi_slopes). "
            "The optional weight is a sink logit per query head [n_heads] (gpt-oss): one more score in "
            "the softmax with no value, p_j = exp(s_j) / (sum_i exp(s_i) + exp(sink_h)); or, with pos_bias = R "
            "(an encoder's alone: T5's relative-position bias), a table [(2 R + 1) x n_heads] of float32 biases: "
            "query head h's score of a key d = key position - query position away gains "
            "table[(clamp(d, -R, R) + R) n_heads + h] (the compiler fills it from the model's buckets). "
            "causal = false (an "
            "encoder: BERT) attends every position of the token's sequence, those after it in the step included, "
            "with a window only those less than window positions away either side (llama.cpp's symmetric "
            "window of n_swa / 2: EmbeddingGemma's); the engine runs such a plan's sequences "
            "whole, one step each",
        ),
        check=_attention,
        reference="op_attention",
        cpu=CpuPart(
            ("cpu_attention.c.j2",),
            lower="_attention",
            attrs=("window", "softcap", "alibi", "causal", "pos_bias"),
            per_op=("window", "softcap", "causal"),
            vectors_from=0,
        ),
        gpu=GpuPart(
            ("gpu_attention.hip.j2",),
            lower="_attention",
            args=(
                ("out", PTR),
                ("q", PTR),
                ("k_cache", PTR),
                ("v_cache", PTR),
                ("positions", PTR),
                ("seq_of_token", PTR),
                ("block_tables", PTR),
                ("sinks", PTR),
                ("n_rows", I32),
                ("table_width", I32),
                ("block_size", I32),
                ("k_type", I32),
                ("v_type", I32),
            ),
            weights=("sinks",),
        ),
    ),
    OpDef(
        kind="swiglu",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            optional=(("activation", "silu"), ("alpha", 1.702), ("limit", 7.0)),
            doc="gated linear unit: out = act(gate) * up, act 'silu' (SwiGLU: g / (1 + exp(-g))) or 'gelu_tanh' "
            "(GeGLU: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))); 'swiglu_oai' (gpt-oss, llama.cpp's "
            "swiglu_oai) clamps and shifts: g' = min(g, limit), u' = clamp(u, -limit, limit), out = g' / (1 + "
            "exp(-alpha g')) * (u' + 1) (alpha and limit are read by it alone); 'sigmoid' (qwen35's attention "
            "output gate): out = u / (1 + exp(-g)), its gate possibly k columns [T, k] that gate the k equal "
            "segments of the row (k = 1: qwen35moe's shared-expert gate; one per head: spark2_5's); 'relu': "
            "out = max(g, 0) * u (with u = g: nemotron_h's "
            "squared ReLU); 'silu_clamp' (maple's experts, ggml_swiglu_clamp): out = g' / (1 + exp(-g')) * u' with "
            "g' = min(g, limit), u' = clamp(u, -limit, limit); 'silu_cap' (step35, llama.cpp's clamped SwiGLU of the "
            "other architectures): out = min(g / (1 + exp(-g)), limit) * clamp(u, -limit, limit); 'softplus' "
            "(laguna's attention output gate): "
            "out = u * softplus(g), softplus(g) = g above 20, else log(1 + exp(g)) (ggml's), its gate possibly "
            "k columns as 'sigmoid''s; 'linear' (RWKV-7's output gate): out = g * u; 'situ' (Kimi-K3): out = alpha "
            "tanh(g / alpha) sigmoid(g) * limit tanh(u / limit) (limit 0: * u), float32 in ggml's order (the "
            "divisions as products by 1 / alpha and 1 / limit rounded to float32)",
        ),
        check=_swiglu,
        reference="op_swiglu",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_swiglu", attrs=("activation", "alpha", "limit")),
        gpu=GpuPart(
            ("gpu_swiglu.hip.j2",), lower="_swiglu", args=(("out", PTR), ("gate", PTR), ("up", PTR), ("n_rows", I32))
        ),
    ),
    OpDef(
        kind="add",
        schema=OpSchema(2, 1, (0, 0), doc="out = a + b"),
        check=same_shape,
        reference="op_add",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_add"),
        gpu=GpuPart(("gpu_add.hip.j2",), lower="_add", args=(("out", PTR), ("a", PTR), ("b", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="gather_rows",
        schema=OpSchema(1, 1, (0, 0), doc="out[R, D] = x[logit_rows]"),
        check=_gather_rows,
        reference="op_gather_rows",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_gather_rows"),
        gpu=GpuPart(
            ("gpu_gather_rows.hip.j2",),
            lower="_gather_rows",
            args=(("out", PTR), ("x", PTR), ("rows", PTR), ("n_rows", I32)),
        ),
    ),
)
