"""The Mamba2 mixer the hybrid recipes share (granitehybrid, nemotron_h), as llama.cpp's
build_mamba2_layer (src/models/mamba-base.cpp) builds it:

- ssm_in projects the normed input to z (d_inner), xBC (d_inner + 2 G N: x, then B and C of
  the G groups) and dt (H): three matmuls over row ranges of the one tensor;
- xBC through a causal depthwise conv of `ssm.conv_kernel` taps plus its bias, then SiLU (op
  ssm_conv; its state the last kernel - 1 inputs);
- the selective scan (op ssm_scan: H heads of P = d_inner / H, a scalar decay exp(dt' A) per
  head, dt' = softplus(dt + dt_bias), head h reading group h / (H / G) of B and C, plus x D;
  its state a P x N matrix per head);
- y * silu(z), an RMS norm over each of the G groups of d_inner / G (ssm_norm), ssm_out.

State per sequence and layer: (kernel - 1) x (d_inner + 2 G N) + H x P x N floats.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_SSM_STATE
from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, embedding_rows, linear, output_head, weight_scale
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EMBD, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import HParams, ModelSpec


@dataclass(frozen=True)
class Mamba2:
    d_inner: int  # ssm.inner_size
    n_state: int  # ssm.state_size N
    n_heads: int  # ssm.time_step_rank H
    n_groups: int  # ssm.group_count G
    kernel: int  # ssm.conv_kernel

    @property
    def head_dim(self) -> int:
        return self.d_inner // self.n_heads

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.n_state

    @property
    def in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.n_groups * self.n_state + self.n_heads

    @property
    def state_floats(self) -> int:
        """Per sequence and Mamba2 layer: the conv window and the scan's matrices."""
        return (self.kernel - 1) * self.conv_dim + self.d_inner * self.n_state


def read_mamba2(md: Metadata) -> Mamba2:
    kernel = md.int("ssm.conv_kernel", 2, MAX_CONV_KERNEL - 1)
    d_inner = md.int("ssm.inner_size", 1, MAX_FF)
    n_state = md.int("ssm.state_size", 1, MAX_SSM_STATE)
    n_heads = md.int("ssm.time_step_rank", 1, MAX_HEADS)
    n_groups = md.int("ssm.group_count", 1, MAX_HEADS)
    if d_inner % n_heads:
        raise CompileError(
            f"{md.path}: {md.key('ssm.inner_size')} {d_inner} is not a multiple of "
            f"{md.key('ssm.time_step_rank')} {n_heads} (heads)"
        )
    if d_inner % n_groups or (d_inner // n_groups) % 8:  # the cpu norm's segments are whole 8-float vectors
        raise CompileError(
            f"{md.path}: {md.key('ssm.inner_size')} {d_inner} is not {n_groups} groups "
            f"({md.key('ssm.group_count')}) of a multiple of 8"
        )
    if n_heads % n_groups:
        raise CompileError(
            f"{md.path}: {md.key('ssm.time_step_rank')} {n_heads} (heads) is not a multiple of "
            f"{md.key('ssm.group_count')} {n_groups}"
        )
    return Mamba2(d_inner, n_state, n_heads, n_groups, kernel)


def attention_heads(
    md: Metadata, heads: list[int], kv_heads: list[int], attn: list[int], n_embd: int
) -> tuple[int, int, int]:
    """(heads, KV heads, head size) of a hybrid stack's attention layers `attn`, which must all
    have the same (the KV cache has one row size); granitehybrid and nemotron_h read them so."""
    n_heads, n_kv = {heads[i] for i in attn}, {kv_heads[i] for i in attn}
    if len(n_heads) != 1 or len(n_kv) != 1 or 0 in n_heads:
        raise CompileError(f"{md.path}: the attention layers differ in head counts ({sorted(n_heads)} / "
                           f"{sorted(n_kv)}); "
                           "one size is supported")  # fmt: skip
    (nh,), (nkv,) = n_heads, n_kv
    if nh % nkv:
        raise CompileError(f"{md.path}: head_count {nh} is not a multiple of head_count_kv {nkv}")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // nh))
    if md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim) != head_dim:
        raise CompileError(f"{md.path}: attention.value_length != key_length is not supported")
    return nh, nkv, head_dim


def declare(b: ModelBuilder, m: Mamba2) -> None:
    for name, width in (("ssm_z", m.d_inner), ("ssm_xbc_in", m.conv_dim), ("ssm_xbc", m.conv_dim),
                        ("ssm_dt", m.n_heads), ("ssm_y", m.d_inner)):  # fmt: skip
        b.buffer(name, "T", width)


def mamba2_layer(b: ModelBuilder, i: int, e: int, m: Mamba2, eps: float, *, src: str = "h", dst: str = "h") -> None:
    """dst = ssm_out(rmsnorm_groups(ssm_scan(ssm_conv(xBC), dt) * silu(z))). ssm_in's and ssm_out's
    weight scales apply where the file has them (build_lora_mm's w_s: ssm_in's scales all three
    parts); llama.cpp adds no bias to either, so a file with one is refused by the builder."""
    p = f"blk.{i}."
    fused, shape = p + "ssm_in.weight", (m.in_proj, e)
    z = b.rows(fused + ":z", "ssm_in_z", fused, shape, 0, m.d_inner)
    xbc = b.rows(fused + ":xbc", "ssm_in_xbc", fused, shape, m.d_inner, m.d_inner + m.conv_dim)
    dt = b.rows(fused + ":dt", "ssm_in_dt", fused, shape, m.d_inner + m.conv_dim, m.in_proj)
    in_scale = weight_scale(b, p + "ssm_in")  # build_lora_mm(ssm_in, cur, ssm_in_s): it scales all three parts
    for buf, w in (("ssm_z", z), ("ssm_xbc_in", xbc), ("ssm_dt", dt)):
        b.op("matmul", (src,), (buf,), (w,))
        if in_scale is not None and in_scale != 1.0:
            b.op("scale", (buf,), (buf,), factor=in_scale)
    conv = (b.tensor(p + "ssm_conv1d.weight", "ssm_conv1d", (m.conv_dim, m.kernel)),)
    conv += tuple(w for w in (b.optional_tensor(p + "ssm_conv1d.bias", "ssm_conv1d_bias", (m.conv_dim,)),) if w)
    b.op("ssm_conv", ("ssm_xbc_in",), ("ssm_xbc",), conv, state=b.state(i, (m.kernel - 1, m.conv_dim)))
    h = m.n_heads
    gates = (b.flat(p + "ssm_a", "ssm_a", (h, 1)), b.flat(p + "ssm_d", "ssm_d", (h, 1)),
             b.tensor(p + "ssm_dt.bias", "ssm_dt_bias", (h,)))  # fmt: skip
    b.op(
        "ssm_scan",
        ("ssm_xbc", "ssm_dt"),
        ("ssm_y",),
        gates,
        state=b.state(i, (h, m.head_dim, m.n_state)),
        n_heads=h,
        head_dim=m.head_dim,
        n_groups=m.n_groups,
        state_size=m.n_state,
    )
    b.op("swiglu", ("ssm_z", "ssm_y"), ("ssm_y",))
    norm = b.flat(p + "ssm_norm.weight", "ssm_norm", (m.n_groups, m.d_inner // m.n_groups))  # a weight per group
    b.op("rmsnorm", ("ssm_y",), ("ssm_y",), (norm,), eps=eps, **({"heads": m.n_groups} if m.n_groups > 1 else {}))
    linear(b, "ssm_y", dst, p + "ssm_out", (e, m.d_inner), bias=False)  # with ssm_out_s, as build_lora_mm


# A plan without attention: a KV cache of no layers (one head of one value, to keep the spec's shape)
NO_KV = KVSpec(n_layers=0, n_kv_heads=1, head_dim=1, dtype="f16")


def build(model: GGUFModel) -> ModelSpec:
    """`mamba2` (Mamba-2, Mamba-Codestral), as llama.cpp's src/models/mamba.cpp builds it (attention_free)."""
    return attention_free(model, "mamba2", read_mamba2, declare, mamba2_layer, lambda m: {
        "ssm_inner_size": m.d_inner, "ssm_state_size": m.n_state, "ssm_heads": m.n_heads, "ssm_groups": m.n_groups,
        "ssm_conv_kernel": m.kernel})  # fmt: skip


def attention_free(
    model: GGUFModel,
    arch: str,
    read: Callable[[Metadata], Any],
    declare_mixer: Callable[[ModelBuilder, Any], None],
    mixer: Callable[..., None],
    extra: Callable[[Any], dict],
) -> ModelSpec:
    """The stacks of llama.cpp's mamba.cpp (mamba2, and mamba's Mamba-1): x + mixer(RMS norm(x)) in every layer,
    the final RMS norm, `output.weight` (times its scale), else tied. No attention layer: the plan's KV cache
    has no layers, and a sequence's whole context is its state. `read(md)` reads the mixer's sizes,
    `declare_mixer(b, m)` its buffers, `mixer(b, i, n_embd, m, eps)` writes layer i's into h."""
    md = Metadata(model, arch)
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    sizes = Sizes(n_embd, n_layers, 1, 1, 1, embedding_rows(md))
    m = read(md)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", n_embd), ("h", n_embd)):
        b.buffer(name, "T", width)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    declare_mixer(b, m)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(n_layers):
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(f"blk.{i}.attn_norm.weight", "attn_norm", (n_embd,)),), eps=eps)
        mixer(b, i, n_embd, m, eps)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, bias=False)
    hp = HParams(architecture=arch, name=md.text("general.name", default=model.path.stem),
                 context_length=md.int("context_length", 1, MAX_CONTEXT, default=MAX_CONTEXT), n_embd=n_embd, n_ff=0,
                 n_layers=n_layers, n_heads=0, n_kv_heads=0, head_dim=0, n_rot=0, rope_style="none",
                 rope_freq_base=0.0, rope_freq_scale=1.0, rope_scaling_type="none", rms_eps=eps,
                 vocab_size=sizes.vocab_size, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra={**extra(m), "attention_layers": 0})  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=NO_KV)
