"""`gemma2` (Gemma 2): the Gemma block, which gemma3 shares (see gemma3.py).

As llama.cpp builds it (src/models/gemma2.cpp):
- the token embedding times sqrtf(n_embd); the output is always the tied embedding;
- pre-norm attention and a GELU(tanh)-gated FFN, each sublayer's output RMS-normed again
  (`post_attention_norm`, `post_ffw_norm`) before its residual add;
- NeoX RoPE; Q scaled by 1/sqrt(head_dim) (27B, 46 layers: 1/sqrt(n_embd / n_head)), with
  head_dim from attention.key_length, so the attention width may differ from n_embd;
- attention logits soft-capped (attn_logit_softcapping, default 50), final logits soft-capped
  (final_logit_softcapping, default 30): x -> cap * tanh(x / cap);
- sliding-window attention (attention.sliding_window, default 4096) on the layers that
  attention.sliding_window_pattern marks: an array of per-layer flags, or a period n (default
  2) whose last layer of each n is global (llama.cpp's set_swa_pattern);
- rope.freq_base default 10000 (Gemma 2 files have no such key); rope.freq_base_swa, when
  present, for the sliding-window layers.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Rope, Sizes, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


@dataclass(frozen=True)
class GemmaLayers:
    """What a Gemma version decides per layer; the block is the same."""

    global_attention: Attention
    local_attention: Attention  # the sliding-window layers
    is_local: tuple[bool, ...]  # per layer
    final_softcap: float | None


def query_scale(sizes: Sizes, big: bool) -> float:
    """Gemma's query pre-attention scaling, float32 as llama.cpp computes it: 1/sqrtf(head_dim),
    or 1/sqrtf(n_embd / n_head) for the 27B models (`big`)."""
    d = sizes.n_embd // sizes.n_heads if big else sizes.head_dim
    return float(np.float32(1.0) / np.sqrt(np.float32(d)))


def embedding_scale(sizes: Sizes) -> float:
    return float(np.sqrt(np.float32(sizes.n_embd)))  # sqrtf(n_embd), a float32


def gemma_block(b: ModelBuilder, i: int, sizes: Sizes, eps: float, attn: Attention, n_ff: int) -> None:
    p = f"blk.{i}."
    e = (sizes.n_embd,)
    b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
    attention(b, i, sizes, eps, attn)
    b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps)
    b.op("add", ("x", "h"), ("x",))
    b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
    glu_ffn(b, i, sizes.n_embd, n_ff, activation="gelu_tanh", bias=False, scale=False)  # as gemma2/3.cpp call build_ffn
    b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", e),), eps=eps)
    b.op("add", ("x", "h"), ("x",))


def build_gemma(
    model: GGUFModel,
    arch: str,
    layers_of: Callable[[Metadata, Sizes, Rope], GemmaLayers],
    *,
    tied_output: bool,
    encoder_head: Callable[[ModelBuilder, Metadata, Sizes, float], str] | None = None,
) -> ModelSpec:
    """A Gemma model; `layers_of(md, sizes, rope)` says what differs between versions;
    `tied_output`: the output is the token embedding even if the file has an output.weight
    (llama.cpp's gemma2 loader). `encoder_head(b, md, sizes, eps)`: an encoder's (EmbeddingGemma)
    tail after the last layer, returning its hidden output; the plan then has no logits."""
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    layers: GemmaLayers = layers_of(md, sizes, rope)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff, logits=encoder_head is None)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,), scale=embedding_scale(sizes))
    for i in range(sizes.n_layers):
        gemma_block(b, i, sizes, eps, layers.local_attention if layers.is_local[i] else layers.global_attention, n_ff)
    if encoder_head is None:
        tied = output_head(b, sizes, eps, final_softcap=layers.final_softcap, always_tied=tied_output)
        logits, hidden = "logits", "hr"
    else:
        tied, logits, hidden = False, "", encoder_head(b, md, sizes, eps)
    local = layers.local_attention
    extra = {
        "sliding_window": local.window,
        "sliding_window_layers": [i for i, on in enumerate(layers.is_local) if on],
        "rope_freq_base_swa": local.rope.freq_base,
        "rope_freq_scale_swa": local.rope.freq_scale,
        "attn_logit_softcapping": layers.global_attention.softcap,
        "final_logit_softcapping": layers.final_softcap,
        "embedding_scale": embedding_scale(sizes),
        "query_scale": layers.global_attention.scale,
    }
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits=logits, output_hidden=hidden, kv=kv_spec(sizes))


def _gemma2_layers(md: Metadata, sizes: Sizes, rope: Rope) -> GemmaLayers:
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT, default=4096)
    softcap = md.float("attn_logit_softcapping", 0.0, 1e6, default=50.0, open_lo=True)
    final = md.float("final_logit_softcapping", 0.0, 1e6, default=30.0, open_lo=True)
    full = Attention(rope, scale=query_scale(sizes, big=sizes.n_layers == 46), softcap=softcap)
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    local = Attention(rope, scale=full.scale, softcap=softcap, window=window).with_rope(freq_base=base_swa)
    return GemmaLayers(full, local, sliding_window_layers(md, sizes.n_layers, 2), final)


def build(model: GGUFModel) -> ModelSpec:
    return build_gemma(model, "gemma2", _gemma2_layers, tied_output=True)
