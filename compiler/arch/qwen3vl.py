"""`qwen3vl` and `qwen3vlmoe` (Qwen3-VL, its MoE variants): the text stack of the vision models, as
llama.cpp's src/models/qwen3vl.cpp and qwen3vlmoe.cpp build it for text tokens: qwen3's and
qwen3moe's blocks (per-head Q/K norms before RoPE over whole heads; softmax-routed experts,
renormalized) with interleaved M-RoPE (`rope.dimension_sections`, required, as llama.cpp requires
it). For text llama.cpp gives the t, h and w sections the token's position, so the interleaved
sections turn as NeoX RoPE does where they give every rotary pair one of those (compiler/arch/mrope.py
refuses the others): planned so. The deepstack inputs (`n_deepstack_layers`) add the image
embedding's extra slices to the first layers' outputs; for text those slices are llama.cpp's zero
padding, so they add nothing. Images are the vision tower's (a separate mmproj file rfc does not
run): this serves the text part.
"""

from rfc.compiler.arch import mrope, qwen3moe
from rfc.compiler.arch.common import llama_like, read_sizes
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import moe_transformer
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

_ROPE = mrope.rope_hook(required=True, interleaved=True)  # interleaved M-RoPE (IMROPE)


def _check(model: GGUFModel, arch: str) -> None:
    """Whole-head RoPE, the deepstack count bounded (the M-RoPE sections, required: _ROPE)."""
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    n_rot = md.int("rope.dimension_count", 2, sizes.head_dim, default=sizes.head_dim)
    if n_rot != sizes.head_dim:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {n_rot} != head size {sizes.head_dim} "
                           f"({arch} rotates whole heads; llama.cpp refuses this file too)")  # fmt: skip
    md.int("n_deepstack_layers", 0, sizes.n_layers, default=0)


def build(model: GGUFModel) -> ModelSpec:
    _check(model, "qwen3vl")
    # build_ffn(up, NULL, NULL, ...)
    return llama_like(model, "qwen3vl", rope_style="neox", qk_norm=True, ffn_bias=False, ffn_scale=False, rope=_ROPE)


def build_moe(model: GGUFModel) -> ModelSpec:
    _check(model, "qwen3vlmoe")
    return moe_transformer(model, "qwen3vlmoe", qwen3moe._experts, full_rotary=True, rope=_ROPE)
