"""`minimax-m2` (MiniMax-M2, M2.1, M2.5: 230B-A10B), as llama.cpp's src/models/minimax-m2.cpp builds
it: llama's pre-norm block (compiler/arch/prenorm.py) whose Q and K are RMS-normed over their whole
rows (`attn_q_norm` [heads × head_dim], `attn_k_norm` [kv heads × head_dim]) before NeoX RoPE over
the first `rope.dimension_count` dims of each head (partial: 64 of 128), and whose every FFN is a
mixture of `expert_count` SwiGLU experts `feed_forward_length` wide (the loader sizes them so;
`expert_feed_forward_length` is required, as there, and not used): the router's gating by
`expert_gating_func` (required: llama.cpp aborts without one; MiniMax-M2: sigmoid), the choice by
score + `exp_probs_b` (required), the chosen weights renormalized, no weight scale (not read), no
shared expert; `output.weight` required (no tied output).
"""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of, read_gating
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", qk_norm_rows=True, full_rotary=False, output_required=True)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "minimax-m2")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    count, used, _, groups, groups_used = read_experts_of(md, n_ff=None)  # expert_feed_forward_length required
    gating = read_gating(md, None, required=True)
    e = Experts(count, used, n_ff, gating=gating, groups=groups, groups_used=groups_used)

    def ffn(b: ModelBuilder, i: int, sizes: Sizes, _: int) -> bool:
        b.tensor(f"blk.{i}.exp_probs_b.bias", "exp_probs_b", (count,))  # required by the loader (moe_block reads it)
        moe_block(b, i, sizes, e)
        return True

    return prenorm.build(model, "minimax-m2", BLOCK, ffn=ffn, declare=lambda b,
                         sizes: declare_expert_buffers(b, sizes.n_embd, e), extra=e.hparams())  # fmt: skip
