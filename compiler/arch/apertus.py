"""`apertus` (Swiss AI Apertus 8B, 70B), as llama.cpp's src/models/apertus.cpp builds it: llama's
pre-norm blocks (RMS norms) of GQA attention whose Q and K are RMS-normed per head (`attn_q_norm` /
`attn_k_norm` [head_dim], weight only: llama.cpp loads their optional `.bias` and its graph does not
add it) before NeoX RoPE over whole heads (llama.cpp asserts n_rot = head_dim), `rope_freqs` factors
where the file has them (LongRoPE's long/short sets with the "longrope" scaling type), score scale
1/sqrt(head_dim), `attn_output` with its optional bias and weight scale; an FFN without a gate:
x += ffn_down(xIELU(ffn_up(ffn_norm(x)))), neither matmul with a bias or weight scale (the graph
passes none); an untied `output` (llama.cpp's loader requires it).

xIELU's four constants are per layer, from the unprefixed keys `xielu.alpha_n`, `xielu.alpha_p`,
`xielu.beta`, `xielu.eps` (one value for every layer, or an array of exactly block_count values;
llama.cpp requires all four). The stored alphas are raw parameters: as ggml_xielu does, the plan's
`xielu` op gets alpha_p = softplus(alpha_p) and alpha_n = beta + softplus(alpha_n), computed in
float32 with ggml's softplus (x > 20: x, else log(1 + exp(x)))."""

import math
import numbers

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, hparams, kv_spec, linear, output_head, read_rope, read_sizes,
    require_whole_heads, rope_factors,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

XIELU_KEYS = ("alpha_n", "alpha_p", "beta", "eps")
XIELU_BOUND = 1e4  # learned constants of order 1 (eps about -1e-6): anything larger is not a real model


def softplus_f32(x: float) -> float:
    """ggml_compute_softplus_f32, in float32: x above 20, else logf(1 + expf(x))."""
    x32 = np.float32(x)
    if x32 > np.float32(20.0):
        return float(x32)
    with np.errstate(over="ignore"):
        return float(np.log(np.float32(1.0) + np.exp(x32, dtype=np.float32), dtype=np.float32))


def xielu_constants(alpha_n: float, alpha_p: float, beta: float, eps: float) -> dict[str, float]:
    """The effective float32 constants ggml_xielu stores for the stored ones."""
    b = np.float32(beta)
    return {"alpha_n": float(np.float32(b + np.float32(softplus_f32(alpha_n)))), "alpha_p": softplus_f32(alpha_p),
            "beta": float(b), "eps": float(np.float32(eps))}  # fmt: skip


def read_xielu(model: GGUFModel, n_layers: int) -> list[dict[str, float]]:
    """Per layer, the xIELU constants of `xielu.*` (get_key_or_arr: a scalar for every layer or an
    array of exactly n_layers finite numbers), bounded, as the plan's xielu attributes."""
    values = {}
    for name in XIELU_KEYS:
        key = f"xielu.{name}"
        model.keys_read.add(key)
        if key in model.unread:
            raise CompileError(model.unread[key])
        v = model.metadata.get(key)
        if v is None:
            raise CompileError(f"{model.path.name}: missing metadata {key} (apertus's xIELU activation)")
        v = list(v) if isinstance(v, (list, tuple)) else [v] * n_layers
        if len(v) != n_layers:  # llama.cpp's get_key_or_arr: "wrong array length"
            raise CompileError(f"{model.path.name}: metadata {key} has {len(v)} entries for {n_layers} layers "
                               "(llama.cpp refuses this file too)")  # fmt: skip
        if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
                   and abs(x) <= XIELU_BOUND
                   for x in v):  # fmt: skip
            raise CompileError(
                f"{model.path.name}: metadata {key} is not numbers in [-{XIELU_BOUND:g}, {XIELU_BOUND:g}]"
            )
        values[name] = [float(x) for x in v]
    return [xielu_constants(*(values[k][i] for k in XIELU_KEYS)) for i in range(n_layers)]


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "apertus")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "apertus")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    xielu = read_xielu(model, sizes.n_layers)
    b = ModelBuilder(model)
    if not b.has("output.weight"):  # llama.cpp's apertus loader requires it (no tied fallback)
        raise CompileError(f"{b.path}: missing tensor output.weight (apertus's output is not tied)")
    declare_buffers(b, sizes, n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(
        b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=rope.scaling_type == "longrope"
    )
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=True, factors=factors)
    b.op("embed", ("tokens",), ("x",), (embd,))
    e = (sizes.n_embd,)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        for qk in ("q", "k"):
            b.unused(
                f"{p}attn_{qk}_norm.bias",
                "llama.cpp's apertus loader reads it and its graph norms Q and K without a bias",
            )
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
        attention(b, i, sizes, eps, cfg)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
        linear(b, "h", "up", p + "ffn_up", (n_ff, sizes.n_embd), bias=False, scale=False)
        b.op("xielu", ("up",), ("up",), **xielu[i])
        linear(b, "up", "h", p + "ffn_down", (sizes.n_embd, n_ff), bias=False, scale=False)
        b.op("add", ("x", "h"), ("x",))
    output_head(b, sizes, eps, bias=False)
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
