"""`exaone4` (LG EXAONE 4.0: 1.2B, 32B), as llama.cpp's src/models/exaone4.cpp builds it: no norms
before the sublayers; attention reads the residual x, its Q and K RMS-normed per head
(`attn_q_norm` / `attn_k_norm` [head_dim]) before NeoX RoPE over whole heads (llama.cpp asserts
n_rot = head_dim), `rope_freqs` factors where the file has them; x += post_attention_norm(
attention(x)), then x += post_ffw_norm(SwiGLU FFN(x)); `output.weight`, else the tied embedding;
the last `nextn_predict_layers` (MTP) blocks are not run.

Sliding-window attention only where llama.cpp's loader enables it, in a 64-layer model (the 32B):
a window of `attention.sliding_window` (default 4096) on the layers `attention.sliding_window_pattern`
marks (flags, or a period n, default 4: layers i % n < n - 1), and then only those layers rotate
Q and K: the global layers attend without positions (NoPE). Every layer of any other model
(the 1.2B's 30) is global with RoPE, whatever window its file names.
"""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes,
    require_whole_heads, rope_factors,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

SWA_LAYERS = 64  # llama.cpp's exaone4 loader: sliding windows for the 64-layer (32B) model only


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "exaone4")
    sizes = read_sizes(md)
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0)
    sizes = replace(sizes, n_layers=sizes.n_layers - nextn)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "exaone4")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    swa = sizes.n_layers == SWA_LAYERS
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT, default=4096) if swa else None
    local = sliding_window_layers(md, sizes.n_layers, 4) if swa else (False,) * sizes.n_layers
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=False)
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=True, factors=factors)
    local_cfg = replace(cfg, window=window)
    b.op("embed", ("tokens",), ("x",), (embd,))
    e = (sizes.n_embd,)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        # RoPE on the sliding-window layers, or on every layer of a model without them
        attention(b, i, sizes, eps, local_cfg if local[i] else cfg, src="x", rope=local[i] or not swa)
        b.op(
            "rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps
        )
        b.op("add", ("x", "h"), ("x",))
        glu_ffn(b, i, sizes.n_embd, n_ff, src="x", bias=False, scale=False)  # build_ffn(up, NULL, NULL, ...)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", e),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    extra = {"nextn_predict_layers": nextn} if nextn else {}
    if swa:
        extra.update(sliding_window=window, sliding_window_layers=[i for i, on in enumerate(local) if on])
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
