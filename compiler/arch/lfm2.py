"""`lfm2` (Liquid LFM2): a hybrid of gated short-convolution layers and GQA attention layers,
each followed by a SwiGLU FFN, pre-norm RMS norms throughout (llama.cpp: src/models/lfm2.cpp).

Which layers attend is in the file: `attention.head_count_kv` is per layer, 0 marking a conv
layer (llama.cpp's is_recr). A conv layer is in_proj (n_embd -> 3 n_embd: b, c, x), the
`short_conv` op (c * depthwise_conv(b * x) over a window of `shortconv.l_cache` tokens, whose
last l_cache - 1 inputs are the sequence's recurrent state), then out_proj. Attention layers
norm Q and K per head (attn_q_norm / attn_k_norm) before NeoX RoPE. The final norm is stored
as `token_embd_norm`, and the output is the token embedding unless the file has its own.

State: per sequence, each conv layer keeps [l_cache - 1, n_embd] floats (LFM2-1.2B: 10 conv
layers x 2 x 2048 x 4 bytes = 160 KiB); nothing per token beyond the attention layers' KV,
which only the attention layers get (the KV cache's layers are the attention layers, in order).

`lfm2moe` (LFM2-8B-A1B, lfm2moe.py) is this stack with routed experts as the FFN of all but
the leading dense layers: `build_hybrid` takes its expert reader.
"""

import math
from collections.abc import Callable

from rfc.artifacts.limits import MAX_CONV_KERNEL
from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Attention, Sizes, declare_buffers, glu_ffn, head_norms, hparams, linear, read_rope
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block
from rfc.compiler.arch.metadata import (
    MAX_CONTEXT,
    MAX_EMBD,
    MAX_FF,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    Metadata,
)
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return build_hybrid(model, "lfm2")


def build_hybrid(model: GGUFModel, arch: str, experts: Callable[[Metadata, int], Experts] | None = None) -> ModelSpec:
    """The lfm2 stack as `arch`; with `experts` (md, n_layers) -> Experts, its MoE layers' FFN is
    the routed experts (lfm2moe). Only lfm2's loader reads attention.sliding_window."""
    md = Metadata(model, arch)
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    heads = md.per_layer("attention.head_count", n_layers, 0, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, 0, MAX_HEADS)
    attn_layers = [i for i in range(n_layers) if kv_heads[i]]
    if not attn_layers:
        raise CompileError(f"{md.path}: {md.key('attention.head_count_kv')} marks no attention layer ({arch} has some)")
    n_heads = {heads[i] for i in attn_layers}
    n_kv = {kv_heads[i] for i in attn_layers}
    if len(n_heads) != 1 or len(n_kv) != 1 or 0 in n_heads:
        raise CompileError(f"{md.path}: {arch}'s attention layers differ in head counts ({sorted(n_heads)} / "
                           f"{sorted(n_kv)}); "
                           "one size is supported")  # fmt: skip
    (nh,), (nkv,) = n_heads, n_kv
    if nh % nkv:
        raise CompileError(f"{md.path}: head_count {nh} is not a multiple of head_count_kv {nkv}")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // nh))
    if md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim) != head_dim or nh * head_dim != n_embd:
        raise CompileError(
            f"{md.path}: {arch} needs value_length = key_length and head_count x key_length = embedding_length"
        )
    l_cache = md.int("shortconv.l_cache", 2, MAX_CONV_KERNEL)  # llama.cpp asserts > 1
    ex = experts(md, n_layers) if experts else None
    dense = ex is None or ex.dense_lead > 0  # the expert-only layers read no feed_forward_length
    n_ff = (
        md.int("feed_forward_length", 1, MAX_FF) if dense else md.int("feed_forward_length", 1, MAX_FF, default=ex.n_ff)
    )
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = None
    if arch == "lfm2":
        window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0) or None
    b = ModelBuilder(model)
    embd_t = model.tensors.get("token_embd.weight")
    if embd_t is None or len(embd_t.shape) != 2 or not 1 <= embd_t.shape[0] <= MAX_VOCAB:
        raise CompileError(f"{md.path}: token_embd.weight is missing or not [vocab <= {MAX_VOCAB}, n_embd]")
    sizes = Sizes(n_embd, n_layers, nh, nkv, head_dim, embd_t.shape[0])
    rope = read_rope(md, sizes, "neox")
    for i in range(n_layers):  # the pattern must agree with the tensors, both ways
        conv, attn = b.has(f"blk.{i}.shortconv.conv.weight"), b.has(f"blk.{i}.attn_q.weight")
        if conv == bool(kv_heads[i]) or attn != bool(kv_heads[i]):
            kind = "attention" if kv_heads[i] else "short-conv"
            raise CompileError(f"{md.path}: layer {i} is a {kind} layer by {md.key('attention.head_count_kv')}, "
                               "but its tensors say otherwise")  # fmt: skip
    declare_buffers(b, sizes, n_ff)
    if ex is not None:
        declare_expert_buffers(b, n_embd, ex)
    b.buffer("bcx", "T", 3 * n_embd)
    b.buffer("conv", "T", n_embd)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd))
    cfg = Attention(rope, scale=1.0 / math.sqrt(head_dim), window=window)
    e = (n_embd,)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
        if kv_heads[i]:
            _attention(b, i, attn_layers.index(i), sizes, eps, cfg)
        else:
            b.op(
                "matmul",
                ("h",),
                ("bcx",),
                (b.tensor(p + "shortconv.in_proj.weight", "shortconv_in_proj", (3 * n_embd, n_embd)),),
            )
            state = b.state(i, (l_cache - 1, n_embd))
            kernel = b.tensor(p + "shortconv.conv.weight", "shortconv_conv", (n_embd, l_cache))
            b.op("short_conv", ("bcx",), ("conv",), (kernel,), state=state)
            linear(b, "conv", "h", p + "shortconv.out_proj", (n_embd, n_embd))
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
        if ex is not None and ex.is_moe(i):
            moe_block(b, i, sizes, ex)  # adds to x itself
        else:
            glu_ffn(b, i, n_embd, n_ff, bias=False, scale=False)  # as lfm2.cpp calls build_ffn
            b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("token_embd_norm.weight", "output_norm", e),), eps=eps)
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), (embd,))
    else:  # build_lora_mm(output, cur, output_s): the weight scale where the file has one, no bias
        linear(b, "hr", "logits", "output", (sizes.vocab_size, n_embd), bias=False)
    hp = hparams(
        md,
        sizes,
        rope,
        n_ff,
        eps,
        tied_embeddings=tied,
        qkv_bias=False,
        rope_freq_factors=False,
        extra={"attention_layers": len(attn_layers), "conv_layers": n_layers - len(attn_layers), "conv_kernel": l_cache}
        | (ex.hparams() if ex is not None else {}),
    )
    kv = KVSpec(n_layers=len(attn_layers), n_kv_heads=nkv, head_dim=head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _attention(b: ModelBuilder, i: int, kv_layer: int, sizes: Sizes, eps: float, cfg: Attention) -> None:
    """Layer i's attention, its KV in the cache's layer kv_layer: Q/K/V, per-head Q/K norms, NeoX
    RoPE, attention, out projection (llama.cpp's build_attn_block of lfm2). Q, K and V as
    build_qkv makes them: each matmul times its weight scale plus its bias where the file has
    them; the out projection with its weight scale and no bias (build_attn is passed none)."""
    p = f"blk.{i}."
    for proj, width in (("q", sizes.q_width), ("k", sizes.kv_width), ("v", sizes.kv_width)):
        linear(b, "h", proj, f"{p}attn_{proj}", (width, sizes.n_embd))
    head_norms(b, p, sizes, eps)
    b.op("rope", ("q", "k"), ("q", "k"), **cfg.rope.attrs(sizes))
    b.op("kv_write", ("k", "v"), (), layer=kv_layer)
    extra = {"window": cfg.window} if cfg.window is not None else {}
    b.op("attention", ("q",), ("att",), layer=kv_layer, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale, **extra)  # fmt: skip
    linear(b, "att", "h", p + "attn_output", (sizes.n_embd, sizes.q_width), bias=False)
