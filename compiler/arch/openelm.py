"""`openelm` (Apple OpenELM 270M-3B), as llama.cpp's src/models/openelm.cpp builds it: layer-wise
scaling, so every layer has its own head count, KV head count and FFN width (per-layer arrays,
compiler/arch/layer_shapes.py); each layer's fused `attn_qkv` holds its Q, K and V heads in turn
(split at compile time; the graph passes the fused matmul no weight scale: known and unused), Q and
K RMS-normed per head, NeoX RoPE, `attn_output` with its weight scale, a SwiGLU FFN without biases
or scales; the output is always the tied embedding (the loader reads no output.weight)."""

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    glu_ffn, hparams, kv_spec, output_head, read_rope,
)  # fmt: skip
from rfc.compiler.arch.layer_shapes import declare_layer_buffers, fused_qkv_attention, read_layer_shapes
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "openelm")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=False)
    rope = read_rope(md, sizes, "neox")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    n = sizes.n_embd
    sfx = declare_layer_buffers(b, sizes, layers, n_ffs)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n))
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i, ls in enumerate(layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        fused_qkv_attention(b, i, ls, eps, rope, sfx[(ls.n_heads, ls.n_kv_heads)])
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        glu_ffn(b, i, n, n_ffs[i], bias=False, scale=False, bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"))
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, always_tied=True, bias=False)
    extra = {"head_count": [ls.n_heads for ls in layers], "head_count_kv": [ls.n_kv_heads for ls in layers],
             "feed_forward_length": list(n_ffs)}  # fmt: skip
    hp = hparams(md, sizes, rope, max(n_ffs), eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
