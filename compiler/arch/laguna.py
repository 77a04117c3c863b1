"""`laguna` (poolside Laguna XS.2 / S.2 / M.1), as llama.cpp's src/models/laguna.cpp builds it: llama's
pre-norm block with per-head Q/K RMS norms before NeoX RoPE, Q/K/V with their biases and weight scales
where present, and the attention's output multiplied by softplus(`attn_gate` h) before `attn_output`
(its scale where present, no bias): one gate per head where `attn_gate` has n_head rows (XS.2), one per
value where it has n_head × head_dim (M.1), any other width refused, as llama.cpp aborts on it. Head
counts may differ per layer (`attention.head_count` an array: XS.2's full and sliding layers), each
geometry with its own buffers. With `attention.sliding_window` > 0 the layers of the pattern (flags, or
a period, default 4, the first of each period global) slide over that window and rotate plain RoPE over
`rope.dimension_count_swa` dims at `rope.freq_base_swa`, freq scale 1, without YaRN, while the global
layers take the file's scaling (YaRN on XS.2). The first `leading_dense_block_count` layers a SwiGLU FFN,
the others `expert_count` experts routed by `expert_gating_func` (default sigmoid) with the required
selection bias `exp_probs_b`, renormalized and scaled where the file says, plus one always-on shared
expert `expert_shared_feed_forward_length` wide (else the experts' width × `expert_shared_count`,
default 1) added beside them; no FFN biases or weight scales. `output.weight`, else tied (no scale)."""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, glu_ffn, hparams, kv_spec, linear, read_rope,
)  # fmt: skip
from rfc.compiler.arch.layer_shapes import declare_layer_buffers, read_layer_shapes
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EXPERTS, MAX_FF, MAX_HEAD_DIM, Metadata
from rfc.compiler.arch.moe import (
    Experts, declare_expert_buffers, moe_block, read_experts_of, read_gating, read_weights_scale,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata, n_layers: int) -> Experts:
    dense_lead = md.int("leading_dense_block_count", 0, n_layers)  # required by its loader
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    shared = md.int("expert_shared_count", 1, MAX_EXPERTS, default=1)
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) or n_ff_exp * shared
    return Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                   norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                   groups_used=groups_used, shared=shared, shared_ff=shared_ff, dense_lead=dense_lead)  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "laguna")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=False)
    rope = read_rope(md, sizes, "neox")
    e = _experts(md, sizes.n_layers)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    sliding = sliding_window_layers(md, sizes.n_layers, 4, dense_first=True) if window else (False,) * sizes.n_layers
    n_rot_swa = md.int("rope.dimension_count_swa", 2, MAX_HEAD_DIM, default=rope.n_rot)
    if n_rot_swa % 2 or n_rot_swa > sizes.head_dim:
        raise CompileError(f"{md.path}: rope.dimension_count_swa {n_rot_swa} is odd or wider than a head")
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    # plain RoPE on the sliding layers: no scaling, no YaRN ramp or magnitude
    rope_swa = replace(rope, n_rot=n_rot_swa, freq_base=base_swa, freq_scale=1.0, attn_factor=1.0, ext_factor=0.0)
    b = ModelBuilder(model)
    sfx = declare_layer_buffers(b, sizes, layers, n_ffs)
    declare_expert_buffers(b, sizes.n_embd, e)
    scale = 1.0 / math.sqrt(sizes.head_dim)
    full = Attention(rope, scale=scale, qk_norm=True)
    local = Attention(rope_swa, scale=scale, qk_norm=True, window=window)
    gates, widths = {}, {}
    for i, ls in enumerate(layers):
        t = model.tensors.get(f"blk.{i}.attn_gate.weight")  # its shape decides, as llama.cpp's loader reads it
        width = int(t.shape[0]) if t is not None and len(t.shape) == 2 else ls.n_heads
        if width not in (ls.n_heads, ls.q_width):
            raise CompileError(f"{b.path}: blk.{i}.attn_gate has {width} rows: laguna's gate is one per head "
                               f"({ls.n_heads}) or one per value ({ls.q_width})")  # fmt: skip
        gates[i] = "head" if width == ls.n_heads else "value"
        buf = "attn_gate" + sfx[(ls.n_heads, ls.n_kv_heads)]
        if widths.setdefault(buf, width) != width:
            raise CompileError(f"{b.path}: layers of {ls.n_heads} heads gate both per head and per value")
        b.buffer(buf, "T", width)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    n = (sizes.n_embd,)
    for i, ls in enumerate(layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", n),), eps=eps)
        cfg = local if sliding[i] else full
        attention(b, i, ls, eps, cfg, out_bias=False, sfx=sfx[(ls.n_heads, ls.n_kv_heads)], gate=gates[i],
                  gate_fn="softplus")  # fmt: skip
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", n),), eps=eps)
        if e.is_moe(i):
            if not b.has(p + "exp_probs_b.bias"):
                raise CompileError(f"{b.path}: missing tensor {p}exp_probs_b.bias (laguna's loader requires it)")
            moe_block(b, i, sizes, e)  # routed, then shared, each added to x
        else:
            glu_ffn(b, i, sizes.n_embd, n_ffs[i], bias=False, scale=False, bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"))
            b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", n),), eps=eps)
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), (embd,))
    else:  # build_lora_mm(model.output, cur): no scale, and the loader reads no bias
        linear(b, "hr", "logits", "output", (sizes.vocab_size, sizes.n_embd), bias=False, scale=False)
    extra = {**e.hparams(), "attention_gate": sorted(set(gates.values()))}
    if window:
        extra.update(sliding_window=window, sliding_window_layers=[i for i, on in enumerate(sliding) if on])
    if len({ls.n_heads for ls in layers}) > 1:
        extra["head_count_per_layer"] = [ls.n_heads for ls in layers]
    hp = hparams(md, sizes, rope, max(n_ffs), eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
