"""Pieces most decoder-only recipes share: the llama-style hyperparameters, as llama.cpp reads
them (src/llama-model.cpp), and the pre-norm transformer block.

A recipe that differs in a detail passes options (rope style, biases); one that differs in
structure writes its own block with the same builder.
"""

import math
from dataclasses import dataclass

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.metadata import (
    MAX_CONTEXT, MAX_EMBD, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, Metadata,
)  # fmt: skip
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import HParams, ModelSpec

ROPE_SCALING_TYPES = ("none", "linear")


@dataclass(frozen=True)
class Sizes:
    n_embd: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim


def read_sizes(md: Metadata) -> Sizes:
    model = md.model
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    # Every layer has tensors of its own: a file cannot hold more layers than tensors.
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    n_heads = md.int("attention.head_count", 1, MAX_HEADS)
    n_kv_heads = md.int("attention.head_count_kv", 1, n_heads, default=n_heads)
    if n_heads % n_kv_heads:
        raise CompileError(f"{md.path}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // n_heads))
    value_dim = md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim)
    if value_dim != head_dim:
        raise CompileError(f"{md.path}: attention.value_length {value_dim} != key_length {head_dim} is not supported")
    embd = model.tensors.get("token_embd.weight")
    if embd is None:
        raise CompileError(f"{md.path}: missing tensor token_embd.weight")
    if len(embd.shape) != 2 or not 1 <= embd.shape[0] <= MAX_VOCAB:
        raise CompileError(f"{md.path}: token_embd.weight has shape {list(embd.shape)}, not [vocab <= {MAX_VOCAB}, n_embd]")
    vocab_size = embd.shape[0]
    declared = md.int("vocab_size", 1, MAX_VOCAB, default=vocab_size)
    if declared != vocab_size:
        raise CompileError(f"{md.path}: {md.key('vocab_size')} {declared} != token_embd rows {vocab_size}")
    return Sizes(n_embd, n_layers, n_heads, n_kv_heads, head_dim, vocab_size)


@dataclass(frozen=True)
class Rope:
    n_rot: int
    style: str  # "adjacent" (GGML rope mode 0) or "neox" (mode 2)
    freq_base: float
    freq_scale: float
    scaling_type: str

    def attrs(self, sizes: Sizes) -> dict:
        return {
            "n_heads": sizes.n_heads, "n_kv_heads": sizes.n_kv_heads, "head_dim": sizes.head_dim,
            "n_rot": self.n_rot, "style": self.style, "freq_base": self.freq_base, "freq_scale": self.freq_scale,
        }  # fmt: skip


def read_rope(md: Metadata, sizes: Sizes, style: str, default_base: float = 10000.0) -> Rope:
    n_rot = md.int("rope.dimension_count", 2, sizes.head_dim, default=sizes.head_dim)
    if n_rot % 2:
        raise CompileError(f"{md.path}: rope.dimension_count {n_rot} must be even")
    scaling = md.choice("rope.scaling.type", ROPE_SCALING_TYPES, default="none")
    freq_scale = 1.0
    if scaling == "linear":
        freq_scale = 1.0 / md.float("rope.scaling.factor", 0.0, 1e6, default=1.0, open_lo=True)
    base = md.float("rope.freq_base", 0.0, 1e12, default=default_base, open_lo=True)
    return Rope(n_rot, style, base, freq_scale, scaling)


def hparams(md: Metadata, sizes: Sizes, rope: Rope, n_ff: int, rms_eps: float, **flags) -> HParams:
    return HParams(
        architecture=md.arch,
        name=md.text("general.name", default=md.model.path.stem),
        context_length=md.int("context_length", 1, MAX_CONTEXT),
        n_embd=sizes.n_embd,
        n_ff=n_ff,
        n_layers=sizes.n_layers,
        n_heads=sizes.n_heads,
        n_kv_heads=sizes.n_kv_heads,
        head_dim=sizes.head_dim,
        n_rot=rope.n_rot,
        rope_style=rope.style,
        rope_freq_base=rope.freq_base,
        rope_freq_scale=rope.freq_scale,
        rope_scaling_type=rope.scaling_type,
        rms_eps=rms_eps,
        vocab_size=sizes.vocab_size,
        **flags,
    )


def llama_like(model: GGUFModel, arch: str, rope_style: str, qkv_bias: bool) -> ModelSpec:
    """llama and its close relatives: pre-norm blocks of GQA attention with rotary positions
    and a SwiGLU FFN, RMS norms, optional Q/K/V biases, optional tied output."""
    md = Metadata(model, arch)
    s = read_sizes(md)
    rope = read_rope(md, s, rope_style)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    e, q, kv = s.n_embd, s.q_width, s.kv_width
    has_bias = qkv_bias or b.has("blk.0.attn_q.bias")
    tied = not b.has("output.weight")

    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", e), ("h", e), ("q", q), ("k", kv), ("v", kv), ("att", q), ("gate", n_ff), ("up", n_ff)):
        b.buffer(name, "T", width)
    b.buffer("xr", "R", e)
    b.buffer("hr", "R", e)
    b.buffer("logits", "R", s.vocab_size)

    embd = b.tensor("token_embd.weight", "token_embd", (s.vocab_size, e))
    factors = b.optional_tensor("rope_freqs.weight", "rope_freqs", (rope.n_rot // 2,))
    b.op("embed", ("tokens",), ("x",), (embd,))
    attn = {"n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads, "head_dim": s.head_dim, "scale": 1.0 / math.sqrt(s.head_dim)}
    for i in range(s.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (e,)),), eps=eps)
        for proj, width in (("q", q), ("k", kv), ("v", kv)):
            b.op("matmul", ("h",), (proj,), (b.tensor(f"{p}attn_{proj}.weight", f"attn_{proj}", (width, e)),))
            if has_bias:
                b.op("add_bias", (proj,), (proj,), (b.tensor(f"{p}attn_{proj}.bias", f"attn_{proj}_bias", (width,)),))
        b.op("rope", ("q", "k"), ("q", "k"), (factors,) if factors else (), **rope.attrs(s))
        b.op("kv_write", ("k", "v"), (), layer=i)
        b.op("attention", ("q",), ("att",), layer=i, **attn)
        b.op("matmul", ("att",), ("h",), (b.tensor(p + "attn_output.weight", "attn_output", (e, q)),))
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (e,)),), eps=eps)
        b.op("matmul", ("h",), ("gate",), (b.tensor(p + "ffn_gate.weight", "ffn_gate", (n_ff, e)),))
        b.op("matmul", ("h",), ("up",), (b.tensor(p + "ffn_up.weight", "ffn_up", (n_ff, e)),))
        b.op("swiglu", ("gate", "up"), ("gate",))
        b.op("matmul", ("gate",), ("h",), (b.tensor(p + "ffn_down.weight", "ffn_down", (e, n_ff)),))
        b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", (e,)),), eps=eps)
    lm_head = embd if tied else b.tensor("output.weight", "output", (s.vocab_size, e))
    b.op("matmul", ("hr",), ("logits",), (lm_head,))
    hp = hparams(md, s, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=has_bias, rope_freq_factors=factors is not None)
    kv_spec = KVSpec(n_layers=s.n_layers, n_kv_heads=s.n_kv_heads, head_dim=s.head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec)
