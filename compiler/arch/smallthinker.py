"""`smallthinker` (PowerInfer SmallThinker-4B-A0.6B / 21B-A3B), as llama.cpp's
src/models/smallthinker.cpp builds it:

- the router reads the layer's input x before attention (`ffn_gate_inp` · x, not normed), and its
  experts are ReLU-gated: relu(gate) * up (swiglu "relu"), `expert_feed_forward_length` wide, scored
  by `expert_gating_func` (required: llama.cpp aborts without one), the chosen weights always
  renormalized (the graph passes true) and not scaled (its loader reads no expert_weights_scale);
  the experts' weight scales are known and unused (its graph passes none);
- pre-norm attention, NeoX RoPE over whole heads, Q/K/V and attn_output biases where present;
- with `attention.sliding_window` present and > 0: a window of 4096 whatever the key says (the
  loader sets it so) on the layers `attention.sliding_window_pattern` marks (flags, or a period n,
  default 4, whose first layer of each n is global), those layers with `rope.freq_base_swa`; and
  every 4th layer from 0 without RoPE (n_no_rope_layer_step, unless the model has exactly 4 layers).
  Without the key every layer is global with RoPE.

`output.weight`, else the tied embedding."""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, hparams, kv_spec, output_head, read_rope, read_sizes, require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of, read_gating
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

WINDOW = 4096  # llama.cpp's smallthinker loader: hparams.n_swa = 4096 once the key is present and > 0
NO_ROPE_STEP = 4  # llama_hparams.n_no_rope_layer_step's default


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "smallthinker")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "smallthinker")
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    gating = read_gating(md, None)
    e = Experts(count, used, n_ff_exp, gating=gating, groups=groups, groups_used=groups_used)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    swa = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0) > 0
    n = sizes.n_layers
    local = sliding_window_layers(md, n, 4, dense_first=True) if swa else (False,) * n
    use_rope = [not swa or NO_ROPE_STEP == n or i % NO_ROPE_STEP != 0 for i in range(n)]
    full = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    slide = full
    if swa:
        base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
        slide = replace(full, window=WINDOW).with_rope(freq_base=base_swa)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff_exp)
    declare_expert_buffers(b, sizes.n_embd, e)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd)),))
    for i in range(n):
        p = f"blk.{i}."
        gate_inp = b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (e.count, sizes.n_embd))
        b.op("matmul", ("x",), ("router",), (gate_inp,))  # the layer's input, before its norm and attention
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        attention(b, i, sizes, eps, slide if local[i] else full, rope=use_rope[i])
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (sizes.n_embd,)),), eps=eps)
        moe_block(b, i, sizes, e, routed=True, activation="relu")
    tied = output_head(b, sizes, eps, bias=False)
    extra = e.hparams() | {"no_rope_layers": [i for i, r in enumerate(use_rope) if not r]}
    if swa:
        extra.update(sliding_window=WINDOW, sliding_window_layers=[i for i, on in enumerate(local) if on])
    hp = hparams(md, sizes, rope, n_ff_exp, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
