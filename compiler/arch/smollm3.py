"""`smollm3` (SmolLM3): llama's block (adjacent-pair RoPE over whole heads, SwiGLU, RMS norms,
biases where the file has them) with every fourth layer's attention left without RoPE (NoPE:
layers 3, 7, 11, ...; llama.cpp fixes the step at 4, no key sets it). llama.cpp asserts that
RoPE covers the whole head; a file that says otherwise is refused here instead."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

NO_ROPE_LAYER_STEP = 4  # llama_model_smollm3::load_arch_hparams: hparams.n_no_rope_layer_step


def build(model: GGUFModel) -> ModelSpec:
    spec = llama_like(model, "smollm3", rope_style="adjacent", no_rope_step=NO_ROPE_LAYER_STEP, ffn_scale=False)
    hp = spec.hparams
    if hp.n_rot != hp.head_dim:
        raise CompileError(
            f"{model.path.name}: smollm3.rope.dimension_count {hp.n_rot} != head size {hp.head_dim} "
            "(smollm3 rotates whole heads; llama.cpp refuses this file too)"
        )
    return spec
