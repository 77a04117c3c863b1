"""`gemma4` (Gemma 4) text path, as llama.cpp 0.3.36 builds it (src/models/gemma4.cpp):

- the token embedding times sqrtf(n_embd); the output is `output.weight`, else the tied embedding;
- each layer: pre-norm attention whose Q and K get per-head RMS norms with weights and whose V gets
  a per-head RMS norm without one; no query pre-scaling (the score scale is 1: the norms fix the
  magnitudes); no attention soft-capping; the output RMS-normed (`post_attention_norm`) before the
  residual add; a GELU(tanh)-gated FFN, RMS-normed (`post_ffw_norm`) before its residual add;
  then the whole residual times `layer_output_scale` (a scalar tensor) when the file has one;
- sliding-window layers from `attention.sliding_window_pattern`, which llama.cpp reads as a
  per-layer array (a scalar period is refused there too); local layers: `rope.freq_base_swa`
  (default 10000), unscaled, `rope.dimension_count_swa` rotated dimensions; global layers:
  `rope.freq_base`, the file's rope scaling and the `rope_freqs` factors (required once a layer
  is global: Gemma 4's "proportional" RoPE);
- V is the K projection itself when a layer has no `attn_v` (use_alternative_attention);
- per-layer geometry (llama.cpp's n_embd_head_k(il), n_head(il), n_head_kv(il)): sliding layers
  have head size `attention.key_length_swa`, global ones `attention.key_length`, and
  `attention.head_count` / `head_count_kv` may be per-layer arrays (Gemma 4 31B: sliding 32 x 16
  x 256, global 32 x 4 x 512, no attn_v); each geometry has its q/k/v/att buffers, and the KV
  cache's row is the widest layer's (KVSpec): a narrower layer uses the first values of its rows;
- final-logit soft-capping by `final_logit_softcapping`, 30 when the key is absent (llama.cpp's
  hparams default, which gemma4's loader keeps), none when it is 0.

E2B/E4B: per-layer embeddings (embedding_length_per_layer_input > 0: compiler/arch/ple.py) and KV
sharing: with attention.shared_kv_layers = n, the last n layers store no K/V and read the cache
of layer n_layer - n - 2 when sliding, n_layer - n - 1 when global (llama.cpp's `reuse` for
GEMMA3N/GEMMA4 in llama-model.cpp); their attention op names that layer, the plan's KVSpec counts
only the n_layer - n layers that store KV (the KV budget, /health and `rfc inspect` follow it),
and a source layer of another kind or head geometry is refused.

Not yet (each refused with one line naming it): the
per-layer FFN widths (arrays), and
vision/audio tensors in the same file (llama.cpp refuses a text model file with tensors it does
not load: the towers go in a separate mmproj).
"""

from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Sizes, declare_buffers, embedding_rows, glu_ffn, head_norms, hparams, kv_spec, linear, output_head,
    qkv_weights, read_rope,
)  # fmt: skip
from rfc.compiler.arch import ple as per_layer
from rfc.compiler.arch import gemma4_moe
from rfc.compiler.arch.gemma2 import embedding_scale
from rfc.compiler.arch.swa import pattern_array
from rfc.compiler.arch.ple import PerLayerEmbedding
from rfc.compiler.arch.metadata import (
    MAX_CONTEXT,
    MAX_EMBD,
    MAX_FF,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    Metadata,
)
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "gemma4"
# Tensor name prefixes of the vision and audio towers (an mmproj's), which the text model never loads.
TOWER_PREFIXES = ("v.", "a.", "mm.", "vision_", "audio_")


def _check_supported(md: Metadata, sizes: Sizes) -> None:
    """The parts of Gemma 4 this recipe does not plan yet, refused before anything is built."""
    model = md.model
    towers = sorted(n for n in model.tensors if n.startswith(TOWER_PREFIXES))
    if towers:
        raise CompileError(
            f"{md.path}: gemma4 file holds vision/audio tensors ({towers[0][:40]}, ...): llama.cpp's "
            "text model refuses them too; use the text GGUF (the towers belong in a separate mmproj "
            "file)"
        )
    gemma4_moe.read(
        md, sizes.n_embd, sizes.n_layers
    )  # the experts' counts and widths (26B-A4B), checked before planning


def _read_sizes(md: Metadata) -> tuple[Sizes, tuple[Sizes, ...], tuple[bool, ...], int]:
    """(the model's sizes, each layer's, which layers are sliding-window, the global layers' head
    size) as llama.cpp's loader
    reads them: head counts a scalar or a per-layer array (KV heads default to the heads), head
    size key_length on global layers and key_length_swa on sliding ones (required, as gemma4's
    load_arch_hparams requires it), value lengths equal to them (load_arch_tensors), every
    layer's heads a multiple of its KV heads. The model's sizes are those of the layer with the
    widest KV row (the KV cache's row: KVSpec); all counts are bounded before anything is sized."""
    model = md.model
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    heads = md.per_layer("attention.head_count", n_layers, 1, MAX_HEADS)
    kv_heads = (
        md.per_layer("attention.head_count_kv", n_layers, 1, MAX_HEADS) if md.has("attention.head_count_kv") else heads
    )
    is_local = pattern_array(md, n_layers)
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // heads[0]))
    head_dim_swa = md.int("attention.key_length_swa", 1, MAX_HEAD_DIM)
    for key, want in (("attention.value_length", head_dim), ("attention.value_length_swa", head_dim_swa)):
        value = md.int(key, 1, MAX_HEAD_DIM, default=want)
        if value != want:  # llama.cpp: "Gemma 4 requires n_embd_head_k == n_embd_head_v" (and _swa)
            raise CompileError(f"{md.path}: gemma4 needs {md.key(key)} == its key length ({value} != {want})")
    vocab = embedding_rows(md)
    layers = []
    for i in range(n_layers):
        if heads[i] % kv_heads[i]:
            raise CompileError(
                f"{md.path}: layer {i}'s head_count {heads[i]} is not a multiple of its head_count_kv {kv_heads[i]}"
            )
        layers.append(Sizes(n_embd, n_layers, heads[i], kv_heads[i], head_dim_swa if is_local[i] else head_dim, vocab))
    widest = max(layers, key=lambda ls: ls.kv_width)  # the first of the widest
    return widest, tuple(layers), is_local, head_dim


def _kv_sources(md: Metadata, layers: tuple[Sizes, ...], is_local: tuple[bool, ...]) -> tuple[int, ...]:
    """The cache layer each layer reads: its own, or with attention.shared_kv_layers = n for the
    last n layers, layer n_layer - n - 2 (sliding) or n_layer - n - 1 (global), as llama.cpp's
    `reuse` picks them. At least two layers must store KV (llama.cpp asserts it), and a source
    must be of the reader's kind (its window) and KV geometry, or the reader would see rows of
    another shape or rows a sliding-window cache no longer keeps."""
    n = len(layers)
    shared = md.int("attention.shared_kv_layers", 0, MAX_LAYERS, default=0)
    if shared and n - shared < 2:
        raise CompileError(
            f"{md.path}: {md.key('attention.shared_kv_layers')} {shared} leaves {max(0, n - shared)} of "
            f"{n} layers storing KV; gemma4 needs at least 2"
        )
    first = n - shared
    out = list(range(first))
    for i in range(first, n):
        src = first - (2 if is_local[i] else 1)
        a, b = layers[i], layers[src]
        if is_local[src] != is_local[i] or (a.n_kv_heads, a.head_dim) != (b.n_kv_heads, b.head_dim):
            kind = lambda j: "sliding" if is_local[j] else "global"  # noqa: E731
            raise CompileError(
                f"{md.path}: layer {i} ({kind(i)}, {a.n_kv_heads} x {a.head_dim}) would read the KV "
                f"cache of layer {src} ({kind(src)}, {b.n_kv_heads} x {b.head_dim}): not the same kind "
                f"and geometry"
            )
        out.append(src)
    return tuple(out)


def _buffers(b: ModelBuilder, sizes: Sizes, layers: tuple[Sizes, ...]) -> dict[tuple[int, int, int], str]:
    """The q/k/v/att buffers of each layer geometry: the model's (s) are q, k, v, att
    (declare_buffers), another geometry's q_{H}x{KV}x{D}, ... . Returns the suffix per geometry."""
    out = {(sizes.n_heads, sizes.n_kv_heads, sizes.head_dim): ""}
    for ls in layers:
        g = (ls.n_heads, ls.n_kv_heads, ls.head_dim)
        if g not in out:
            out[g] = "_{}x{}x{}".format(*g)
            for name, width in (("q", ls.q_width), ("k", ls.kv_width), ("v", ls.kv_width), ("att", ls.q_width)):
                b.buffer(name + out[g], "T", width)
    return out


def _attention(b: ModelBuilder, i: int, sizes: Sizes, eps: float, cfg: Attention, sfx: str, kv_layer: int) -> None:
    """h = attn_output(attention(rope(q_norm(Q h)), rope(k_norm(K h)), norm(V h))) for layer i
    of sizes s (its own heads and head size), in its geometry's buffers (q{sfx}, ...); V is K's
    projection when the layer has no attn_v (and no fused attn_qkv). A layer that reads another
    layer's cache (kv_layer != i) projects, norms and rotates Q alone (the rope op turns the k
    buffer too, which nothing reads) and writes no KV."""
    p = f"blk.{i}."
    q, k, v, att = (name + sfx for name in ("q", "k", "v", "att"))
    if kv_layer != i:  # Q alone: a fused attn_qkv's Q rows, else attn_q (its attn_k / attn_v, if any, unread)
        wq = (
            qkv_weights(b, p, sizes)[0]
            if b.has(p + "attn_qkv.weight")
            else b.tensor(p + "attn_q.weight", "attn_q", (sizes.q_width, sizes.n_embd))
        )
        b.op("matmul", ("h",), (q,), (wq,))
        head_norms(b, p, sizes, eps, q, None)
        b.op("rope", (q, k), (q, k), (cfg.factors,) if cfg.factors else (), **cfg.rope.attrs(sizes))
    else:
        if b.has(p + "attn_qkv.weight") or b.has(p + "attn_v.weight"):
            wq, wk, wv = qkv_weights(b, p, sizes)
        else:
            wq = b.tensor(p + "attn_q.weight", "attn_q", (sizes.q_width, sizes.n_embd))
            wk = wv = b.tensor(p + "attn_k.weight", "attn_k", (sizes.kv_width, sizes.n_embd))
        for buf, w in ((q, wq), (k, wk), (v, wv)):
            b.op("matmul", ("h",), (buf,), (w,))
        head_norms(b, p, sizes, eps, q, k)
        b.op("rmsnorm", (v,), (v,), (), eps=eps, heads=sizes.n_kv_heads)  # no weight: ggml_rms_norm alone
        b.op("rope", (q, k), (q, k), (cfg.factors,) if cfg.factors else (), **cfg.rope.attrs(sizes))
        b.op("kv_write", (k, v), (), layer=i)
    extra = {"window": cfg.window} if cfg.window is not None else {}
    b.op("attention", (q,), (att,), (), layer=kv_layer, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale, **extra)  # fmt: skip
    linear(b, att, "h", p + "attn_output", (sizes.n_embd, sizes.q_width))


def _block(
    b: ModelBuilder,
    md: Metadata,
    i: int,
    sizes: Sizes,
    eps: float,
    attn: Attention,
    n_ff: int,
    sfx: str,
    *,
    kv_layer: int,
    ple: PerLayerEmbedding | None,
) -> None:
    p = f"blk.{i}."
    e = (sizes.n_embd,)
    b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
    _attention(b, i, sizes, eps, attn, sfx, kv_layer)
    b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps)
    b.op("add", ("x", "h"), ("x",))
    b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
    glu_ffn(b, i, sizes.n_embd, n_ff, activation="gelu_tanh")
    gemma4_moe.add_experts(
        b, md, i, sizes, eps
    )  # 26B-A4B: the routed experts beside the dense MLP, where i has a router
    b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", e),), eps=eps)
    b.op("add", ("x", "h"), ("x",))
    if ple is not None:  # the layer's per-layer embedding, after the FFN's residual (compiler/arch/ple.py)
        per_layer.layer_input(b, ple, i, eps)
        per_layer.layer_output(b, ple, i, eps)
        b.op("add", ("x", "h"), ("x",))
    scale = b.scalar(p + "layer_output_scale.weight")  # one F32, a learned value: possibly negative
    if scale is not None:
        b.op("scale", ("x",), ("x",), factor=scale)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    sizes, layers, is_local, head_dim = _read_sizes(md)
    _check_supported(md, sizes)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    final = md.float("final_logit_softcapping", 0.0, 1e6, default=30.0) or None
    rope = read_rope(md, replace(sizes, head_dim=head_dim), "neox")  # n_rot: at most, and by default, key_length
    b = ModelBuilder(model)
    factors = None
    if not all(is_local):  # llama.cpp requires rope_freqs once a layer is global, of head_dim / 2 factors
        if rope.n_rot != head_dim:
            raise CompileError(
                f"{md.path}: gemma4's rope_freqs needs rope.dimension_count == key_length ({rope.n_rot} != {head_dim})"
            )
        factors = b.tensor("rope_freqs.weight", "rope_freqs", (head_dim // 2,))
    # llama.cpp's n_rot_swa defaults to n_rot (rope.dimension_count): a sliding head size below it needs the key
    head_dim_swa = next((ls.head_dim for ls, on in zip(layers, is_local) if on), head_dim)
    n_rot_swa = md.int("rope.dimension_count_swa", 2, head_dim_swa, default=rope.n_rot)
    if n_rot_swa % 2:
        raise CompileError(f"{md.path}: rope.dimension_count_swa {n_rot_swa} must be even")
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=10000.0, open_lo=True)
    full = Attention(rope, scale=1.0, qk_norm=True, factors=factors)
    local = Attention(rope, scale=1.0, qk_norm=True, window=window).with_rope(
        n_rot=n_rot_swa, freq_base=base_swa, freq_scale=1.0
    )
    kv_layers = _kv_sources(md, layers, is_local)
    n_kv = 1 + max(kv_layers)  # the layers that store KV: the first ones
    ple = per_layer.read_per_layer_embedding(md, b, sizes.n_embd, sizes.n_layers, sizes.vocab_size)
    declare_buffers(b, sizes, n_ff)
    suffixes = _buffers(b, sizes, layers)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,), scale=embedding_scale(sizes))
    if ple is not None:
        per_layer.declare_buffers(b, ple)
        per_layer.keep_input(b)
    for i, ls in enumerate(layers):
        _block(b, md, i, ls, eps, local if is_local[i] else full, n_ff,
               suffixes[(ls.n_heads, ls.n_kv_heads, ls.head_dim)], kv_layer=kv_layers[i], ple=ple)  # fmt: skip
    tied = output_head(b, sizes, eps, final_softcap=final)
    extra = {
        "sliding_window": window,
        "sliding_window_layers": [i for i, on in enumerate(is_local) if on],
        "rope_freq_base_swa": base_swa,
        "rope_dimension_count_swa": n_rot_swa,
        "final_logit_softcapping": final,
        "embedding_scale": embedding_scale(sizes),
        "query_scale": 1.0,
        "v_norm": True,
        # per layer, where layers differ (31B); the model's own sizes are those of the widest KV row
        "key_length": head_dim,
        "key_length_swa": head_dim_swa,
        "head_count_per_layer": [ls.n_heads for ls in layers],
        "head_count_kv_per_layer": [ls.n_kv_heads for ls in layers],
        # E2B/E4B: the layers that read another's KV cache (and which), the per-layer embeddings' width
        "shared_kv_layers": len(layers) - n_kv,
        "kv_layer_per_layer": list(kv_layers),
        "embedding_length_per_layer_input": ple.width if ple else 0,
    }
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=False,
                 rope_freq_factors=factors is not None, extra=extra | gemma4_moe.hparams(md, sizes))  # fmt: skip
    # only the layers that store KV have cache rows (the first n_kv: shared layers come last)
    return b.finish(
        hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=replace(kv_spec(sizes), n_layers=n_kv)
    )
