"""`bert`, `nomic-bert`, `nomic-bert-moe`, `jina-bert-v3`, `jina-bert-v2`: encoders that serve embeddings
(all-MiniLM, BGE-en, mxbai-embed, Snowflake Arctic Embed, nomic-embed-text v1: WordPiece vocabularies;
XLM-R's as `bert` (bge-m3, bge-reranker-v2-m3), nomic-embed-text v2 and jina-embeddings-v3: a
Unigram "t5" vocabulary, which the runtime searches as llama.cpp does; jina-embeddings-v2 and
jina-reranker-v1), as llama.cpp's src/models/bert.cpp builds them.

    x = LN(token_embd[t] + token_types[0] (+ position_embd[pos]: bert))    token_embd_norm
    per layer:  x = LN(x + attn_output(attention(Q x, K x, V x)))          attn_output_norm
                x = LN(x + FFN(x))                                           layer_output_norm

Post-norm blocks of LayerNorms with weight and bias (`attention.layer_norm_epsilon`); the token
type is always 0 ("sentence A", llama.cpp's hardcoded row 0 of `token_types`, where the file has it);
Q, K and V from separate tensors or a fused `attn_qkv`, with their biases and scales (build_qkv),
scores x 1/sqrt(head_dim), `attn_output`'s bias where present. bert: learned absolute positions;
the others NeoX RoPE on Q and K and no position table. The FFN: an ungated GELU with its biases
where present (bert, jina-bert-v3, nomic-bert-moe's dense layers); nomic-bert's SwiGLU (ffn_gate,
ffn_up, ffn_down) whose biases the loader reads and the graph does not add (known and unused, as
llama.cpp); nomic-bert-moe's layers i with i % `moe_every_n_layers` == 1 routed GELU experts
without gate (`ffn_up_exps`, `ffn_down_exps`, router `ffn_gate_inp`: softmax over all, the top
`expert_used_count` weighed by their probabilities, not renormalized or scaled, as its loader
reads no expert_weights_scale).

jina-bert-v2: no positions but ALiBi over the whole input (-slope_h |key - query| with llama.cpp's fixed
maximum bias 8); Q and K LayerNormed over their rows (weight, optional bias) where a layer has
`attn_q_norm` / `attn_k_norm`; with `attn_norm_2` a second residual and LayerNorm after the first,
LN2(LN(x + attention) + x); the FFN per layer as its graph picks it (_jina_v2_ffn); a reranker's
head `cls` [1, n_embd] alone, tanh(cls h + b) the score (jina-reranker-v1).

The attention sees the whole input (`attention.causal`, which the converters write false; llama.cpp
masks causally where a file says true or nothing) and nothing follows the last layer: the plan has
no logits, its hidden states are the model's output (`output_hidden`), pooled by `pooling_type`
(runtime/engine/embedding.py). A reranker (a cross-encoder: pooling type 4, rank) adds its
classifier head after them, the plan's `output_scores`: tanh(`cls` h + bias) where the file has
`cls`, then `cls.output` (+ bias), whose first output at the first token is a pair's relevance score
(runtime/server/rerank.py). Without rank pooling the head is loaded and unused, as llama.cpp.
"""

import math

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.moe import Experts
from rfc.compiler.arch.common import (
    CLASSIFIER, RANK_POOLING, UNUSED_SCALE, Attention, attention, classifier_head, glu_ffn, hparams, kv_spec, linear,
    read_experts, read_rope, read_sizes, stack_widths, ungated_ffn,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

MAX_TOKEN_TYPES = 1 << 16  # tokenizer.ggml.token_type_count: BERT's 2, XLM-R's 1; bounds the read


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "bert")


def build_nomic(model: GGUFModel) -> ModelSpec:
    return _build(model, "nomic-bert")


def build_nomic_moe(model: GGUFModel) -> ModelSpec:
    return _build(model, "nomic-bert-moe")


def build_jina_v3(model: GGUFModel) -> ModelSpec:
    return _build(model, "jina-bert-v3")


def build_jina_v2(model: GGUFModel) -> ModelSpec:
    return _build(model, "jina-bert-v2")


JINA_V2_ALIBI = 8.0  # llama.cpp's jina-bert-v2 loader sets f_max_alibi_bias to 8 whatever the file says


def declare_encoder_buffers(b: ModelBuilder, sizes) -> None:
    """What every encoder's block reads and writes first: the token ids, the stack's activations (x,
    q, k, v, att) and "a", the sublayer output a residual adds (bert.py and modern_bert.py)."""
    b.buffer("tokens", "T", dtype="i32")
    for name, width in stack_widths(sizes):
        b.buffer(name, "T", width)
    b.buffer("a", "T", sizes.n_embd)


def _build(model: GGUFModel, arch: str) -> ModelSpec:
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    e = sizes.n_embd
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    n_types = md.int("tokenizer.ggml.token_type_count", 0, MAX_TOKEN_TYPES, default=0)
    if n_types == 0:  # llama.cpp: "model needs to define token type count"
        raise CompileError(f"{md.path}: {arch} needs tokenizer.ggml.token_type_count (llama.cpp's loader requires it)")
    rank = md.raw("pooling_type") == RANK_POOLING
    causal = md.bool("attention.causal", default=True)
    jina2 = arch == "jina-bert-v2"
    rotary, swiglu = arch not in ("bert", "jina-bert-v2"), arch == "nomic-bert"
    rope = read_rope(md, sizes, "neox")
    experts = _experts(md, n_ff) if arch == "nomic-bert-moe" else None
    every = md.int("moe_every_n_layers", 0, sizes.n_layers, default=0) if experts else 0
    b = ModelBuilder(model)
    declare_encoder_buffers(b, sizes)
    b.buffer("up", "T", n_ff)
    if swiglu or jina2:
        b.buffer("gate", "T", n_ff)
    if experts:
        b.buffer("router", "T", experts.count)
        b.buffer("expert_ids", "T", experts.used, dtype="i32")
        b.buffer("expert_weights", "T", experts.used)
        b.buffer("exp_up", "T", experts.used * n_ff)
        b.buffer("experts_out", "T", experts.used * e)
    b.buffer("hr", "R", e)
    layernorm.declare(b, e, "T")

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, e)),))
    if b.has("token_types.weight") or jina2:  # sentence A's row, added to every token (jina-bert-v2's loader: required)
        types = b.row_vector("token_types.row0", "token_types", "token_types.weight", (n_types, e), 0)
        b.op("add_bias", ("x",), ("x",), (types,))
    if arch == "bert":
        table = b.tensor("position_embd.weight", "position_embd", (md.int("context_length", 1, MAX_CONTEXT), e))
        b.op("pos_embed", ("x",), ("x",), (table,))
    layernorm.named_layer_norm(b, "x", "x", "token_embd_norm", e, eps, bias="required")
    if jina2:
        _jina_v2_checks(b, sizes)
    # jina-bert-v2: ALiBi instead of positions; Q and K LayerNormed over their rows where a layer has the norms
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), causal=causal,
                    alibi=JINA_V2_ALIBI if jina2 else None, qk_layer_norm=jina2)  # fmt: skip
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        attention(b, i, sizes, eps, cfg, src="x", dst="a", rope=rotary)
        b.op("add", ("a", "x"), ("a",))
        if jina2 and b.has(p + "attn_norm_2.weight"):  # LN2(LN(x + attention) + x)
            layernorm.named_layer_norm(b, "a", "a", p + "attn_output_norm", e, eps, bias="required")
            b.op("add", ("a", "x"), ("a",))
            layernorm.named_layer_norm(b, "a", "x", p + "attn_norm_2", e, eps, bias="optional")
        else:
            layernorm.named_layer_norm(b, "a", "x", p + "attn_output_norm", e, eps, bias="required")
        if jina2:
            _jina_v2_ffn(b, i, e, n_ff)
        elif experts and every and i % every == 1:
            _gelu_experts(b, i, e, n_ff, experts)
        elif swiglu:  # build_ffn(up, gate, down) without the biases the loader reads
            for proj in ("ffn_up", "ffn_down"):
                b.unused(f"{p}{proj}.bias", "nomic-bert's graph adds no FFN bias (llama.cpp loads and ignores it)")
            glu_ffn(b, i, e, n_ff, bias=False, scale=False, src="x", dst="a")
        else:
            ungated_ffn(b, i, e, n_ff, "gelu", bias=True, src="x", dst="a")
        b.op("add", ("a", "x"), ("a",))
        layernorm.named_layer_norm(b, "a", "x", p + "layer_output_norm", e, eps, bias="required")
    b.op("gather_rows", ("x",), ("hr",))
    scores = classifier_head(b, md, e, cls_rows=1 if jina2 else None) if rank else ""
    if not rank:
        for name in CLASSIFIER[:2] if jina2 else CLASSIFIER:  # jina-bert-v2's loader reads no cls.output
            b.unused(name, "the classifier head of a file without rank pooling (llama.cpp loads it and embeds)")
    positions = "rope" if rotary else "alibi" if jina2 else "learned"
    extra = {"norm": "layernorm (post)", "positions": positions, "causal": causal,
             "serves": "embeddings, reranking" if rank else "embeddings"}  # fmt: skip
    if experts:
        extra.update(experts.hparams(), moe_every_n_layers=every)
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias")
                 or b.has("blk.0.attn_qkv.bias"), rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(
        hp, input_tokens="tokens", output_logits="", output_hidden="hr", kv=kv_spec(sizes), output_scores=scores
    )


def _jina_v2_checks(b: ModelBuilder, sizes) -> None:
    """What llama.cpp's jina-bert-v2 graph cannot take: a K norm of another width than n_embd (its
    loader reads it as [n_embd]); Q/K norms of a fused attn_qkv's views (ggml asserts they are
    contiguous: llama.cpp aborts)."""
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        if b.has(p + "attn_qkv.weight") and (b.has(p + "attn_q_norm.weight") or b.has(p + "attn_k_norm.weight")):
            raise CompileError(f"{b.path}: {p}attn_qkv with Q/K norms (llama.cpp's jina-bert-v2 graph aborts on them)")
        if sizes.kv_width != sizes.n_embd and b.has(p + "attn_k_norm.weight"):
            raise CompileError(
                f"{b.path}: attn_k_norm with {sizes.n_kv_heads} KV heads (jina-bert-v2 norms K as [n_embd])"
            )


def _jina_v2_ffn(b: ModelBuilder, i: int, e: int, n_ff: int) -> None:
    """a = jina-bert-v2's FFN of x, as its graph picks it per layer: with `ffn_gate`, GELU(gate x) * (up x
    + bias); with `ffn_up` of 2 n_ff rows and no gate, GEGLU over its halves (gate first, the bias split
    with them: jina-embeddings-v2's gated_layers); else an ungated GELU. Then `ffn_down` with its bias.
    The FFN's weight scales are known and unused (build_ffn gets none)."""
    p = f"blk.{i}."
    up = b.model.tensors.get(p + "ffn_up.weight")
    if b.has(p + "ffn_gate.weight"):
        linear(b, "x", "gate", p + "ffn_gate", (n_ff, e), bias=False, scale=False)
        b.op("gelu", ("gate",), ("gate",))
        linear(b, "x", "up", p + "ffn_up", (n_ff, e), scale=False, bias_first=True)
        b.op("swiglu", ("gate", "up"), ("gate",), activation="linear")
    elif up is not None and len(up.shape) == 2 and up.shape[0] == 2 * n_ff:
        fused, bias = p + "ffn_up.weight", p + "ffn_up.bias"
        b.unused(p + "ffn_up.scale", UNUSED_SCALE)
        for buf, half, start in (("gate", "gate", 0), ("up", "up", n_ff)):
            b.op(
                "matmul",
                ("x",),
                (buf,),
                (b.rows(f"{fused}:{half}", f"ffn_{half}", fused, (2 * n_ff, e), start, start + n_ff),),
            )
            if b.has(bias):
                part = b.vector_ranges(f"{bias}:{half}", f"ffn_{half}_bias", bias, 2 * n_ff, [(start, start + n_ff)])
                b.op("add_bias", (buf,), (buf,), (part,))
        b.op("swiglu", ("gate", "up"), ("gate",), activation="gelu_tanh")
    else:
        ungated_ffn(b, i, e, n_ff, "gelu", bias=True, src="x", dst="a")
        return
    linear(b, "gate", "a", p + "ffn_down", (e, n_ff), scale=False, bias_first=True)


def _experts(md: Metadata, n_ff: int) -> Experts | None:
    """nomic-bert-moe's experts: `n_ff` wide as its dense FFN (the loader sizes them so), softmax
    routing, the chosen probabilities neither renormalized nor scaled (build_moe_ffn's norm_w false,
    and its loader reads no expert_weights_scale: a file's is left unread); None without experts
    (every layer dense)."""
    count, used = read_experts(md)
    md.ignored("expert_weights_scale", "nomic-bert-moe's loader does not read it: llama.cpp scales by 0 (none)")
    return Experts(count=count, used=used, n_ff=n_ff, gating="softmax", norm=False) if count else None


def _gelu_experts(b: ModelBuilder, i: int, e: int, n_ff: int, experts: Experts) -> None:
    """a = the routed GELU experts of x (build_moe_ffn with LLM_FFN_GELU and no gate: up, GELU,
    down, summed by the router's weights)."""
    p = f"blk.{i}."
    for name in ("up_exps", "down_exps"):
        b.unused(f"{p}ffn_{name}.scale", "nomic-bert-moe's graph passes build_moe_ffn no weight scales")
    b.op("matmul", ("x",), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (experts.count, e)),))
    b.op("moe_route", ("router",), ("expert_ids", "expert_weights"), (), **experts.route_attrs())
    up = b.tensor(p + "ffn_up_exps.weight", "ffn_up_exps", (experts.count, n_ff, e))
    b.op("moe_matmul", ("x", "expert_ids"), ("exp_up",), (up,))
    b.op("gelu", ("exp_up",), ("exp_up",))
    down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (experts.count, e, n_ff))
    b.op("moe_matmul", ("exp_up", "expert_ids"), ("experts_out",), (down,))
    b.op("moe_combine", ("experts_out", "expert_weights"), ("a",))
