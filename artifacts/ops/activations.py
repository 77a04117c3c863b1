"""Elementwise ops some architectures add to the backbone: gemma's final-logit soft-capping,
granite's and gemma4's scalar multipliers, apertus's xIELU activation, the ungated FFNs' GELU, olmo's Q/K/V clamp,
mpt's per-channel activation scales, RWKV-7's sigmoid.
"""

from rfc.artifacts.ops.core import same_shape
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import OpView


def _scale(v: OpView) -> None:
    same_shape(v)
    # a learned scalar may be negative (gemma4's layer_output_scale, a weight's .scale): any
    # finite nonzero float32 of magnitude in [1e-30, 1e6]
    factor = v.real_attr("factor", -1e6, 1e6)
    v.need(abs(factor) >= 1e-30, f"attribute factor = {factor!r} is zero or too small for a float32 literal")


def _xielu(v: OpView) -> None:
    same_shape(v)
    # learned per-layer constants: any finite value a float32 holds comfortably (eps is a tiny negative)
    for name in ("alpha_n", "alpha_p", "beta", "eps"):
        v.real_attr(name, -1e6, 1e6)


def _clamp(v: OpView) -> None:
    same_shape(v)
    v.real_attr("limit", 0.0, 1e6, open_lo=True)


def _channel_div(v: OpView) -> None:
    same_shape(v)
    w = v.weight_shape(0)
    v.need(w is None or w == (v.width(v.op.inputs[0]),), f"divisors {w} are not [{v.width(v.op.inputs[0])}]")


def _softcap(v: OpView) -> None:
    same_shape(v)
    v.real_attr("cap", 0.0, 1e6, open_lo=True)


DEFS = (
    OpDef(
        kind="sigmoid",
        schema=OpSchema(
            1, 1, (0, 0), doc="out = 1 / (1 + exp(-x)) (ggml_sigmoid: RWKV-7's gate and value-residual LoRAs)"
        ),
        check=same_shape,
        reference="op_sigmoid",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_sigmoid"),
        gpu=GpuPart(("gpu_sigmoid.hip.j2",), lower="_sigmoid", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="relu",
        schema=OpSchema(1, 1, (0, 0), doc="out = x > 0 ? x : 0 (ggml_relu: the original T5's FFN)"),
        check=same_shape,
        reference="op_relu",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_relu"),
        gpu=GpuPart(("gpu_relu.hip.j2",), lower="_relu", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="clamp",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("limit",),
            doc="out = min(max(x, -limit), limit), limit a float32 > 0 (olmo's, dbrx's and mpt's "
            "attention.clamp_kqv on Q, K and V after their matmuls, as ggml_clamp)",
        ),
        check=_clamp,
        reference="op_clamp",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_clamp"),
        gpu=GpuPart(("gpu_clamp.hip.j2",), lower="_clamp", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="gelu",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            (),
            doc="out = gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))), ggml_gelu's formula "
            "(the ungated FFNs of phi2, starcoder2, gptneox, falcon; llama.cpp's CPU reads it from an fp16 table)",
        ),
        check=same_shape,
        reference="op_gelu",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_gelu"),
        gpu=GpuPart(("gpu_gelu.hip.j2",), lower="_gelu", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="channel_div",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            doc="out[T, N] = x / weight[N], an IEEE division per channel (ggml_div by a vector: mpt's AWQ "
            "activation scales, ffn_act.scales, after its FFN's GELU)",
        ),
        check=_channel_div,
        reference="op_channel_div",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_channel_div", vectors_from=0),
        gpu=GpuPart(
            ("gpu_channel_div.hip.j2",),
            lower="_channel_div",
            args=(("out", PTR), ("x", PTR), ("scales", PTR), ("n_rows", I32)),
            weights=("scales",),
        ),
    ),
    OpDef(
        kind="softcap",
        schema=OpSchema(1, 1, (0, 0), ("cap",), doc="out = cap * tanh(x / cap) (gemma's final-logit soft-capping)"),
        check=_softcap,
        reference="op_softcap",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_softcap"),
        gpu=GpuPart(("gpu_softcap.hip.j2",), lower="_softcap", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="scale",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("factor",),
            doc="out = x * factor, factor a float32 (granite's residual and logit multipliers)",
        ),
        check=_scale,
        reference="op_scale",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_scale"),
        gpu=GpuPart(("gpu_scale.hip.j2",), lower="_scale", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="xielu",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("alpha_n", "alpha_p", "beta", "eps"),
            doc="xIELU (apertus's FFN activation), as ggml_xielu computes it: out = alpha_p x^2 + beta x for x > 0, "
            "else (expm1(min(x, eps)) - x) alpha_n + beta x; the attributes are float32 and already the effective "
            "ones (alpha_p = softplus(stored alpha_p), alpha_n = beta + softplus(stored alpha_n), as ggml_xielu "
            "sets them)",
        ),
        check=_xielu,
        reference="op_xielu",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_xielu"),
        gpu=GpuPart(("gpu_xielu.hip.j2",), lower="_xielu", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
)
