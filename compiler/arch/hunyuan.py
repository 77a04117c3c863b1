"""`hunyuan-dense` (Tencent Hunyuan 0.5B-7B dense), `hunyuan_vl` (HunyuanOCR's text stack) and
`hunyuan-moe` (Hunyuan-A13B), as llama.cpp's src/models/hunyuan-vl.cpp (whose loader and graph
hunyuan-dense reuses) and hunyuan-moe.cpp build them: llama's pre-norm block
(compiler/arch/prenorm.py) with NeoX RoPE over whole heads (no factors: the loaders create no
rope_freqs), Q and K RMS-normed per head AFTER RoPE (`attn_q_norm`, `attn_k_norm` [head_dim]), Q/K/V
biases where present; `output.weight`, else tied.

hunyuan-dense: with `rope.scaling.alpha` > 0 (XDRoPE's NTK-aware scaling) the RoPE base is
rope.freq_base × alpha^(head_dim / (head_dim − 2)), in float32 as its loader computes it. With
`rope.dimension_sections` its graph calls ggml_rope_multi with the NeoX rope type, which without
the M-RoPE mode bit rotates by the token's position alone: plain NeoX RoPE, as planned.

hunyuan_vl: the same loader and graph; its rope type is M-RoPE when the sections set the t and h
counts (use_mrope), which for a text token is NeoX RoPE where the sections give every rotary pair a
text position (compiler/arch/mrope.py refuses the others), else NeoX. Images are the vision
tower's (a separate mmproj file rfc does not run): this serves the text part.

hunyuan-moe: every FFN is `expert_count` routed SwiGLU experts `feed_forward_length` wide (the
loader sizes them so; `expert_feed_forward_length` is required, as llama.cpp requires it, and
not used), softmax router, the top
`expert_used_count` renormalized, no weight scale, plus a shared SwiGLU expert
`expert_shared_feed_forward_length` wide (else `feed_forward_length`), added beside them. Its loader
reads no `rope.scaling.alpha`.
"""

from dataclasses import replace

import numpy as np

from rfc.compiler.arch import mrope, prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, Sizes, read_experts
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", qk_norm_after_rope=True)


def _alpha_base(md: Metadata, sizes: Sizes, rope: Rope) -> Rope:
    """llama_model_hunyuan_vl::load_arch_hparams: base * powf(alpha, dim / (dim - 2)) when alpha > 0."""
    alpha = md.float("rope.scaling.alpha", 0.0, 1e9, default=0.0)
    if alpha <= 0.0 or sizes.head_dim <= 2:
        return rope
    f32 = np.float32
    base = f32(rope.freq_base) * np.power(f32(alpha), f32(sizes.head_dim) / f32(sizes.head_dim - 2), dtype=f32)
    if not np.isfinite(base) or base > 1e12:
        raise CompileError(f"{md.path}: {md.key('rope.scaling.alpha')} = {alpha} makes the RoPE base {float(base)}")
    return replace(rope, freq_base=float(base))


def _dense_rope(md: Metadata, sizes: Sizes, rope: Rope) -> Rope:
    mrope.read(md, required=False)  # read, bounded; no effect on hunyuan-dense's text (see above)
    return _alpha_base(md, sizes, rope)


def build_dense(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "hunyuan-dense", BLOCK, rope=_dense_rope)


_VL_MROPE = mrope.rope_hook(required=False, interleaved=False, when_used=True)


def _vl_rope(md: Metadata, sizes: Sizes, rope: Rope) -> Rope:
    return _alpha_base(md, sizes, _VL_MROPE(md, sizes, rope))


def build_vl(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "hunyuan_vl", BLOCK, rope=_vl_rope)


def build_moe(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "hunyuan-moe")
    count, used = read_experts(md)
    if not count:
        raise CompileError(
            f"{md.path}: hunyuan-moe needs {md.key('expert_count')} and {md.key('expert_used_count')} > 0"
        )
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    md.int("expert_feed_forward_length", 1, MAX_FF)  # required by llama.cpp's loader, which then sizes experts by n_ff
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) or n_ff
    e = Experts(count, used, n_ff, shared=1, shared_ff=shared_ff)

    def ffn(b: ModelBuilder, i: int, sizes: Sizes, _: int) -> bool:
        moe_block(b, i, sizes, e)
        return True

    return prenorm.build(model, "hunyuan-moe", BLOCK, ffn=ffn, declare=lambda b,
                         sizes: declare_expert_buffers(b, sizes.n_embd, e), extra=e.hparams())  # fmt: skip
