"""Gemma 4 26B-A4B's mixture of experts, as llama.cpp 0.3.36 builds it (src/models/gemma4.cpp,
is_moe_layer; build_moe_ffn in llama-graph.cpp). A layer is a MoE layer when it has a router
(`ffn_gate_inp`); its FFN is then two branches over the attention block's output x, summed:

- the dense GELU MLP every gemma4 layer has (ffn_norm -> ffn_gate/up/down), RMS-normed by
  `post_ffw_norm_1`;
- the routed experts: their input rms_norm(x) * `pre_ffw_norm_2`; the router's input
  rms_norm(x) (no weight) / sqrt(n_embd) * `ffn_gate_inp.scale` [n_embd], planned as an RMS norm
  with that vector as its weight, then a scale op (float32 rounding apart, the same product);
  softmax gating, top `expert_used_count`, weights renormalized (norm_w true, no w_scale);
  GELU(tanh)-gated experts from `ffn_gate_exps` / `ffn_up_exps` or the fused `ffn_gate_up_exps`
  [E, 2 n_ff_exp, n_embd] (gate rows first; split per expert: builder.expert_rows), `ffn_down_exps`;
  `ffn_down_exps.scale` [n_expert] (the converter's router.per_expert_scale; llama.cpp multiplies
  each expert's down output by it) folded into the router's weights (moe_route's expert_scale:
  the same product); the weighted sum RMS-normed by `post_ffw_norm_2`.

The layer's `post_ffw_norm` and residual follow in gemma4.py, as for a dense layer. The expert
width is `expert_feed_forward_length`, a scalar or per-layer array; llama.cpp sizes every
layer's expert tensors by layer 0's entry, so MoE layers whose entries differ are refused.
`ffn_gate_exps.scale` / `ffn_up_exps.scale` (which llama.cpp would also apply) are refused by name.
"""

import math
from dataclasses import dataclass

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, read_experts
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers
from rfc.compiler.errors import CompileError


@dataclass(frozen=True)
class Gemma4Experts:
    """The experts of the layers with a router (one shape for all of them)."""

    e: Experts
    layers: frozenset[int]
    n_embd: int

    def is_moe(self, layer: int) -> bool:
        return layer in self.layers

    def declare(self, b: ModelBuilder) -> None:
        declare_expert_buffers(b, self.n_embd, self.e)
        b.buffer("moe_in", "T", self.n_embd)
        b.buffer("router_in", "T", self.n_embd)

    def add_experts(self, b: ModelBuilder, i: int, eps: float) -> None:
        """h (the dense MLP's output) = post_ffw_norm_1(h) + post_ffw_norm_2(experts(x)), layer i."""
        p, n, e = f"blk.{i}.", self.n_embd, self.e
        norm = lambda name: b.tensor(p + name + ".weight", name, (n,))  # noqa: E731
        b.op("rmsnorm", ("h",), ("h",), (norm("post_ffw_norm_1"),), eps=eps)
        b.op("rmsnorm", ("x",), ("moe_in",), (norm("pre_ffw_norm_2"),), eps=eps)
        b.op(
            "rmsnorm",
            ("x",),
            ("router_in",),
            (b.tensor(p + "ffn_gate_inp.scale", "ffn_gate_inp_scale", (n,)),),
            eps=eps,
        )
        b.op("scale", ("router_in",), ("router_in",), factor=1.0 / math.sqrt(n))
        b.op(
            "matmul", ("router_in",), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (e.count, n)),)
        )
        escale = b.optional_tensor(p + "ffn_down_exps.scale", "ffn_down_exps_scale", (e.count,))
        b.op("moe_route", ("router",), ("expert_ids", "expert_weights"), (escale,) if escale else (),
             **e.route_attrs(), **({"expert_scale": True} if escale else {}))  # fmt: skip
        for w, buf in self._gate_up(b, i):
            b.op("moe_matmul", ("moe_in", "expert_ids"), (buf,), (w,))
        b.op("swiglu", ("exp_gate", "exp_up"), ("exp_gate",), activation="gelu_tanh")
        down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (e.count, n, e.n_ff))
        b.op("moe_matmul", ("exp_gate", "expert_ids"), ("experts_out",), (down,))
        b.op("moe_combine", ("experts_out", "expert_weights"), ("moe_out",))
        b.op("rmsnorm", ("moe_out",), ("moe_out",), (norm("post_ffw_norm_2"),), eps=eps)
        b.op("add", ("h", "moe_out"), ("h",))

    def _gate_up(self, b: ModelBuilder, i: int) -> tuple[tuple[str, str], tuple[str, str]]:
        """((gate weight, its buffer), (up weight, its buffer)) of layer i: the separate tensors or
        the fused one's halves (llama.cpp takes either per layer, never both)."""
        p, n, e = f"blk.{i}.", self.n_embd, self.e
        fused = p + "ffn_gate_up_exps.weight"
        split = [p + f"ffn_{x}_exps.weight" for x in ("gate", "up")]
        for name in (p + "ffn_gate_exps.scale", p + "ffn_up_exps.scale"):
            if b.has(name):
                raise CompileError(f"{b.path}: {name} (a per-expert gate/up scale) is not supported in gemma4")
        if b.has(fused) == any(b.has(x) for x in split):
            state = "both" if b.has(fused) else "neither"
            raise CompileError(
                f"{b.path}: layer {i} has {state} of {fused} and ffn_gate_exps/ffn_up_exps (one of them is needed)"
            )
        if not b.has(fused):
            shape = (e.count, e.n_ff, n)
            return (
                (b.tensor(split[0], "ffn_gate_exps", shape), "exp_gate"),
                (b.tensor(split[1], "ffn_up_exps", shape), "exp_up"),
            )
        shape2 = (e.count, 2 * e.n_ff, n)
        return ((b.expert_rows(fused + ":gate", "ffn_gate_exps", fused, shape2, 0, e.n_ff), "exp_gate"),
                (b.expert_rows(fused + ":up", "ffn_up_exps", fused, shape2, e.n_ff, 2 * e.n_ff), "exp_up"))  # fmt: skip

    def hparams(self) -> dict:
        return self.e.hparams() | {"expert_layers": sorted(self.layers)}


def add_experts(b: ModelBuilder, md: Metadata, i: int, sizes: Sizes, eps: float) -> None:
    """gemma4.py's hook, after layer i's dense MLP left its output in h: where the layer has a
    router, h = post_ffw_norm_1(h) + post_ffw_norm_2(experts(x)); a dense layer is left as it is."""
    moe = read(md, sizes.n_embd, sizes.n_layers)
    if moe is not None and moe.is_moe(i):
        moe.declare(b)  # the same buffers for every MoE layer (declaring them again is a no-op)
        moe.add_experts(b, i, eps)


def hparams(md: Metadata, sizes: Sizes) -> dict:
    """The experts' hyperparameters for `rfc inspect` (none for a dense file)."""
    moe = read(md, sizes.n_embd, sizes.n_layers)
    return moe.hparams() if moe is not None else {}


def read(md: Metadata, n_embd: int, n_layers: int) -> Gemma4Experts | None:
    """The experts as llama.cpp's gemma4 loader reads them, or None for a dense file (no router
    in any layer). Counts bounded before anything is planned: 0 < used <= count <= MAX_EXPERTS."""
    model = md.model
    layers = frozenset(i for i in range(n_layers) if f"blk.{i}.ffn_gate_inp.weight" in model.tensors)
    count, used = read_experts(md)
    if not layers:
        return None
    if not count:
        raise CompileError(f"{md.path}: ffn_gate_inp in layer {min(layers)} but no {md.key('expert_count')} > 0")
    widths = md.per_layer("expert_feed_forward_length", n_layers, 0, MAX_FF)
    n_ff = widths[0]  # llama.cpp: n_ff_exp() is layer 0's entry, for every layer's tensors
    if not n_ff or any(widths[i] != n_ff for i in layers):
        raise CompileError(
            f"{md.path}: metadata {md.key('expert_feed_forward_length')} must be > 0 and the same for "
            f"every MoE layer (llama.cpp sizes them all by layer 0's: {n_ff})"
        )
    return Gemma4Experts(Experts(count, used, n_ff), layers, n_embd)
