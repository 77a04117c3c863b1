"""The plain pre-norm decoder block several families share with small differences (seed_oss,
ernie4_5, ernie4_5-moe, hunyuan-dense, hunyuan-moe, minimax-m2, internlm2, xverse, exaone, orion,
arcee, nemotron, maincoder, qwen, olmo, plamo, dbrx, baichuan, chatglm), as their llama.cpp graphs
build it:

    x += attn_output(attention(rope(Q), rope(K), V of attn_norm(x)))     (biases, weight scales where present)
    x += FFN(<ffn_norm>(x))                                              (SwiGLU, or the family's experts)

with a final RMS norm and `output.weight` (else the tied embedding). What differs is a Block: the
RoPE pairing, whether `rope_freqs` factors apply, the FFN norm's name, per-head Q/K RMS norms after
RoPE (hunyuan) or whole-row ones before it (minimax-m2), partial rotary, and the FFN itself (a
hook for the mixtures of experts), whether attn_output's bias is added (ernie4_5's graph leaves it out)
or exists at all, LayerNorms (with weight and bias: orion; weight only: dbrx; neither: olmo) instead of RMS norms, and
attention and FFN in parallel from the same normed input (plamo).
Every matmul takes its `.scale` and `.bias` where the file has them (common.qkv_projections, linear).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Rope, Sizes, attention, declare_buffers, glu_ffn, head_norms, hparams, kv_spec, linear, output_head,
    qkv_projections, read_rope, read_sizes, require_output, require_whole_heads, rms_encoder_head, rope_factors,
    rope_weights,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

# ffn(b, i, s, n_ff): the layer's FFN from h (normed) into h, or straight into x; returns whether it added to x
Ffn = Callable[[ModelBuilder, int, Sizes, int], bool]


@dataclass(frozen=True)
class Block:
    rope_style: str  # "adjacent" (llama.cpp's NORM) or "neox"
    factors: bool = False  # rope_freqs.weight (get_rope_factors) where the file has it
    ffn_norm: str = "ffn_norm"
    qk_norm_after_rope: bool = False  # per-head RMS norms attn_q_norm / attn_k_norm after RoPE (hunyuan)
    nextn: bool = False  # the loader reads nextn_predict_layers: the last blocks are MTP ones, not run
    qk_norm_rows: bool = False  # RMS norms of the whole Q and K rows before RoPE, [q width] / [kv width] (minimax-m2)
    full_rotary: bool = True  # the graph asserts n_rot == head_dim
    output_required: bool = False  # the loader requires output.weight (no tied fallback)
    out_bias: bool = True  # False: llama.cpp loads attn_output.bias and its graph does not add it (ernie4_5)
    # False: the loader has no attn_output.bias at all (xverse, orion), so a file with one is refused
    out_bias_loaded: bool = True
    # "rms"; "layer": LayerNorms with weight and bias (LLM_NORM, layer_norm_epsilon: orion, nemotron);
    # "layer_weight": with a weight and no bias (dbrx); "plain": with neither (olmo)
    norm: str = "rms"
    parallel: bool = False  # the FFN reads attn_norm's output too, and both add to x (plamo)
    clamp_kqv: bool = False  # the loader reads attention.clamp_kqv: Q, K and V clamped to [-c, c] (olmo)
    rope: bool = True  # False: no RoPE (baichuan's graph for sizes it does not know: no positions at all)
    alibi: float | None = None  # ALiBi's maximum bias, with rope False (refact, baichuan 13B)
    halved_ff: bool = False  # the FFN is feed_forward_length / 2 wide (qwen's loader)
    gate: str | None = None  # the attention's output times sigmoid(attn_gate h): common.attention's `gate`
    output_bias: bool = True  # False: llama.cpp loads output.bias and its graph does not add it (qwen2vl)
    zero_eps: bool = False  # an RMS epsilon of 0 is taken as written (qwen2vl: llama.cpp's saver writes 0)
    qkv_extras: bool = True  # False: Q, K and V are the matmuls alone, their .scale / .bias known and unused (cogvlm)
    # An encoder (eurobert, neo-bert): attention causal only as `attention.causal` says, no LM head;
    # the rows RMS-normed by `output_norm` are the output, ranked by the `cls` head with `classifier`
    # (common.rms_encoder_head)
    encoder: bool = False
    output_norm: str = "output_norm"
    classifier: bool = False
    # name endings of the layers' tensors the loader never reads, refused even where rfc would apply
    # them (neo-bert's loader creates no bias: llama.cpp refuses a file with one)
    refused: tuple[str, ...] = ()


def build(
    model: GGUFModel,
    arch: str,
    block: Block,
    *,
    ffn: Ffn | None = None,
    declare: Callable | None = None,
    rope: Callable[[Metadata, Sizes, Rope], Rope] | None = None,
    extra: dict | None = None,
    loops: int = 1,
    loop_norm: bool = True,
    windows: Callable[[Metadata, Sizes, Rope], tuple[int, tuple[bool, ...], Rope]] | None = None,
) -> ModelSpec:
    """The model: `ffn` replaces the dense SwiGLU FFN (declare(b, s) declares its buffers); `rope`
    adjusts the file's RoPE (hunyuan's NTK alpha). With `loops` > 1 the stack runs its layers that
    many times over (nanbeige's looped stacks): pass j's layer i reads block i's weights and KV
    cache layer j * n_layers + i, and between passes `output_norm` RMS-norms x (unless not
    `loop_norm`). `windows(md, sizes, rope)`: (the window, a flag per layer, the sliding layers'
    RoPE) for the layers that attend over a sliding window (spark2_5)."""
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0) if block.nextn else 0
    sizes = replace(sizes, n_layers=sizes.n_layers - nextn)
    rp = read_rope(md, sizes, block.rope_style)
    if rope is not None:
        rp = rope(md, sizes, rp)
    if block.full_rotary:
        require_whole_heads(md, rp, sizes, arch)
    n_ff = md.int("feed_forward_length", 2 if block.halved_ff else 1, MAX_FF)
    if block.halved_ff:
        if n_ff % 2:
            raise CompileError(f"{md.path}: {md.key('feed_forward_length')} {n_ff} is odd ({arch}'s FFN is half of it)")
        n_ff //= 2
    eps_key = "attention.layer_norm_rms_epsilon" if block.norm == "rms" else "attention.layer_norm_epsilon"
    eps = md.float(eps_key, 0.0, 1.0, open_lo=not block.zero_eps)
    causal = not block.encoder or md.bool("attention.causal", default=True)
    b = ModelBuilder(model)
    if block.output_required:
        require_output(b, arch)
    unread = [t for t in model.tensors if t.startswith("blk.") and t.endswith(block.refused)]
    if unread:
        raise CompileError(
            f"{b.path}: tensor {unread[0][:80]} is not read by llama.cpp's {arch} loader (it refuses the file too)"
        )
    if block.encoder and (block.norm != "rms" or loops > 1):
        raise ValueError("encoders are planned for RMS-normed blocks run once")  # a recipe bug
    declare_buffers(b, sizes, n_ff, logits=not block.encoder)
    if block.parallel:
        b.buffer("a", "T", sizes.n_embd)
    if block.norm != "rms":
        layernorm.declare(b, sizes.n_embd, "T")
        layernorm.declare(b, sizes.n_embd, "R")
    if declare is not None:
        declare(b, sizes)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(b, rp, md.int("context_length", 1, MAX_CONTEXT), long_short=False) if block.factors else None
    clamp = md.float("attention.clamp_kqv", 0.0, 1e6, default=0.0) if block.clamp_kqv else 0.0
    cfg = Attention(
        rp,
        scale=1.0 / math.sqrt(sizes.head_dim),
        factors=factors,
        qk_norm=block.qk_norm_rows,
        qk_norm_rows=block.qk_norm_rows,
        clamp=clamp or None,
        alibi=block.alibi,
        causal=causal,
    )
    window, sliding, swa_rope = windows(md, sizes, rp) if windows else (None, (False,) * sizes.n_layers, rp)
    if block.gate is not None:
        b.buffer("attn_gate", "T", sizes.n_heads if block.gate == "head" else sizes.q_width)
    b.op("embed", ("tokens",), ("x",), (embd,))
    n_phys = sizes.n_layers
    if loops > 1 and (block.qk_norm_after_rope or block.norm != "rms"):
        raise ValueError("looped stacks are planned for RMS-normed blocks only")  # a recipe bug
    for layer in range(n_phys * loops):
        i = layer % n_phys  # the block whose weights this pass's layer reads
        if loops > 1 and loop_norm and layer and i == 0:  # a pass begins: x RMS-normed by output_norm
            b.op("rmsnorm", ("x",), ("x",), (b.tensor("output_norm.weight", "output_norm", (sizes.n_embd,)),), eps=eps)
        p = f"blk.{i}."
        _norm(b, block, "x", "h", p + "attn_norm", sizes.n_embd, eps)
        if not block.out_bias and block.out_bias_loaded:
            b.unused(p + "attn_output.bias", f"llama.cpp's {arch} loader reads it and its graph does not add it")
        if block.qk_norm_after_rope:
            _attention_norm_after_rope(b, i, sizes, eps, cfg, out_bias=block.out_bias)
        else:
            layer_cfg = replace(cfg, rope=swa_rope, window=window) if sliding[i] else cfg
            attention(b, i, sizes, eps, layer_cfg, out_bias=block.out_bias, dst="a" if block.parallel else "h",
                      rope=block.rope, layer=layer, gate=block.gate, qkv_extras=block.qkv_extras)  # fmt: skip
        if block.parallel:  # x += attn(h) + FFN(h): the attention's output waits in a
            b.op("add", ("x", "a"), ("x",))
        else:
            b.op("add", ("x", "h"), ("x",))
            _norm(b, block, "x", "h", p + block.ffn_norm, sizes.n_embd, eps)
        if ffn is None:
            # seed_oss, ernie4_5, hunyuan: build_ffn(up, NULL, NULL, ...)
            glu_ffn(b, i, sizes.n_embd, n_ff, bias=False, scale=False)
        elif ffn(b, i, sizes, n_ff):
            continue  # the experts added their output to x themselves
        b.op("add", ("x", "h"), ("x",))
    scores = ""
    if block.encoder:
        scores, encoded = rms_encoder_head(
            b, md, sizes, eps, causal, norm=block.output_norm, classifier=block.classifier
        )
        extra, tied = {**(extra or {}), **encoded}, False
    elif block.norm != "rms":
        b.op("gather_rows", ("x",), ("xr",))
        _norm(b, block, "xr", "hr", "output_norm", sizes.n_embd, eps, rows="R")
        tied = not b.has("output.weight")
        if tied:
            b.op("matmul", ("hr",), ("logits",), ("token_embd.weight",))
        else:  # no output.bias in a LayerNorm family's loader (orion)
            linear(b, "hr", "logits", "output", (sizes.vocab_size, sizes.n_embd), bias=False)
    else:
        if not block.output_bias:
            b.unused("output.bias", f"llama.cpp's {arch} loader reads it and its graph does not add it")
        tied = output_head(b, sizes, eps, bias=block.output_bias)
    more = (
        dict(extra or {})
        | ({"norm": "layernorm"} if block.norm != "rms" else {})
        | ({"parallel_blocks": True} if block.parallel else {})
        | ({"nextn_predict_layers": nextn} if nextn else {})
        | ({"num_loops": loops, "physical_layers": n_phys} if loops > 1 else {})
        | ({"sliding_window": window} if window is not None else {})
    )
    sizes = replace(sizes, n_layers=n_phys * loops)  # the layers that run, each with its KV
    hp = hparams(md, sizes, rp, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=more)  # fmt: skip
    logits = "" if block.encoder else "logits"
    return b.finish(hp, input_tokens="tokens", output_logits=logits, output_hidden="hr", kv=kv_spec(sizes),
                    output_scores=scores)  # fmt: skip


def _norm(b: ModelBuilder, block: Block, src: str, dst: str, name: str, n: int, eps: float, rows: str = "T") -> None:
    """dst = the block's norm of src: RMS with `name.weight`, LayerNorm with its weight (and bias), or a
    plain LayerNorm (`name` unused)."""
    if block.norm == "plain":
        layernorm.layer_norm(b, src, dst, n, eps, None, rows=rows)
    elif block.norm in ("layer", "layer_weight"):
        bias = "required" if block.norm == "layer" else "none"
        layernorm.named_layer_norm(b, src, dst, name, n, eps, bias=bias, rows=rows)
    else:
        b.op("rmsnorm", (src,), (dst,), (b.tensor(name + ".weight", name.rsplit(".", 1)[-1], (n,)),), eps=eps)


def _attention_norm_after_rope(
    b: ModelBuilder, i: int, sizes: Sizes, eps: float, cfg: Attention, *, out_bias: bool
) -> None:
    """h = attn_output(attention(...)) with Q and K RMS-normed per head after RoPE (hunyuan's order);
    every matmul with its weight scale and bias where the file has them, as attention's."""
    p = f"blk.{i}."
    qkv_projections(b, p, sizes, "h")
    b.op("rope", ("q", "k"), ("q", "k"), rope_weights(b, cfg.rope, cfg.factors), **cfg.rope.attrs(sizes))
    head_norms(b, p, sizes, eps)
    b.op("kv_write", ("k", "v"), (), layer=i)
    b.op("attention", ("q",), ("att",), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale)  # fmt: skip
    linear(b, "att", "h", p + "attn_output", (sizes.n_embd, sizes.q_width), bias=out_bias)
