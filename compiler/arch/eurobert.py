"""`eurobert` (EuroBERT 210M / 610M / 2.1B), as llama.cpp's src/models/eurobert.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) as an encoder. RMS norms; Q, K and V separate or one fused
`attn_qkv`, with biases where the file has them (the loader's create_tensor_qkv); NeoX RoPE over
`rope.dimension_count`; attention over the whole input unless `attention.causal` says otherwise;
`attn_output` without a bias; a SwiGLU FFN without biases; the rows RMS-normed by `output_norm` are the
model's output, pooled by `pooling_type`. Weight scales as llama.cpp's generic loading takes them: the
attention's applied (build_qkv, build_attn), the FFN's known and unused. The loader reads no attn_output
or FFN biases and no `output.weight` (a file with one is refused, as llama.cpp refuses it); no
classifier head either, so rank pooling is refused."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", full_rotary=False, out_bias=False, out_bias_loaded=False, encoder=True)


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "eurobert", BLOCK)
