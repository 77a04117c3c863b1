"""`command-r` (Cohere Command R, 35B) and `cohere2` (Command R7B, Command A), as llama.cpp's
src/models/command-r.cpp and cohere2.cpp build them: parallel blocks, x += attention(h) + FFN(h)
with h = LayerNorm(x) × `attn_norm` (no bias: llama.cpp's LLM_NORM, compiler/arch/layernorm.py);
GQA attention with adjacent-pair RoPE (llama.cpp's rope type NORM) over `rope.dimension_count`,
scores × 1/√head_dim, Q/K/V biases where the file has them; a SwiGLU FFN; the final norm a
LayerNorm too; the output always the token embedding (both loaders tie it and read no
`output.weight`), the logits × `logit_scale` (command-r: optional, 0 none; cohere2: required).

cohere2 adds sliding-window attention (`attention.sliding_window`, required) on the layers
`attention.sliding_window_pattern` marks (flags, or a period n, default 4: layers i % n < n - 1):
only those rotate Q and K (with `rope_freqs` factors where the file has them); the other
layers attend over the whole context without positions (NoPE). `rope.freq_base_swa` is read by
llama.cpp's loader and not used by its graph: the sliding layers turn at `rope.freq_base`.

command-r from 64 layers on (Command R+): Q and K LayerNormed per head before RoPE (`attn_q_norm`
[heads, head_dim], `attn_k_norm` [kv heads, head_dim]: a weight per head and value), as its loader
requires them there (layernorm.head_layer_norm); in a smaller model llama.cpp does not load them,
so a file with them is refused, as llama.cpp refuses it.
"""

import math

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Sizes, attention, glu_ffn, hparams, kv_spec, linear, qkv_projections, read_rope, read_sizes,
    rope_factors,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


QK_NORM_LAYERS = 64  # llama.cpp's command-r loader: Q/K norms from this many layers on


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "command-r")


def build_cohere2(model: GGUFModel) -> ModelSpec:
    return _build(model, "cohere2")


def _build(model: GGUFModel, arch: str) -> ModelSpec:
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "adjacent")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    if arch == "cohere2":
        logit_scale = md.float("logit_scale", 0.0, 1e6, open_lo=True)
        window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
        local = sliding_window_layers(md, sizes.n_layers, 4)
    else:
        logit_scale = md.float("logit_scale", 0.0, 1e6, default=0.0)
        window, local = None, (False,) * sizes.n_layers
    b = ModelBuilder(model)
    head_norms = arch == "command-r" and sizes.n_layers >= QK_NORM_LAYERS  # Command R+
    if arch == "command-r" and not head_norms and b.has("blk.0.attn_q_norm.weight"):
        raise CompileError(f"{b.path}: blk.0.attn_q_norm.weight in a command-r of {sizes.n_layers} layers (llama.cpp "
                           f"reads Q/K norms from {QK_NORM_LAYERS} layers on and refuses this file)")  # fmt: skip
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (
        ("x", sizes.n_embd),
        ("h", sizes.n_embd),
        ("a", sizes.n_embd),
        ("q", sizes.q_width),
        ("k", sizes.kv_width),
        ("v", sizes.kv_width),
        ("att", sizes.q_width),
        ("gate", n_ff),
        ("up", n_ff),
    ):
        b.buffer(name, "T", width)
    for name, width in (("xr", sizes.n_embd), ("hr", sizes.n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    layernorm.declare(b, sizes.n_embd, "T")
    layernorm.declare(b, sizes.n_embd, "R")
    if head_norms:
        layernorm.declare_heads(b, "q", sizes.n_heads, sizes.head_dim)
        layernorm.declare_heads(b, "k", sizes.n_kv_heads, sizes.head_dim)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = (
        rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=False) if arch == "cohere2" else None
    )
    global_cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    local_cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), window=window, factors=factors)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        norm = b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,))
        layernorm.layer_norm(b, "x", "h", sizes.n_embd, eps, norm)
        # cohere2: only the sliding-window layers have positions; command-r: every layer
        use_rope = local[i] or arch == "command-r"
        if head_norms:
            _attention_head_norms(b, i, sizes, eps, global_cfg)
        else:
            attention(b, i, sizes, eps, local_cfg if local[i] else global_cfg, src="h", dst="a", rope=use_rope)
        # build_ffn: no biases; the weight scales on cohere2 only (command-r passes none)
        glu_ffn(b, i, sizes.n_embd, n_ff, src="h", dst="h", bias=False, scale=arch == "cohere2")
        b.op("add", ("x", "h"), ("x",))
        b.op("add", ("x", "a"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    layernorm.layer_norm(
        b, "xr", "hr", sizes.n_embd, eps, b.tensor("output_norm.weight", "output_norm", (sizes.n_embd,)), rows="R"
    )
    b.op("matmul", ("hr",), ("logits",), (embd,))
    if logit_scale:
        b.op("scale", ("logits",), ("logits",), factor=logit_scale)
    extra = {"logit_scale": logit_scale, "norm": "layernorm", "parallel_blocks": True}
    if window:
        extra.update(sliding_window=window, sliding_window_layers=[i for i, on in enumerate(local) if on])
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=True, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))


def _attention_head_norms(b: ModelBuilder, i: int, sizes: Sizes, eps: float, cfg: Attention) -> None:
    """a = attn_output(attention(...)) of layer i from h, Q and K LayerNormed per head before RoPE."""
    p = f"blk.{i}."
    qkv_projections(b, p, sizes, "h")
    qn = b.flat(p + "attn_q_norm.weight", "attn_q_norm", (sizes.n_heads, sizes.head_dim))
    kn = b.flat(p + "attn_k_norm.weight", "attn_k_norm", (sizes.n_kv_heads, sizes.head_dim))
    layernorm.head_layer_norm(b, "q", sizes.n_heads, sizes.head_dim, eps, qn)
    layernorm.head_layer_norm(b, "k", sizes.n_kv_heads, sizes.head_dim, eps, kn)
    b.op("rope", ("q", "k"), ("q", "k"), **cfg.rope.attrs(sizes))
    b.op("kv_write", ("k", "v"), (), layer=i)
    b.op("attention", ("q",), ("att",), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale)  # fmt: skip
    linear(b, "att", "a", p + "attn_output", (sizes.n_embd, sizes.q_width))
