"""`modern-bert` (ModernBERT: gte-modernbert, modernbert-embed, IBM Granite Embedding R2), as
llama.cpp's src/models/modern-bert.cpp builds it: an encoder of pre-norm blocks without biases.

    x = LN(token_embd[t])                                        token_embd_norm
    per layer:  x = x + attn_output(attention(rope(Q), rope(K), V))    of LN(x) by attn_norm
                                                                 (layer 0: no norm where it has none)
                x = x + ffn_down(glu(ffn_up LN(x)))               ffn_norm
    h = LN(x)                                                    output_norm

LayerNorms with a weight and no bias (`attention.layer_norm_epsilon`); Q, K and V from the fused
`attn_qkv`, NeoX RoPE, scores x 1/sqrt(head_dim); `ffn_up` holds 2 n_ff rows, gate first, through
`hidden_activation` (GeGLU by default and for "gelu"/"geglu", SwiGLU for "silu"/"swish"/"swiglu",
ReGLU for "reglu"; any other name falls back to GeGLU, as llama.cpp's lookup does). The attention
sees the whole input; where the file has `attention.sliding_window`, the layers the pattern marks
(a period of 3 by default, the first of each period global) mask symmetrically, keys more than
n_swa / 2 away either side out, at `rope.freq_base_swa` (default 10000). The normed rows are
pooled by `pooling_type` (runtime/engine/embedding.py). Rank pooling (gte-reranker-modernbert's
classifier: dense, GELU, a LayerNorm, then the labels, by mean or CLS) is refused: not built.
"""

import math
from dataclasses import replace

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.bert import declare_encoder_buffers
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    CLASSIFIER, RANK_POOLING, Attention, attention, glu_ffn, hparams, kv_spec, read_rope, read_sizes,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "modern-bert"
# llama.cpp's LLM_FFN_OP_TYPES_FROM_STRING for `hidden_activation`, as the GLU activations rfc has
_ACTIVATIONS = {"gelu": "gelu_tanh", "geglu": "gelu_tanh", "silu": "silu", "swish": "silu", "swiglu": "silu",
                "reglu": "relu"}  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    sizes = read_sizes(md)
    e = sizes.n_embd
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    if sizes.n_kv_heads != sizes.n_heads or sizes.n_heads * sizes.head_dim != e:
        raise CompileError(f"{md.path}: {ARCH}'s fused attn_qkv is 3 x n_embd: head_count_kv = head_count, "
                           f"head_count x head size = n_embd")  # fmt: skip
    name = md.text("hidden_activation", default="gelu")
    if name == "relu":  # llama.cpp's ungated ReLU over the 2 n_ff rows: ffn_down's n_ff columns cannot take them
        raise CompileError(f"{md.path}: {ARCH} with hidden_activation relu (llama.cpp cannot run it either)")
    activation = _ACTIVATIONS.get(name, "gelu_tanh")
    if md.raw("pooling_type") == RANK_POOLING:
        raise CompileError(f"{md.path}: {ARCH} with rank pooling (a reranker's GELU classifier head) is not built")
    rope = read_rope(md, sizes, "neox")
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), causal=False)
    local = cfg
    sliding = (False,) * sizes.n_layers
    n_swa = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    if n_swa > 0:  # llama.cpp's load_swa_pattern(ml, 3, dense_first = true), its window symmetric
        sliding = sliding_window_layers(md, sizes.n_layers, 3, dense_first=True)
        base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=10000.0, open_lo=True)
        local = replace(cfg.with_rope(freq_base=base_swa), window=n_swa // 2 + 1)
    b = ModelBuilder(model)
    declare_encoder_buffers(b, sizes)
    b.buffer("gate", "T", n_ff)
    b.buffer("up", "T", n_ff)
    b.buffer("xr", "R", e)
    b.buffer("hr", "R", e)
    layernorm.declare(b, e, "T")
    layernorm.declare(b, e, "R")
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, e)),))
    layernorm.named_layer_norm(b, "x", "x", "token_embd_norm", e, eps, bias="none")
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        normed = i > 0 or b.has(p + "attn_norm.weight")  # layer 0's norm is the identity where it has none
        if normed:
            layernorm.named_layer_norm(b, "x", "a", p + "attn_norm", e, eps, bias="none")
        attention(b, i, sizes, eps, local if sliding[i] else cfg, src="a" if normed else "x", dst="a", out_bias=False)
        b.op("add", ("x", "a"), ("x",))
        layernorm.named_layer_norm(b, "x", "a", p + "ffn_norm", e, eps, bias="none")
        glu_ffn(b, i, e, n_ff, activation=activation, src="a", dst="a", fused_gate_up=True, bias=False, scale=False)
        b.op("add", ("x", "a"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    layernorm.named_layer_norm(b, "xr", "hr", "output_norm", e, eps, bias="none", rows="R")
    for name in (*CLASSIFIER, "cls.norm.weight"):
        b.unused(name, "the classifier head of a file without rank pooling (llama.cpp loads it and embeds)")
    extra = {"norm": "layernorm (pre)", "positions": "rope", "causal": False, "serves": "embeddings",
             "hidden_activation": name, "sliding_window": n_swa,
             "sliding_window_layers": [i for i, on in enumerate(sliding) if on]}  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="", output_hidden="hr", kv=kv_spec(sizes))
