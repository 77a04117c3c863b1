"""`nemotron_h_moe` (NVIDIA Nemotron 3 Nano 30B-A3B; Nemotron 3 Super's latent MoE): nemotron_h's
stack (nemotron_h.py: one mixer per layer, x + mixer(rms_norm(x)), Mamba2 / attention / FFN by
two per-layer arrays) whose FFN layers are mixtures of experts (llama.cpp: src/models/
nemotron-h.cpp's build_ffn_layer, the loader nemotron_h's):

- the router ffn_gate_inp reads the normed input; a sigmoid scores every expert, the selection
  bias `exp_probs_b.bias` (required in every MoE layer) chooses the top `expert_used_count`
  without weighing them, their sigmoid weights renormalized when `expert_weights_norm` and
  scaled by `expert_weights_scale` (Nano: true, 2.5); the gating is always the sigmoid
  (llama.cpp passes it for this stack and reads no `expert_gating_func`); expert groups where
  declared (moe_route's grouped top-k);
- each routed expert a non-gated squared-ReLU FFN: down(relu(up x)^2), `expert_feed_forward_length`
  wide (else the layer's feed_forward_length / used, as llama.cpp falls back); relu(u)^2 is
  swiglu with activation "relu" of (u, u), as nemotron_h's dense MLP computes it, so no op is new;
- the shared expert the same squared-ReLU FFN (ffn_up_shexp / ffn_down_shexp,
  `expert_shared_feed_forward_length` wide) over the same input, added beside them;
- with `moe_latent_size` (Nemotron 3 Super) the experts work in a narrower space: ffn_latent_down
  [latent, n_embd] before them, ffn_latent_up [n_embd, latent] after their weighted sum (two
  matmuls; the router and the shared expert still read the full-width input).

Per-layer expert counts or widths (Nemotron 3 "Puzzle") are refused by name. State: as
nemotron_h's (per sequence the Mamba2 layers' conv windows and scan matrices; per token the
attention layers' KV only): experts add none.
"""

from dataclasses import dataclass

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import linear
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, read_experts_of, read_weights_scale
from rfc.compiler.arch.nemotron_h import build_stack
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "nemotron_h_moe"


def build(model: GGUFModel) -> ModelSpec:
    return build_stack(model, ARCH, read)  # nemotron_h's stack, these experts in its FFN layers


@dataclass(frozen=True)
class RoutedFFN:
    """The experts of every FFN layer (one shape for all): moe_route's attributes in `e`, the
    shared expert's width, the latent width (0: none)."""

    e: Experts
    shared_ff: int
    latent: int
    n_embd: int

    @property
    def width(self) -> int:
        """The width the routed experts read and write."""
        return self.latent or self.n_embd

    def declare(self, b: ModelBuilder) -> None:
        e = self.e
        b.buffer("router", "T", e.count)
        b.buffer("expert_ids", "T", e.used, dtype="i32")
        b.buffer("expert_weights", "T", e.used)
        b.buffer("exp_up", "T", e.used * e.n_ff)
        b.buffer("experts_out", "T", e.used * self.width)
        b.buffer("moe_out", "T", self.n_embd)
        b.buffer("shexp_up", "T", self.shared_ff)
        if self.latent:
            b.buffer("moe_lat_in", "T", self.latent)
            b.buffer("moe_lat_out", "T", self.latent)

    def layer(self, b: ModelBuilder, i: int) -> None:
        """x += routed experts(h); h = shared expert(h) (the stack adds h to x after it)."""
        p, n, e, w = f"blk.{i}.", self.n_embd, self.e, self.width
        b.op("matmul", ("h",), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (e.count, n)),))
        bias = b.tensor(p + "exp_probs_b.bias", "exp_probs_b", (e.count,))
        b.op("moe_route", ("router",), ("expert_ids", "expert_weights"), (bias,), **e.route_attrs())
        src = "h"
        if not self.latent and (b.has(p + "ffn_latent_down.weight") or b.has(p + "ffn_latent_up.weight")):
            raise CompileError(f"{b.path}: {p}ffn_latent_down/up without moe_latent_size are not supported")
        if self.latent:
            linear(b, "h", "moe_lat_in", p + "ffn_latent_down", (w, n))
            src = "moe_lat_in"
        up = b.tensor(p + "ffn_up_exps.weight", "ffn_up_exps", (e.count, e.n_ff, w))
        b.op("moe_matmul", (src, "expert_ids"), ("exp_up",), (up,))
        b.op("swiglu", ("exp_up", "exp_up"), ("exp_up",), activation="relu")  # relu(u) u = relu(u)^2
        down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (e.count, w, e.n_ff))
        b.op("moe_matmul", ("exp_up", "expert_ids"), ("experts_out",), (down,))
        if self.latent:
            b.op("moe_combine", ("experts_out", "expert_weights"), ("moe_lat_out",))
            linear(b, "moe_lat_out", "moe_out", p + "ffn_latent_up", (n, w))
        else:
            b.op("moe_combine", ("experts_out", "expert_weights"), ("moe_out",))
        b.op("add", ("x", "moe_out"), ("x",))
        linear(b, "h", "shexp_up", p + "ffn_up_shexp", (self.shared_ff, n))
        b.op("swiglu", ("shexp_up", "shexp_up"), ("shexp_up",), activation="relu")
        linear(b, "shexp_up", "h", p + "ffn_down_shexp", (n, self.shared_ff))

    def hparams(self) -> dict:
        extra = self.e.hparams() | {"expert_shared_feed_forward_length": self.shared_ff}
        if self.latent:
            extra["moe_latent_size"] = self.latent
        return extra


def read(md: Metadata, n_embd: int, n_ff: tuple[int, ...], ffn_layers: list[int]) -> RoutedFFN:
    """The experts as llama.cpp's nemotron_h loader reads them (n_ff: feed_forward_length per
    layer; ffn_layers: the layers it makes FFN layers)."""
    for key in ("expert_used_count", "expert_feed_forward_length"):
        if md.is_list(key):
            raise CompileError(f"{md.path}: metadata {md.key(key)} per layer (Nemotron 3 Puzzle) is not supported")
    ffs = {n_ff[i] for i in ffn_layers}
    if not md.has("expert_feed_forward_length") and len(ffs) > 1:
        raise CompileError(
            f"{md.path}: no {md.key('expert_feed_forward_length')}, and the FFN layers' "
            f"feed_forward_length differ ({sorted(ffs)}): one expert width is supported"
        )
    # without expert_feed_forward_length, llama.cpp's width is the layer's feed_forward_length / used
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=min(ffs) if len(ffs) == 1 else None)
    shared_ff = md.int("expert_shared_feed_forward_length", 1, MAX_FF)  # llama.cpp's shared expert tensors are required
    latent = md.int("moe_latent_size", 0, MAX_EMBD, default=0)
    e = Experts(count, used, n_ff_exp, gating="sigmoid", norm=md.bool("expert_weights_norm", default=False),
                scale=read_weights_scale(md), groups=groups, groups_used=groups_used)  # fmt: skip
    return RoutedFFN(e, shared_ff, latent, n_embd)
