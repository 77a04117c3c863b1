"""`qwen3next` (Qwen3-Next-80B-A3B): qwen35moe's hybrid MoE stack (qwen35.py, qwen35moe.py's
experts with their gated shared expert) with what llama.cpp's src/models/qwen3next.cpp does
differently:

- RoPE: plain NeoX over the first rope.dimension_count dims (no M-RoPE sections);
- a DeltaNet layer's projections: Q, K, V from `attn_qkv` and the output gate z from
  `attn_gate` (newer files), or all four from the fused `ssm_in` (the first converted files:
  per key head, its q and k rows, then its r = value heads / key heads value heads' v rows
  and z rows); beta and alpha from one `ssm_beta_alpha` (`ssm_ba`), per key head its r beta
  rows then its r alpha rows;
- value head h reads key head h // r (llama.cpp repeats each key head r times in place), where
  qwen35 reads key head h mod key heads: the plan repeats the query and key rows of the
  projection and of the conv kernel per value head (row ranges, chosen at compile time), so
  that the gated_delta_net op sees one key head per value head. The cost: the conv and the
  projection run 2 Hv + Hv channels instead of 2 Hk + Hv (Qwen3-Next-80B: 12,288 for 8,192),
  and the conv state per layer grows by as much; the recurrent matrix does not.
"""

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.qwen35 import DeltaNet, hybrid
from rfc.compiler.arch.qwen35moe import read_gated_experts
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def plan_heads(dn: DeltaNet) -> DeltaNet:
    """The op's sizes: a key head per value head (the file's repeated in place)."""
    return DeltaNet(dn.v_heads, dn.v_heads, dn.head_dim, dn.kernel)


def delta_net_layer(b: ModelBuilder, i: int, e: int, dn: DeltaNet, eps: float) -> None:
    """qwen35.delta_net_layer with qwen3next's fused projections, its key heads repeated."""
    p, sizes, hk, hv = f"blk.{i}.", dn.head_dim, dn.k_heads, dn.v_heads
    r = hv // hk
    rows = lambda start, n: (start, start + n)  # noqa: E731
    for name in ("attn_qkv", "attn_gate", "ssm_in", "ssm_ba", "ssm_out"):
        b.unused(
            p + name + ".scale", "llama.cpp's qwen3next DeltaNet graph multiplies its projections by no weight scale"
        )
    if b.has(p + "attn_qkv.weight") or not b.has(p + "ssm_in.weight"):
        b.unused(
            p + "ssm_in.weight",
            "the legacy fused projection: llama.cpp's graph takes attn_qkv and attn_gate when present",
        )
        src, shape = p + "attn_qkv.weight", (dn.conv_dim, e)
        q = [rows(h // r * sizes, sizes) for h in range(hv)]
        k = [rows((hk + h // r) * sizes, sizes) for h in range(hv)]
        v = [rows(2 * hk * sizes, hv * sizes)]
        z = None  # attn_gate, asked for after attn_qkv (a file with neither projection: attn_qkv is named)
    else:  # the legacy fused qkvz: per key head g, [q_g, k_g, v of its r heads, z of its r heads]
        src, width = p + "ssm_in.weight", 2 * sizes + 2 * r * sizes
        shape = (hk * width, e)
        q = [rows(h // r * width, sizes) for h in range(hv)]
        k = [rows(h // r * width + sizes, sizes) for h in range(hv)]
        v = [rows(g * width + 2 * sizes, r * sizes) for g in range(hk)]
        z = b.row_ranges(
            src + ":z", "ssm_in_z", src, shape, [rows(g * width + 2 * sizes + r * sizes, r * sizes) for g in range(hk)]
        )
    b.op("matmul", ("h",), ("mixed",), (b.row_ranges(src + ":qkv", "attn_qkv", src, shape, q + k + v),))
    b.op("matmul", ("h",), ("z",), (z or b.tensor(p + "attn_gate.weight", "attn_gate", (dn.v_width, e)),))
    ba, ba_shape = p + "ssm_ba.weight", (2 * hv, e)
    beta = b.row_ranges(ba + ":beta", "ssm_beta", ba, ba_shape, [rows(h // r * 2 * r + h % r, 1) for h in range(hv)])
    alpha = b.row_ranges(
        ba + ":alpha", "ssm_alpha", ba, ba_shape, [rows(h // r * 2 * r + r + h % r, 1) for h in range(hv)]
    )
    b.op("matmul", ("h",), ("alpha",), (alpha,))
    b.op("matmul", ("h",), ("beta",), (beta,))
    conv = p + "ssm_conv1d.weight"
    channels = (
        [rows(h // r * sizes, sizes) for h in range(hv)]
        + [rows((hk + h // r) * sizes, sizes) for h in range(hv)]
        + [rows(2 * hk * sizes, hv * sizes)]
    )
    kernel = b.row_ranges(conv + ":repeated", "ssm_conv1d", conv, (dn.conv_dim, dn.kernel), channels)
    planned = plan_heads(dn)
    b.op("ssm_conv", ("mixed",), ("conv",), (kernel,), state=b.state(i, (dn.kernel - 1, planned.conv_dim)))
    gates = (b.tensor(p + "ssm_a", "ssm_a", (hv,)), b.tensor(p + "ssm_dt.bias", "ssm_dt", (hv,)))
    b.op(
        "gated_delta_net",
        ("conv", "alpha", "beta"),
        ("dn",),
        gates,
        state=b.state(i, (hv, sizes, sizes)),
        n_k_heads=planned.k_heads,
        n_v_heads=hv,
        head_dim=sizes,
        eps=eps,
    )
    b.op("rmsnorm", ("dn",), ("dn",), (b.tensor(p + "ssm_norm.weight", "ssm_norm", (sizes,)),), eps=eps, heads=hv)
    b.op("swiglu", ("z", "dn"), ("dn",))
    b.op("matmul", ("dn",), ("h",), (b.tensor(p + "ssm_out.weight", "ssm_out", (e, dn.v_width)),))


def build(model: GGUFModel) -> ModelSpec:
    return hybrid(
        model, "qwen3next", experts=read_gated_experts, mrope=False, linear_layer=delta_net_layer, plan_heads=plan_heads
    )
