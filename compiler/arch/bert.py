"""`bert` and `nomic-bert`: encoders that serve embeddings (all-MiniLM, BGE, mxbai-embed, Snowflake
Arctic Embed; nomic-embed-text), as llama.cpp's src/models/bert.cpp builds them.

    x = LN(token_embd[t] + token_types[0] (+ position_embd[pos]: bert))    token_embd_norm
    per layer:  x = LN(x + attn_output(attention(Q x, K x, V x)))          attn_output_norm
                x = LN(x + FFN(x))                                           layer_output_norm

Post-norm blocks of LayerNorms with weight and bias (`attention.layer_norm_epsilon`); the token
type is always 0 ("sentence A", llama.cpp's hardcoded row 0 of `token_types`, where the file has it);
Q, K and V from separate tensors or a fused `attn_qkv`, with their biases and scales (build_qkv),
scores x 1/sqrt(head_dim), `attn_output`'s bias where present. bert: learned absolute positions and
an ungated GELU FFN with its biases where present. nomic-bert: NeoX RoPE on Q and K, no position
table, a SwiGLU FFN (ffn_gate, ffn_up, ffn_down) whose biases the loader reads and the graph does
not add (known and unused, as llama.cpp).

The attention sees the whole input (`attention.causal`, which the converters write false; llama.cpp
masks causally where a file says true or nothing) and nothing follows the last layer: the plan has
no logits, its hidden states are the model's output (`output_hidden`), pooled by `pooling_type`
(runtime/engine/embedding.py). The classifier heads of rerankers (`cls`, `cls.output`, pooling
type 4, rank) are refused: rfc serves no reranking.
"""

import math

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, glu_ffn, hparams, kv_spec, read_rope, read_sizes, stack_widths, ungated_ffn,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK: a reranker's score from its classifier head
MAX_TOKEN_TYPES = 1 << 16  # tokenizer.ggml.token_type_count: BERT's 2, XLM-R's 1; bounds the read


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "bert")


def build_nomic(model: GGUFModel) -> ModelSpec:
    return _build(model, "nomic-bert")


def _build(model: GGUFModel, arch: str) -> ModelSpec:
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    e = sizes.n_embd
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    n_types = md.int("tokenizer.ggml.token_type_count", 0, MAX_TOKEN_TYPES, default=0)
    if n_types == 0:  # llama.cpp: "model needs to define token type count"
        raise CompileError(f"{md.path}: {arch} needs tokenizer.ggml.token_type_count (llama.cpp's loader requires it)")
    if md.raw("pooling_type") == RANK_POOLING or any(
        model.tensors.get(n) is not None for n in ("cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias")
    ):
        raise CompileError(f"{md.path}: a reranker (a classifier head, rank pooling): rfc serves no reranking")
    causal = md.bool("attention.causal", default=True)
    nomic = arch == "nomic-bert"
    rope = read_rope(md, sizes, "neox")
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in stack_widths(sizes):
        b.buffer(name, "T", width)
    b.buffer("a", "T", e)
    b.buffer("up", "T", n_ff)
    if nomic:
        b.buffer("gate", "T", n_ff)
    b.buffer("hr", "R", e)
    layernorm.declare(b, e, "T")

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, e)),))
    if b.has("token_types.weight"):  # sentence A's row, added to every token
        types = b.row_vector("token_types.row0", "token_types", "token_types.weight", (n_types, e), 0)
        b.op("add_bias", ("x",), ("x",), (types,))
    if not nomic:
        table = b.tensor("position_embd.weight", "position_embd", (md.int("context_length", 1, MAX_CONTEXT), e))
        b.op("pos_embed", ("x",), ("x",), (table,))
    layernorm.named_layer_norm(b, "x", "x", "token_embd_norm", e, eps, bias="required")
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), causal=causal)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        attention(b, i, sizes, eps, cfg, src="x", dst="a", rope=nomic)
        b.op("add", ("a", "x"), ("a",))
        layernorm.named_layer_norm(b, "a", "x", p + "attn_output_norm", e, eps, bias="required")
        if nomic:  # build_ffn(up, gate, down) without the biases the loader reads
            for proj in ("ffn_up", "ffn_down"):
                b.unused(f"{p}{proj}.bias", "nomic-bert's graph adds no FFN bias (llama.cpp loads and ignores it)")
            glu_ffn(b, i, e, n_ff, bias=False, scale=False, src="x", dst="a")
        else:
            ungated_ffn(b, i, e, n_ff, "gelu", bias=True, src="x", dst="a")
        b.op("add", ("a", "x"), ("a",))
        layernorm.named_layer_norm(b, "a", "x", p + "layer_output_norm", e, eps, bias="required")
    b.op("gather_rows", ("x",), ("hr",))
    extra = {"norm": "layernorm (post)", "positions": "rope" if nomic else "learned", "causal": causal}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias")
                 or b.has("blk.0.attn_qkv.bias"), rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="", output_hidden="hr", kv=kv_spec(sizes))
