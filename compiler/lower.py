"""Stage 3: lower a model spec to an execution plan (see rfc.artifacts.plan for the ops)."""

import math

from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
from rfc.compiler.spec import ModelSpec


def build_plan(spec: ModelSpec) -> Plan:
    hp = spec.hparams
    e, q, kv, ff = hp.n_embd, hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim, hp.n_ff
    buffers = (
        Buffer("tokens", ("T",), "i32"),
        Buffer("x", ("T", e)),
        Buffer("h", ("T", e)),
        Buffer("q", ("T", q)),
        Buffer("k", ("T", kv)),
        Buffer("v", ("T", kv)),
        Buffer("att", ("T", q)),
        Buffer("gate", ("T", ff)),
        Buffer("up", ("T", ff)),
        Buffer("xr", ("R", e)),
        Buffer("hr", ("R", e)),
        Buffer("logits", ("R", hp.vocab_size)),
    )
    rope_weights = ("rope_freqs.weight",) if hp.rope_freq_factors else ()
    rope_attrs = {
        "n_heads": hp.n_heads,
        "n_kv_heads": hp.n_kv_heads,
        "head_dim": hp.head_dim,
        "n_rot": hp.n_rot,
        "style": hp.rope_style,
        "freq_base": hp.rope_freq_base,
        "freq_scale": hp.rope_freq_scale,
    }
    attn_attrs = {
        "n_heads": hp.n_heads,
        "n_kv_heads": hp.n_kv_heads,
        "head_dim": hp.head_dim,
        "scale": 1.0 / math.sqrt(hp.head_dim),
    }
    ops = [Op("embed", ("tokens",), ("x",), ("token_embd.weight",))]
    for i in range(hp.n_layers):
        b = f"blk.{i}."
        ops.append(Op("rmsnorm", ("x",), ("h",), (b + "attn_norm.weight",), {"eps": hp.rms_eps}))
        for proj, buf in (("q", "q"), ("k", "k"), ("v", "v")):
            ops.append(Op("matmul", ("h",), (buf,), (f"{b}attn_{proj}.weight",)))
            if hp.qkv_bias:
                ops.append(Op("add_bias", (buf,), (buf,), (f"{b}attn_{proj}.bias",)))
        ops.append(Op("rope", ("q", "k"), ("q", "k"), rope_weights, rope_attrs))
        ops.append(Op("kv_write", ("k", "v"), (), (), {"layer": i}))
        ops.append(Op("attention", ("q",), ("att",), (), {"layer": i, **attn_attrs}))
        ops.append(Op("matmul", ("att",), ("h",), (b + "attn_output.weight",)))
        ops.append(Op("add", ("x", "h"), ("x",)))
        ops.append(Op("rmsnorm", ("x",), ("h",), (b + "ffn_norm.weight",), {"eps": hp.rms_eps}))
        ops.append(Op("matmul", ("h",), ("gate",), (b + "ffn_gate.weight",)))
        ops.append(Op("matmul", ("h",), ("up",), (b + "ffn_up.weight",)))
        ops.append(Op("swiglu", ("gate", "up"), ("gate",)))
        ops.append(Op("matmul", ("gate",), ("h",), (b + "ffn_down.weight",)))
        ops.append(Op("add", ("x", "h"), ("x",)))
    ops.append(Op("gather_rows", ("x",), ("xr",)))
    ops.append(Op("rmsnorm", ("xr",), ("hr",), ("output_norm.weight",), {"eps": hp.rms_eps}))
    lm_head = "token_embd.weight" if hp.tied_embeddings else "output.weight"
    ops.append(Op("matmul", ("hr",), ("logits",), (lm_head,)))
    return Plan(
        buffers=buffers,
        ops=tuple(ops),
        kv=KVSpec(n_layers=hp.n_layers, n_kv_heads=hp.n_kv_heads, head_dim=hp.head_dim, dtype="f16"),
        input_tokens="tokens",
        output_logits="logits",
        vocab_size=hp.vocab_size,
        n_embd=hp.n_embd,
        context_length=hp.context_length,
    )
