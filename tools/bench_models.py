"""Random-weight GGUFs of the hybrid and MoE shapes the benchmarks use (F16, the stories260K
vocabulary; quantize them with llama.cpp's llama-quantize), for speed only:

    python tools/bench_models.py qwen35 q35-F16.gguf      # Qwen3.5-0.8B-shaped, 24 layers, 18 Gated-DeltaNet
    python tools/bench_models.py qwen35moe q35moe-F16.gguf  # Qwen3.5-35B-A3B layers at 0.9B: 32 experts of 256, 8 used
    python tools/bench_models.py qwen3moe moe-F16.gguf    # 24 layers, dim 768, 64 experts of 384, 8 used
    llama-quantize q35-F16.gguf q35-Q4_K_M.gguf Q4_K_M

Weights come from tools/fixtures/tiny_models.py's generator (the fixtures' Tensor, seeded by
the model name), so the same command always writes the same bytes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))

from tiny_models import ARR, F32V, I32, STR, U32, Tensor, _norm, _stories_vocab, encode, write_gguf  # noqa: E402

D_QWEN35, L_QWEN35 = 1024, 24
GDN_HEADS, GDN_STATE = 16, 128  # Gated-DeltaNet key/value heads and head size (Qwen3.5-0.8B's)
ATT_HEADS, ATT_KV, ATT_DIM = 8, 2, 256


def _qwen35_ffn(p: str, experts: tuple[int, int, int] | None) -> list[Tensor]:
    """A dense SwiGLU FFN of 3584, or (count, width, shared width) experts with a gated shared one."""
    d = D_QWEN35
    if experts is None:
        return [Tensor(p + "ffn_gate.weight", (3584, d)), Tensor(p + "ffn_up.weight", (3584, d)),
                Tensor(p + "ffn_down.weight", (d, 3584))]  # fmt: skip
    e, ff, sh = experts
    return [Tensor(p + "ffn_gate_inp.weight", (e, d)), Tensor(p + "ffn_gate_exps.weight", (e, ff, d)),
            Tensor(p + "ffn_up_exps.weight", (e, ff, d)), Tensor(p + "ffn_down_exps.weight", (e, d, ff)),
            Tensor(p + "ffn_gate_inp_shexp.weight", (d,)), Tensor(p + "ffn_gate_shexp.weight", (sh, d)),
            Tensor(p + "ffn_up_shexp.weight", (sh, d)), Tensor(p + "ffn_down_shexp.weight", (d, sh))]  # fmt: skip


def _qwen35_layer(i: int, experts: tuple[int, int, int] | None) -> list[Tensor]:
    p, d, s, h = f"blk.{i}.", D_QWEN35, GDN_STATE, GDN_HEADS
    t = [_norm(p + "attn_norm.weight", d), _norm(p + "post_attention_norm.weight", d), *_qwen35_ffn(p, experts)]
    if i % 4 != 3:  # Gated-DeltaNet; every 4th layer full attention
        qkv = 3 * h * s
        t += [Tensor(p + "attn_qkv.weight", (qkv, d), gain=1.5), Tensor(p + "attn_gate.weight", (h * s, d)),
              Tensor(p + "ssm_conv1d.weight", (qkv, 4)),
              Tensor(p + "ssm_a", (h,), values=tuple(-0.05 * 1.3**k for k in range(h))),
              Tensor(p + "ssm_dt.bias", (h,), std=0.5), Tensor(p + "ssm_alpha.weight", (h, d)),
              Tensor(p + "ssm_beta.weight", (h, d), gain=2.0), _norm(p + "ssm_norm.weight", s),
              Tensor(p + "ssm_out.weight", (d, h * s))]  # fmt: skip
    else:
        t += [Tensor(p + "attn_q.weight", (2 * ATT_HEADS * ATT_DIM, d), gain=1.5),
              Tensor(p + "attn_k.weight", (ATT_KV * ATT_DIM, d), gain=1.5),
              Tensor(p + "attn_v.weight", (ATT_KV * ATT_DIM, d)),
              Tensor(p + "attn_output.weight", (d, ATT_HEADS * ATT_DIM)),
              _norm(p + "attn_q_norm.weight", ATT_DIM, 1.5), _norm(p + "attn_k_norm.weight", ATT_DIM, 1.5)]  # fmt: skip
    return sorted(t, key=lambda x: x.name)


def qwen35(arch: str, experts: tuple[int, int, int] | None):
    keys = [("context_length", U32, 4096), ("embedding_length", U32, D_QWEN35), ("block_count", U32, L_QWEN35),
            ("feed_forward_length", U32, 3584), ("attention.head_count", U32, ATT_HEADS),
            ("attention.head_count_kv", U32, ATT_KV), ("attention.key_length", U32, ATT_DIM),
            ("attention.value_length", U32, ATT_DIM), ("attention.layer_norm_rms_epsilon", F32V, 1e-6),
            ("rope.dimension_count", U32, 64), ("rope.dimension_sections", ARR, (I32, [11, 11, 10, 0])),
            ("rope.freq_base", F32V, 1e7), ("full_attention_interval", U32, 4), ("ssm.conv_kernel", U32, 4),
            ("ssm.state_size", U32, GDN_STATE), ("ssm.group_count", U32, GDN_HEADS),
            ("ssm.time_step_rank", U32, GDN_HEADS), ("ssm.inner_size", U32, GDN_HEADS * GDN_STATE)]  # fmt: skip
    if experts:
        keys += [
            ("expert_count", U32, experts[0]),
            ("expert_used_count", U32, 8),
            ("expert_feed_forward_length", U32, experts[1]),
            ("expert_shared_feed_forward_length", U32, experts[2]),
        ]
    layers = [x for i in range(L_QWEN35) for x in _qwen35_layer(i, experts)]
    return D_QWEN35, keys, layers


def qwen3moe():
    d, e, ff, heads, kv, hd = 768, 64, 384, 12, 4, 64
    keys = [("context_length", U32, 4096), ("embedding_length", U32, d), ("block_count", U32, 24),
            ("feed_forward_length", U32, 2048), ("expert_feed_forward_length", U32, ff),
            ("attention.head_count", U32, heads), ("attention.head_count_kv", U32, kv),
            ("attention.layer_norm_rms_epsilon", F32V, 1e-6), ("attention.key_length", U32, hd),
            ("attention.value_length", U32, hd), ("rope.freq_base", F32V, 1e6), ("expert_count", U32, e),
            ("expert_used_count", U32, 8)]  # fmt: skip
    layers = []
    for i in range(24):
        p = f"blk.{i}."
        layers += sorted([_norm(p + "attn_norm.weight", d), Tensor(p + "attn_q.weight", (heads * hd, d), gain=1.5),
                          Tensor(p + "attn_k.weight", (kv * hd, d), gain=1.5),
                          Tensor(p + "attn_v.weight", (kv * hd, d)), Tensor(p + "attn_output.weight", (d, heads * hd)),
                          _norm(p + "attn_q_norm.weight", hd, 1.5), _norm(p + "attn_k_norm.weight", hd, 1.5),
                          _norm(p + "ffn_norm.weight", d), Tensor(p + "ffn_gate_inp.weight", (e, d)),
                          Tensor(p + "ffn_gate_exps.weight", (e, ff, d)), Tensor(p + "ffn_up_exps.weight", (e, ff, d)),
                          Tensor(p + "ffn_down_exps.weight", (e, d, ff))],
                         key=lambda x: x.name)  # fmt: skip
    return d, keys, layers


MODELS = {
    "qwen35": ("qwen35", lambda: qwen35("qwen35", None)),
    "qwen35moe": ("qwen35moe", lambda: qwen35("qwen35moe", (32, 256, 512))),
    "qwen3moe": ("qwen3moe", qwen3moe),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    arch, make = MODELS[args.model]
    d, keys, layers = make()
    name = f"bench-{args.model}"
    tensors = [Tensor("output.weight", (512, d), std=6.0 / math.sqrt(d)), _norm("output_norm.weight", d),
               Tensor("token_embd.weight", (512, d)), *layers]  # fmt: skip
    meta = [("general.architecture", STR, arch), ("general.name", STR, name)]
    meta += [(f"{arch}.{k}", t, v) for k, t, v in keys]
    meta += _stories_vocab() + [("general.quantization_version", U32, 2), ("general.file_type", U32, 1)]
    out = []
    for t in tensors:
        q = "F32" if len(t.shape) == 1 or t.name.endswith("ssm_conv1d.weight") else "F16"
        out.append((t.name, t.shape, q, encode(t.weights(name), q)))
    write_gguf(str(args.out), meta, out)
    print(f"{args.out}: {sum(math.prod(t.shape) for t in tensors) / 1e6:.0f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
