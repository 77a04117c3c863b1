"""`baichuan` (Baichuan 1 and 2, 7B and 13B), as llama.cpp's src/models/baichuan.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) without biases on attn_output, a SwiGLU FFN without biases
or weight scales, `output.weight` required. llama.cpp decides the positions by the layer count:
32 layers (7B) adjacent-pair RoPE over whole heads; 40 layers (13B) ALiBi, which rfc has no op for
(refused by name); any other count (its LLM_TYPE_UNKNOWN) neither RoPE nor ALiBi, and so here."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.metadata import MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ROPE_LAYERS, ALIBI_LAYERS = 32, 40  # llama.cpp's 7B and 13B


def build(model: GGUFModel) -> ModelSpec:
    n_layers = Metadata(model, "baichuan").int("block_count", 1, MAX_LAYERS)
    if n_layers == ALIBI_LAYERS:
        raise CompileError(f"{model.path.name}: a {ALIBI_LAYERS}-layer baichuan (13B) attends with ALiBi position "
                           "biases, which rfc has no op for")  # fmt: skip
    block = prenorm.Block("adjacent", out_bias=False, out_bias_loaded=False, output_required=True,
                          rope=n_layers == ROPE_LAYERS)  # fmt: skip
    return prenorm.build(model, "baichuan", block, extra={"positions": "rope" if block.rope else "none"})
