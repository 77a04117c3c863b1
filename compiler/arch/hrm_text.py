"""`hrm_text` (HRM-Text, DFM Mimir 1B), as llama.cpp's src/models/hrm-text.cpp builds it: a low and a high
stack of `hrm.layers_per_stack` decoder layers (blocks [0, lps) and [lps, 2 lps)) run over the same token
stream in cycles:

    zH = the token embedding (× `embedding_scale` where set), zL = `hrm.z_l_init` [n_embd]
    h_cycles times: l_cycles times zL = low(zH + zL); then zH = high(zH + zL)
    logits = `output`(zH) (its scale where present; `output.weight`, else tied)

Each pass of a stack has cache slots of its own: `block_count` must be lps × h_cycles × (l_cycles + 1),
slot (h (l_cycles + 1) + l) lps + i for the i-th layer of pass l of cycle h (l = l_cycles: the high
stack). A layer: x + attention(rms(x)) with Q/K/V biases, NeoX RoPE, the output × sigmoid(`attn_gate`
rms(x)) value by value before `attn_output`; then x + SwiGLU(rms(x)); every RMS norm without a weight;
a stack ends with one more weightless norm. llama.cpp loads the per-tensor `.scale` of each cache slot
from that slot's own block number, even on the slots that reuse another block's weights: so do these
(Q/K/V and attn_output take them; the gate and the FFN never do)."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Rope, Sizes, glu_ffn, hparams, kv_spec, read_rope, read_sizes, require_whole_heads, weight_scale,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _scaled(b: ModelBuilder, src: str, dst: str, weight: str, shape: tuple[int, int], slot: int, bias: str | None):
    """dst = src · `weight`, times slot `slot`'s `.scale` of that projection, plus `bias` (build_qkv's order)."""
    b.op("matmul", (src,), (dst,), (b.tensor(weight + ".weight", weight.rsplit(".", 1)[-1], shape),))
    factor = weight_scale(b, f"blk.{slot}.{weight.rsplit('.', 1)[-1]}")
    if factor is not None and factor != 1.0:
        b.op("scale", (dst,), (dst,), factor=factor)
    if bias is not None:
        b.op("add_bias", (dst,), (dst,), (bias,))


def _layer(b: ModelBuilder, bid: int, slot: int, sizes: Sizes, eps: float, rope: Rope, n_ff: int) -> None:
    p, e = f"blk.{bid}.", sizes.n_embd
    b.op("rmsnorm", ("x",), ("h",), (), eps=eps)
    for proj, width in (("q", sizes.q_width), ("k", sizes.kv_width), ("v", sizes.kv_width)):
        bias = b.optional_tensor(f"{p}attn_{proj}.bias", f"attn_{proj}_bias", (width,))
        _scaled(b, "h", proj, p + f"attn_{proj}", (width, e), slot, bias)
    b.op("rope", ("q", "k"), ("q", "k"), **rope.attrs(sizes))
    b.op("kv_write", ("k", "v"), (), layer=slot)
    b.op("attention", ("q",), ("att",), layer=slot, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=1.0 / math.sqrt(sizes.head_dim))  # fmt: skip
    b.op("matmul", ("h",), ("attn_gate",), (b.tensor(p + "attn_gate.weight", "attn_gate", (sizes.q_width, e)),))
    b.op("swiglu", ("attn_gate", "att"), ("att",), activation="sigmoid")
    _scaled(b, "att", "h", p + "attn_output", (e, sizes.q_width), slot, None)
    b.op("add", ("x", "h"), ("x",))
    b.op("rmsnorm", ("x",), ("h",), (), eps=eps)
    glu_ffn(b, bid, e, n_ff, bias=False, scale=False)
    b.op("add", ("x", "h"), ("x",))


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "hrm_text")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "hrm_text")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    lps = md.int("hrm.layers_per_stack", 1, MAX_LAYERS)
    h_cycles = md.int("hrm.h_cycles", 1, MAX_LAYERS)
    l_cycles = md.int("hrm.l_cycles", 1, MAX_LAYERS)
    if lps * h_cycles * (l_cycles + 1) != sizes.n_layers:
        raise CompileError(f"{md.path}: block_count {sizes.n_layers} is not layers_per_stack x h_cycles x "
                           f"(l_cycles + 1) = {lps} x {h_cycles} x {l_cycles + 1}")  # fmt: skip
    if md.bool("hrm.prefix_lm", default=False):
        raise CompileError(f"{md.path}: hrm.prefix_lm: a prefix-LM prefill (llama.cpp runs it causally)")
    embedding_scale = md.float("embedding_scale", 0.0, 1e6, default=0.0)
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("zh", sizes.n_embd), ("zl", sizes.n_embd), ("x", sizes.n_embd), ("h", sizes.n_embd),
                        ("q", sizes.q_width), ("k", sizes.kv_width), ("v", sizes.kv_width), ("att", sizes.q_width),
                        ("attn_gate", sizes.q_width), ("gate", n_ff), ("up", n_ff)):  # fmt: skip
        b.buffer(name, "T", width)
    b.buffer("hr", "R", sizes.n_embd)
    b.buffer("logits", "R", sizes.vocab_size)
    for slot in range(sizes.n_layers):  # the gate's and the FFN's scales: loaded per slot, never applied
        for name in ("attn_gate", "ffn_gate", "ffn_up", "ffn_down"):
            b.unused(f"blk.{slot}.{name}.scale", UNUSED_SCALE)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    z_l = b.tensor("hrm.z_l_init", "hrm_z_l_init", (sizes.n_embd,))
    b.op("embed", ("tokens",), ("zh",), (embd,), **({"scale": embedding_scale} if embedding_scale else {}))
    first = True
    for h in range(h_cycles):
        for pass_ in range(l_cycles + 1):
            high = pass_ == l_cycles
            if first:  # zL is still the learned initial state, one vector for every token
                b.op("add_bias", ("zh",), ("x",), (z_l,))
                first = False
            else:
                b.op("add", ("zh", "zl"), ("x",))
            base = (h * (l_cycles + 1) + pass_) * lps
            for i in range(lps):
                _layer(b, (lps if high else 0) + i, base + i, sizes, eps, rope, n_ff)
            b.op("rmsnorm", ("x",), ("zh" if high else "zl",), (), eps=eps)
    b.op("gather_rows", ("zh",), ("hr",))
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), (embd,))
    else:
        factor = weight_scale(b, "output")
        b.op("matmul", ("hr",), ("logits",), (b.tensor("output.weight", "output", (sizes.vocab_size, sizes.n_embd)),))
        if factor is not None and factor != 1.0:
            b.op("scale", ("logits",), ("logits",), factor=factor)
    extra = {"hrm_layers_per_stack": lps, "hrm_h_cycles": h_cycles, "hrm_l_cycles": l_cycles}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
