"""The execution plan: an ordered list of ops over named activation buffers and weights.

The compiler lowers a model architecture to a plan; the runtime executes it without knowing
which architecture it came from. Buffer shapes are symbolic in the batch sizes:

- ``T``: tokens fed this step (all sequences' new tokens, concatenated),
- ``R``: rows whose logits are wanted (by default the last fed token of each sequence).

Per-step batch inputs the runtime supplies (not buffers of the plan): ``tokens`` and
``positions`` (int32[T]), the sequence of each token, each sequence's KV block table, and
``logit_rows`` (int32[R], indices into T).
"""

from dataclasses import dataclass, field

import msgpack

from rfc.artifacts.errors import BundleError

PLAN_FILE = "plan.msgpack"

# Every op kind the runtime must implement, with the attributes each carries. This table is
# the contract: a plan using an op or omitting an attribute not listed here is refused.
OP_ATTRS: dict[str, tuple[str, ...]] = {
    # x[T, n_embd] = dequant(weight)[tokens]
    "embed": (),
    # out = x / sqrt(mean(x^2) + eps) * weight
    "rmsnorm": ("eps",),
    # out[M, N] = x[M, K] @ weight[N, K]^T, weight in its stored format
    "matmul": (),
    # x[M, N] += bias[N]
    "add_bias": (),
    # rotary embedding of q and k in place; style "adjacent" (pairs 2i, 2i+1: llama) or
    # "neox" (pairs i, i + n_rot/2: qwen2); freq_i = freq_scale * base^(-2i/n_rot) / factor_i
    "rope": ("n_heads", "n_kv_heads", "head_dim", "n_rot", "style", "freq_base", "freq_scale"),
    # store k, v rows [T, n_kv_heads*head_dim] of this step into layer's paged cache
    "kv_write": ("layer",),
    # causal attention of q over the layer's paged cache (all positions <= the token's own),
    # grouped-query: query head h reads kv head h // (n_heads / n_kv_heads)
    "attention": ("layer", "n_heads", "n_kv_heads", "head_dim", "scale"),
    # out = silu(gate) * up
    "swiglu": (),
    # out = a + b
    "add": (),
    # out[R, D] = x[logit_rows]
    "gather_rows": (),
}


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[str | int, ...]
    dtype: str = "f32"


@dataclass(frozen=True)
class Op:
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class KVSpec:
    n_layers: int
    n_kv_heads: int
    head_dim: int
    # Storage format of cached keys and values: "f16" (what llama.cpp uses; greedy decoding
    # can hinge on the rounding, so matching it matters) or "f32".
    dtype: str = "f16"


@dataclass(frozen=True)
class Plan:
    buffers: tuple[Buffer, ...]
    ops: tuple[Op, ...]
    kv: KVSpec
    input_tokens: str
    output_logits: str
    vocab_size: int
    n_embd: int
    context_length: int

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def weight_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for op in self.ops:
            for w in op.weights:
                seen.setdefault(w)
        return list(seen)


def pack_plan(plan: Plan) -> bytes:
    validate_plan(plan)
    return msgpack.packb(
        {
            "buffers": [[b.name, list(b.shape), b.dtype] for b in plan.buffers],
            "ops": [
                {
                    "kind": op.kind,
                    "inputs": list(op.inputs),
                    "outputs": list(op.outputs),
                    "weights": list(op.weights),
                    # sorted so that dict construction order never shows in the bytes
                    "attrs": dict(sorted(op.attrs.items())),
                }
                for op in plan.ops
            ],
            "kv": [plan.kv.n_layers, plan.kv.n_kv_heads, plan.kv.head_dim, plan.kv.dtype],
            "input_tokens": plan.input_tokens,
            "output_logits": plan.output_logits,
            "vocab_size": plan.vocab_size,
            "n_embd": plan.n_embd,
            "context_length": plan.context_length,
        }
    )


def unpack_plan(data: bytes) -> Plan:
    try:
        raw = msgpack.unpackb(data)
        plan = Plan(
            buffers=tuple(Buffer(n, tuple(s), d) for n, s, d in raw["buffers"]),
            ops=tuple(
                Op(
                    kind=o["kind"],
                    inputs=tuple(o["inputs"]),
                    outputs=tuple(o["outputs"]),
                    weights=tuple(o["weights"]),
                    attrs=dict(o["attrs"]),
                )
                for o in raw["ops"]
            ),
            kv=KVSpec(*raw["kv"]),
            input_tokens=raw["input_tokens"],
            output_logits=raw["output_logits"],
            vocab_size=int(raw["vocab_size"]),
            n_embd=int(raw["n_embd"]),
            context_length=int(raw["context_length"]),
        )
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise BundleError(f"{PLAN_FILE} is malformed: {e}") from e
    validate_plan(plan)
    return plan


def validate_plan(plan: Plan) -> None:
    if plan.kv.dtype not in ("f16", "f32"):
        raise BundleError(f"plan KV cache dtype {plan.kv.dtype!r} is not f16 or f32")
    names = {b.name for b in plan.buffers}
    for i, op in enumerate(plan.ops):
        if op.kind not in OP_ATTRS:
            raise BundleError(f"plan op {i} has unknown kind {op.kind!r}")
        missing = [a for a in OP_ATTRS[op.kind] if a not in op.attrs]
        if missing:
            raise BundleError(f"plan op {i} ({op.kind}) lacks attributes {missing}")
        for b in (*op.inputs, *op.outputs):
            if b not in names:
                raise BundleError(f"plan op {i} ({op.kind}) names unknown buffer {b!r}")
