"""`plamo3` (PFN PLaMo 3), as llama.cpp's src/models/plamo3.cpp builds it: per-layer head counts and
FFN widths where the file has arrays (compiler/arch/layer_shapes.py), a fused `attn_qkv` split by each
layer's heads (no weight scale: the graph passes none), Q and K RMS-normed per head before NeoX RoPE,
sandwich norms (`post_attention_norm`, `post_ffw_norm`: tensors without `.weight`, as llama.cpp names
them), `attn_output` with its weight scale, a fused `ffn_up` [2 n_ff] whose first half gates the
second (SwiGLU), no FFN weight scales; `output.weight`, else tied.

With `attention.sliding_window` > 0, the layers `attention.sliding_window_pattern` marks (flags, or a
period, default 8) attend within the window and rotate with `rope.freq_base_swa` (llama.cpp's default
10000 when the key is absent, whatever rope.freq_base is) and no frequency scaling."""

from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    glu_ffn, hparams, kv_spec, output_head, read_rope,
    require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.layer_shapes import declare_layer_buffers, fused_qkv_attention, read_layer_shapes
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

SWA_FREQ_BASE = 10000.0  # llama_hparams.rope_freq_base_train_swa's default


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "plamo3")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=False)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "plamo3")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    if window:
        local = sliding_window_layers(md, sizes.n_layers, 8)
        base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=SWA_FREQ_BASE, open_lo=True)
        rope_swa = replace(rope, freq_base=base_swa, freq_scale=1.0)
    else:
        local = (False,) * sizes.n_layers
        md.ignored("rope.freq_base_swa", "without a sliding window llama.cpp's plamo3 loader does not read it")
    b = ModelBuilder(model)
    n = sizes.n_embd
    sfx = declare_layer_buffers(b, sizes, layers, n_ffs)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    for i, ls in enumerate(layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        g = sfx[(ls.n_heads, ls.n_kv_heads)]
        fused_qkv_attention(b, i, ls, eps, rope_swa if local[i] else rope, g, window if local[i] else None)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm", "post_attention_norm", (n,)),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        glu_ffn(b, i, n, n_ffs[i], fused_gate_up=True, bias=False, scale=False,
                bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"))  # fmt: skip
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm", "post_ffw_norm", (n,)),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, bias=False)
    extra = {"head_count": [ls.n_heads for ls in layers], "head_count_kv": [ls.n_kv_heads for ls in layers],
             "feed_forward_length": list(n_ffs)}  # fmt: skip
    if window:
        extra.update(sliding_window=window, sliding_window_layers=[i for i, on in enumerate(local) if on])
    hp = hparams(md, sizes, rope, max(n_ffs), eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
