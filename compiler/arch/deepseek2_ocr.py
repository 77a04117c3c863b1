"""`deepseek2-ocr` (DeepSeek-OCR): the text stack of the vision model, as llama.cpp's
src/models/deepseek2ocr.cpp loads it and deepseek2.cpp's graph runs it for text tokens (its `is_ocr`
path): deepseek2's MoE stack without MLA (compiler/arch/moe.py):

- attention: multi-head, K and V with as many heads as Q (the loader makes attn_k and attn_v
  n_embd x n_embd), heads of n_embd / head_count, every projection times its weight scale and plus
  its bias where the file has them (build_qkv), `attn_output` times its scale; RoPE NeoX over whole
  heads at base 10000 (llama.cpp asserts the base), unscaled, scores x 1/sqrt(head size);
- the FFN: the first `leading_dense_block_count` layers a dense SwiGLU, the rest deepseek2's experts
  (`expert_feed_forward_length` wide, `expert_gating_func` with softmax for 0 or absent, the selection
  bias `exp_probs_b` where present, `expert_weights_norm`, `expert_weights_scale`) beside
  `expert_shared_count` shared experts; no FFN weight scales (build_moe_ffn and build_ffn get none);
- `output.weight` (else tied) without its scale (a plain ggml_mul_mat).

llama.cpp's graph scales the scores by mscale^2 from the context's RoPE scaling while rotating unscaled;
files with RoPE scaling are refused (no released model has it). Images are the vision tower's (a separate
mmproj file rfc does not run): this serves the text part.
"""

from rfc.compiler.arch import deepseek2
from rfc.compiler.arch.common import Rope, Sizes
from rfc.compiler.arch.metadata import MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "deepseek2-ocr"


def _rope(md: Metadata, sizes: Sizes, rope: Rope) -> Rope:
    """ggml_rope_ext(q, pos, n_embd / n_head, NeoX, 0, freq_base, 1, 0, 1, 0, 0) on multi-head attention."""
    if sizes.n_kv_heads != sizes.n_heads or sizes.q_width != sizes.n_embd:
        raise CompileError(f"{md.path}: {ARCH} attends with K and V of head_count heads filling n_embd (its loader "
                           f"makes them n_embd x n_embd): got {sizes.n_kv_heads} KV heads of {sizes.n_heads} x "
                           f"{sizes.head_dim} for n_embd {sizes.n_embd}")  # fmt: skip
    if abs(rope.freq_base - 10000.0) >= 1e-4:
        raise CompileError(f"{md.path}: {md.key('rope.freq_base')} {rope.freq_base}: llama.cpp's {ARCH} graph asserts "
                           "10000")  # fmt: skip
    if rope.freq_scale != 1.0 or rope.magnitude != 1.0 or rope.ext_factor:
        raise CompileError(f"{md.path}: RoPE scaling in a {ARCH} file: llama.cpp's graph rotates unscaled and scales "
                           "the scores by its mscale^2; not planned")  # fmt: skip
    return Rope(sizes.head_dim, "neox", 10000.0, 1.0, "none")


def _experts(md: Metadata) -> tuple[Experts, int]:
    return deepseek2._experts(md, md.int("block_count", 1, MAX_LAYERS))  # read_sizes bounded it already


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, ARCH, _experts, rope=_rope, output_scale=False)
