"""`neo-bert` (NeoBERT), as llama.cpp's src/models/neo-bert.cpp builds it: pre-norm blocks
(compiler/arch/prenorm.py) as an encoder. RMS norms; one fused `attn_qkv` (required: the loader reads no
separate Q, K, V) without a bias; adjacent-pair RoPE (llama.cpp's NORM) over `rope.dimension_count`;
attention over the whole input unless `attention.causal` says otherwise; `attn_output` without a bias;
the FFN ffn_down(SwiGLU(ffn_up h)) with `ffn_up` holding 2 n_ff rows, the gate's first (LLM_FFN_SWIGLU
over one matmul), no biases; the rows RMS-normed by `enc.output_norm` are the model's output, pooled by
`pooling_type`, or with rank pooling scored by the `cls` / `cls.output` head over the first row (the
loader reads both, optional). Weight scales as llama.cpp's generic loading takes them: the attention's
applied, the FFN's known and unused; no projection bias is read (a file with one is refused, as
llama.cpp refuses it)."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, glu_ffn
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block(
    "adjacent",
    full_rotary=False,
    out_bias=False,
    out_bias_loaded=False,
    encoder=True,
    output_norm="enc.output_norm",
    classifier=True,
    refused=(".bias",),
)


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    glu_ffn(b, i, sizes.n_embd, n_ff, fused_gate_up=True, bias=False, scale=False)
    return False


def build(model: GGUFModel) -> ModelSpec:
    separate = next((t for t in model.tensors if t.startswith("blk.") and t.endswith(".attn_q.weight")), None)
    if separate is not None:
        raise CompileError(
            f"{model.path.name}: tensor {separate[:80]}: neo-bert's loader reads one fused attn_qkv only"
        )
    return prenorm.build(model, "neo-bert", BLOCK, ffn=_ffn)
