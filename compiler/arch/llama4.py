"""`llama4` (Llama 4 Scout / Maverick), the text path (llama.cpp: src/models/llama4.cpp).

llama's block (adjacent-pair RoPE over whole heads with Llama 3's `rope_freqs` factors) with:
- every `interleave_moe_layer_step`-th layer's FFN (layers step-1, 2 step-1, ...) a mixture of
  `expert_count` experts `expert_feed_forward_length` wide beside one shared expert of the same
  width, the others a dense SwiGLU FFN of `feed_forward_length`. The router is sigmoid, without a
  selection bias, renormalization or scale; the experts are chosen by their logits and the chosen
  expert's sigmoid weight multiplies the expert's INPUT, not its output (llama.cpp's
  weight_before_ffn). With top-1 routing (Scout and Maverick's) the input scaling is moe_combine
  over the one slot (w * x), the expert's output is added as it is. With more experts per token
  each slot's input is w_j * x; as gate and up are linear, that is slot j's gate output times w_j
  (slot_scale, inside SiLU) and its up output times w_j, which down (linear too) carries into the
  weighted sum (moe_combine with the w_j): the same products, float32 rounding apart. The choice
  is by logits, as llama.cpp makes it: a softmax_weight route (scores = logits) chooses, a
  sigmoid route gives the weights, slot by slot (sigmoid keeps the logits' order; where float32's
  sigmoid saturates, two routes may name different experts of equal weight 1: the weights are the
  same either way);
- every 4th layer (layers 3, 7, ...; llama.cpp fixes n_no_rope_layer_step at 4) without RoPE
  (NoPE); the RoPE layers' Q and K RMS-normed per head without a weight after RoPE
  (Llama4TextL2Norm), unless the model has 128 experts (llama.cpp ties use_kq_norm to the 17B-128E
  type: Maverick has none);
- chunked attention (llama.cpp's LLAMA_SWA_TYPE_CHUNKED, chunks of 8192 positions, on the layers
  `attention.sliding_window_pattern` marks, default 3 of every 4) and the NoPE layers' query
  temperature (q times 1 + 0.1 ln(floor((pos + 1) / 8192) + 1)). Neither is planned: both are
  exactly nothing below position 8191, so a bundle serves contexts of at most 8191 tokens
  (HParams.context_length; the file's own context_length is kept in extra). A file with
  `attention.sliding_window` 0 (all layers full attention: MobileLLM's conversion) is refused.
Keys llama.cpp does not read for llama4 (expert_weights_scale, attention.scale) are ignored; expert
groups, which it would apply, are refused.
"""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Sizes, glu_ffn, hparams, kv_spec, linear, output_head, qkv_projections, read_experts,
    read_rope, read_sizes, rope_factors, stack_widths,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

NO_ROPE_LAYER_STEP = 4  # llama_hparams::n_no_rope_layer_step's default, which llama4's loader keeps
CHUNK = 8192  # llama4's loader: n_swa and n_attn_temp_floor_scale, whatever the file says
MAX_SERVED_CONTEXT = CHUNK - 1  # the first position the temperature changes: (8191 + 1) / 8192 = 1
NO_KQ_NORM_EXPERTS = 128  # LLM_TYPE_17B_128E: use_kq_norm off


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "llama4")
    md.ignored(
        "attention.temperature_scale",
        "llama.cpp fixes llama4's NoPE temperature (0.1), which does nothing in the context served",
    )
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "adjacent")
    if rope.n_rot != sizes.head_dim:
        raise CompileError(
            f"{md.path}: {md.key('rope.dimension_count')} {rope.n_rot} != head size {sizes.head_dim} "
            "(llama4 rotates whole heads; llama.cpp asserts it)"
        )
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_expert, n_used = read_experts(md)
    if not n_expert:
        raise CompileError(
            f"{md.path}: llama4 needs {md.key('expert_count')} > 0 (llama.cpp refuses a llama4 without experts)"
        )
    if md.int("expert_group_count", 0, n_expert, default=0) > 1:
        raise CompileError(f"{md.path}: {md.key('expert_group_count')} is not supported for llama4")
    n_ff_exp = md.int("expert_feed_forward_length", 1, MAX_FF)
    step = md.int("interleave_moe_layer_step", 0, MAX_LAYERS)
    moe = [step > 0 and (i + 1) % step == 0 for i in range(sizes.n_layers)]
    n_ff = (
        md.int("feed_forward_length", 1, MAX_FF)
        if not all(moe)
        else md.int("feed_forward_length", 1, MAX_FF, default=n_ff_exp)
    )
    if md.has("attention.sliding_window") and md.int("attention.sliding_window", 0, MAX_CONTEXT) == 0:
        raise CompileError(
            f"{md.path}: {md.key('attention.sliding_window')} = 0 (no chunked attention, every layer "
            "with RoPE but the last) is not supported for llama4"
        )
    swa = _chunked_layers(md, sizes.n_layers)
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    kq_norm = n_expert != NO_KQ_NORM_EXPERTS
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)

    b = ModelBuilder(model)
    _declare_buffers(b, sizes, n_ff, n_ff_exp, n_expert, n_used)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(b, rope, n_ctx, long_short=False)
    ones = b.constant(f"rfc.ones.{sizes.head_dim}", "qk_l2_norm", (sizes.head_dim,), 1.0) if kq_norm else None
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), factors=factors)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        layer_cfg = cfg.with_rope(freq_base=base_swa) if swa[i] and base_swa != rope.freq_base else cfg
        _attention(b, i, sizes, eps, layer_cfg, use_rope=(i + 1) % NO_ROPE_LAYER_STEP != 0, ones=ones)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (sizes.n_embd,)),), eps=eps)
        if moe[i]:
            _moe(b, i, sizes.n_embd, n_expert, n_used, n_ff_exp)
        else:
            glu_ffn(b, i, sizes.n_embd, n_ff, scale=False)  # llama4.cpp's build_ffn: biases, no scales
            b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    extra = {"expert_count": n_expert, "expert_used_count": n_used, "expert_feed_forward_length": n_ff_exp,
             "interleave_moe_layer_step": step,
             "no_rope_layers": [i for i in range(sizes.n_layers) if (i + 1) % NO_ROPE_LAYER_STEP == 0],
             "qk_l2_norm": kq_norm, "attention_chunk": CHUNK, "context_length_of_file": n_ctx}  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    hp = replace(hp, context_length=min(n_ctx, MAX_SERVED_CONTEXT))
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))


def _chunked_layers(md: Metadata, n_layers: int) -> list[bool]:
    """llama.cpp's load_swa_pattern(ml, 4): a per-layer array, or every layer but each n-th's
    last (n = the integer, default 4; 0: all)."""
    key = "attention.sliding_window_pattern"
    if md.has(key) and md.is_list(key):
        flags = md.flags(key, n_layers)
        return [i < len(flags) and flags[i] for i in range(n_layers)]
    n = md.int(key, 0, MAX_LAYERS, default=4)
    return [n == 0 or i % n < n - 1 for i in range(n_layers)]


def _declare_buffers(b: ModelBuilder, sizes: Sizes, n_ff: int, n_ff_exp: int, n_expert: int, k: int) -> None:
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (
        *stack_widths(sizes),
        ("gate", n_ff),
        ("up", n_ff),
    ):
        b.buffer(name, "T", width)
    b.buffer("router", "T", n_expert)
    b.buffer("expert_ids", "T", k, dtype="i32")
    b.buffer("expert_unit", "T", k)  # the choosing route's weights (top-1: 1), not used
    b.buffer("sigmoid_ids", "T", k, dtype="i32")
    b.buffer("expert_weights", "T", k)
    b.buffer("moe_in", "T", sizes.n_embd)  # top-1: the weighted input; else the experts' weighted sum
    b.buffer("exp_gate", "T", k * n_ff_exp)
    b.buffer("exp_up", "T", k * n_ff_exp)
    b.buffer("experts_out", "T", k * sizes.n_embd)
    b.buffer("shexp_gate", "T", n_ff_exp)
    b.buffer("shexp_up", "T", n_ff_exp)
    for name, width in (("xr", sizes.n_embd), ("hr", sizes.n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)


def _attention(
    b: ModelBuilder, i: int, sizes: Sizes, eps: float, cfg: Attention, *, use_rope: bool, ones: str | None
) -> None:
    """h = attn_output(attention(...)) of layer i: Q/K/V (build_qkv: each times its weight scale,
    plus its bias, where the file has them), then RoPE and the weightless per-head norms of Q and
    K (RoPE layers), or neither (NoPE layers); attn_output with its scale and bias likewise."""
    p = f"blk.{i}."
    qkv_projections(b, p, sizes)
    if use_rope:
        b.op("rope", ("q", "k"), ("q", "k"), (cfg.factors,) if cfg.factors else (), **cfg.rope.attrs(sizes))
        if ones:
            b.op("rmsnorm", ("q",), ("q",), (ones,), eps=eps, heads=sizes.n_heads)
            b.op("rmsnorm", ("k",), ("k",), (ones,), eps=eps, heads=sizes.n_kv_heads)
    b.op("kv_write", ("k", "v"), (), layer=i)
    b.op("attention", ("q",), ("att",), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale)  # fmt: skip
    linear(b, "att", "h", p + "attn_output", (sizes.n_embd, sizes.q_width))


def _moe(b: ModelBuilder, i: int, n: int, n_expert: int, k: int, n_ff: int) -> None:
    """x += sum_j expert_j(w_j * h) + shared_expert(h), w_j = sigmoid(logit of expert_j), the k
    experts chosen by the router's largest logits (build_moe_ffn for LLM_ARCH_LLAMA4, then the
    shared expert's build_ffn). The graph passes neither of them a weight scale: known and unused;
    nor a shared-expert bias."""
    p = f"blk.{i}."
    for name in ("gate_exps", "up_exps", "down_exps", "gate_shexp", "up_shexp", "down_shexp"):
        b.unused(f"{p}ffn_{name}.scale", UNUSED_SCALE)
    b.op("matmul", ("h",), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (n_expert, n)),))
    b.op("moe_route", ("router",), ("sigmoid_ids", "expert_weights"), n_used=k, gating="sigmoid", norm=False)
    b.op("moe_route", ("router",), ("expert_ids", "expert_unit"), n_used=k, gating="softmax_weight")
    if k == 1:
        b.op("moe_combine", ("h", "expert_weights"), ("moe_in",))  # one slot: moe_in = w * h
    src = "moe_in" if k == 1 else "h"
    for name, buf in (("gate", "exp_gate"), ("up", "exp_up")):
        w = b.tensor(f"{p}ffn_{name}_exps.weight", f"ffn_{name}_exps", (n_expert, n_ff, n))
        b.op("moe_matmul", (src, "expert_ids"), (buf,), (w,))
    if k > 1:  # gate(w_j h) = w_j gate(h); up's w_j is the combine's
        b.op("slot_scale", ("exp_gate", "expert_weights"), ("exp_gate",))
    b.op("swiglu", ("exp_gate", "exp_up"), ("exp_gate",))
    down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (n_expert, n, n_ff))
    b.op("moe_matmul", ("exp_gate", "expert_ids"), ("experts_out",), (down,))
    if k == 1:
        b.op("add", ("x", "experts_out"), ("x",))
    else:
        b.op("moe_combine", ("experts_out", "expert_weights"), ("moe_in",))
        b.op("add", ("x", "moe_in"), ("x",))
    linear(b, "h", "shexp_gate", p + "ffn_gate_shexp", (n_ff, n), bias=False, scale=False)
    linear(b, "h", "shexp_up", p + "ffn_up_shexp", (n_ff, n), bias=False, scale=False)
    b.op("swiglu", ("shexp_gate", "shexp_up"), ("shexp_gate",))
    linear(b, "shexp_gate", "h", p + "ffn_down_shexp", (n, n_ff), bias=False, scale=False)
    b.op("add", ("x", "h"), ("x",))
