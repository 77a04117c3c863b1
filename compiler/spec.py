"""Stage 2: the model spec — what a recipe (compiler/arch/) makes of a GGUF.

`build_spec` picks the recipe for the GGUF's `general.architecture`; the recipe reads the
metadata (bounded, see arch/metadata.py), checks every tensor it uses against the shapes the
hyperparameters imply, and returns the plan together with the weights the plan reads.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from rfc.artifacts.plan import Plan
from rfc.compiler.gguf_reader import GGUFModel, SourceTensor
from rfc.compiler.weights import WeightUse


@dataclass(frozen=True)
class HParams:
    """The model's size and shape, for people (rfc inspect) and for kernel planning. Layers
    may differ in ways this does not show: the plan's op attributes are the authority."""

    architecture: str
    name: str
    context_length: int
    n_embd: int
    n_ff: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_rot: int
    rope_style: str
    rope_freq_base: float
    rope_freq_scale: float
    rope_scaling_type: str
    rms_eps: float
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool
    rope_freq_factors: bool
    extra: dict[str, Any] = field(default_factory=dict)  # architecture-specific, for inspect

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    hparams: HParams
    plan: Plan
    weights: tuple[WeightUse, ...]  # in the order they are written to weights.bin
    sources: dict[str, SourceTensor]  # every GGUF tensor the weights are made from


def build_spec(model: GGUFModel) -> ModelSpec:
    """The recipe's spec, checked: every math-changing key of the file honoured by the recipe or
    at its neutral value (arch/math_keys.py), and the plan valid (a plan the recipe made from a
    hostile file's numbers is refused in one line, like any other bad input)."""
    from rfc.artifacts.errors import BundleError
    from rfc.artifacts.plan import validate_plan
    from rfc.compiler.arch import recipe_for
    from rfc.compiler.arch.math_keys import check_math_keys
    from rfc.compiler.errors import CompileError

    spec = recipe_for(model)(model)
    check_math_keys(model, spec.hparams.architecture)
    try:
        validate_plan(spec.plan)
    except BundleError as e:
        raise CompileError(f"{model.path.name}: the model's numbers make an invalid plan: {e}") from None
    return spec
