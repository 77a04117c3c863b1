"""`nanbeige` (Nanbeige 3/4), as llama.cpp's src/models/nanbeige.cpp builds it: llama's pre-norm
block (compiler/arch/prenorm.py) with adjacent-pair RoPE, `rope_freqs` factors where present,
Q/K/V biases and every weight scale where the file has them (build_qkv, build_attn and build_ffn all
take the scales), no `attn_output` bias (its loader has none), a SwiGLU FFN without biases;
`output.weight`, else tied. A looped stack (`num_loops` > 1) runs its layers that many times over,
each pass with a KV cache of its own and `output_norm` between passes unless
`skip_loop_final_norm` (prenorm.build's `loops`); such a file with weight `.scale` tensors is
refused (llama.cpp applies them in the first pass only)."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, glu_ffn
from rfc.compiler.arch.metadata import MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("adjacent", factors=True, full_rotary=False, out_bias=False, out_bias_loaded=False)


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    glu_ffn(b, i, sizes.n_embd, n_ff, bias=False, scale=True)  # build_ffn(up, NULL, up_s, ...)
    return False


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "nanbeige")
    n_layers = md.int("block_count", 1, MAX_LAYERS)
    loops = md.int("num_loops", 1, MAX_LAYERS, default=1)
    if n_layers * loops > MAX_LAYERS:  # as llama.cpp's loader bounds it
        raise CompileError(f"{model.path.name}: {loops} passes over {n_layers} layers exceed {MAX_LAYERS} layers")
    if loops > 1 and any(name.endswith(".scale") for name in model.tensors):
        # llama.cpp loads weight scales by logical layer (blk.{pass * layers + i}): past the first
        # pass it finds none, and runs those passes unscaled
        raise CompileError(f"{model.path.name}: a looped nanbeige with weight .scale tensors: llama.cpp applies them "
                           "in its first pass only; refused rather than computed either way")  # fmt: skip
    skip_norm = md.bool("skip_loop_final_norm", default=False)
    return prenorm.build(model, "nanbeige", BLOCK, ffn=_ffn, loops=loops, loop_norm=not skip_norm)
