"""`ernie4_5` and `ernie4_5-moe` (Baidu ERNIE 4.5: 0.3B dense, 21B-A3B, 300B-A47B), as llama.cpp's
src/models/ernie4-5.cpp and ernie4-5-moe.cpp build them: llama's pre-norm block
(compiler/arch/prenorm.py) with adjacent-pair RoPE (llama.cpp's rope type NORM) over whole
heads, no RoPE factors, Q/K/V biases where present (an `attn_output.bias` is loaded by llama.cpp
and not applied: nor here); `output.weight`, else tied.

ernie4_5-moe: layer i's FFN is a mixture of experts when i >= `leading_dense_block_count` and
(i + 1) is a multiple of `interleave_moe_layer_step` (required), else the dense SwiGLU FFN: softmax
router, the selection bias `exp_probs_b` where present, top `expert_used_count` renormalized, no
weight scale (the loader reads no expert_weights_scale), experts `expert_feed_forward_length`
wide, plus a shared SwiGLU expert `expert_shared_feed_forward_length` wide when that is > 0.
"""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, glu_ffn
from rfc.compiler.arch.metadata import MAX_FF, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("adjacent", out_bias=False)  # build_attn(wo, NULL): attn_output.bias loaded, not added


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "ernie4_5", BLOCK)


def build_moe(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "ernie4_5-moe")
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0)
    step = md.int("interleave_moe_layer_step", 1, MAX_LAYERS)
    lead = md.int("leading_dense_block_count", 0, MAX_LAYERS, default=0)
    e = Experts(count, used, n_ff_exp, groups=groups, groups_used=groups_used, shared=1 if shared_ff else 0,
                shared_ff=shared_ff)  # fmt: skip

    def ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
        if i >= lead and (i + 1) % step == 0:
            moe_block(b, i, sizes, e)
            return True
        glu_ffn(b, i, sizes.n_embd, n_ff, bias=False, scale=False)  # build_ffn(up, NULL, NULL, ...)
        return False

    extra = e.hparams() | {"interleave_moe_layer_step": step, "leading_dense_block_count": lead}
    return prenorm.build(model, "ernie4_5-moe", BLOCK, ffn=ffn, declare=lambda b,
                         sizes: declare_expert_buffers(b, sizes.n_embd, e), extra=extra)  # fmt: skip
