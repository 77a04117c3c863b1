"""`deci` (NVIDIA Llama-3.1/3.3-Nemotron Super 49B, Ultra 253B, Nemotron-51B: DeciLM's
neural-architecture-searched Llama), as llama.cpp's src/models/deci.cpp builds it: llama's block
(adjacent-pair RoPE over whole heads with `rope_freqs` or LongRoPE factors, RMS norms, SwiGLU)
where every layer has its own head count, KV head count and FFN width (per-layer arrays), and some
layers drop a sublayer:

    head_count 0:                    no attention (x passes through)
    head_count > 0, head_count_kv 0: "linear attention": x += attn_output(attn_norm x), a plain matmul
    feed_forward_length 0:           no FFN

Q/K/V biases and weight scales where present (build_qkv), `attn_output`'s bias and scale on
attention layers (build_attn; the linear attention's matmul takes neither), FFN biases where present
and no FFN weight scales (its graph passes none); `output.weight`, else tied. The KV cache row is the
widest layer's; layers without KV write none. llama.cpp skips the rest of a layer without an FFN,
dropping that layer's attention output too: a layer with attention and no FFN is refused rather
than computed either way."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Sizes, attention, glu_ffn, hparams, kv_spec, output_head, read_rope,
    rope_factors,
)  # fmt: skip
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

UNAPPLIED = "llama.cpp's deci graph does not apply it on a linear-attention layer"


def _layers(md: Metadata) -> tuple[Sizes, tuple[Sizes, ...], tuple[int, ...]]:
    """(the model's sizes: those of the layer with the widest KV row, each layer's sizes, each
    layer's FFN width), the counts bounded before anything is sized."""
    model = md.model
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    heads = md.per_layer("attention.head_count", n_layers, 0, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, 0, MAX_HEADS, default=list(heads))
    n_ff = md.per_layer("feed_forward_length", n_layers, 0, MAX_FF)
    first = next((h for h in heads if h), 0)
    if not first:
        raise CompileError(f"{md.path}: no layer has attention heads")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // heads[0] if heads[0] else 1))
    if md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim) != head_dim:
        raise CompileError(f"{md.path}: attention.value_length != key_length is not supported")
    embd = model.tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2 or not 1 <= embd.shape[0] <= MAX_VOCAB:
        raise CompileError(f"{md.path}: token_embd.weight is missing or not [vocab <= {MAX_VOCAB}, n_embd]")
    layers = []
    for i in range(n_layers):
        if kv_heads[i] and heads[i] % kv_heads[i]:
            raise CompileError(f"{md.path}: layer {i}'s head_count {heads[i]} is not a multiple of its KV heads")
        if heads[i] and not n_ff[i]:
            raise CompileError(f"{md.path}: layer {i} has attention and no FFN: llama.cpp drops such a layer's "
                               "attention output; refused rather than computed either way")  # fmt: skip
        layers.append(Sizes(n_embd, n_layers, heads[i], kv_heads[i], head_dim, embd.shape[0]))
    widest = max((ls for ls in layers if ls.n_kv_heads), key=lambda ls: ls.kv_width, default=None)
    if widest is None:
        raise CompileError(f"{md.path}: no layer has KV heads (a plan needs at least one attention layer)")
    return widest, tuple(layers), n_ff


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "deci")
    sizes, layers, n_ffs = _layers(md)
    rope = read_rope(md, sizes, "adjacent")
    if rope.n_rot != sizes.head_dim:  # llama.cpp asserts n_embd_head == n_rot
        raise CompileError(f"{md.path}: rope.dimension_count {rope.n_rot} != head_dim {sizes.head_dim}")
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    n = sizes.n_embd
    b.buffer("tokens", "T", dtype="i32")
    b.buffer("x", "T", n)
    b.buffer("h", "T", n)
    if any(ls.n_heads and not ls.n_kv_heads for ls in layers):
        b.buffer("lin", "T", n)  # the linear attention's output
    for name, width in (("xr", n), ("hr", n), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    sfx = {}
    for ls in layers:  # q/k/v/att per head geometry
        g = (ls.n_heads, ls.n_kv_heads)
        if ls.n_kv_heads and g not in sfx:
            sfx[g] = "_{}x{}".format(*g)
            for name, width in (("q", ls.q_width), ("k", ls.kv_width), ("v", ls.kv_width), ("att", ls.q_width)):
                b.buffer(name + sfx[g], "T", width)
    for width in sorted({f for f in n_ffs if f}):  # gate/up per FFN width
        b.buffer(f"gate_{width}", "T", width)
        b.buffer(f"up_{width}", "T", width)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n))
    long_short = rope.scaling_type == "longrope"
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=long_short)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i, ls in enumerate(layers):
        p = f"blk.{i}."
        if ls.n_heads:
            b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
            if ls.n_kv_heads:
                cfg = Attention(rope, scale=1.0 / math.sqrt(ls.head_dim), factors=factors)
                attention(b, i, ls, eps, cfg, sfx=sfx[(ls.n_heads, ls.n_kv_heads)])
            else:  # linear attention: build_lora_mm(wo, cur), no bias or scale
                b.unused(p + "attn_output.bias", UNAPPLIED)
                b.unused(p + "attn_output.scale", UNAPPLIED)
                b.op("matmul", ("h",), ("lin",), (b.tensor(p + "attn_output.weight", "attn_output", (n, n)),))
                b.op("add", ("x", "lin"), ("x",))
            if ls.n_kv_heads:
                b.op("add", ("x", "h"), ("x",))
        if n_ffs[i]:
            b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
            glu_ffn(b, i, n, n_ffs[i], bias=True, scale=False, bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"))
            b.op("add", ("x", "h"), ("x",))
        else:
            for name in ("ffn_gate", "ffn_up", "ffn_down"):
                b.unused(f"{p}{name}.scale", UNUSED_SCALE)
    tied = output_head(b, sizes, eps, bias=False)
    extra = {"head_count": [ls.n_heads for ls in layers], "head_count_kv": [ls.n_kv_heads for ls in layers],
             "feed_forward_length": list(n_ffs)}  # fmt: skip
    hp = hparams(md, sizes, rope, max(n_ffs), eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
