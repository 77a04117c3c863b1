"""`minicpm3` (MiniCPM3-4B), as llama.cpp 0.3.36 builds it (src/models/minicpm3.cpp):
- latent attention without absorption: Q through the q_lora_rank bottleneck (`attn_q_a`, RMS norm
  `attn_q_a_norm`, `attn_q_b`), each head [nope, rope] (`attention.key_length` = nope +
  `rope.dimension_count`); `attn_kv_a_mqa` makes one latent (kv_lora_rank, RMS-normed by
  `attn_kv_a_norm`) and one rope key per token; the combined `attn_kv_b` [heads x (nope + v),
  kv_lora] turns the latent into each head's nope key and its value (`attention.value_length`).
  Each head's key is [its nope key, the shared rope key], so the KV cache holds per-head keys and
  values, as llama.cpp's does; values narrower than the keys (MiniCPM3-4B's config gives keys of 96
  and values of 64) are zero-padded to the key's head size in the cache (Sizes.v_dim), 1.5x llama.cpp's V bytes.
  NeoX RoPE on the rope parts only (the last rope.dimension_count of each query head, and the rope
  key), with LongRoPE's `rope_factors_long` / `_short`: the bundle serves the file's context, which
  picks one (common.rope_factors). Scores x 1/sqrt(key_length).
- llama.cpp's fixed multipliers (the file's keys are not read): the embedding x 12, each
  sublayer's output x 1.4 / sqrt(block_count) before its residual add, the final norm's output x
  256 / n_embd before `output` (else the tied embedding).
- a SwiGLU FFN; build_ffn is passed no weight scales (known and unused), attn_output's and
  output's `.scale` are applied (build_attn, build_lora_mm).

`plm` (PLM-1.8B, src/models/plm.cpp): the same attention with Q straight from `attn_q` (no
q_lora bottleneck), adjacent-pair RoPE (llama.cpp's NORM) without factors, no multipliers, the FFN
ffn_down(relu(ffn_up h)^2) (no gate, no scales), the output always the token embedding.

The absorbed form (deepseek2's: one latent KV head) would need attn_kv_b's key rows transposed,
which a quantized block layout does not allow without requantizing.
"""

import math
from dataclasses import dataclass

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Sizes, embedding_rows, f32, glu_ffn, hparams, linear, narrow, read_rope, rope_factors,
    ungated_ffn,
)  # fmt: skip
from rfc.compiler.arch.deepseek2 import MAX_LORA_RANK
from rfc.compiler.arch.metadata import (
    MAX_CONTEXT, MAX_EMBD, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, Metadata,
)  # fmt: skip
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec
from rfc.artifacts.plan import KVSpec

EMBD_SCALE, DEPTH_SCALE, EMBD_BASE = 12.0, 1.4, 256  # minicpm3.cpp's constants


@dataclass(frozen=True)
class Variant:
    q_lora: bool  # Q through attn_q_a / attn_q_a_norm / attn_q_b (minicpm3), else attn_q (plm)
    rope_style: str
    multipliers: bool  # minicpm3's embedding, residual and logit multipliers, its LongRoPE factors, a SwiGLU FFN
    ffn: str  # "swiglu" or "relu_sqr"


MINICPM3 = Variant(q_lora=True, rope_style="neox", multipliers=True, ffn="swiglu")
PLM = Variant(q_lora=False, rope_style="adjacent", multipliers=False, ffn="relu_sqr")


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "minicpm3", MINICPM3)


def build_plm(model: GGUFModel) -> ModelSpec:
    return _build(model, "plm", PLM)


def _build(model: GGUFModel, arch: str, v: Variant) -> ModelSpec:
    md = Metadata(model, arch)
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    nh = md.int("attention.head_count", 1, MAX_HEADS)
    md.int("attention.head_count_kv", 1, MAX_HEADS, default=nh)  # per-head keys and values: one per query head
    head = md.int("attention.key_length", 2, MAX_HEAD_DIM, default=max(2, n_embd // nh))
    v_dim = md.int("attention.value_length", 1, head, default=head)
    q_lora = md.int("attention.q_lora_rank", 1, MAX_LORA_RANK) if v.q_lora else 0
    kv_lora = md.int("attention.kv_lora_rank", 1, MAX_LORA_RANK)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    sizes = Sizes(n_embd, n_layers, nh, nh, head, embedding_rows(md), v_dim=v_dim)
    rope = read_rope(md, sizes, v.rope_style)
    rot = rope.n_rot
    nope = head - rot
    if rot % 2:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {rot} must be even")
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    scale_res = f32(DEPTH_SCALE / math.sqrt(n_layers)) if v.multipliers else None

    b = ModelBuilder(model)
    factors = rope_factors(b, rope, n_ctx, long_short=True) if v.multipliers else None
    b.buffer("tokens", "T", dtype="i32")
    widths = {"x": n_embd, "h": n_embd, "q_a": q_lora, "latent": kv_lora, "v": nh * head, "att": nh * head,
              "q_pe": nh * rot, "k_pe": nh * rot}  # fmt: skip
    if not q_lora:  # plm: Q straight from attn_q
        del widths["q_a"]
    if nope:
        widths |= {"q_nope": nh * nope, "k_nope": nh * nope, "q": nh * head, "k": nh * head}
    for name, width in widths.items():
        b.buffer(name, "T", width)
    if v.ffn == "swiglu":
        b.buffer("gate", "T", n_ff)
    b.buffer("up", "T", n_ff)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("hs", n_embd), ("logits", sizes.vocab_size)):
        if name != "hs" or v.multipliers:  # hs: the final norm's output x 256 / n_embd (minicpm3)
            b.buffer(name, "R", width)

    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,), **({"scale": EMBD_SCALE} if v.multipliers else {}))
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n_embd,)),), eps=eps)
        _attention(b, i, sizes, rope, factors, eps, q_lora, kv_lora, nope)
        if scale_res is not None:
            b.op("scale", ("h",), ("h",), factor=scale_res)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n_embd,)),), eps=eps)
        if v.ffn == "swiglu":
            glu_ffn(b, i, n_embd, n_ff, bias=False, scale=False)  # build_ffn: no weight scales passed
        else:
            ungated_ffn(b, i, n_embd, n_ff, v.ffn, bias=False)
        if scale_res is not None:
            b.op("scale", ("h",), ("h",), factor=scale_res)
        b.op("add", ("x", "h"), ("x",))

    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", (n_embd,)),), eps=eps)
    lm_in = "hr"
    if v.multipliers:
        b.op("scale", ("hr",), ("hs",), factor=f32(EMBD_BASE / n_embd))
        lm_in = "hs"
    tied = not v.multipliers or not b.has("output.weight")  # plm: always the embedding (a file's output refused)
    if tied:
        b.op("matmul", (lm_in,), ("logits",), ("token_embd.weight",))
    else:
        linear(b, lm_in, "logits", "output", (sizes.vocab_size, n_embd), bias=False)
    extra = ({"q_lora_rank": q_lora} if q_lora else {}) | {"kv_lora_rank": kv_lora, "value_length": v_dim}
    if scale_res is not None:
        extra["residual_scale"] = scale_res
    hp = hparams(
        md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=factors is not None,
        extra=extra,
    )  # fmt: skip
    return b.finish(
        hp,
        input_tokens="tokens",
        output_logits="logits",
        output_hidden="hr",
        kv=KVSpec(n_layers=n_layers, n_kv_heads=nh, head_dim=head, dtype="f16"),
    )


def _attention(
    b: ModelBuilder, i: int, sizes: Sizes, rope, factors: str | None, eps: float, q_lora: int, kv_lora: int, nope: int
) -> None:
    """h = attn_output(attention(h)) for layer i (the module docstring)."""
    p, e, nh, head, vd, rot = f"blk.{i}.", sizes.n_embd, sizes.n_heads, sizes.head_dim, sizes.v_head, rope.n_rot
    if q_lora:
        b.op("matmul", ("h",), ("q_a",), (b.tensor(p + "attn_q_a.weight", "attn_q_a", (q_lora, e)),))
        norm = b.tensor(p + "attn_q_a_norm.weight", "attn_q_a_norm", (q_lora,))
        b.op("rmsnorm", ("q_a",), ("q_a",), (norm,), eps=eps)
        q_src, q_name, q_shape = "q_a", p + "attn_q_b.weight", (nh * head, q_lora)
    else:
        q_src, q_name, q_shape = "h", p + "attn_q.weight", (nh * head, e)
        # llama.cpp's generic loading reads attn_q's .scale; plm's graph multiplies by attn_q alone
        b.unused(p + "attn_q.scale", UNUSED_SCALE)
    role = q_name.split(".", 2)[-1].removesuffix(".weight")
    kv_name, kv_shape = p + "attn_kv_a_mqa.weight", (kv_lora + rot, e)
    b.op("matmul", ("h",), ("latent",), (b.rows(kv_name + ":latent", "attn_kv_a_mqa", kv_name, kv_shape, 0, kv_lora),))
    # the rope key once per head (llama.cpp repeats it after RoPE: the same rows, rotated alike)
    k_pe = b.row_ranges(kv_name + ":rope", "attn_kv_a_mqa", kv_name, kv_shape, [(kv_lora, kv_lora + rot)] * nh)
    b.op("matmul", ("h",), ("k_pe",), (k_pe,))
    b.op("rmsnorm", ("latent",), ("latent",), (b.tensor(p + "attn_kv_a_norm.weight", "attn_kv_a_norm", (kv_lora,)),),
         eps=eps)  # fmt: skip
    kvb_name, kvb_shape = p + "attn_kv_b.weight", (nh * (nope + vd), kv_lora)
    value_rows = [(h * (nope + vd) + nope, (h + 1) * (nope + vd)) for h in range(nh)]
    values = b.row_ranges(kvb_name + ":v", "attn_kv_b", kvb_name, kvb_shape, value_rows, pad=head - vd)
    b.op("matmul", ("latent",), ("v",), (values,))
    rows = [(h * head + nope, (h + 1) * head) for h in range(nh)]
    b.op("matmul", (q_src,), ("q_pe",), (b.row_ranges(q_name + ":rope", role, q_name, q_shape, rows),))
    b.op("rope", ("q_pe", "k_pe"), ("q_pe", "k_pe"), (factors,) if factors else (),
         **rope.attrs(Sizes(e, sizes.n_layers, nh, nh, rot, sizes.vocab_size)))  # fmt: skip
    if nope:
        rows = [(h * head, h * head + nope) for h in range(nh)]
        b.op("matmul", (q_src,), ("q_nope",), (b.row_ranges(q_name + ":nope", role, q_name, q_shape, rows),))
        keys = b.row_ranges(kvb_name + ":k", "attn_kv_b", kvb_name, kvb_shape,
                            [(h * (nope + vd), h * (nope + vd) + nope) for h in range(nh)])  # fmt: skip
        b.op("matmul", ("latent",), ("k_nope",), (keys,))
        b.op("concat_heads", ("q_nope", "q_pe"), ("q",), heads=nh)
        b.op("concat_heads", ("k_nope", "k_pe"), ("k",), heads=nh)
        q, k = "q", "k"
    else:  # keys of rope dims alone (llama.cpp's saver file): the rope parts are the heads
        q, k = "q_pe", "k_pe"
    b.op("kv_write", (k, "v"), (), layer=i)
    b.op("attention", (q,), ("att",), layer=i, n_heads=nh, n_kv_heads=nh, head_dim=head,
         scale=f32(1.0 / math.sqrt(head)))  # fmt: skip
    att = narrow(b, "att", sizes)
    linear(b, att, "h", p + "attn_output", (e, nh * vd), bias=False)
