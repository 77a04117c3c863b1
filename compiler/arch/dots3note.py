"""`dots3note` (rednote dots.llm3), as llama.cpp 0.3.36 builds it (src/models/dots3note.cpp): deepseek2's absorbed
multi-head latent attention in two geometries, its sliding-window layers' own and the full layers':

- the layers `attention.sliding_window_pattern` flags attend within `attention.sliding_window` and rotate at
  `rope.freq_base_swa`, with `attention.kv_lora_rank_swa`, `key_length_mla_swa`, `value_length_mla_swa`; the
  others at `rope.freq_base` with `kv_lora_rank`, `key_length_mla`, `value_length_mla`; each layer's heads
  `attention.head_count` (one, or one per layer). Q through the q_lora bottleneck (required), the rope key
  RMS-normed by `attn_k_norm` before RoPE (adjacent pairs over `rope.dimension_count`), scores x
  1/sqrt(key_length_mla of the layer), each head's output times sigmoid(`attn_gate` h) (one gate per head),
  `attn_output` with its scale;
- DeepSeek Sparse Attention on the full layers (`attention.indexer.*`): dense while a sequence holds at most
  `attention.indexer.top_k` tokens (deepseek32's: the served context is capped there, the indexer unused);
- `leading_dense_block_count` dense SwiGLU layers with their weight scales, then experts: the gating function
  (required), the selection bias `exp_probs_b` (required), `expert_weights_norm` and `_scale`, the experts' and
  the shared experts' weight scales (the graph passes them all), `expert_shared_count` shared experts;
- the output: `output.weight` alone (no scale: the graph multiplies by it), else tied; MTP blocks not run.

The KV cache: per layer the [latent, rope key] row of its geometry, in rows of the wider one (a narrower layer
uses their first values): 2 x (max kv_lora + n_rot) halves per token and layer.
"""

import math
from dataclasses import replace

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, embedding_rows, glu_ffn, hparams, output_head, read_rope
from rfc.compiler.arch.deepseek2 import INDEXER_TENSORS, MAX_LORA_RANK, mla_attention, mla_buffers
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EMBD, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import declare_expert_buffers, experts_after_dense, moe_block
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "dots3note"


def _geometry(md: Metadata, swa: bool, n_rot: int) -> tuple[int, int, int]:
    """(kv_lora, nope, v_dim) of the sliding (swa) or the full layers."""
    sfx = "_swa" if swa else ""
    kv_lora = md.int(f"attention.kv_lora_rank{sfx}", 1, MAX_LORA_RANK)
    key_mla = md.int(f"attention.key_length_mla{sfx}", n_rot + 1, MAX_HEAD_DIM)
    v_dim = md.int(f"attention.value_length_mla{sfx}", 1, MAX_HEAD_DIM)
    return kv_lora, key_mla - n_rot, v_dim


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_all = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    nextn = md.int("nextn_predict_layers", 0, n_all - 1, default=0)  # MTP blocks: not run
    n_layers = n_all - nextn
    heads = md.per_layer("attention.head_count", n_layers, 1, MAX_HEADS)
    q_lora = md.int("attention.q_lora_rank", 1, MAX_LORA_RANK)
    n_rot = md.int("rope.dimension_count", 2, MAX_HEAD_DIM)
    if n_rot % 2:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {n_rot} must be even")
    swa = md.flags("attention.sliding_window_pattern", n_layers)
    swa = tuple(i < len(swa) and swa[i] for i in range(n_layers))
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    geometries = {False: _geometry(md, False, n_rot), True: _geometry(md, True, n_rot)}
    vocab = embedding_rows(md)
    row = max(kv + n_rot for kv, _, _ in geometries.values())
    sizes = Sizes(n_embd, n_layers, heads[0], 1, row, vocab)
    rope = read_rope(md, replace(sizes, head_dim=MAX_HEAD_DIM), "adjacent")
    rope_swa = replace(rope, freq_base=md.float("rope.freq_base_swa", 0.0, 1e12, open_lo=True))
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    top_k = md.int("attention.indexer.top_k", 1, MAX_CONTEXT)
    md.int("attention.indexer.head_count", 1, MAX_HEADS)  # read as llama.cpp reads them: the indexer is unused
    md.int("attention.indexer.key_length", 1, MAX_HEAD_DIM)
    md.flags("attention.indexer.types", n_layers)
    e, n_ff = experts_after_dense(md, n_layers)
    b = ModelBuilder(model)
    for i in range(n_layers):
        for name in INDEXER_TENSORS:
            b.unused(f"blk.{i}.{name}", f"DSA's indexer: every key is chosen within the served {top_k} tokens")
    # one set of buffers per MLA geometry (heads, kv_lora, nope, v_dim); the first without a suffix
    shapes = list(dict.fromkeys((heads[i], *geometries[swa[i]]) for i in range(n_layers)))
    b.buffer("tokens", "T", dtype="i32")
    b.buffer("x", "T", n_embd)
    b.buffer("h", "T", n_embd)
    for j, (nh, kv_lora, nope, v_dim) in enumerate(shapes):
        mla_buffers(b, nh, q_lora, kv_lora, nope, n_rot, v_dim, sfx=f"_g{j}" if j else "", gate=nh)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("logits", vocab)):
        b.buffer(name, "R", width)
    if e.count:
        declare_expert_buffers(b, n_embd, e)
    if e.dense_lead:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (vocab, n_embd)),))
    for i in range(n_layers):
        p = f"blk.{i}."
        shape = (heads[i], *geometries[swa[i]])
        j = shapes.index(shape)
        nh, kv_lora, nope, v_dim = shape
        layer_sizes = replace(sizes, n_heads=nh, head_dim=kv_lora + n_rot)
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n_embd,)),), eps=eps)
        mla_attention(b, i, layer_sizes, rope_swa if swa[i] else rope, eps, q_lora, kv_lora, nope, v_dim,
                      1.0 / math.sqrt(nope + n_rot), gate="head", sfx=f"_g{j}" if j else "", k_pe_norm=True,
                      window=window if swa[i] else None)  # fmt: skip
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n_embd,)),), eps=eps)
        if e.count and e.is_moe(i):
            if not b.has(p + "exp_probs_b.bias"):
                raise CompileError(f"{md.path}: {p}exp_probs_b.bias is missing (llama.cpp's dots3note requires it)")
            moe_block(b, i, sizes, e, scales=True)
        else:
            glu_ffn(b, i, n_embd, n_ff, bias=False, scale=True)
            b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, bias=False, scale=False)
    b.unused_layers(
        range(n_layers, n_all), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it too"
    )
    extra = (e.hparams() if e.count else {"leading_dense_block_count": e.dense_lead}) | {
        "q_lora_rank": q_lora, "kv_lora_rank": geometries[False][0], "kv_lora_rank_swa": geometries[True][0],
        "sliding_window": window, "sliding_window_layers": [i for i in range(n_layers) if swa[i]],
        "indexer_top_k": top_k, "context_length_of_file": n_ctx}  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff or e.n_ff, eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    hp = replace(hp, context_length=min(n_ctx, top_k))
    kv = KVSpec(n_layers=n_layers, n_kv_heads=1, head_dim=row, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)
