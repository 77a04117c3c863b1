"""`granitehybrid` (IBM Granite 4.0-H): a hybrid stack of Mamba2 layers and GQA attention layers,
each followed by granite's FFN (dense SwiGLU, or granitemoe's experts with an optional shared
expert), with granite's four multipliers, as llama.cpp's src/models/granite-hybrid.cpp builds it.

Which layers attend is in the file: `attention.head_count_kv` per layer, 0 marking a Mamba2
layer (llama.cpp's is_recr); the tensors must agree. A Mamba2 layer is compiler/arch/mamba2.py's
mixer (llama.cpp asserts ssm.inner_size = 2 embedding_length); an attention layer is granite's
(Q/K/V with optional biases, RoPE unless rope.scaling.finetuned is false, scores times
`attention.scale`, attn_output with an optional bias). Then, as granite: the sublayer's output
times `residual_scale`, the residual, ffn_norm, the FFN, times `residual_scale`, the residual;
the embedding times `embedding_scale`, the logits divided by `logit_scale` (each 0 or absent: none).

The KV cache holds the attention layers only; per sequence each Mamba2 layer keeps (kernel - 1)
x (d_inner + 2 G N) + d_inner x N floats (mamba2.Mamba2.state_floats).
"""

import math

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch import mamba2
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Sizes, declare_buffers, embedding_rows, f32, hparams, linear, output_head, read_experts, read_rope,
    rope_factors,
)  # fmt: skip
from rfc.compiler.arch.granite import Ffn, Multipliers, ffn_sublayer
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EMBD, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def read_layers(md: Metadata, b: ModelBuilder, n_layers: int, n_embd: int) -> tuple[Sizes, list[int]]:
    """The attention layers (head_count_kv > 0) and their one head shape; every layer's tensors
    must say the same kind as the counts."""
    heads = md.per_layer("attention.head_count", n_layers, 0, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, 0, MAX_HEADS)
    if not heads[0]:  # llama.cpp takes the head sizes from layer 0's count: none for attention layers
        raise CompileError(f"{md.path}: {md.key('attention.head_count')} is 0 for layer 0, which gives llama.cpp "
                           "no attention head size")  # fmt: skip
    attn = [i for i in range(n_layers) if kv_heads[i]]
    if not attn:
        raise CompileError(f"{md.path}: {md.key('attention.head_count_kv')} marks no attention layer")
    nh, nkv, head_dim = mamba2.attention_heads(md, heads, kv_heads, attn, n_embd)
    for i in range(n_layers):  # the pattern must agree with the tensors, both ways
        ssm, att = b.has(f"blk.{i}.ssm_in.weight"), b.has(f"blk.{i}.attn_q.weight")
        if ssm == bool(kv_heads[i]) or att != bool(kv_heads[i]):
            kind = "an attention" if kv_heads[i] else "a Mamba2"
            raise CompileError(f"{md.path}: layer {i} is {kind} layer by {md.key('attention.head_count_kv')}, "
                               "but its tensors say otherwise")  # fmt: skip
    return Sizes(n_embd, n_layers, nh, nkv, head_dim, embedding_rows(md)), attn


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "granitehybrid")
    b = ModelBuilder(model)
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    sizes, attn_layers = read_layers(md, b, n_layers, n_embd)
    m = mamba2.read_mamba2(md)
    if m.d_inner != 2 * n_embd:  # llama.cpp asserts it (only an expansion factor of 2)
        raise CompileError(f"{md.path}: {md.key('ssm.inner_size')} {m.d_inner} != 2 x embedding_length {n_embd}")
    rope = read_rope(md, sizes, "adjacent")
    ffn = Ffn.read(md, *read_experts(md))
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    mult = Multipliers.read(md, logit_required=False)
    use_rope = md.bool("rope.scaling.finetuned", default=True)
    declare_buffers(b, sizes, ffn.n_ff, ffn.n_used, ffn.n_expert)
    mamba2.declare(b, m)
    ffn.declare_shared_expert(b, sizes.n_embd)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=False) if use_rope else None
    cfg = Attention(rope, scale=mult.attention or 1.0 / math.sqrt(sizes.head_dim), factors=factors)
    b.op("embed", ("tokens",), ("x",), (embd,), **({"scale": mult.embedding} if mult.embedding else {}))
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        if i in attn_layers:
            _attention(b, i, attn_layers.index(i), sizes, cfg, use_rope)
        else:
            mamba2.mamba2_layer(b, i, sizes.n_embd, m, eps)
        ffn_sublayer(b, i, sizes.n_embd, eps, ffn, mult.residual)
    tied = output_head(b, sizes, eps)
    if mult.logit:
        b.op("scale", ("logits",), ("logits",), factor=f32(1.0 / mult.logit))
    extra = {**mult.extra(), "attention_layers": len(attn_layers), "ssm_conv_kernel": m.kernel,
             "ssm_inner_size": m.d_inner, "ssm_state_size": m.n_state, "ssm_time_step_rank": m.n_heads,
             "ssm_group_count": m.n_groups, **ffn.extra()}  # fmt: skip
    hp = hparams(md, sizes, rope, ffn.n_ff, eps, tied_embeddings=tied,
                 qkv_bias=b.has(f"blk.{attn_layers[0]}.attn_q.bias"), rope_freq_factors=factors is not None,
                 extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(attn_layers), n_kv_heads=sizes.n_kv_heads, head_dim=sizes.head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _attention(b: ModelBuilder, i: int, kv_layer: int, sizes: Sizes, cfg: Attention, use_rope: bool) -> None:
    """Layer i's attention, its KV in the cache's layer kv_layer (granite's build_attention_layer)."""
    p = f"blk.{i}."
    for proj, width in (("q", sizes.q_width), ("k", sizes.kv_width), ("v", sizes.kv_width)):
        linear(b, "h", proj, f"{p}attn_{proj}", (width, sizes.n_embd), bias=True)
    if use_rope:
        b.op("rope", ("q", "k"), ("q", "k"), (cfg.factors,) if cfg.factors else (), **cfg.rope.attrs(sizes))
    b.op("kv_write", ("k", "v"), (), layer=kv_layer)
    b.op("attention", ("q",), ("att",), layer=kv_layer, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale)  # fmt: skip
    linear(b, "att", "h", p + "attn_output", (sizes.n_embd, sizes.q_width), bias=True)
