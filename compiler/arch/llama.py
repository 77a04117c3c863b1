"""`llama` (Llama 1-3, Mistral, TinyLlama, SmolLM, Mixtral, ...): adjacent-pair RoPE over the
whole head (llama.cpp refuses another rope.dimension_count), biases only where the file has
them, `rope_freqs.weight` when present (Llama 3.1 frequency factors), and a mixture of
experts when the file declares `expert_count` (Mixtral).

`llama-embed` (llama-embed-nemotron-8b and other Llama-based embedding models): the same graph as
an encoder, as llama.cpp's src/models/llama-embed.cpp runs it (llama's graph without its KV cache
and LM head): attention over the whole input unless `attention.causal` says otherwise (its
converter writes false), the rows RMS-normed by `output_norm` the model's output, pooled by
`pooling_type`; `output.weight`, which the loader reads, is unused, and rank pooling is refused
(no classifier head is read)."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel, arch: str = "llama", encoder: bool = False) -> ModelSpec:
    spec = llama_like(model, arch, rope_style="adjacent", encoder=encoder)
    hp = spec.hparams
    if hp.n_rot != hp.head_dim:
        raise CompileError(
            f"{model.path.name}: {arch}.rope.dimension_count {hp.n_rot} != head size {hp.head_dim} "
            "(llama rotates whole heads; llama.cpp refuses this file too)"
        )
    return spec


def build_embed(model: GGUFModel) -> ModelSpec:
    return build(model, "llama-embed", encoder=True)
