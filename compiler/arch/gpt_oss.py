"""`gpt-oss` (OpenAI gpt-oss-20b / 120b), as llama.cpp builds it (src/models/openai-moe.cpp,
llama-graph.cpp build_moe_ffn):
- pre-norm blocks: attn_norm, attention, residual; `post_attention_norm` (the FFN's input norm,
  despite its name), a mixture of experts, residual; RMS norms throughout;
- attention: Q/K/V biases (when present), an output bias, NeoX RoPE, scale 1/sqrtf(n_rot), and a
  learned sink logit per query head (`attn_sinks`: one more score in the softmax, with no value);
  sliding-window layers (attention.sliding_window) alternate with full ones by
  attention.sliding_window_pattern (default period 2: even layers slide, as gemma2's);
  rope.freq_base_swa, when present, for the sliding layers;
- experts: the router has a bias; its top-k logits are softmaxed among themselves
  (LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT, weights not renormalized again: moe_route's
  gating softmax_weight, norm off); every expert projection has a per-expert bias (ggml_add_id); the gate is
  llama.cpp's swiglu_oai (alpha 1.702, limit 7, constants in llama.cpp, not in the file);
  the expert width is expert_feed_forward_length;
- the output is `output.weight` (required).
"""

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Sizes, attention, declare_buffers, hparams, kv_spec, output_head, read_experts, read_rope,
    read_sizes,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "gpt-oss"
# llama.cpp's LLM_FFN_SWIGLU_OAI_MOE constants (gpt-oss's swiglu_limit and its sigmoid's alpha)
SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0


def moe_ffn(b: ModelBuilder, i: int, e: int, n_ff: int, n_expert: int, n_used: int) -> None:
    """h = sum over the token's n_used experts of weight * (down(swiglu_oai(gate h + bg, up h + bu)) + bd).
    llama.cpp's gpt-oss graph passes build_moe_ffn no expert `.scale`: known and unused."""
    p = f"blk.{i}."
    for name in ("gate", "up", "down"):
        b.unused(f"{p}ffn_{name}_exps.scale", UNUSED_SCALE)
    b.op("matmul", ("h",), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (n_expert, e)),))
    b.op("add_bias", ("router",), ("router",), (b.tensor(p + "ffn_gate_inp.bias", "ffn_gate_inp_bias", (n_expert,)),))
    b.op("moe_route", ("router",), ("expert_ids", "expert_weights"), n_used=n_used, gating="softmax_weight", norm=False)
    # both expert matmuls first (a target reads h once for them), then their biases
    for name in ("gate", "up"):
        w = b.tensor(f"{p}ffn_{name}_exps.weight", f"ffn_{name}_exps", (n_expert, n_ff, e))
        b.op("moe_matmul", ("h", "expert_ids"), (name,), (w,))
    for name in ("gate", "up"):
        bias = b.tensor(f"{p}ffn_{name}_exps.bias", f"ffn_{name}_exps_bias", (n_expert, n_ff))
        b.op("moe_add_bias", (name, "expert_ids"), (name,), (bias,))
    b.op("swiglu", ("gate", "up"), ("gate",), activation="swiglu_oai", alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT)
    down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (n_expert, e, n_ff))
    b.op("moe_matmul", ("gate", "expert_ids"), ("experts_out",), (down,))
    b.op(
        "moe_add_bias",
        ("experts_out", "expert_ids"),
        ("experts_out",),
        (b.tensor(p + "ffn_down_exps.bias", "ffn_down_exps_bias", (n_expert, e)),),
    )
    b.op("moe_combine", ("experts_out", "expert_weights"), ("h",))


def _attention_scale(n_rot: int) -> float:
    return float(np.float32(1.0) / np.sqrt(np.float32(n_rot)))  # 1.0f/sqrtf(float(n_rot)), a float32


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    sizes: Sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    if rope.n_rot != sizes.head_dim:  # llama.cpp sizes Q, K and V by n_rot for this architecture
        raise CompileError(
            f"{md.path}: rope.dimension_count {rope.n_rot} != head size {sizes.head_dim} is not supported ({ARCH})"
        )
    n_ff = md.int("expert_feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_expert, n_used = read_experts(md)
    if not n_expert:
        raise CompileError(f"{md.path}: {ARCH} is a mixture of experts, and {md.key('expert_count')} is missing or 0")
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    is_local = sliding_window_layers(md, sizes.n_layers, 2)
    full = Attention(rope, scale=_attention_scale(rope.n_rot), sinks=True)
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    local = Attention(rope, scale=full.scale, window=window, sinks=True).with_rope(freq_base=base_swa)
    b = ModelBuilder(model)
    for name in ("blk.0.attn_output.bias", "output.weight"):
        if not b.has(name):
            raise CompileError(f"{b.path}: missing tensor {name} ({ARCH} has it)")
    declare_buffers(b, sizes, n_ff, n_used, n_expert)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        e = (sizes.n_embd,)
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
        attention(b, i, sizes, eps, local if is_local[i] else full, out_bias=True)
        b.op("add", ("x", "h"), ("x",))
        b.op(
            "rmsnorm", ("x",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps
        )
        moe_ffn(b, i, sizes.n_embd, n_ff, n_expert, n_used)
        b.op("add", ("x", "h"), ("x",))
    output_head(b, sizes, eps)
    extra = {
        "expert_count": n_expert, "expert_used_count": n_used, "expert_feed_forward_length": n_ff,
        "sliding_window": window, "sliding_window_layers": [i for i, on in enumerate(is_local) if on],
        "rope_freq_base_swa": base_swa, "attention_sinks": True, "expert_gating": "softmax_weight",
    }  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
