"""`llama` (Llama 1-3, Mistral, TinyLlama, SmolLM, Mixtral, ...): adjacent-pair RoPE over the
whole head (llama.cpp refuses another rope.dimension_count), biases only where the file has
them, `rope_freqs.weight` when present (Llama 3.1 frequency factors), and a mixture of
experts when the file declares `expert_count` (Mixtral)."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    spec = llama_like(model, "llama", rope_style="adjacent")
    hp = spec.hparams
    if hp.n_rot != hp.head_dim:
        raise CompileError(
            f"{model.path.name}: llama.rope.dimension_count {hp.n_rot} != head size {hp.head_dim} "
            "(llama rotates whole heads; llama.cpp refuses this file too)"
        )
    return spec
