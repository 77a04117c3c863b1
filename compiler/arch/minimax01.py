"""`minimax-01` (MiniMax-Text-01, 456B-A46B), as llama.cpp 0.3.36 builds it
(src/models/minimax-01.cpp): lightning-attention layers (`attention.recurrent_layers`, else every
layer but each `full_attention_interval`-th, default 8) and full attention layers, each sublayer's
residual the NORMED input times `residual_scale` (required):

    h = attn_norm(x);  x' = mixer(h) + h * residual_scale
    h = ffn_norm(x');  x'' = experts(h) + h * residual_scale

- Lightning attention (op lightning_attention, recurrent): SiLU(`attn_qkv` h) gives per head its
  q, k and v; linear attention with a constant decay per head: M = lambda_h M + v k^T, out = M q,
  lambda_h = exp(-slope_h x slope_scale_l), llama.cpp's slopes slope_h = start^(h + 1), start =
  2^(-2^(-(log2 n_head - 3))) and per layer slope_scale = 1 - l / (n_layer - 1) + 1e-5 (float32 as
  llama.cpp makes them, compiled into a weight of the plan); the heads' outputs RMS-normed over the
  whole row (`attn_norm_2`) times sigmoid(`attn_gate` h), then `attn_output`. None of these
  matmuls is scaled (the graph passes no `.scale`).
- Full attention: Q/K/V with their scales and biases where present (build_qkv), NeoX RoPE, scores x
  1/sqrt(head_dim), `attn_output` with its scale.
- FFN: every layer `expert_count` experts `feed_forward_length` wide, softmax-routed, always
  renormalized, x `expert_weights_scale` (0: none); no weight scales; no shared expert.
- `output.weight` with its scale, else tied.

State per sequence and lightning layer: n_head x head_dim^2 floats (MiniMax-Text-01's 64 heads of
128: 4 MiB per layer); the KV cache holds the full attention layers only.
"""

import math

import numpy as np

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, attention, declare_buffers, hparams, output_head, read_rope, read_sizes,
)  # fmt: skip
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of, read_weights_scale
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

FULL_ATTENTION_INTERVAL = 8  # llama.cpp's default


def slopes(n_head: int) -> np.ndarray:
    """llama.cpp's lightning-attention slopes per head, float32 as its input setter makes them."""
    f = np.float32
    start = f(np.power(f(2), -np.power(f(2), -(np.log2(f(n_head)) - f(3)))))
    return np.array([f(start * np.power(start, f(h))) for h in range(n_head)], np.float32)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "minimax-01")
    sizes = read_sizes(md)
    n, n_layers, nh, hd = sizes.n_embd, sizes.n_layers, sizes.n_heads, sizes.head_dim
    if n_layers < 2:
        raise CompileError(f"{md.path}: minimax-01 needs 2 layers or more (its slope scale divides by n_layer - 1)")
    if md.is_list("attention.recurrent_layers"):
        flags = md.flags("attention.recurrent_layers", n_layers)
        recurrent = [i for i in range(n_layers) if i < len(flags) and flags[i]]
    else:
        interval = md.int("full_attention_interval", 1, n_layers, default=FULL_ATTENTION_INTERVAL)
        recurrent = [i for i in range(n_layers) if (i + 1) % interval != 0]
    full = [i for i in range(n_layers) if i not in recurrent]
    residual_scale = float(np.float32(md.float("residual_scale", -1e6, 1e6)))
    rope = read_rope(md, sizes, "neox")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    count, used, n_ff, groups, groups_used = read_experts_of(md, n_ff=md.int("feed_forward_length", 1, 1 << 20),
                                                             expert_ff=False)  # fmt: skip
    e = Experts(count, used, n_ff, gating="softmax", norm=True, scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used)  # fmt: skip
    for key in ("expert_gating_func", "expert_weights_norm"):
        md.ignored(key, "minimax-01's graph fixes softmax routing with renormalized weights")
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    declare_expert_buffers(b, n, e)
    b.buffer("hn", "T", n)
    if recurrent:
        for name, width in (("lqkv", 3 * nh * hd), ("la", nh * hd), ("lg", nh * hd)):
            b.buffer(name, "T", width)
    base = slopes(nh)

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("hn",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        if i in recurrent:
            scale = np.float32(1.0 - 1.0 * i / (n_layers - 1) + 1e-5)
            _lightning(b, i, sizes, [(float(np.float32(s * scale)), 1) for s in base], eps)
        else:
            cfg = Attention(rope, scale=1.0 / math.sqrt(hd))
            attention(b, i, sizes, eps, cfg, src="hn", out_bias=False, layer=full.index(i))
        _residual(b, residual_scale)
        b.op("rmsnorm", ("x",), ("hn",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        moe_block(b, i, sizes, e, src="hn", residual=None)
        _residual(b, residual_scale, out="moe_out")
    tied = output_head(b, sizes, eps, bias=False)
    extra = {"recurrent_layers": recurrent, "residual_scale": residual_scale} | e.hparams()
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has(f"blk.{full[0]}.attn_q.bias")
                 if full else False, rope_freq_factors=False, extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(full), n_kv_heads=sizes.n_kv_heads, head_dim=hd, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _residual(b: ModelBuilder, residual_scale: float, out: str = "h") -> None:
    """x = out + hn x residual_scale: the sublayer's output plus its normed input, scaled."""
    b.op("scale", ("hn",), ("x",), factor=residual_scale)
    b.op("add", (out, "x"), ("x",))


def _lightning(b: ModelBuilder, i: int, sizes, decays: list, eps: float) -> None:
    """h = attn_output(attn_norm_2(lightning(silu(attn_qkv hn))) * sigmoid(attn_gate hn))."""
    p, n, nh, hd = f"blk.{i}.", sizes.n_embd, sizes.n_heads, sizes.head_dim
    b.unused(p + "attn_qkv.scale", UNUSED_SCALE)
    b.op("matmul", ("hn",), ("lqkv",), (b.tensor(p + "attn_qkv.weight", "attn_qkv", (3 * nh * hd, n)),))
    b.op("swiglu", ("lqkv", "lqkv"), ("lqkv",), activation="sigmoid")  # silu(x) = x * sigmoid(x)
    decay = b.filled(p + "lightning_decay", "lightning_decay", (nh,), decays)
    b.op("lightning_attention", ("lqkv",), ("la",), (decay,), state=b.state(i, (nh, hd, hd)), n_heads=nh, head_dim=hd)
    b.op("rmsnorm", ("la",), ("la",), (b.tensor(p + "attn_norm_2.weight", "attn_norm_2", (nh * hd,)),), eps=eps)
    b.unused(p + "attn_gate.scale", UNUSED_SCALE)
    b.op("matmul", ("hn",), ("lg",), (b.tensor(p + "attn_gate.weight", "attn_gate", (nh * hd, n)),))
    b.op("swiglu", ("lg", "la"), ("la",), activation="sigmoid")
    b.unused(p + "attn_output.scale", UNUSED_SCALE)
    b.op("matmul", ("la",), ("h",), (b.tensor(p + "attn_output.weight", "attn_output", (n, nh * hd)),))
