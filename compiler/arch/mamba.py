"""`mamba` (Mamba-1: state-spaces/mamba, Falcon-Mamba), as llama.cpp's src/models/mamba.cpp and
build_mamba_layer (mamba-base.cpp) build it: x + mixer(RMS norm(x)) in every layer, the final RMS norm,
`output.weight` (times its scale), else tied. No attention: the KV cache has no layers (as mamba2's).

The Mamba-1 mixer (jamba's too):
- `ssm_in` (times its scale) splits into x and z (d_inner each: two matmuls over its row ranges);
- x through a causal depthwise conv of `ssm.conv_kernel` taps plus its bias, then SiLU (op ssm_conv);
- `ssm_x` (no scale: llama.cpp passes none) of it gives dt (`ssm.time_step_rank`), B and C (N =
  `ssm.state_size` each); with `ssm.dt_b_c_rms` (Falcon-Mamba) or the `ssm_dt_norm` / `ssm_b_norm` /
  `ssm_c_norm` weights (jamba) each is RMS-normed first;
- dt through `ssm_dt` (no scale), its bias added inside the scan;
- the selective scan with a decay per channel and state (op ssm_scan, decay 'state': every channel a
  head of one row, A [d_inner, N] = `ssm_a`, the D skip `ssm_d`), its state d_inner x N per sequence;
- y × SiLU(z), `ssm_out` (times its scale).

State per sequence and layer: (kernel − 1) × d_inner + d_inner × N floats (Falcon-Mamba-7B's shape, 64
layers of d_inner 8192, N 16, kernel 4: 64 × (3 × 8192 + 8192 × 16) × 4 B = 38 MiB)."""

from dataclasses import dataclass

from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_SSM_STATE
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import linear, weight_scale
from rfc.compiler.arch.mamba2 import attention_free
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


@dataclass(frozen=True)
class Mamba1:
    d_inner: int  # ssm.inner_size
    n_state: int  # ssm.state_size N
    dt_rank: int  # ssm.time_step_rank
    kernel: int  # ssm.conv_kernel
    dt_b_c_rms: bool  # ssm.dt_b_c_rms (Falcon-Mamba): dt, B and C RMS-normed without weights

    @property
    def state_floats(self) -> int:
        return (self.kernel - 1) * self.d_inner + self.d_inner * self.n_state


def read_mamba1(md: Metadata) -> Mamba1:
    m = Mamba1(md.int("ssm.inner_size", 1, MAX_FF), md.int("ssm.state_size", 1, MAX_SSM_STATE),
               md.int("ssm.time_step_rank", 1, MAX_FF), md.int("ssm.conv_kernel", 2, MAX_CONV_KERNEL - 1),
               md.bool("ssm.dt_b_c_rms", default=False))  # fmt: skip
    return m


def declare(b: ModelBuilder, m: Mamba1) -> None:
    d, n = m.d_inner, m.n_state
    widths = {"ssm_x_in": d, "ssm_z": d, "ssm_x": d, "ssm_dt_low": m.dt_rank, "ssm_b": n, "ssm_c": n, "ssm_xb": d + n,
              "ssm_xbc": d + 2 * n, "ssm_dt": d, "ssm_y": d}  # fmt: skip
    for name, width in widths.items():
        b.buffer(name, "T", width)


def mamba1_layer(b: ModelBuilder, i: int, e: int, m: Mamba1, eps: float, *, src: str = "h", dst: str = "h") -> None:
    """dst = ssm_out(ssm_scan(conv(x), dt, B, C) * silu(z)) of layer i, as build_mamba_layer."""
    p, d, n = f"blk.{i}.", m.d_inner, m.n_state
    fused = p + "ssm_in.weight"
    in_scale = weight_scale(b, p + "ssm_in")
    for buf, lo in (("ssm_x_in", 0), ("ssm_z", d)):
        b.op(
            "matmul",
            (src,),
            (buf,),
            (b.rows(f"{fused}:{buf[4:]}", "ssm_in_" + buf[4:], fused, (2 * d, e), lo, lo + d),),
        )
        if in_scale is not None and in_scale != 1.0:
            b.op("scale", (buf,), (buf,), factor=in_scale)
    conv = (b.tensor(p + "ssm_conv1d.weight", "ssm_conv1d", (d, m.kernel)),
            b.tensor(p + "ssm_conv1d.bias", "ssm_conv1d_bias", (d,)))  # fmt: skip
    b.op("ssm_conv", ("ssm_x_in",), ("ssm_x",), conv, state=b.state(i, (m.kernel - 1, d)))
    proj, rows = p + "ssm_x.weight", m.dt_rank + 2 * n
    b.unused(p + "ssm_x.scale", "llama.cpp's mamba layer multiplies by ssm_x without its scale")
    for buf, lo, width in (("ssm_dt_low", 0, m.dt_rank), ("ssm_b", m.dt_rank, n), ("ssm_c", m.dt_rank + n, n)):
        b.op(
            "matmul",
            ("ssm_x",),
            (buf,),
            (b.rows(f"{proj}:{buf[4:]}", "ssm_x_" + buf[4:], proj, (rows, d), lo, lo + width),),
        )
    norms = [b.has(f"{p}ssm_{x}_norm.weight") for x in ("dt", "b", "c")]
    if any(norms) and not all(norms):
        raise CompileError(f"{b.path}: layer {i} has some of ssm_dt_norm, ssm_b_norm, ssm_c_norm and not all three")
    if m.dt_b_c_rms or all(norms):  # Falcon-Mamba: weightless; jamba: with their weights
        for buf, x, width in (("ssm_dt_low", "dt", m.dt_rank), ("ssm_b", "b", n), ("ssm_c", "c", n)):
            w = (b.tensor(f"{p}ssm_{x}_norm.weight", f"ssm_{x}_norm", (width,)),) if all(norms) else ()
            b.op("rmsnorm", (buf,), (buf,), w, eps=eps)
    b.op("matmul", ("ssm_dt_low",), ("ssm_dt",), (b.tensor(p + "ssm_dt.weight", "ssm_dt", (d, m.dt_rank)),))
    b.unused(p + "ssm_dt.scale", "llama.cpp's mamba layer multiplies by ssm_dt without its scale")
    b.op("concat_heads", ("ssm_x", "ssm_b"), ("ssm_xb",), heads=1)
    b.op("concat_heads", ("ssm_xb", "ssm_c"), ("ssm_xbc",), heads=1)
    gates = (b.flat(p + "ssm_a", "ssm_a", (d, n)), b.flat(p + "ssm_d", "ssm_d", (d,)),
             b.tensor(p + "ssm_dt.bias", "ssm_dt_bias", (d,)))  # fmt: skip
    b.op("ssm_scan", ("ssm_xbc", "ssm_dt"), ("ssm_y",), gates, state=b.state(i, (d, 1, n)), n_heads=d, head_dim=1,
         n_groups=1, state_size=n, decay="state")  # fmt: skip
    b.op("swiglu", ("ssm_z", "ssm_y"), ("ssm_y",))
    linear(b, "ssm_y", dst, p + "ssm_out", (e, d), bias=False)  # with ssm_out_s, as build_lora_mm


def build(model: GGUFModel) -> ModelSpec:
    return attention_free(model, "mamba", read_mamba1, declare, mamba1_layer, lambda m: {
        "ssm_inner_size": m.d_inner, "ssm_state_size": m.n_state, "ssm_time_step_rank": m.dt_rank,
        "ssm_conv_kernel": m.kernel, "ssm_dt_b_c_rms": m.dt_b_c_rms})  # fmt: skip
