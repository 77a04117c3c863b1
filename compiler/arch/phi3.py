"""`phi3` (Phi-3, Phi-3.5, Phi-4 mini): llama-style blocks with NeoX RoPE, a fused `attn_qkv`
(Q, K, V rows) and a fused `ffn_up` (gate rows, then up rows), both split into plain weights
at compile time (see common.qkv_weights). llama.cpp ignores phi3's `attention.sliding_window`
(its phi3 loader turns sliding windows off), and so does this recipe.

Phi-3 long-context files carry two sets of RoPE frequency factors; llama.cpp picks
`rope_factors_long` when the context it serves exceeds `rope.scaling.original_context_length`,
else `rope_factors_short`. A bundle serves the model's whole training context, so the same
rule is applied to that, together with the file's `rope.scaling.attn_factor`."""

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, llama_like
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _factors(b: ModelBuilder, md: Metadata, rope: Rope) -> str | None:
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    n_ctx_orig = md.int("rope.scaling.original_context_length", 1, MAX_CONTEXT, default=n_ctx)
    which = "long" if n_ctx > n_ctx_orig else "short"
    return b.optional_tensor(f"rope_factors_{which}.weight", f"rope_factors_{which}", (rope.n_rot // 2,))


def build(model: GGUFModel) -> ModelSpec:
    return llama_like(model, "phi3", rope_style="neox", fused_gate_up=True, factors=_factors)
