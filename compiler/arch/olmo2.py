"""`olmo2` (OLMo 2): no norms before the sublayers; RMS norms of their outputs instead
(`post_attention_norm`, `post_ffw_norm`) before each residual add, and RMS norms of the whole Q
and K rows (`attn_q_norm` [n_embd], `attn_k_norm` [kv width], not per head) before NeoX RoPE
over whole heads; SwiGLU FFN, an untied output.

OLMo 3 is the same architecture with `attention.sliding_window` > 0: sliding-window attention on
the layers `attention.sliding_window_pattern` marks (per-layer flags, or a period n, default 4:
layers i % n < n - 1), whose RoPE is plain (llama.cpp's olmo2 graph passes freq_scale 1,
ext_factor 0 and attn_factor 1 there: no linear or YaRN scaling) at `rope.freq_base`; the other
layers attend over the whole context with the file's RoPE scaling."""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes,
    require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "olmo2")
    sizes = read_sizes(md)
    window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    local = sliding_window_layers(md, sizes.n_layers, 4) if window else (False,) * sizes.n_layers
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "olmo2")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    if not b.has("output.weight"):  # llama.cpp's olmo2 loader requires it (no tied fallback)
        raise CompileError(f"{b.path}: missing tensor output.weight (olmo2's output is not tied)")
    declare_buffers(b, sizes, n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=True, qk_norm_rows=True)
    # OLMo 3's sliding-window layers: unscaled RoPE (see the module docstring)
    local_cfg = replace(cfg.with_rope(freq_scale=1.0, attn_factor=1.0, ext_factor=0.0), window=window)
    b.op("embed", ("tokens",), ("x",), (embd,))
    e = (sizes.n_embd,)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        attention(b, i, sizes, eps, local_cfg if local[i] else cfg, src="x")
        b.op(
            "rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps
        )
        b.op("add", ("x", "h"), ("x",))
        glu_ffn(b, i, sizes.n_embd, n_ff, src="x", bias=False, scale=False)  # as olmo2.cpp calls build_ffn
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", e),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
    output_head(b, sizes, eps)
    extra = (
        {"sliding_window": window, "sliding_window_layers": [i for i, on in enumerate(local) if on]} if window else {}
    )
    hp = hparams(
        md,
        sizes,
        rope,
        n_ff,
        eps,
        tied_embeddings=False,
        qkv_bias=b.has("blk.0.attn_q.bias"),
        rope_freq_factors=False,
        extra=extra,
    )
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
