"""Stage 2: the model spec. Architecture knowledge lives here and nowhere else.

Every hyperparameter comes from the GGUF metadata; the tensors present are checked
against the shapes the hyperparameters imply.
"""

from dataclasses import asdict, dataclass
from typing import Any

from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel, SourceTensor


@dataclass(frozen=True)
class Architecture:
    """What distinguishes one supported architecture from another, as data."""

    name: str
    rope_style: str  # "adjacent" (GGML rope mode 0) or "neox" (mode 2)
    qkv_bias: bool  # QKV biases are required


ARCHITECTURES = {
    "llama": Architecture("llama", rope_style="adjacent", qkv_bias=False),
    "qwen2": Architecture("qwen2", rope_style="neox", qkv_bias=True),
}


@dataclass(frozen=True)
class HParams:
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    hparams: HParams
    tensors: dict[str, SourceTensor]  # every tensor the model uses, by GGUF name
    roles: dict[str, str]  # GGUF name -> role


def build_spec(model: GGUFModel) -> ModelSpec:
    md = model.metadata
    arch_name = md.get("general.architecture")
    if arch_name is None:
        raise CompileError(f"{model.path.name}: no general.architecture in the metadata")
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise CompileError(f"{model.path.name}: unsupported architecture '{arch_name}' (supported: {supported})")
    hp = _hparams(model, arch)
    roles = _expected_roles(hp)
    tensors = {}
    for name, (role, shape) in roles.items():
        t = model.tensors.get(name)
        if t is None:
            raise CompileError(f"{model.path.name}: missing tensor {name}")
        if t.shape != shape:
            raise CompileError(f"{model.path.name}: shape mismatch for {name}: expected {list(shape)}, found {list(t.shape)}")
        tensors[name] = t
    return ModelSpec(hparams=hp, tensors=tensors, roles={n: r for n, (r, _) in roles.items()})


def _key(md: dict[str, Any], arch: str, key: str, path: str, default: Any = None, required: bool = True) -> Any:
    full = f"{arch}.{key}"
    if full in md:
        return md[full]
    if required and default is None:
        raise CompileError(f"{path}: missing metadata {full}")
    return default


def _hparams(model: GGUFModel, arch: Architecture) -> HParams:
    md, a, p = model.metadata, arch.name, model.path.name
    n_embd = int(_key(md, a, "embedding_length", p))
    n_heads = int(_key(md, a, "attention.head_count", p))
    n_kv_heads = int(_key(md, a, "attention.head_count_kv", p, default=n_heads))
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise CompileError(f"{p}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}")
    head_dim = int(_key(md, a, "attention.key_length", p, default=n_embd // n_heads))
    value_dim = int(_key(md, a, "attention.value_length", p, default=head_dim))
    if value_dim != head_dim:
        raise CompileError(f"{p}: attention.value_length {value_dim} != key_length {head_dim} is not supported")
    n_rot = int(_key(md, a, "rope.dimension_count", p, default=head_dim))
    if n_rot % 2 or n_rot > head_dim:
        raise CompileError(f"{p}: rope.dimension_count {n_rot} must be even and at most the head size {head_dim}")
    scaling_type = str(_key(md, a, "rope.scaling.type", p, default="none"))
    freq_scale = 1.0
    if scaling_type == "linear":
        freq_scale = 1.0 / float(_key(md, a, "rope.scaling.factor", p, default=1.0))
    elif scaling_type not in ("none",):
        raise CompileError(f"{p}: rope scaling type '{scaling_type}' is not supported (supported: none, linear)")
    if "token_embd.weight" not in model.tensors:
        raise CompileError(f"{p}: missing tensor token_embd.weight")
    vocab_size = model.tensors["token_embd.weight"].shape[0]
    declared_vocab = _key(md, a, "vocab_size", p, required=False)
    if declared_vocab is not None and int(declared_vocab) != vocab_size:
        raise CompileError(f"{p}: {a}.vocab_size {declared_vocab} != token_embd rows {vocab_size}")
    has_bias = "blk.0.attn_q.bias" in model.tensors
    return HParams(
        architecture=a,
        name=str(md.get("general.name", model.path.stem)),
        context_length=int(_key(md, a, "context_length", p)),
        n_embd=n_embd,
        n_ff=int(_key(md, a, "feed_forward_length", p)),
        n_layers=int(_key(md, a, "block_count", p)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        n_rot=n_rot,
        rope_style=arch.rope_style,
        rope_freq_base=float(_key(md, a, "rope.freq_base", p, default=10000.0)),
        rope_freq_scale=freq_scale,
        rope_scaling_type=scaling_type,
        rms_eps=float(_key(md, a, "attention.layer_norm_rms_epsilon", p)),
        vocab_size=vocab_size,
        tied_embeddings="output.weight" not in model.tensors,
        qkv_bias=arch.qkv_bias or has_bias,
        rope_freq_factors="rope_freqs.weight" in model.tensors,
    )


def _expected_roles(hp: HParams) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name -> (role, logical shape), in execution order."""
    e, q, kv, ff = hp.n_embd, hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim, hp.n_ff
    roles: dict[str, tuple[str, tuple[int, ...]]] = {"token_embd.weight": ("token_embd", (hp.vocab_size, e))}
    if hp.rope_freq_factors:
        roles["rope_freqs.weight"] = ("rope_freqs", (hp.n_rot // 2,))
    for i in range(hp.n_layers):
        b = f"blk.{i}."
        roles[b + "attn_norm.weight"] = ("attn_norm", (e,))
        roles[b + "attn_q.weight"] = ("attn_q", (q, e))
        roles[b + "attn_k.weight"] = ("attn_k", (kv, e))
        roles[b + "attn_v.weight"] = ("attn_v", (kv, e))
        if hp.qkv_bias:
            roles[b + "attn_q.bias"] = ("attn_q_bias", (q,))
            roles[b + "attn_k.bias"] = ("attn_k_bias", (kv,))
            roles[b + "attn_v.bias"] = ("attn_v_bias", (kv,))
        roles[b + "attn_output.weight"] = ("attn_output", (e, q))
        roles[b + "ffn_norm.weight"] = ("ffn_norm", (e,))
        roles[b + "ffn_gate.weight"] = ("ffn_gate", (ff, e))
        roles[b + "ffn_up.weight"] = ("ffn_up", (ff, e))
        roles[b + "ffn_down.weight"] = ("ffn_down", (e, ff))
    roles["output_norm.weight"] = ("output_norm", (e,))
    if not hp.tied_embeddings:
        roles["output.weight"] = ("output", (hp.vocab_size, e))
    return roles
