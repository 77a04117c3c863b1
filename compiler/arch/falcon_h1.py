"""`falcon-h1` (TII Falcon-H1: 0.5B-34B), as llama.cpp's src/models/falcon-h1.cpp builds it: every
layer runs GQA attention and a Mamba2 mixer side by side on the same h = attn_norm(x), then
x += attention(h) + mamba2(h), then x += FFN(ffn_norm(x)).

- attention: Q/K/V biases where present, NeoX RoPE over `rope.dimension_count` dims (no factors:
  the graph passes none, so a file's `rope_freqs.weight` is known and unused), scores ×
  1/√head_dim (the loader reads no attention.scale), no output bias (llama.cpp loads
  `attn_output.bias` and its graph does not apply it: nor here);
- the Mamba2 mixer is compiler/arch/mamba2.py's (granitehybrid's, with `ssm.inner_size` free: any
  expansion), its grouped `ssm_norm` required here (llama.cpp makes it optional);
- the FFN: SwiGLU with optional gate/up/down biases; its norm is the tensor `blk.N.ffn_norm`
  (no `.weight` suffix: llama.cpp's loader names it so);
- `output.weight`, else the tied embedding. The multipliers of the Hugging Face model are folded
  into the weights by the converter; the graph applies none.

State: per sequence and layer the Mamba2 conv window and scan matrices
((kernel − 1) × (d_inner + 2 G N) + d_inner × N floats), and every layer's KV rows.
"""

import math

from rfc.compiler.arch import mamba2
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention,
    attention,
    declare_buffers,
    glu_ffn,
    hparams,
    kv_spec,
    output_head,
    read_rope,
    read_sizes,
)
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "falcon-h1")
    sizes = read_sizes(md)
    m = mamba2.read_mamba2(md)
    rope = read_rope(md, sizes, "neox")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    b.buffer("a", "T", sizes.n_embd)
    b.buffer("m", "T", sizes.n_embd)
    mamba2.declare(b, m)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.unused(
        "rope_freqs.weight", "llama.cpp's falcon-h1 loader reads it and its graph rotates with no frequency factors"
    )
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        # build_attn(wo, NULL, wo_s): the output's weight scale applied, its bias loaded and not added
        b.unused(p + "attn_output.bias", "llama.cpp's falcon-h1 loader reads it and its graph does not add it")
        attention(b, i, sizes, eps, cfg, src="h", dst="a", out_bias=False)
        mamba2.mamba2_layer(b, i, sizes.n_embd, m, eps, src="h", dst="m")
        b.op("add", ("x", "a"), ("x",))
        b.op("add", ("x", "m"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm", "ffn_norm", (sizes.n_embd,)),), eps=eps)
        glu_ffn(b, i, sizes.n_embd, n_ff, bias=True, scale=False)  # build_ffn(up, up_b, NULL, ...)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    extra = {"ssm_conv_kernel": m.kernel, "ssm_inner_size": m.d_inner, "ssm_state_size": m.n_state,
             "ssm_time_step_rank": m.n_heads, "ssm_group_count": m.n_groups}  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
