"""Never silently wrong, for metadata: the `<arch>.*` keys that change a model's math.

A recipe reads the keys it applies (through Metadata, which records every key asked for). A key
of this table that the recipe never asked for is refused unless the file holds it at a neutral
value, the value that computes the same as its absence: a recipe that does not know a key must
not turn a soft-capped, scaled or clamped model into wrong logits without a word.

llama.cpp reads each of these keys only for the architectures whose load_hparams asks for it
(READ_BY, from src/models/*.cpp); for any other architecture the key has no effect in llama.cpp,
whatever its value, and rfc ignores it too. llama.cpp's own model saver writes
final_logit_softcapping 30, logit_scale 0, router_logit_softcapping 30 and more into every file,
for every architecture: refusing those would refuse files llama.cpp runs exactly. So a key
refuses a model only for an architecture llama.cpp applies it to and rfc's recipe does not.

A recipe that deliberately leaves a key alone (llama.cpp ignores it for that architecture too)
says so with `Metadata.ignored`, which records it as read.
"""

import numbers
from typing import Any

from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel

# key (after `<arch>.`) -> its neutral values (an array is neutral when every entry is)
MATH_KEYS: dict[str, tuple[float, ...]] = {
    "final_logit_softcapping": (0.0,),  # logits = cap * tanh(logits / cap)
    "attn_logit_softcapping": (0.0,),  # the same on every attention score
    "router_logit_softcapping": (0.0,),  # the same on the experts' router logits
    "attention.clamp_kqv": (0.0,),  # Q, K and V clamped to [-c, c] after their matmuls
    "attention.scale": (0.0,),  # the attention's score scale instead of 1/sqrt(head_dim)
    "attention.temperature_scale": (0.0,),  # q times 1 + s ln(floor(pos / n) + 1)
    "attention.max_alibi_bias": (0.0,),  # ALiBi position biases
    "logit_scale": (1.0,),  # the logits multiplied (or divided) by it
    "residual_scale": (0.0, 1.0),  # every sublayer's output times it before the residual add
    "embedding_scale": (0.0, 1.0),  # the token embeddings times it
    "swiglu_clamp_exp": (0.0,),  # per-layer clamps of the experts' SwiGLU
    "swiglu_clamp_shexp": (0.0,),  # ... and of the shared experts'
    "rope.scaling.yarn_log_multiplier": (0.0,),  # YaRN's magnitude correction
    "rope.scaling.yarn_beta_fast": (32.0,),  # YaRN's ramp
    "rope.scaling.yarn_beta_slow": (1.0,),
    "rescale_every_n_layers": (0.0,),  # the residual halved after every n-th layer
}

# key (after `<arch>.`) -> the architectures (general.architecture) whose llama.cpp loader reads it
# (src/models/<arch>.cpp, load_arch_hparams; mistral4 runs deepseek2's); llama_model_base::load_hparams reads
# none of them.
_GRANITES = ("granite", "granitemoe", "granitehybrid", "graniteswitch", "granite_swa")
READ_BY: dict[str, frozenset[str]] = {
    "final_logit_softcapping": frozenset(("gemma2", "gemma3", "gemma4", "grok", "dflash", "muse-glimmer")),
    "attn_logit_softcapping": frozenset(("gemma2", "grok")),
    "router_logit_softcapping": frozenset(("grok",)),
    "attention.clamp_kqv": frozenset(("dbrx", "mpt", "olmo")),
    "attention.scale": frozenset((*_GRANITES, "dflash")),
    "attention.temperature_scale": frozenset(("deepseek2", "mistral3", "mistral4")),
    "attention.max_alibi_bias": frozenset(("jais", "mpt")),
    "logit_scale": frozenset(
        (*_GRANITES, "cohere2", "cohere2moe", "command-r", "dflash", "grok", "minicpm", "muse-glimmer", "talkie")
    ),
    "residual_scale": frozenset((*_GRANITES, "minicpm", "minimax-01")),
    "embedding_scale": frozenset((*_GRANITES, "dflash", "grok", "hrm_text", "minicpm")),
    "swiglu_clamp_exp": frozenset(("bailingmoe3", "deepseek4", "dflash", "glm5-next", "hy_v4", "maple", "step35")),
    "swiglu_clamp_shexp": frozenset(("bailingmoe3", "deepseek4", "dflash", "glm5-next", "step35")),
    "rope.scaling.yarn_log_multiplier": frozenset(("deepseek2", "deepseek32", "mistral3", "mistral4")),
    "rope.scaling.yarn_beta_fast": frozenset(("grok", "mistral3")),
    "rope.scaling.yarn_beta_slow": frozenset(("grok", "mistral3")),
    "rescale_every_n_layers": frozenset(("rwkv6",)),
}


def _neutral(value: Any, neutral: tuple[float, ...]) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(v, numbers.Real) and float(v) in neutral for v in values)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_math_keys(model: GGUFModel, arch: str) -> None:
    """Refuses the first math-changing key the recipe did not read that is not neutral, among
    those llama.cpp applies for `arch` (the others change nothing in llama.cpp either)."""
    for suffix, neutral in MATH_KEYS.items():
        key = f"{arch}.{suffix}"
        if key in model.keys_read or arch not in READ_BY[suffix]:
            continue
        if key in model.unread:
            raise CompileError(
                f"{model.path.name}: metadata {key} changes the math and rfc's {arch} recipe does not "
                f"apply it "
                "(refused rather than computed without it)"
            )
        if key in model.metadata and not _neutral(model.metadata[key], neutral):
            raise CompileError(
                f"{model.path.name}: metadata {key} = {_show(model.metadata[key])} changes the math and "
                f"rfc's {arch} recipe does not apply it (refused rather than computed without it)"
            )
