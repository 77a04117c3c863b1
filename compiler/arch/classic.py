"""The LayerNorm families (phi2, starcoder2, gptneox, falcon, codeshell, jais2, gpt2, starcoder), as
their llama.cpp graphs build them: LayerNorms with weight and bias (`attention.layer_norm_epsilon`),
NeoX RoPE (over the first `rope.dimension_count` dims of each head where the family allows it) or
learned absolute positions (gpt2, starcoder: `position_embd` added to the embedding), Q/K/V from separate
tensors or one fused `attn_qkv` (its bias split the same way), and an ungated FFN (GELU, or jais2's
squared ReLU). What differs is a Classic: how attention and FFN meet the residual, which biases
the loader reads, the activation, and the output head.

    sequential:  x += attn(LN1 x);          x += FFN(LN2 x)           (starcoder2; gptneox by default)
    shared:      n = LN1 x;  x += attn(n) + FFN(n)                      (phi2, falcon)
    two norms:   x += attn(LN1 x) + FFN(LN2 x), both of the same x      (gptneox with use_parallel_residual)

falcon's 40B layers LayerNorm attention's input apart (`attn_norm_2`, where a layer has it); the
FFN still reads attn_norm's output."""

import math
from dataclasses import dataclass

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.artifacts.ops.core import MAX_ALIBI_BIAS
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, linear, qkv_projections, read_rope, read_sizes,
    require_output, require_whole_heads, ungated_ffn,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


@dataclass(frozen=True)
class Classic:
    residual: str  # "sequential", "shared" or "two_norms" (the module docstring); "key": gptneox's file says
    full_rotary: bool  # the graph asserts rope.dimension_count == head_dim
    out_bias: bool  # attn_output.bias: the loader reads it (required) and the graph adds it
    ffn_bias: bool  # ffn_up.bias and ffn_down.bias: required and added
    output_bias: bool = False  # output.bias: required and added (phi2)
    output_required: bool = True  # False: the tied embedding when the file has no output.weight
    attn_norm_2: bool = False  # falcon: attention reads LN(x) by attn_norm_2 where the layer has it
    # the FFN: ungated (common.ungated_ffn) "gelu" or "relu_sqr" (jais2); "swiglu": gated, SiLU (jais)
    activation: str = "gelu"
    embd_from_output: bool = False  # codeshell: without token_embd.weight, the embedding is output.weight
    # Positions. rope: NeoX RoPE; learned: position_embd [context_length, n_embd] added to the embedding,
    # "required" (gpt2, starcoder) or "optional" (mpt: where the file has it); alibi: ALiBi's bias on the
    # scores, "fixed" (ALIBI_BIAS: bloom) or "key" (attention.max_alibi_bias; 0 or absent: none)
    rope: bool = True
    learned: str = "none"
    alibi: str = "none"
    embd_norm: bool = False  # bloom: token_embd_norm (weight and bias) LayerNorms the embedding
    norm_bias: str = "required"  # the LayerNorms' biases, "required" or "optional" (mpt)
    scale_by_head_dim: bool = False  # the scores are q.k / head_dim (jais), not q.k / sqrt(head_dim)
    qk_norm: bool = False  # mpt: attn_q_norm / attn_k_norm LayerNorm the whole Q and K rows, where present
    clamp_kqv: bool = False  # mpt: attention.clamp_kqv clamps Q, K and V
    act_scales: bool = False  # mpt: the GELU's output divided by ffn.act.scales where a layer has it (AWQ)


# llama.cpp's f_max_alibi_bias where its loader fixes it (bloom, refact, baichuan 13B: "TODO: become GGUF KV")
ALIBI_BIAS = 8.0


def build(model: GGUFModel, arch: str, c: Classic) -> ModelSpec:
    md = Metadata(model, arch)
    embd = "output.weight" if c.embd_from_output and "token_embd.weight" not in model.tensors else "token_embd.weight"
    sizes = read_sizes(md, embd)
    rope = read_rope(md, sizes, "neox")
    if c.full_rotary:
        require_whole_heads(md, rope, sizes, arch)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    residual = c.residual
    if residual == "key":  # gptneox: required, as its loader reads it
        residual = "two_norms" if md.bool("use_parallel_residual") else "sequential"
    b = ModelBuilder(model)
    if c.output_required:
        require_output(b, arch)
    e = sizes.n_embd
    declare_buffers(b, sizes, n_ff)
    b.buffer("a", "T", e)
    layernorm.declare(b, e, "T")
    layernorm.declare(b, e, "R")
    norm_2 = c.attn_norm_2 and any(b.has(f"blk.{i}.attn_norm_2.weight") for i in range(sizes.n_layers))
    if norm_2:
        b.buffer("n2", "T", e)
    b.op("embed", ("tokens",), ("x",), (b.tensor(embd, embd.split(".")[0], (sizes.vocab_size, e)),))
    learned = c.learned == "required" or (c.learned == "optional" and b.has("position_embd.weight"))
    if learned:  # a row of the table per position, added once to the embedding
        table = b.tensor("position_embd.weight", "position_embd", (md.int("context_length", 1, MAX_CONTEXT), e))
        b.op("pos_embed", ("x",), ("x",), (table,))
    if c.embd_norm:
        layernorm.named_layer_norm(b, "x", "x", "token_embd_norm", e, eps, bias="required")
    alibi = ALIBI_BIAS if c.alibi == "fixed" else None
    if c.alibi == "key":
        alibi = md.float("attention.max_alibi_bias", 0.0, MAX_ALIBI_BIAS, default=0.0) or None
    clamp = md.float("attention.clamp_kqv", 0.0, 1e6, default=0.0) if c.clamp_kqv else 0.0
    scale = 1.0 / sizes.head_dim if c.scale_by_head_dim else 1.0 / math.sqrt(sizes.head_dim)
    cfg = Attention(rope, scale=scale, alibi=alibi, clamp=clamp or None)
    qk_norm = c.qk_norm and b.has("blk.0.attn_q_norm.weight")
    if qk_norm and not sizes.q_width == sizes.kv_width == e:  # the LayerNorm buffers are n_embd wide
        raise CompileError(f"{b.path}: Q/K LayerNorms need q and k rows of n_embd ({e}) values")
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        layernorm.named_layer_norm(b, "x", "h", p + "attn_norm", e, eps, bias=c.norm_bias)
        src = "h"
        if norm_2 and b.has(p + "attn_norm_2.weight"):
            layernorm.named_layer_norm(b, "x", "n2", p + "attn_norm_2", e, eps, bias="required")
            src = "n2"
        if qk_norm:
            _qk_layer_norm_attention(b, i, sizes, eps, cfg, src, c)
        elif c.qk_norm:  # mpt's graph norms Q and K only when attn_q_norm is there: a K norm alone is not applied
            for part in ("weight", "bias"):
                b.unused(f"{p}attn_k_norm.{part}", "llama.cpp's mpt graph applies it only beside an attn_q_norm")
            attention(b, i, sizes, eps, cfg, src=src, dst="a", out_bias=c.out_bias, rope=c.rope)
        else:
            attention(b, i, sizes, eps, cfg, src=src, dst="a", out_bias=c.out_bias, rope=c.rope)
        if residual == "sequential":
            b.op("add", ("x", "a"), ("x",))
            layernorm.named_layer_norm(b, "x", "h", p + "ffn_norm", e, eps, bias=c.norm_bias)
        elif residual == "two_norms":
            layernorm.named_layer_norm(b, "x", "h", p + "ffn_norm", e, eps, bias="required")
        # "shared": the FFN reads h, attn_norm's output
        if c.activation == "swiglu":
            glu_ffn(b, i, e, n_ff, bias=c.ffn_bias, scale=False)
        else:
            ungated_ffn(b, i, e, n_ff, c.activation, bias=c.ffn_bias, act_scales=c.act_scales)
        if residual != "sequential":
            b.op("add", ("x", "a"), ("x",))
        b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    layernorm.named_layer_norm(b, "xr", "hr", "output_norm", e, eps, bias=c.norm_bias, rows="R")
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), ("token_embd.weight",))
    else:
        linear(b, "hr", "logits", "output", (sizes.vocab_size, e), bias=c.output_bias)
    if c.output_bias and not b.has("output.bias"):
        raise CompileError(f"{b.path}: missing tensor output.bias ({arch}'s loader requires it)")
    kinds = ["rope"] * c.rope + ["learned"] * learned + ([f"alibi {alibi:g}"] if alibi is not None else [])
    extra = {"norm": "layernorm", "residual": residual, "ffn": c.activation, "positions": ", ".join(kinds) or "none"}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias")
                 or b.has("blk.0.attn_qkv.bias"), rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))


def _qk_layer_norm_attention(b: ModelBuilder, i: int, sizes, eps: float, cfg: Attention, src: str, c: Classic) -> None:
    """mpt's attention with qk_ln: Q and K LayerNormed over their whole rows (weight, optional bias)
    after build_qkv (its clamp included) and before the cache."""
    p = f"blk.{i}."
    qkv_projections(b, p, sizes, src, cfg.clamp)
    for proj in ("q", "k"):
        layernorm.named_layer_norm(b, proj, proj, f"{p}attn_{proj}_norm", sizes.n_embd, eps, bias="optional")
    if c.rope:
        raise ValueError("qk_norm with RoPE is not a classic layout")  # a recipe bug
    b.op("kv_write", ("k", "v"), (), layer=i)
    extra = {k: v for k, v in (("alibi", cfg.alibi),) if v is not None}
    b.op("attention", ("q",), ("att",), (), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale, **extra)  # fmt: skip
    linear(b, "att", "a", p + "attn_output", (sizes.n_embd, sizes.q_width), bias=c.out_bias)
