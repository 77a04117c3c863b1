"""`refact` (Refact-1.6B-fim), as llama.cpp's src/models/refact.cpp builds it (compiler/arch/prenorm.py):
llama's pre-norm block with RMS norms and a SwiGLU FFN, ALiBi with llama.cpp's fixed maximum bias
of 8 and no RoPE, Q/K/V biases where present (build_qkv). Its loader reads an `attn_output.bias`,
FFN biases and RoPE factors that its graph never applies: known and unused here too. A file with
experts is refused (the loader has a branch for them; the graph runs a dense FFN)."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.classic import ALIBI_BIAS
from rfc.compiler.arch.common import Sizes, glu_ffn
from rfc.compiler.arch.metadata import MAX_EXPERTS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

UNAPPLIED = "llama.cpp's refact loader reads it and its graph does not apply it"
BLOCK = prenorm.Block("adjacent", full_rotary=False, out_bias=False, rope=False, alibi=ALIBI_BIAS)


def _declare(b: ModelBuilder, sizes: Sizes) -> None:
    for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
        b.unused(name, UNAPPLIED)


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    for name in ("ffn_gate", "ffn_up", "ffn_down"):
        b.unused(f"blk.{i}.{name}.bias", UNAPPLIED)
    glu_ffn(b, i, sizes.n_embd, n_ff, bias=False, scale=False)
    return False


def build(model: GGUFModel) -> ModelSpec:
    if Metadata(model, "refact").int("expert_count", 0, MAX_EXPERTS, default=0):
        raise CompileError(f"{model.path.name}: a refact file with experts: llama.cpp's refact graph runs a dense FFN")
    extra = {"positions": f"alibi {ALIBI_BIAS:g}"}
    return prenorm.build(model, "refact", BLOCK, ffn=_ffn, declare=_declare, extra=extra)
