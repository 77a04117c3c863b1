"""`nemotron_h` (NVIDIA Nemotron-H, Nemotron Nano 2): a stack of single-mixer layers, each
x = x + mixer(rms_norm(x)), the mixer one of three kinds (llama.cpp's src/models/nemotron-h.cpp):

- a Mamba2 layer where both `attention.head_count_kv` and `feed_forward_length` are 0 for it
  (compiler/arch/mamba2.py's mixer, its norm over `ssm.group_count` groups);
- an attention layer where only `feed_forward_length` is 0: GQA without positions (no RoPE;
  llama.cpp's rope type is none), scores scaled by 1/sqrt(head_dim), optional output bias;
- an MLP layer where `feed_forward_length` is set: ffn_down(relu(ffn_up x)^2) (squared ReLU,
  no gate; optional biases). Computed as swiglu with activation "relu" of (u, u): max(u, 0) u.

The norm epsilon is `attention.layer_norm_rms_epsilon`, else `attention.layer_norm_epsilon`
(required, as llama.cpp's loader requires it). `nextn_predict_layers` MTP blocks at the end
are not run. Experts are the nemotron_h_moe architecture (nemotron_h_moe.py: build_stack with
them in the FFN layers). The KV cache holds the attention layers only; per sequence each Mamba2
layer keeps (kernel - 1) x (d_inner + 2 G N) + d_inner x N floats (mamba2.Mamba2.state_floats).
"""

import math
from collections.abc import Callable

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch import mamba2
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, Sizes, hparams, linear, output_head
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_EXPERTS, MAX_FF, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

MAMBA, ATTENTION, MLP = "mamba2", "attention", "mlp"


def layer_kinds(
    md: Metadata, b: ModelBuilder, n_layers: int, ffn_tensor: str = "ffn_up.weight"
) -> tuple[list[str], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    heads = md.per_layer("attention.head_count", n_layers, 0, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, 0, MAX_HEADS)
    n_ff = md.per_layer("feed_forward_length", n_layers, 0, MAX_FF)
    kinds = [MLP if n_ff[i] else ATTENTION if kv_heads[i] else MAMBA for i in range(n_layers)]
    tensor = {MAMBA: "ssm_in.weight", ATTENTION: "attn_q.weight", MLP: ffn_tensor}
    for i, kind in enumerate(kinds):  # the pattern must agree with the tensors, both ways
        has = [k for k, name in tensor.items() if b.has(f"blk.{i}.{name}")]
        if has != [kind]:
            raise CompileError(f"{md.path}: layer {i} is a{'n' if kind == ATTENTION else ''} {kind} layer by "
                               f"{md.key('attention.head_count_kv')} and {md.key('feed_forward_length')}, "
                               "but its tensors say otherwise")  # fmt: skip
    return kinds, heads, kv_heads, n_ff


def build(model: GGUFModel) -> ModelSpec:
    return build_stack(model, "nemotron_h")


def build_stack(model: GGUFModel, arch: str, experts: Callable | None = None) -> ModelSpec:
    """The stack of `arch`; with `experts` (nemotron_h_moe.read) its FFN layers are mixtures of
    experts (nemotron_h_moe.RoutedFFN) instead of the dense squared-ReLU MLP."""
    md = Metadata(model, arch)
    md.ignored("attention.scale", "llama.cpp's nemotron_h scores by 1/sqrt(head_dim) and does not read it")
    b = ModelBuilder(model)
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_all = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    nextn = md.int("nextn_predict_layers", 0, n_all - 1, default=0)
    n_layers = n_all - nextn
    if experts is not None and md.has("expert_count") and md.int("expert_count", 0, MAX_EXPERTS) == 0:
        experts = None  # llama.cpp's nemotron_h_moe loader: with expert_count 0 its FFN layers are the dense MLP
    kinds, heads, kv_heads, n_ff = layer_kinds(md, b, n_all, "ffn_up_exps.weight" if experts else "ffn_up.weight")
    kinds = kinds[:n_layers]
    attn = [i for i in range(n_layers) if kinds[i] == ATTENTION]
    if not attn:
        raise CompileError(
            f"{md.path}: no attention layer ({md.key('attention.head_count_kv')}, {md.key('feed_forward_length')})"
        )
    nh, nkv, head_dim = mamba2.attention_heads(md, heads, kv_heads, attn, n_embd)
    embd_t = model.tensors.get("token_embd.weight")
    if embd_t is None or len(embd_t.shape) != 2 or not 1 <= embd_t.shape[0] <= MAX_VOCAB:
        raise CompileError(f"{md.path}: token_embd.weight is missing or not [vocab <= {MAX_VOCAB}, n_embd]")
    sizes = Sizes(n_embd, n_layers, nh, nkv, head_dim, embd_t.shape[0])
    m = mamba2.read_mamba2(md)
    moe = experts(md, n_embd, n_ff, [i for i in range(n_layers) if kinds[i] == MLP]) if experts else None
    if moe is None and md.int("expert_count", 0, 1 << 20, default=0):
        raise CompileError(
            f"{md.path}: {md.key('expert_count')}: nemotron_h with experts (nemotron_h_moe) is not supported"
        )
    eps_plain = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, default=eps_plain, open_lo=True)
    widest = max([n_ff[i] for i in range(n_layers) if kinds[i] == MLP], default=1)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", n_embd), ("h", n_embd), ("q", sizes.q_width), ("k", sizes.kv_width),
                        ("v", sizes.kv_width), ("att", sizes.q_width)):  # fmt: skip
        b.buffer(name, "T", width)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    for f in sorted({n_ff[i] for i in range(n_layers) if kinds[i] == MLP and moe is None}):
        b.buffer(f"up{f}", "T", f)
    if moe is not None:
        moe.declare(b)
    mamba2.declare(b, m)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd)),))
    scale = 1.0 / math.sqrt(head_dim)
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n_embd,)),), eps=eps)
        if kinds[i] == MAMBA:
            mamba2.mamba2_layer(b, i, n_embd, m, eps)
        elif kinds[i] == ATTENTION:
            _attention(b, i, attn.index(i), sizes, scale)
        elif moe is not None:
            moe.layer(b, i)  # adds the routed experts to x itself; h: the shared expert
        else:
            up = f"up{n_ff[i]}"
            # build_ffn: + bias, * scale
            linear(b, "h", up, p + "ffn_up", (n_ff[i], n_embd), bias=True, bias_first=True)
            b.op("swiglu", (up, up), (up,), activation="relu")  # relu(u) u = relu(u)^2
            linear(b, up, "h", p + "ffn_down", (n_embd, n_ff[i]), bias=True, bias_first=True)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    rope = Rope(head_dim, "adjacent", 10000.0, 1.0, "none", 1.0, orig_ctx=0)  # reported only: no layer turns
    extra = {"attention_layers": len(attn), "mlp_layers": kinds.count(MLP), "mamba2_layers": kinds.count(MAMBA),
             "ssm_conv_kernel": m.kernel, "ssm_inner_size": m.d_inner, "ssm_state_size": m.n_state,
             "ssm_time_step_rank": m.n_heads, "ssm_group_count": m.n_groups, "rope": False}  # fmt: skip
    if nextn:
        extra["nextn_predict_layers"] = nextn
    if moe is not None:
        extra |= moe.hparams()
    hp = hparams(md, sizes, rope, widest, eps, tied_embeddings=tied, qkv_bias=b.has(f"blk.{attn[0]}.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(attn), n_kv_heads=nkv, head_dim=head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _attention(b: ModelBuilder, i: int, kv_layer: int, sizes: Sizes, scale: float) -> None:
    """Layer i's attention without positions, its KV in the cache's layer kv_layer."""
    p = f"blk.{i}."
    for proj, width in (("q", sizes.q_width), ("k", sizes.kv_width), ("v", sizes.kv_width)):
        linear(b, "h", proj, f"{p}attn_{proj}", (width, sizes.n_embd), bias=True)
    b.op("kv_write", ("k", "v"), (), layer=kv_layer)
    b.op("attention", ("q",), ("att",), layer=kv_layer, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=scale)  # fmt: skip
    linear(b, "att", "h", p + "attn_output", (sizes.n_embd, sizes.q_width), bias=True)
