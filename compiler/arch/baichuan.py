"""`baichuan` (Baichuan 1 and 2, 7B and 13B), as llama.cpp's src/models/baichuan.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) without biases on attn_output, a SwiGLU FFN without biases
or weight scales, `output.weight` required. llama.cpp decides the positions by the layer count:
32 layers (7B) adjacent-pair RoPE over whole heads; 40 layers (13B) ALiBi with a maximum bias of 8;
any other count (its LLM_TYPE_UNKNOWN) neither RoPE nor ALiBi, and so here."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.classic import ALIBI_BIAS
from rfc.compiler.arch.metadata import MAX_LAYERS, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ROPE_LAYERS, ALIBI_LAYERS = 32, 40  # llama.cpp's 7B and 13B


def build(model: GGUFModel) -> ModelSpec:
    n_layers = Metadata(model, "baichuan").int("block_count", 1, MAX_LAYERS)
    alibi = ALIBI_BIAS if n_layers == ALIBI_LAYERS else None
    block = prenorm.Block("adjacent", out_bias=False, out_bias_loaded=False, output_required=True,
                          rope=n_layers == ROPE_LAYERS, alibi=alibi)  # fmt: skip
    positions = "rope" if block.rope else f"alibi {alibi:g}" if alibi else "none"
    return prenorm.build(model, "baichuan", block, extra={"positions": positions})
