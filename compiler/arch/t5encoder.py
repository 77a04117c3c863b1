"""`t5encoder` (the encoder of T5 / T5 v1.1 / Flan-T5 / UMT5: the text encoders of Flux, SD3 and Wan), as
llama.cpp's src/models/t5.cpp builds it (llama_model_t5::graph<true>) from its t5encoder loader.

Per layer: h = RMSNorm(x) x `enc.blk.i.attn_norm`; Q, K, V by their weights alone (no bias, no scale);
scores q.k unscaled (T5 folds the 1/sqrt(d) into its weights) plus T5's relative-position bias, over the
whole input; `attn_o`; x += that; h = RMSNorm(x) x `ffn_norm`; with `ffn_gate` the gated GELU FFN
down(gelu(gate h) x up h) (T5 v1.1, Flan-T5), without it the ReLU FFN down(relu(up h)) (the original
T5); x += that. The rows RMS-normed by `enc.output_norm` are the model's output, pooled
by `pooling_type`. `output.weight` is loaded and never run (the encoder has no LM head).

The position bias: query head h's score of the key d = key position - query position away gains
`attn_rel_b`[bucket(d), h], the layer's own table where it has one, else layer 0's (llama.cpp's rule;
released T5s hold layer 0's alone). bucket(d) is llama_relative_position_bucket's, bidirectional:
half of the `attention.relative_buckets_count` buckets for keys after the query, |d| exact below a
quarter of them, then logarithmic up to distance 128, where the buckets end: every distance at least
that far shares its side's last bucket. So the compiler tabulates each layer's bias per head for
d in [-R, R], R the distance where the buckets stop changing (127 for 32 buckets), and the attention
op clamps d into that reach: the same scores at any context length.

Refused as they cannot be computed exactly: a bucket count outside [4, 256] (llama.cpp's formula
divides by log(128 / (count / 4)), which count 512 makes zero), no `attn_rel_b` in layer 0 (llama.cpp
reads a null table), rank pooling (no classifier head in its loader), biases and weight scales (its
loader reads none)."""

import math

import numpy as np

from rfc.compiler.arch.bert import declare_encoder_buffers
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, hparams, kv_spec, read_sizes, rms_encoder_head
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "t5encoder"
MAX_DISTANCE = 128  # llama_relative_position_bucket's max_distance (fixed there)
MIN_BUCKETS, MAX_BUCKETS = 4, 256


def bucket(d: int, n_buckets: int) -> int:
    """llama_relative_position_bucket(key position, query position, n_buckets, bidirectional) for
    d = key - query, in its arithmetic: logf of the double quotient as float, times the float count,
    divided by the double log, added to the integer in double, rounded to float by floorf."""
    half = n_buckets >> 1
    max_exact = half >> 1
    base = half if d > 0 else 0
    n = abs(d)
    if n < max_exact:
        return base + n
    log_f = np.float32(math.log(np.float32(n / max_exact)))
    scaled = np.float32(log_f * np.float32(half - max_exact))
    large = math.floor(np.float32(max_exact + float(scaled) / math.log(MAX_DISTANCE / max_exact)))
    return base + min(large, half - 1)


def bucket_reach(n_buckets: int) -> int:
    """The least R >= 1 at which both sides reach their last bucket: |d| >= R all share it (bucket is
    monotone in |d| and capped), so the attention clamps distances into [-R, R]. Within
    MAX_DISTANCE + 1 for every count MIN_BUCKETS..MAX_BUCKETS (the formula passes the cap by 128)."""
    half = n_buckets >> 1
    for reach in range(1, 2 * MAX_DISTANCE):
        if bucket(reach, n_buckets) == 2 * half - 1 and bucket(-reach, n_buckets) == half - 1:
            return reach
    raise CompileError(f"{n_buckets} relative-position buckets never end")  # unreachable within the bounds


def position_bias(b: ModelBuilder, i: int, n_heads: int, n_buckets: int, reach: int) -> str:
    """Layer i's table [(2 reach + 1) x n_heads]: row d + reach holds each head's bias for distance d,
    from its attn_rel_b [n_buckets, n_heads], made at compile time."""
    rel = b.small_values(f"enc.blk.{i}.attn_rel_b.weight", (n_buckets, n_heads))
    rows = rel[[bucket(d, n_buckets) for d in range(-reach, reach + 1)]].reshape(-1)
    runs: list[tuple[float, int]] = []
    for value in rows.tolist():  # runs of equal values (the saturated distances repeat their bucket's row)
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    return b.filled(f"enc.blk.{i}.pos_bias", "attn_pos_bias", (rows.size,), runs)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    sizes = read_sizes(md)
    e, nh = sizes.n_embd, sizes.n_heads
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_buckets = md.int("attention.relative_buckets_count", MIN_BUCKETS, MAX_BUCKETS)
    reach = bucket_reach(n_buckets)
    rope = Rope(sizes.head_dim, "neox", 10000.0, 1.0, "none")  # hparams' fields alone: T5 rotates nothing
    b = ModelBuilder(model)
    if not b.has("enc.blk.0.attn_rel_b.weight"):
        raise CompileError(f"{b.path}: missing tensor enc.blk.0.attn_rel_b.weight (every layer without its own "
                           "position bias reads layer 0's)")  # fmt: skip
    unread = next((t for t in model.tensors if t.startswith("enc.blk.") and t.endswith((".bias", ".scale"))), None)
    if unread is not None:
        raise CompileError(f"{b.path}: tensor {unread[:80]} is not read by llama.cpp's {ARCH} loader")
    declare_encoder_buffers(b, sizes)
    b.buffer("gate", "T", n_ff)
    b.buffer("up", "T", n_ff)
    b.buffer("xr", "R", e)
    b.buffer("hr", "R", e)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, e)),))
    tables: dict[int, str] = {}  # each position-bias table by the layer whose attn_rel_b it holds
    for i in range(sizes.n_layers):
        p = f"enc.blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (e,)),), eps=eps)
        for buf, name, rows in (("q", "attn_q", sizes.q_width), ("k", "attn_k", sizes.kv_width),
                                ("v", "attn_v", sizes.kv_width)):  # fmt: skip
            b.op("matmul", ("h",), (buf,), (b.tensor(p + name + ".weight", name, (rows, e)),))
        b.op("kv_write", ("k", "v"), (), layer=i)
        own = i if b.has(p + "attn_rel_b.weight") else 0  # a layer without a table reads layer 0's
        if own not in tables:
            tables[own] = position_bias(b, own, nh, n_buckets, reach)
        b.op("attention", ("q",), ("att",), (tables[own],), layer=i, n_heads=nh, n_kv_heads=sizes.n_kv_heads,
             head_dim=sizes.head_dim, scale=1.0, causal=False, pos_bias=reach)  # fmt: skip
        b.op("matmul", ("att",), ("h",), (b.tensor(p + "attn_o.weight", "attn_output", (e, sizes.q_width)),))
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (e,)),), eps=eps)
        b.op("matmul", ("h",), ("up",), (b.tensor(p + "ffn_up.weight", "ffn_up", (n_ff, e)),))
        if b.has(p + "ffn_gate.weight"):  # T5 v1.1, Flan-T5: GELU(gate) x up (LLM_FFN_GELU, LLM_FFN_PAR)
            b.op("matmul", ("h",), ("gate",), (b.tensor(p + "ffn_gate.weight", "ffn_gate", (n_ff, e)),))
            b.op("swiglu", ("gate", "up"), ("up",), activation="gelu_tanh")
        else:  # the original T5: ReLU (LLM_FFN_RELU, LLM_FFN_SEQ)
            b.op("relu", ("up",), ("up",))
        b.op("matmul", ("up",), ("h",), (b.tensor(p + "ffn_down.weight", "ffn_down", (e, n_ff)),))
        b.op("add", ("x", "h"), ("x",))
    b.unused("output.weight", f"llama.cpp's {ARCH} loader reads it and its encoder graph has no LM head")
    scores, encoded = rms_encoder_head(b, md, sizes, eps, False, norm="enc.output_norm")
    extra = {"norm": "rms", "positions": f"relative ({n_buckets} buckets, reach {reach})", **encoded}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="", output_hidden="hr", kv=kv_spec(sizes),
                    output_scores=scores)  # fmt: skip
