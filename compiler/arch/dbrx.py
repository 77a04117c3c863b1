"""`dbrx` (Databricks DBRX 132B), as llama.cpp's src/models/dbrx.cpp builds it: the pre-norm block of
compiler/arch/prenorm.py with LayerNorms that have a weight and no bias, a fused `attn_qkv` (no
bias), Q, K and V clamped to [-c, c] by `attention.clamp_kqv`, NeoX RoPE over whole heads, no
attn_output bias, and in every layer, after `attn_output_norm`, `expert_count` SwiGLU experts
`feed_forward_length` wide (its loader sizes them so), softmax-routed, the chosen weights
renormalized and not scaled (its graph passes norm_w true and it reads no expert_weights_scale); no
weight scales on the experts (its graph passes none). `output.weight` is required."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", out_bias=False, out_bias_loaded=False, output_required=True, norm="layer_weight",
                      ffn_norm="attn_output_norm", clamp_kqv=True)  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "dbrx")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    count, used, _, groups, groups_used = read_experts_of(md, n_ff=n_ff, expert_ff=False)
    e = Experts(count, used, n_ff, groups=groups, groups_used=groups_used)

    def declare(b: ModelBuilder, sizes: Sizes) -> None:
        declare_expert_buffers(b, sizes.n_embd, e)

    def ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
        moe_block(b, i, sizes, e)
        return True  # the experts added their output to x

    return prenorm.build(model, "dbrx", BLOCK, ffn=ffn, declare=declare, extra=e.hparams())
