"""`gemma3n` (Gemma 3n E2B / E4B) text path, as llama.cpp 0.3.36 builds it (src/models/gemma3n.cpp).

The hidden state is n = altup.num_inputs (4) streams (AltUp). The plan holds them side by side in
one buffer, hs[T, n E]: stream s of a token at columns s E .. (s + 1) E. Token-major, so every
AltUp op is row-wise (a token's streams together, as the cpu step program and the GPU kernels
walk rows) and the buffer's first dimension stays the step's T; the n - 1 projections of a
stream are one head_matmul over a [T, (n - 1) E] buffer. The active stream (altup.active_idx,
which llama.cpp fixes at 0) is what attention and the FFN see.

- inputs: the token embedding times sqrtf(n_embd) is stream 0; streams 1..n-1 are altup_proj of
  it (one head_matmul over n - 1 copies of it), each brought to stream 0's magnitude
  (altup_stack); per-layer embeddings as Gemma 4's (compiler/arch/ple.py);
- each layer: the router (rmsnorm(altup_router_norm), x 1/n_embd, altup_router, tanh: a softcap
  of 1) over the active stream mixes the streams by altup_predict_coef (altup_predict); the
  active prediction goes through attn_norm, then attention (Q/K norms with weights, V normed
  without, score scale 1, neox RoPE, sliding window on 4 layers of 5: rope.freq_base_swa, default
  10000) and Laurel (laurel_l, laurel_r, laurel_post_norm, + its input) side by side; attention's
  output post-normed plus the active prediction, plus Laurel's, x 1/sqrtf(2); a GELU(tanh) FFN
  whose gate keeps only values above mean + 1.645 std (gaussian_topk) in the first 10 layers,
  post-normed, plus its input; the router over that output weighs the innovation per stream
  (altup_correct, altup_correct_coef + 1); the corrected active stream x altup_correct_scale
  gates the layer's per-layer embedding (ple.layer_output), which is added to streams 1..n-1
  (altup_add, which also hands the next router its active stream);
- KV sharing from layer 20 on (llama.cpp's n_layer_kv_from_start, fixed): such a layer reads the
  cache of layer 18 when sliding, 19 when global (Gemma 4's `reuse`), so only 20 layers store KV;
- the output: altup_unembd_proj of streams 1..n-1 at the active stream's magnitude, averaged with
  stream 0 (altup_merge); output_norm; logits soft-capped at 30 (llama.cpp's fixed hparams default).

State per token: the KV cache of 20 layers (E2B: 2 KV heads x 256 x 2 (K, V) x 2 bytes x 20 =
40 KiB); the n streams live only within a step.

Refused with one line before anything is allocated: altup.num_inputs outside 2..16, an active
stream index past the last or other than 0, laurel_rank 0 or above n_embd, any AltUp / Laurel
tensor of another shape, a file without per-layer embeddings, and vision/audio tensors.
"""

from dataclasses import replace

import numpy as np

from rfc.compiler.arch import ple as per_layer
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention,
    Sizes,
    declare_buffers,
    hparams,
    kv_spec,
    output_head,
    read_rope,
    read_sizes,
)
from rfc.compiler.arch.gemma2 import embedding_scale
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.gemma4 import TOWER_PREFIXES, _attention
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec
from rfc.artifacts.limits import MAX_ALTUP

ARCH = "gemma3n"
KV_FROM_START = 20  # llama.cpp's n_layer_kv_from_start for gemma3n: later layers reuse earlier caches
SPARSE_LAYERS = 10  # llama.cpp's n_layer_sparsity: the FFN gates of the first 10 layers are sparsified
STD_MUL = 1.6448533535003662  # llama.cpp's f_sparsity_std_mul, normal_icdf(0.95) as a float32
FINAL_SOFTCAP = 30.0  # llama.cpp's f_final_logit_softcapping default, which gemma3n never reads
INV_SQRT2 = float(np.float32(1.0) / np.sqrt(np.float32(2.0)))  # 1.0f / sqrtf(2.0f)


def _read_altup(md: Metadata, sizes: Sizes) -> tuple[int, int]:
    """(n_altup, laurel_rank), bounded; the active stream must be 0, as llama.cpp fixes it."""
    n = md.int("altup.num_inputs", 2, MAX_ALTUP, default=4)
    active = md.int("altup.active_idx", 0, n - 1, default=0)
    if active:
        raise CompileError(
            f"{md.path}: {md.key('altup.active_idx')} {active}: llama.cpp 0.3.36 runs stream 0 as the active one"
        )
    rank = md.int("laurel_rank", 1, sizes.n_embd, default=64)
    return n, rank


def _kv_sources(sizes: Sizes, is_local: tuple[bool, ...]) -> tuple[int, ...]:
    return tuple(i if i < KV_FROM_START else KV_FROM_START - (2 if is_local[i] else 1) for i in range(sizes.n_layers))


def _router(b: ModelBuilder, p: str, sizes: Sizes, n: int, eps: float, src: str) -> None:
    """mod = tanh(altup_router(rmsnorm(src) / n_embd)): llama.cpp's altup_compute_router_modalities."""
    b.op(
        "rmsnorm",
        (src,),
        ("rin",),
        (b.tensor(p + "altup_router_norm.weight", "altup_router_norm", (sizes.n_embd,)),),
        eps=eps,
    )
    b.op("scale", ("rin",), ("rin",), factor=float(np.float32(1.0) / np.float32(sizes.n_embd)))
    b.op("matmul", ("rin",), ("mod",), (b.tensor(p + "altup_router.weight", "altup_router", (n, sizes.n_embd)),))
    b.op("softcap", ("mod",), ("mod",), cap=1.0)


def _layer(
    b: ModelBuilder,
    i: int,
    sizes: Sizes,
    n: int,
    rank: int,
    n_ff: int,
    eps: float,
    attn: Attention,
    kv_layer: int,
    ple: per_layer.PerLayerEmbedding,
    router_in: str,
) -> None:
    p, e = f"blk.{i}.", (sizes.n_embd,)
    _router(b, p, sizes, n, eps, router_in)
    b.op(
        "matmul", ("mod",), ("c_pred",), (b.tensor(p + "altup_predict_coef.weight", "altup_predict_coef", (n * n, n)),)
    )
    b.op("altup_predict", ("hs", "c_pred"), ("pred", "act"), n_altup=n, active=0)
    b.op("rmsnorm", ("act",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
    # Laurel beside attention, from the same normed input
    b.op("matmul", ("h",), ("laurel",), (b.tensor(p + "laurel_l.weight", "laurel_l", (rank, sizes.n_embd)),))
    b.op("matmul", ("laurel",), ("lau",), (b.tensor(p + "laurel_r.weight", "laurel_r", (sizes.n_embd, rank)),))
    b.op("rmsnorm", ("lau",), ("lau",), (b.tensor(p + "laurel_post_norm.weight", "laurel_post_norm", e),), eps=eps)
    b.op("add", ("lau", "h"), ("lau",))
    _attention(b, i, sizes, eps, attn, "", kv_layer)
    b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps)
    b.op("add", ("h", "act"), ("h",))
    b.op("add", ("h", "lau"), ("h",))
    b.op("scale", ("h",), ("x",), factor=INV_SQRT2)
    b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
    b.op("matmul", ("h",), ("gate",), (b.tensor(p + "ffn_gate.weight", "ffn_gate", (n_ff, sizes.n_embd)),))
    b.op("matmul", ("h",), ("up",), (b.tensor(p + "ffn_up.weight", "ffn_up", (n_ff, sizes.n_embd)),))
    if i < SPARSE_LAYERS:
        b.op("gaussian_topk", ("gate",), ("gate",), std_mul=STD_MUL)
    b.op("swiglu", ("gate", "up"), ("gate",), activation="gelu_tanh")
    b.op("matmul", ("gate",), ("h",), (b.tensor(p + "ffn_down.weight", "ffn_down", (sizes.n_embd, n_ff)),))
    b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", e),), eps=eps)
    b.op("add", ("h", "x"), ("x",))
    _router(b, p, sizes, n, eps, "x")
    b.op("matmul", ("mod",), ("c_corr",), (b.tensor(p + "altup_correct_coef.weight", "altup_correct_coef", (n, n)),))
    scale = b.tensor(p + "altup_correct_scale.weight", "altup_correct_scale", e)
    b.op("altup_correct", ("pred", "x", "c_corr"), ("hs", "first"), (scale,), n_altup=n, active=0)
    per_layer.layer_input(b, ple, i, eps)
    per_layer.layer_output(b, ple, i, eps, src="first", dst="h")
    last = i == sizes.n_layers - 1  # the merge's projection reads streams 1..n-1; the next router, stream 0
    b.op("altup_add", ("hs", "h"), ("hs", "tail" if last else "rin0"), n_altup=n, first=1 if last else 0)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    md.ignored("final_logit_softcapping", "llama.cpp fixes gemma3n's final soft-capping at 30, as this recipe does")
    towers = sorted(t for t in model.tensors if t.startswith(TOWER_PREFIXES))
    if towers:
        raise CompileError(
            f"{md.path}: gemma3n file holds vision/audio tensors ({towers[0][:40]}, ...): llama.cpp's "
            f"text "
            "model refuses them too; use the text GGUF (the towers belong in a separate mmproj file)"
        )
    sizes = read_sizes(md)
    n, rank = _read_altup(md, sizes)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    rope = read_rope(md, sizes, "neox")
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=10000.0, open_lo=True)
    is_local = sliding_window_layers(md, sizes.n_layers, 5)
    kv_layers = _kv_sources(sizes, is_local)
    for i, src in enumerate(kv_layers):
        if is_local[src] != is_local[i]:  # a sliding reader of a global cache, or the reverse
            raise CompileError(
                f"{md.path}: layer {i} would read the KV cache of layer {src}, which the sliding-window "
                "pattern makes a layer of the other kind"
            )
    full = Attention(rope, scale=1.0, qk_norm=True)
    local = Attention(rope, scale=1.0, qk_norm=True, window=window).with_rope(freq_base=base_swa, freq_scale=1.0)
    b = ModelBuilder(model)
    ple = per_layer.read_per_layer_embedding(md, b, sizes.n_embd, sizes.n_layers, sizes.vocab_size)
    if ple is None:
        raise CompileError(f"{md.path}: gemma3n needs per-layer embeddings ({md.key(per_layer.KEY)} > 0)")
    declare_buffers(b, sizes, n_ff)
    per_layer.declare_buffers(b, ple)
    e = sizes.n_embd
    for name, width in (("hs", n * e), ("pred", n * e), ("act", e), ("first", e), ("rin", e), ("rin0", e), ("lau", e),
                        ("laurel", rank), ("mod", n), ("c_pred", n * n), ("c_corr", n), ("tail", (n - 1) * e),
                        ("alt", (n - 1) * e), *((f"rep{k}", k * e) for k in range(2, n))):  # fmt: skip
        b.buffer(name, "T", width)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, e))
    b.op("embed", ("tokens",), ("x",), (embd,), scale=embedding_scale(sizes))
    per_layer.keep_input(b)
    # streams 1..n-1: altup_proj of n - 1 copies of the input, at its magnitude
    rep = "x"
    for k in range(2, n):
        b.op("concat_heads", (rep, "x"), (f"rep{k}",), heads=1)
        rep = f"rep{k}"
    proj = b.tensor("altup_proj.weight", "altup_proj", (n - 1, e, e))
    b.op("head_matmul", (rep,), ("alt",), (proj,), heads=n - 1)
    b.op("altup_stack", ("x", "alt"), ("hs",), n_altup=n)
    for i in range(sizes.n_layers):
        _layer(
            b,
            i,
            sizes,
            n,
            rank,
            n_ff,
            eps,
            local if is_local[i] else full,
            kv_layers[i],
            ple,
            "x" if i == 0 else "rin0",
        )
    unembd = b.tensor("altup_unembd_proj.weight", "altup_unembd_proj", (n - 1, e, e))
    b.op("head_matmul", ("tail",), ("alt",), (unembd,), heads=n - 1)
    b.op("altup_merge", ("hs", "alt"), ("x",), n_altup=n, active=0)
    tied = output_head(b, sizes, eps, final_softcap=FINAL_SOFTCAP)
    for i in (
        i for i in range(sizes.n_layers) if kv_layers[i] != i
    ):  # llama.cpp loads them, and reads the shared cache
        for name in ("attn_k.weight", "attn_v.weight", "attn_k_norm.weight"):
            b.unused(f"blk.{i}.{name}", "a KV-sharing layer's K and V: it attends over an earlier layer's cache")
    n_kv = 1 + max(kv_layers)
    extra = {
        "sliding_window": window,
        "sliding_window_layers": [i for i, on in enumerate(is_local) if on],
        "rope_freq_base_swa": base_swa,
        "final_logit_softcapping": FINAL_SOFTCAP,
        "embedding_scale": embedding_scale(sizes),
        "query_scale": 1.0,
        "altup_num_inputs": n,
        "altup_active_idx": 0,
        "laurel_rank": rank,
        "activation_sparsity_layers": min(SPARSE_LAYERS, sizes.n_layers),
        "shared_kv_layers": sizes.n_layers - n_kv,
        "kv_layer_per_layer": list(kv_layers),
        "embedding_length_per_layer_input": ple.width,
    }
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False, extra=extra)
    # only the layers that store KV have cache rows (the first n_kv: shared layers come last)
    return b.finish(
        hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=replace(kv_spec(sizes), n_layers=n_kv)
    )
