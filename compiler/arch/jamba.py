"""`jamba` (AI21 Jamba), as llama.cpp's src/models/jamba.cpp builds it: in every layer x + mixer(RMS norm(x)),
then x + FFN(RMS norm(x)). The mixer is the Mamba-1 mixer (compiler/arch/mamba.py, with its `ssm_dt_norm`,
`ssm_b_norm`, `ssm_c_norm` weights) where the layer's `attention.head_count_kv` is 0, else GQA attention
without positions (no RoPE: llama.cpp's comment "No RoPE :)"), Q/K/V with their biases and weight scales
where present, `attn_output` with its scale; the FFN is a SwiGLU (no biases or scales) where the layer has no
router, else `expert_count` experts `feed_forward_length` wide, softmax-routed and not renormalized (llama.cpp
passes norm_w false), no weight scale. The KV cache holds the attention layers only; the Mamba layers'
state: (kernel − 1) × d_inner + d_inner × N floats per layer and sequence. `output.weight` (its scale), else tied."""

import math

from rfc.compiler.arch import mamba
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Rope, Sizes, attention, embedding_rows, glu_ffn, hparams, output_head,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_EXPERTS, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block
from rfc.compiler.errors import CompileError
from rfc.artifacts.plan import KVSpec
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "jamba")
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    heads = md.per_layer("attention.head_count", n_layers, 0, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, 0, MAX_HEADS)
    attn = [i for i in range(n_layers) if kv_heads[i]]
    if not attn:
        raise CompileError(f"{md.path}: no layer has attention (head_count_kv > 0 in some layer)")
    n_head = max(heads[i] for i in attn)
    n_kv = kv_heads[attn[0]]
    if any(heads[i] != n_head or kv_heads[i] != n_kv for i in attn) or n_head % n_kv:
        raise CompileError(f"{md.path}: jamba's attention layers differ in head counts or split their heads unevenly")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // n_head))
    if n_head * head_dim != n_embd or md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim) != head_dim:
        raise CompileError(f"{md.path}: jamba's attention maps n_embd to n_embd: {n_head} heads of {head_dim}")
    sizes = Sizes(n_embd, n_layers, n_head, n_kv, head_dim, embedding_rows(md))
    m = mamba.read_mamba1(md)
    if m.d_inner != 2 * n_embd:
        raise CompileError(f"{md.path}: ssm.inner_size {m.d_inner} is not 2 x n_embd (llama.cpp asserts it)")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    n_expert = md.int("expert_count", 0, MAX_EXPERTS, default=0)
    e = None
    if n_expert:
        used = md.int("expert_used_count", 1, n_expert)
        e = Experts(n_expert, used, n_ff, norm=False, dense_lead=0)
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", n_embd), ("h", n_embd), ("q", sizes.q_width), ("k", sizes.kv_width),
                        ("v", sizes.kv_width), ("att", sizes.q_width), ("gate", n_ff), ("up", n_ff)):  # fmt: skip
        b.buffer(name, "T", width)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    mamba.declare(b, m)
    if e is not None:
        declare_expert_buffers(b, n_embd, e)
    cfg = Attention(Rope(0, "none", 10000.0, 1.0, "none"), scale=1.0 / math.sqrt(head_dim))  # never rotates
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n_embd,)),), eps=eps)
        if kv_heads[i]:  # build_attn(wo, NULL bias, wo_s): no attn_output bias is read
            attention(b, i, sizes, eps, cfg, out_bias=False, rope=False, layer=attn.index(i))
        else:
            mamba.mamba1_layer(b, i, n_embd, m, eps)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n_embd,)),), eps=eps)
        if b.has(p + "ffn_gate_inp.weight"):
            if e is None:
                raise CompileError(f"{b.path}: layer {i} has a router and the file no expert_count")
            moe_block(b, i, sizes, e)
        else:
            glu_ffn(b, i, n_embd, n_ff, bias=False, scale=False)
            b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, bias=False)
    extra = {"attention_layers": attn, "ssm_inner_size": m.d_inner, "ssm_state_size": m.n_state,
             "ssm_time_step_rank": m.dt_rank, "ssm_conv_kernel": m.kernel}  # fmt: skip
    if e is not None:
        extra.update(e.hparams())
    hp = hparams(md, sizes, cfg.rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has(f"blk.{attn[0]}.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(attn), n_kv_heads=n_kv, head_dim=head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)
