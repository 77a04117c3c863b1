"""The execution plan: an ordered list of ops over named activation buffers and weights.

The compiler lowers a model architecture to a plan; the runtime executes it without knowing
which architecture it came from. Buffer shapes are symbolic in the batch sizes:

- ``T``: tokens fed this step (all sequences' new tokens, concatenated),
- ``R``: rows whose logits are wanted (by default the last fed token of each sequence).

Per-step batch inputs the runtime supplies (not buffers of the plan): ``tokens`` and
``positions`` (int32[T]), the sequence of each token, each sequence's KV block table, and
``logit_rows`` (int32[R], indices into T), and each sequence's recurrent-state slot
(``state_slots``, int32[S]) for plans that declare state.

Recurrent state (hybrid models: LFM2's short convolutions, Gated DeltaNet, Mamba) is a
fixed-size float32 record per sequence beside the paged KV cache. The plan declares it in
``Plan.state`` (a StateSpec: one StateTensor per layer and kind, with its per-sequence
shape, e.g. a conv window [kernel - 1, channels] or a recurrent matrix [heads, dk, dv]); a
runtime keeps a pool of slots, each holding every tensor of the spec for one sequence, and
the step batch names each sequence's slot. An op that reads and writes state takes the
index of its StateTensor as the attribute ``state``; it reads the slot as the sequence's
state before the chunk's first token and leaves it as the state after the chunk's last. A
chunk that starts at position 0 starts from zeros (the op ignores what the slot held), so
a fresh or recomputed sequence never sees a previous owner's state.

OpKind names every op kind and OPS is the contract: each kind's arity and attributes, read
from the op registry (artifacts/ops: one descriptor per op, with its shape rule). A plan using
an op or omitting an attribute not listed there is refused; the shape rules check every op
against the buffers and the weight layout before any kernel runs (artifacts/validate.py).
"""

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from rfc.artifacts.errors import BundleError
from rfc.artifacts.ops import GLU_ACTIVATIONS, MOE_GATINGS, OPS, ROPE_STYLES, OpKind, OpSchema  # noqa: F401 (re-exported)

PLAN_FILE = "plan.msgpack"

# A plan this large is hostile or broken; refusing it early keeps validation cheap.
MAX_OPS = 1 << 20
MAX_BUFFERS = 4096
SYMBOLS = ("T", "R")
DTYPES = ("f32", "i32")
MAX_STATE_TENSORS = 4096  # state tensors of one plan (a few per layer)
MAX_STATE_DIMS = 3
MAX_STATE_ELEMENTS = 1 << 28  # float32 elements of one sequence's whole state (1 GiB)


def rope_inv_freq(
    n_rot: int,
    freq_base: float,
    freq_scale: float,
    ext_factor: float = 0.0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    orig_ctx: int = 0,
) -> list[float]:
    """The rope op's frequencies before its factors, in float64, for the n_rot / 2 pairs (what
    the compiled tables and the kernels that take a table hold): freq_scale * base^(-2i/n_rot).

    With ext_factor > 0, YaRN as ggml computes it (ggml_rope_yarn_corr_dims, rope_yarn): pair i's
    angle mixes the interpolated one (freq_scale times) and the original by m_i = ext_factor *
    ramp_i, so its frequency is base^(-2i/n_rot) * (freq_scale * (1 - m_i) + m_i). The ramp is 1
    for the pairs below `low`, 0 above `high`, linear between: low = max(0, floor(c(beta_fast))),
    high = min(n_rot - 1, ceil(c(beta_slow))), c(beta) = n_rot ln(orig_ctx / (2 pi beta)) / (2 ln base),
    the pair that turns beta times over the original context. (ggml's magnitude term,
    1 + 0.1 ln(1 / freq_scale), is in the op's attn_factor.)"""
    theta = [float(freq_base) ** (-2.0 * i / n_rot) for i in range(n_rot // 2)]
    if not ext_factor:
        return [float(freq_scale) * t for t in theta]

    def corr_dim(beta: float) -> float:
        return n_rot * math.log(orig_ctx / (beta * 2.0 * math.pi)) / (2.0 * math.log(freq_base))

    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
    out = []
    for i, t in enumerate(theta):
        ramp = 1.0 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))
        mix = ramp * ext_factor
        out.append(t * (freq_scale * (1.0 - mix) + mix))
    return out


def rope_freqs(attrs: dict) -> list[float]:
    """rope_inv_freq of a rope op's attributes (the optional ones at their defaults)."""
    a = {**dict(OPS[OpKind.ROPE].optional), **attrs}
    return rope_inv_freq(a["n_rot"], a["freq_base"], a["freq_scale"], a["ext_factor"], a["beta_fast"], a["beta_slow"],
                         a["orig_ctx"])  # fmt: skip


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[str | int, ...]
    dtype: str = "f32"


@dataclass(frozen=True)
class Op:
    kind: OpKind  # given by name, it is looked up (ValueError for a kind OpKind lacks)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OpKind(self.kind))

    def attr(self, name: str) -> Any:
        """A required or optional attribute, with the schema's default for a missing optional one."""
        if name in self.attrs:
            return self.attrs[name]
        return dict(OPS[self.kind].optional)[name]


@dataclass(frozen=True)
class KVSpec:
    """One cached token's row per layer, for K and for V: n_kv_heads x head_dim values, the
    WIDEST layer's (Gemma 4 31B: sliding layers 16 x 256, global ones 4 x 512 in rows of 4096).
    Devices address rows by this stride; each kv_write / attention op reads and writes only its
    own layer's values, the first (its n_kv_heads x head_dim) of the row (kv_geometries)."""

    n_layers: int  # the layers that store KV: fewer than the model's where layers share caches (Gemma 4 E2B/E4B)
    n_kv_heads: int
    head_dim: int
    # Storage format of cached keys and values: "f16" (what llama.cpp uses; greedy decoding
    # can hinge on the rounding, so matching it matters) or "f32".
    dtype: str = "f16"

    @property
    def row(self) -> int:
        """Values of one token's K (or V) row in one layer: the stride devices address."""
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor every sequence has: float32, row-major, `shape` per sequence."""

    layer: int  # the model layer it belongs to (reports; ops name it by index)
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StateSpec:
    """The per-sequence recurrent state of a plan: empty for a pure transformer. A slot of a
    runtime's state pool holds every tensor, in order, each at `offset(i)` floats."""

    tensors: tuple[StateTensor, ...] = ()

    @property
    def slot_floats(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def slot_bytes(self) -> int:
        return 4 * self.slot_floats

    def offset(self, index: int) -> int:
        """Float offset of tensor `index` inside a slot."""
        return sum(t.elements for t in self.tensors[:index])


@dataclass(frozen=True)
class Plan:
    buffers: tuple[Buffer, ...]
    ops: tuple[Op, ...]
    kv: KVSpec
    input_tokens: str
    output_logits: str  # "" for an encoder (embeddings only: no logits, nothing generated)
    output_hidden: str  # the final normalized hidden state [R, n_embd] (embeddings)
    vocab_size: int
    n_embd: int
    context_length: int
    state: StateSpec = StateSpec()  # per-sequence recurrent state (hybrid models); empty: none
    # a reranker's classifier output [R, labels] (its first label is a pair's relevance score); "": none
    output_scores: str = ""
    # the relevance score is softmax(labels)[0] rather than the first label itself (llama.cpp's
    # Qwen3 rerankers: P("yes") of their "yes"/"no" head)
    scores_softmax: bool = False

    @property
    def generates(self) -> bool:
        """False for an encoder's plan: hidden states only (embeddings), no logits."""
        return bool(self.output_logits)

    @property
    def causal(self) -> bool:
        """False when an attention sees the tokens after its own (an encoder): the engine must
        run each sequence whole in one step, and no cached prefix is reusable."""
        return all(op.attr("causal") for op in self.ops if op.kind == OpKind.ATTENTION)

    def kv_geometries(self) -> set[tuple[int, int]]:
        """The (n_kv_heads, head_dim) of the plan's attention ops: more than one where layers
        differ (Gemma 4), each within the KVSpec's row."""
        return {
            (int(op.attrs["n_kv_heads"]), int(op.attrs["head_dim"])) for op in self.ops if op.kind == OpKind.ATTENTION
        }

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
    # "state" only when there is some: a stateless plan's bytes (and its bundle's hashes) stay as they were
    state = {"state": [[t.layer, list(t.shape)] for t in plan.state.tensors]} if plan.state.tensors else {}
    if plan.output_scores:  # likewise only a reranker's plan has the key
        state["output_scores"] = plan.output_scores
    if plan.scores_softmax:
        state["scores_softmax"] = True
    return msgpack.packb(
        {
            **state,
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
            "output_hidden": plan.output_hidden,
            "vocab_size": plan.vocab_size,
            "n_embd": plan.n_embd,
            "context_length": plan.context_length,
        }
    )


def _strs(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{PLAN_FILE}: {what} is not a list of names")
    return tuple(value)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BundleError(f"{PLAN_FILE}: {what} is not true or false")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{PLAN_FILE}: {what} is not an integer")
    return value


def _state(value: Any) -> StateSpec:
    """The plan's "state" list, [[layer, [dims]], ...], its counts bounded before anything is built."""
    if not isinstance(value, list) or len(value) > MAX_STATE_TENSORS:
        raise BundleError(f"{PLAN_FILE}: state is not a list of at most {MAX_STATE_TENSORS} tensors")
    tensors = []
    for i, t in enumerate(value):
        if not (isinstance(t, list) and len(t) == 2 and isinstance(t[1], list) and 1 <= len(t[1]) <= MAX_STATE_DIMS):
            raise BundleError(f"{PLAN_FILE}: state tensor {i} is not [layer, [dims]]")
        tensors.append(
            StateTensor(_int(t[0], f"state tensor {i} layer"), tuple(_int(d, f"state tensor {i} dims") for d in t[1]))
        )
    return StateSpec(tuple(tensors))


def unpack_plan(data: bytes) -> Plan:
    """Parses plan.msgpack, checking every field's type; BundleError (one line) otherwise."""
    try:
        raw = msgpack.unpackb(data, strict_map_key=True, max_array_len=MAX_OPS, max_map_len=4096)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise BundleError(f"{PLAN_FILE} is not valid msgpack: {e}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{PLAN_FILE} is not a map")
    try:
        buffers = raw["buffers"]
        ops = raw["ops"]
        if (
            not isinstance(buffers, list)
            or not isinstance(ops, list)
            or len(buffers) > MAX_BUFFERS
            or len(ops) > MAX_OPS
        ):
            raise BundleError(f"{PLAN_FILE}: buffers/ops are not lists of a sane length")
        parsed_buffers = []
        for b in buffers:
            if not (
                isinstance(b, list)
                and len(b) == 3
                and isinstance(b[0], str)
                and isinstance(b[1], list)
                and isinstance(b[2], str)
            ):
                raise BundleError(f"{PLAN_FILE}: a buffer is not [name, shape, dtype]")
            parsed_buffers.append(Buffer(b[0], tuple(b[1]), b[2]))
        parsed_ops = []
        for i, o in enumerate(ops):
            if not isinstance(o, dict) or not isinstance(o.get("kind"), str) or not isinstance(o.get("attrs"), dict):
                raise BundleError(f"{PLAN_FILE}: op {i} is malformed")
            if o["kind"] not in OPS:
                raise BundleError(f"{PLAN_FILE}: plan op {i} ({o['kind'][:32]}) is not an op this runtime knows")
            parsed_ops.append(Op(
                kind=o["kind"],
                inputs=_strs(o.get("inputs"), f"op {i} inputs"),
                outputs=_strs(o.get("outputs"), f"op {i} outputs"),
                weights=_strs(o.get("weights"), f"op {i} weights"),
                attrs=dict(o["attrs"]),
            ))  # fmt: skip
        state = _state(raw.get("state", []))
        kv = raw["kv"]
        if not (isinstance(kv, list) and len(kv) == 4 and isinstance(kv[3], str)):
            raise BundleError(f"{PLAN_FILE}: kv is not [n_layers, n_kv_heads, head_dim, dtype]")
        plan = Plan(
            buffers=tuple(parsed_buffers),
            ops=tuple(parsed_ops),
            kv=KVSpec(_int(kv[0], "kv n_layers"), _int(kv[1], "kv n_kv_heads"), _int(kv[2], "kv head_dim"), kv[3]),
            input_tokens=_strs([raw["input_tokens"]], "input_tokens")[0],
            output_logits=_strs([raw["output_logits"]], "output_logits")[0],
            output_hidden=_strs([raw["output_hidden"]], "output_hidden")[0],
            vocab_size=_int(raw["vocab_size"], "vocab_size"),
            n_embd=_int(raw["n_embd"], "n_embd"),
            context_length=_int(raw["context_length"], "context_length"),
            state=state,
            output_scores=_strs([raw.get("output_scores", "")], "output_scores")[0],
            scores_softmax=_bool(raw.get("scores_softmax", False), "scores_softmax"),
        )
    except KeyError as e:
        raise BundleError(f"{PLAN_FILE} lacks {e}") from None
    validate_plan(plan)
    return plan


def validate_plan(plan: Plan) -> None:
    """The plan on its own: known ops with their arity and attributes, known buffers, sizes in
    bounds. `rfc.artifacts.validate.validate_bundle` adds the checks against the weights."""
    from rfc.artifacts.validate import check_plan

    check_plan(plan)
