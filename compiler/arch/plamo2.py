"""`plamo2` (Preferred Networks PLaMo 2: 1B, 2B, 8B), as llama.cpp 0.3.36 builds it
(src/models/plamo2.cpp): a hybrid of Mamba layers (the layers whose `attention.head_count_kv` entry
is 0) and attention layers, every layer sandwiched:

    x += post_attention_norm(mixer(attn_norm(x)))
    x += post_ffw_norm(ffn_down(swiglu(ffn_up(ffn_norm(x)))))       (ffn_up: gate rows, then up rows)

- Mamba (Mamba2's scan with one group): `ssm_in` gives per head its z rows then its x rows
  (interleaved per head: split at compile time); x through the causal conv of `ssm.conv_kernel`
  taps + SiLU (`ssm_conv1d`); `ssm_x` of it gives B (`ssm.state_size`), C, and a dt input of
  max(64, n_embd / 16), each RMS-normed by its own weight (`ssm_b_norm`, `ssm_c_norm`,
  `ssm_dt_norm`); dt = `ssm_dt` of it (one per head, `ssm.time_step_rank` heads), its bias and the
  softplus inside the scan (`ssm_dt.bias`); the scan with `ssm_a` and `ssm_d` per head; y x SiLU(z);
  `ssm_out`. `ssm.group_count` must be 0 (llama.cpp asserts it).
- Attention: the fused `attn_qkv` (each layer its own head counts; values may be narrower than the
  keys), Q and K RMS-normed per head by weights of their own per head (`attn_q_norm` [heads,
  key_length]) before NeoX RoPE, scores x 1/sqrt(value_length) (llama.cpp's), `attn_output`.
- Weight scales: only attn_output's and output's are applied (the graph passes no other); no biases.
  `output.weight`, else the tied embedding.

State per sequence and Mamba layer: (kernel - 1) x d_inner + d_inner x state_size floats (the
fixture: 3 x 512 + 512 x 128 floats = 262 KiB); the KV cache holds the attention layers only.
"""

import math

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Sizes, glu_ffn, hparams, linear, narrow, output_head, qkv_weights, read_rope,
)  # fmt: skip
from rfc.compiler.arch.layer_shapes import read_layer_shapes
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_HEADS, Metadata
from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_SSM_STATE
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "plamo2")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=True, narrow_values=True)
    n, n_layers = sizes.n_embd, sizes.n_layers
    mamba = [i for i in range(n_layers) if layers[i].n_kv_heads == 0]
    attn = [i for i in range(n_layers) if layers[i].n_kv_heads]
    if any(not f for f in n_ffs):
        raise CompileError(f"{md.path}: every plamo2 layer has an FFN (feed_forward_length 0 in a layer)")
    rope = read_rope(md, sizes, "neox")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name in ("x", "h"):
        b.buffer(name, "T", n)
    geometries = {}
    for i in attn:
        ls = layers[i]
        g = (ls.n_heads, ls.n_kv_heads)
        if g not in geometries:
            geometries[g] = sfx = "_{}x{}".format(*g)
            for name, width in (("q", ls.q_width), ("k", ls.kv_width), ("v", ls.kv_width), ("att", ls.q_width)):
                b.buffer(name + sfx, "T", width)
    if mamba:
        d_inner = md.int("ssm.inner_size", 1, MAX_EMBD * 4)
        n_state = md.int("ssm.state_size", 1, MAX_SSM_STATE)
        kernel = md.int("ssm.conv_kernel", 2, MAX_CONV_KERNEL)
        heads = md.int("ssm.time_step_rank", 1, MAX_HEADS)
        if md.int("ssm.group_count", 0, MAX_HEADS, default=0) != 0:
            raise CompileError(f"{md.path}: {md.key('ssm.group_count')} must be 0 (llama.cpp asserts it)")
        if d_inner % heads:
            raise CompileError(f"{md.path}: ssm.inner_size {d_inner} is not a multiple of time_step_rank {heads}")
        dt_dim = max(64, n // 16)
        for name, width in (("z", d_inner), ("xs", d_inner), ("conv", d_inner), ("bm", n_state), ("cm", n_state),
                            ("dtin", dt_dim), ("dt", heads), ("xb", d_inner + n_state),
                            ("xbc", d_inner + 2 * n_state), ("y", d_inner)):  # fmt: skip
            b.buffer(name, "T", width)
    for width in sorted(set(n_ffs)):
        b.buffer(f"gate_{width}", "T", width)
        b.buffer(f"up_{width}", "T", width)
    for name, width in (("xr", n), ("hr", n), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    for i in range(n_layers):
        p, ls = f"blk.{i}.", layers[i]
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        if i in mamba:
            _mamba(b, i, n, d_inner, n_state, kernel, heads, dt_dim, eps)
        else:
            _attention(b, i, ls, eps, rope, geometries[(ls.n_heads, ls.n_kv_heads)], attn.index(i))
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm", "post_attention_norm", (n,)),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        f = n_ffs[i]  # ggml_swiglu of ffn_up's rows: the first half gates the second
        glu_ffn(b, i, n, f, fused_gate_up=True, bias=False, scale=False, bufs=(f"gate_{f}", f"up_{f}"))
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm", "post_ffw_norm", (n,)),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, bias=False)
    extra = {"mamba_layers": mamba}
    if mamba:
        extra |= {"ssm_inner_size": d_inner, "ssm_state_size": n_state, "ssm_conv_kernel": kernel, "ssm_heads": heads}
    hp = hparams(md, sizes, rope, max(n_ffs), eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(attn), n_kv_heads=sizes.n_kv_heads, head_dim=sizes.head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _mamba(
    b: ModelBuilder, i: int, n: int, d_inner: int, n_state: int, kernel: int, heads: int, dt_dim: int, eps: float
) -> None:
    """h = ssm_out(scan(conv(x), B, C, dt) * silu(z)) for Mamba layer i (the module docstring)."""
    p, hd = f"blk.{i}.", d_inner // heads
    name, shape = p + "ssm_in.weight", (2 * d_inner, n)
    z_rows = [(2 * h * hd, (2 * h + 1) * hd) for h in range(heads)]
    x_rows = [((2 * h + 1) * hd, (2 * h + 2) * hd) for h in range(heads)]
    b.op("matmul", ("h",), ("z",), (b.row_ranges(name + ":z", "ssm_in", name, shape, z_rows),))
    b.op("matmul", ("h",), ("xs",), (b.row_ranges(name + ":x", "ssm_in", name, shape, x_rows),))
    b.unused(p + "ssm_in.scale", UNUSED_SCALE)
    conv = b.tensor(p + "ssm_conv1d.weight", "ssm_conv1d", (d_inner, kernel))
    b.op("ssm_conv", ("xs",), ("conv",), (conv,), state=b.state(i, (kernel - 1, d_inner)))
    name, shape = p + "ssm_x.weight", (2 * n_state + dt_dim, d_inner)
    for buf, lo, hi, norm, width in (("bm", 0, n_state, "ssm_b_norm", n_state),
                                     ("cm", n_state, 2 * n_state, "ssm_c_norm", n_state),
                                     ("dtin", 2 * n_state, 2 * n_state + dt_dim, "ssm_dt_norm", dt_dim)):  # fmt: skip
        b.op("matmul", ("conv",), (buf,), (b.rows(f"{name}:{buf}", "ssm_x", name, shape, lo, hi),))
        b.op("rmsnorm", (buf,), (buf,), (b.tensor(p + norm, norm, (width,)),), eps=eps)
    b.op("matmul", ("dtin",), ("dt",), (b.tensor(p + "ssm_dt.weight", "ssm_dt", (heads, dt_dim)),))
    b.op("concat_heads", ("conv", "bm"), ("xb",), heads=1)
    b.op("concat_heads", ("xb", "cm"), ("xbc",), heads=1)
    weights = (b.tensor(p + "ssm_a", "ssm_a", (heads,)), b.tensor(p + "ssm_d", "ssm_d", (heads,)),
               b.tensor(p + "ssm_dt.bias", "ssm_dt_bias", (heads,)))  # fmt: skip
    b.op("ssm_scan", ("xbc", "dt"), ("y",), weights, state=b.state(i, (heads, hd, n_state)), n_heads=heads,
         head_dim=hd, n_groups=1, state_size=n_state)  # fmt: skip
    b.op("swiglu", ("z", "y"), ("y",))
    b.unused(p + "ssm_out.scale", UNUSED_SCALE)
    b.op("matmul", ("y",), ("h",), (b.tensor(p + "ssm_out.weight", "ssm_out", (n, d_inner)),))


def _attention(b: ModelBuilder, i: int, ls: Sizes, eps: float, rope, sfx: str, kv_layer: int) -> None:
    """h = attn_output(attention of layer i): the fused attn_qkv without scale, Q and K RMS-normed per
    head by weights per head, NeoX RoPE, scores x 1/sqrt(value_length)."""
    p = f"blk.{i}."
    q, k, v = (name + sfx for name in "qkv")
    b.unused(p + "attn_qkv.scale", UNUSED_SCALE)
    for buf, w in zip((q, k, v), qkv_weights(b, p, ls)):
        b.op("matmul", ("h",), (buf,), (w,))
    for buf, name, heads in ((q, "attn_q_norm", ls.n_heads), (k, "attn_k_norm", ls.n_kv_heads)):
        norm = b.flat(f"{p}{name}.weight", name, (heads, ls.head_dim))
        b.op("rmsnorm", (buf,), (buf,), (norm,), eps=eps, heads=heads)
    cfg = Attention(rope, scale=1.0 / math.sqrt(ls.v_head))
    b.op("rope", (q, k), (q, k), **cfg.rope.attrs(ls))
    b.op("kv_write", (k, v), (), layer=kv_layer)
    b.op("attention", (q,), ("att" + sfx,), layer=kv_layer, n_heads=ls.n_heads, n_kv_heads=ls.n_kv_heads,
         head_dim=ls.head_dim, scale=cfg.scale)  # fmt: skip
    att = narrow(b, "att" + sfx, ls)
    linear(b, att, "h", p + "attn_output", (ls.n_embd, ls.att_width), bias=False)
