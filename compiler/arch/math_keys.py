"""Never silently wrong, for metadata: the `<arch>.*` keys that change a model's math.

A recipe reads the keys it applies (through Metadata, which records every key asked for). A key
of this table that the recipe never asked for is refused unless the file holds it at a neutral
value, the value that computes the same as its absence: a recipe that does not know a key must
not turn a soft-capped, scaled or clamped model into wrong logits without a word.

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
}


def _neutral(value: Any, neutral: tuple[float, ...]) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(v, numbers.Real) and float(v) in neutral for v in values)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_math_keys(model: GGUFModel, arch: str) -> None:
    """Refuses the first math-changing key the recipe did not read that is not neutral."""
    for suffix, neutral in MATH_KEYS.items():
        key = f"{arch}.{suffix}"
        if key in model.keys_read:
            continue
        if key in model.unread:
            raise CompileError(f"{model.path.name}: metadata {key} changes the math and rfc's {arch} recipe does not apply it "
                               "(refused rather than computed without it)")
        if key in model.metadata and not _neutral(model.metadata[key], neutral):
            raise CompileError(f"{model.path.name}: metadata {key} = {_show(model.metadata[key])} changes the math and rfc's "
                               f"{arch} recipe does not apply it (refused rather than computed without it)")
