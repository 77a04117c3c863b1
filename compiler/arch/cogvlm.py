"""`cogvlm` (CogVLM, CogAgent): the text stack of the vision model, as llama.cpp's src/models/cogvlm.cpp
builds it for text tokens: llama's pre-norm block (compiler/arch/prenorm.py) whose Q, K and V come from
one fused `attn_qkv` matmul alone (build_lora_mm: its `.scale` loaded and not applied), `attn_output`
times its scale, no biases; the FFN SwiGLU without its weight scales; `output.weight`, else tied.

RoPE is ggml_rope(q, pos, head_dim, NeoX): NeoX pairs over whole heads at ggml's defaults, base 10000,
no scaling and no frequency factors, whatever the file's rope keys say (llama.cpp reads `rope_freqs`
and never applies it). The visual expert (`vis_attn_qkv`, `vis_attn_output`, `vis_gate`, `vis_up`,
`vis_down`) runs only on image embeddings, which come from the vision tower (a separate mmproj file
rfc does not run): loaded and unused for text, as in llama.cpp.

llama.cpp slices K and V out of the fused projection at offsets n_embd and 2 n_embd, each with
head_count_kv heads: the same rows as the plan's split only when head_count_kv = head_count and the
heads fill n_embd, which CogVLM's do; other files are refused.
"""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, Sizes, require_whole_heads
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", out_bias=False, out_bias_loaded=False, qkv_extras=False)
VISUAL_EXPERT = ("vis_attn_qkv", "vis_attn_output", "vis_gate", "vis_up", "vis_down")


def _rope(md: Metadata, sizes: Sizes, rope: Rope) -> Rope:
    require_whole_heads(md, rope, sizes, "cogvlm")  # the graph asserts n_rot == head_dim
    if sizes.n_kv_heads != sizes.n_heads or sizes.q_width != sizes.n_embd:
        raise CompileError(f"{md.path}: cogvlm slices K and V out of attn_qkv at n_embd and 2 n_embd: it needs "
                           f"head_count_kv = head_count and heads filling n_embd (got {sizes.n_kv_heads} of "
                           f"{sizes.n_heads} heads x {sizes.head_dim} for n_embd {sizes.n_embd})")  # fmt: skip
    return Rope(sizes.head_dim, "neox", 10000.0, 1.0, "none")  # ggml_rope's defaults


def _known(b: ModelBuilder, sizes: Sizes) -> None:
    b.unused("rope_freqs.weight", "cogvlm's graph calls ggml_rope, which takes no frequency factors")
    for i in range(sizes.n_layers):
        for name in VISUAL_EXPERT:
            b.unused(f"blk.{i}.{name}.weight", "the visual expert: run on image embeddings only")


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "cogvlm", BLOCK, rope=_rope, declare=_known)
