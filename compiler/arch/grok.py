"""`grok` (xAI Grok-1, Grok-2), as llama.cpp's src/models/grok.cpp builds it (with flash attention
off, the graph llama.cpp's logits are recorded with: its flash-attention path drops Grok's score
soft-capping):

    x = embedding * embedding_scale
    h = attn_output_norm(attn(attn_norm x));  x += h                   (Q/K/V biases, weight scales)
    n = ffn_norm(x);  h = experts(n) [+ dense(n), both times sqrt(2)/2 when the layer has ffn_up]
    x += layer_output_norm(h)
    logits = output(output_norm x) * logit_scale  [soft-capped by final_logit_softcapping]

Attention scores are attn_logit_softcapping * tanh(q.k * attention.output_scale /
attn_logit_softcapping) (the attention op's scale and softcap), NeoX RoPE over whole heads, no
frequency factors. Experts: GELU(tanh)-gated, softmax-routed, renormalized, not scaled (the loader
reads no expert_weights_scale), `expert_feed_forward_length` wide (else feed_forward_length); the
dense FFN GELU-gated too; neither passes weight scales to its matmuls (known and unused). The
defaults of old Grok-1 files where keys are absent: embedding_scale 78.38367176906169,
attention.output_scale 0.08838834764831845, attn_logit_softcapping 30, logit_scale
0.5773502691896257. router_logit_softcapping is read by the loader and applied by nothing."""

import math


from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Rope, attention, declare_buffers, f32, glu_ffn, hparams, kv_spec, linear, read_rope,
    read_sizes, require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

EMBEDDING_SCALE, ATTN_OUT_SCALE, ATTN_SOFTCAP, LOGIT_SCALE = (
    78.38367176906169,
    0.08838834764831845,
    30.0,
    0.5773502691896257,
)
HALF_SQRT2 = math.sqrt(2) / 2  # the dense FFN and the experts' sum scaled by it (std::sqrt(2) / 2)


def _rope(md: Metadata, sizes) -> Rope:
    """NeoX RoPE as grok's loader sets it up: it reads YaRN's ext and attn factors and betas for any
    scaling type. Without YaRN (no scaling type "yarn", no yarn_ext_factor above 0) the betas do
    nothing and rope.scaling.yarn_attn_factor multiplies the rotation's magnitude (cparams'
    yarn_attn_factor); YaRN itself is refused (not planned for grok)."""
    rope = read_rope(md, sizes, "neox", yarn_keys=True)
    ext = md.float("rope.scaling.yarn_ext_factor", -1e6, 1e6, default=-1.0)
    if rope.scaling_type == "yarn" or ext > 0.0:
        raise CompileError(f"{md.path}: a grok file with YaRN scaling: not planned (llama.cpp reads its factors "
                           "from this family's own keys)")  # fmt: skip
    for key in ("rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow"):
        md.ignored(key, "YaRN's ramp: nothing without YaRN (yarn_ext_factor 0)")
    yarn_attn = md.float("rope.scaling.yarn_attn_factor", 0.0, 1e6, default=1.0, open_lo=True)
    return replace(rope, attn_factor=f32(f32(yarn_attn) * f32(rope.attn_factor)))


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "grok")
    sizes = read_sizes(md)
    rope = _rope(md, sizes)
    require_whole_heads(md, rope, sizes, "grok")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    count, used, n_ff_exp, _, _ = read_experts_of(md, n_ff=n_ff, expert_ff=True)
    if not count:
        raise CompileError(f"{md.path}: a grok model cannot have zero experts (llama.cpp's loader refuses it)")
    e = Experts(count, used, n_ff_exp)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    embedding_scale = f32(md.float("embedding_scale", 0.0, 1e6, default=EMBEDDING_SCALE))
    attn_scale = f32(md.float("attention.output_scale", 0.0, 1e6, default=ATTN_OUT_SCALE, open_lo=True))
    softcap = f32(md.float("attn_logit_softcapping", 0.0, 1e6, default=ATTN_SOFTCAP, open_lo=True))
    logit_scale = f32(md.float("logit_scale", 0.0, 1e6, default=LOGIT_SCALE, open_lo=True))
    final_softcap = md.float("final_logit_softcapping", 0.0, 1e6, default=0.0)
    md.ignored("router_logit_softcapping", "llama.cpp's grok loader reads it and its graph applies it nowhere")
    n = sizes.n_embd
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    declare_expert_buffers(b, n, e)
    b.buffer("a", "T", n)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n))
    b.op("embed", ("tokens",), ("x",), (embd,), **({"scale": embedding_scale} if embedding_scale else {}))
    cfg = Attention(rope, scale=attn_scale, softcap=softcap)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        if not b.has(p + "ffn_gate_exps.weight"):
            raise CompileError(f"{b.path}: layer {i} has no ffn_gate_exps (ungated grok experts are not planned)")
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        attention(b, i, sizes, eps, cfg)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "attn_output_norm.weight", "attn_output_norm", (n,)),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        if b.has(p + "ffn_up.weight"):
            glu_ffn(b, i, n, n_ff, activation="gelu_tanh", dst="a", bias=False, scale=False)
            moe_block(b, i, sizes, e, residual="a", activation="gelu_tanh")
            b.op("scale", ("a",), ("a",), factor=HALF_SQRT2)
            out = "a"
        else:
            for name in ("ffn_gate", "ffn_up", "ffn_down"):
                b.unused(f"{p}{name}.scale", UNUSED_SCALE)
            moe_block(b, i, sizes, e, residual=None, activation="gelu_tanh")
            out = "moe_out"
        post = p + ("layer_output_norm" if b.has(p + "layer_output_norm.weight") else "ffn_post_norm")
        b.op("rmsnorm", (out,), (out,), (b.tensor(post + ".weight", post.split(".")[-1], (n,)),), eps=eps)
        b.op("add", ("x", out), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", (n,)),), eps=eps)
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), ("token_embd.weight",))
    else:
        linear(b, "hr", "logits", "output", (sizes.vocab_size, n), bias=False)
    b.op("scale", ("logits",), ("logits",), factor=logit_scale)
    if final_softcap:
        b.op("softcap", ("logits",), ("logits",), cap=final_softcap)
    extra = e.hparams() | {"embedding_scale": embedding_scale, "attention_scale": attn_scale,
                           "attn_logit_softcapping": softcap, "logit_scale": logit_scale}  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
