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
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, hparams, kv_spec, linear, read_rope, read_sizes, require_output,
    require_whole_heads, ungated_ffn,
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
    activation: str = "gelu"  # the ungated FFN's (common.ungated_ffn): "gelu" or "relu_sqr" (jais2)
    embd_from_output: bool = False  # codeshell: without token_embd.weight, the embedding is output.weight
    positions: str = "rope"  # or "learned": position_embd.weight [context_length, n_embd] added to the embedding


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
    learned = c.positions == "learned"
    if learned:  # gpt2, starcoder: a row of the table per position, added once to the embedding
        table = b.tensor("position_embd.weight", "position_embd", (md.int("context_length", 1, MAX_CONTEXT), e))
        b.op("pos_embed", ("x",), ("x",), (table,))
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        layernorm.named_layer_norm(b, "x", "h", p + "attn_norm", e, eps, bias="required")
        src = "h"
        if norm_2 and b.has(p + "attn_norm_2.weight"):
            layernorm.named_layer_norm(b, "x", "n2", p + "attn_norm_2", e, eps, bias="required")
            src = "n2"
        attention(b, i, sizes, eps, cfg, src=src, dst="a", out_bias=c.out_bias, rope=not learned)
        if residual == "sequential":
            b.op("add", ("x", "a"), ("x",))
            layernorm.named_layer_norm(b, "x", "h", p + "ffn_norm", e, eps, bias="required")
        elif residual == "two_norms":
            layernorm.named_layer_norm(b, "x", "h", p + "ffn_norm", e, eps, bias="required")
        # "shared": the FFN reads h, attn_norm's output
        ungated_ffn(b, i, e, n_ff, c.activation, bias=c.ffn_bias)
        if residual != "sequential":
            b.op("add", ("x", "a"), ("x",))
        b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    layernorm.named_layer_norm(b, "xr", "hr", "output_norm", e, eps, bias="required", rows="R")
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), ("token_embd.weight",))
    else:
        linear(b, "hr", "logits", "output", (sizes.vocab_size, e), bias=c.output_bias)
    if c.output_bias and not b.has("output.bias"):
        raise CompileError(f"{b.path}: missing tensor output.bias ({arch}'s loader requires it)")
    extra = {"norm": "layernorm", "residual": residual, "ffn": c.activation, "positions": c.positions}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias")
                 or b.has("blk.0.attn_qkv.bias"), rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
