"""`deci` (NVIDIA Llama-3.1/3.3-Nemotron Super 49B, Ultra 253B, Nemotron-51B: DeciLM's
neural-architecture-searched Llama), as llama.cpp's src/models/deci.cpp builds it: llama's block
(adjacent-pair RoPE over whole heads with `rope_freqs` or LongRoPE factors, RMS norms, SwiGLU)
where every layer has its own head count, KV head count and FFN width (per-layer arrays), and some
layers drop a sublayer:

    head_count 0:                    no attention (x passes through)
    head_count > 0, head_count_kv 0: "linear attention": x += attn_output(attn_norm x), a plain matmul
    feed_forward_length 0:           no FFN

Q/K/V biases and weight scales where present (build_qkv), `attn_output`'s bias and scale on
attention layers (build_attn; the linear attention's matmul takes neither), FFN biases where present
and no FFN weight scales (its graph passes none); `output.weight`, else tied. The KV cache row is the
widest layer's; layers without KV write none. llama.cpp skips the rest of a layer without an FFN,
dropping that layer's attention output too: a layer with attention and no FFN is refused rather
than computed either way."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, attention, glu_ffn, hparams, kv_spec, output_head, read_rope, rope_factors,
)  # fmt: skip
from rfc.compiler.arch.layer_shapes import declare_layer_buffers, read_layer_shapes
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

UNAPPLIED = "llama.cpp's deci graph does not apply it on a linear-attention layer"


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "deci")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=True)
    for i, ls in enumerate(layers):
        if ls.n_heads and not n_ffs[i]:
            raise CompileError(f"{md.path}: layer {i} has attention and no FFN: llama.cpp drops such a layer's "
                               "attention output; refused rather than computed either way")  # fmt: skip
    rope = read_rope(md, sizes, "adjacent")
    if rope.n_rot != sizes.head_dim:  # llama.cpp asserts n_embd_head == n_rot
        raise CompileError(f"{md.path}: rope.dimension_count {rope.n_rot} != head_dim {sizes.head_dim}")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    n = sizes.n_embd
    sfx = declare_layer_buffers(b, sizes, layers, n_ffs)
    if any(ls.n_heads and not ls.n_kv_heads for ls in layers):
        b.buffer("lin", "T", n)  # the linear attention's output
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n))
    long_short = rope.scaling_type == "longrope"
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=long_short)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i, ls in enumerate(layers):
        p = f"blk.{i}."
        if ls.n_heads:
            b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
            if ls.n_kv_heads:
                cfg = Attention(rope, scale=1.0 / math.sqrt(ls.head_dim), factors=factors)
                attention(b, i, ls, eps, cfg, sfx=sfx[(ls.n_heads, ls.n_kv_heads)])
            else:  # linear attention: build_lora_mm(wo, cur), no bias or scale
                b.unused(p + "attn_output.bias", UNAPPLIED)
                b.unused(p + "attn_output.scale", UNAPPLIED)
                b.op("matmul", ("h",), ("lin",), (b.tensor(p + "attn_output.weight", "attn_output", (n, n)),))
                b.op("add", ("x", "lin"), ("x",))
            if ls.n_kv_heads:
                b.op("add", ("x", "h"), ("x",))
        if n_ffs[i]:
            b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
            glu_ffn(b, i, n, n_ffs[i], bias=True, scale=False, bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"))
            b.op("add", ("x", "h"), ("x",))
        else:
            for name in ("ffn_gate", "ffn_up", "ffn_down"):
                b.unused(f"{p}{name}.scale", UNUSED_SCALE)
    tied = output_head(b, sizes, eps, bias=False)
    extra = {"head_count": [ls.n_heads for ls in layers], "head_count_kv": [ls.n_kv_heads for ls in layers],
             "feed_forward_length": list(n_ffs)}  # fmt: skip
    hp = hparams(md, sizes, rope, max(n_ffs), eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
