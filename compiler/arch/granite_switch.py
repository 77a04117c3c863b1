"""`graniteswitch` (IBM Granite with activated LoRA adapters), as llama.cpp 0.3.36 builds it
(src/models/granite-switch.cpp): granite's stack whose every projection adds a LoRA delta B_a (A_a x) of the
adapter a active at that token, chosen inside the graph:

- `adapters.count` adapters, each turned on by its token (`adapters.token_ids_activate`), which is embedded as
  another (`adapters.token_ids_substitute`: the embedding table is remade with those rows at compile time);
- the router, an extra single-head causal attention layer (the KV cache's layer n_layer): q = 1, k = +gain on an
  activation token and -gain on any other (`adapters.router_gain`, default 15), v = the adapter's slot (1..n) or
  0, scores x 1, so that the softmax over the tokens so far takes the slot of the adapter token in view; the
  result rounded half away from zero and clamped to [0, n] (moe_route pick 'index') is the token's slot, 0 the
  base (llama.cpp pads q, k and v to the head size with zeros; here to 8 values, the same scores);
- per layer: the fused `attn_qkv` split into Q, K, V, each + its delta (`attn_q/k/v.lora_a/.lora_b`: stacks
  [slots, rank, in] and [slots, out, rank], slot 0 the base's), RoPE when `rope.scaling.finetuned` (default
  true), scores x `attention.scale` (else 1/sqrt(head_dim)), `attn_output` + its delta, the residual times
  `residual_scale`; the SwiGLU FFN with a delta on gate, up and down, its residual times residual_scale;
- the embedding x `embedding_scale` (0: none), the output x 1 / `logit_scale` (required), `output.scale` applied.
The deltas are expert matmuls with one expert (the slot) per token: moe_matmul over the LoRA stacks.
"""

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import UNUSED_SCALE, f32, hparams, linear, output_head, read_rope, read_sizes
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "graniteswitch"
MAX_ADAPTERS = 4096  # llama.cpp's bound on adapters.count and adapters.lora_rank
ROUTER_WIDTH = 8  # the router's q, k and v: the signal in value 0, zeros after (the cpu kernels' 8-wide rows)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    sizes = read_sizes(md)
    n, nl, hd, vocab = sizes.n_embd, sizes.n_layers, sizes.head_dim, sizes.vocab_size
    if sizes.n_kv_heads * hd < ROUTER_WIDTH:
        raise CompileError(f"{md.path}: KV rows of {sizes.n_kv_heads * hd} values are narrower than the router's 8")
    count = md.int("adapters.count", 0, MAX_ADAPTERS)
    rank = md.int("adapters.lora_rank", 0, MAX_ADAPTERS)
    gain = f32(md.float("adapters.router_gain", -1e6, 1e6, default=15.0))
    activate, substitute = (
        _token_list(md, f"adapters.token_ids_{k}", count, vocab) for k in ("activate", "substitute")
    )
    if len(set(activate)) != count:
        raise CompileError(f"{md.path}: {md.key('adapters.token_ids_activate')} names a token twice")
    logit_scale = f32(md.float("logit_scale", -1e6, 1e6))
    if logit_scale == 0.0:
        raise CompileError(f"{md.path}: {md.key('logit_scale')} is 0 (llama.cpp divides the logits by it)")
    residual = f32(md.float("residual_scale", -1e6, 1e6, default=0.0))
    embedding = f32(md.float("embedding_scale", -1e6, 1e6, default=0.0))
    attn_scale = f32(md.float("attention.scale", -1e6, 1e6, default=0.0)) or f32(hd**-0.5)
    rope = read_rope(md, sizes, "adjacent")
    rotate = md.bool("rope.scaling.finetuned", default=True)  # granite's rope_pattern: all layers or none
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    slots, qw, kvw = count + 1, sizes.q_width, sizes.n_kv_heads * hd
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", n), ("h", n), ("q", qw), ("k", kvw), ("v", kvw), ("att", qw), ("gate", n_ff),
                        ("up", n_ff), ("lora_a", rank), ("sw_q", ROUTER_WIDTH),
                        ("sw_k", ROUTER_WIDTH), ("sw_v", ROUTER_WIDTH), ("sw_att", ROUTER_WIDTH),
                        ("sw_logits", slots), ("sw_weights", 1)):  # fmt: skip
        b.buffer(name, "T", width)
    b.buffer("sw_ids", "T", 1, dtype="i32")
    for name, width in (("xr", n), ("hr", n), ("logits", vocab)):
        b.buffer(name, "R", width)
    # the embedding with each activation token's row its substitute's
    table = _substituted(b, vocab, n, dict(zip(activate, substitute)))
    b.op("embed", ("tokens",), ("x",), (table,), **({"scale": embedding} if embedding else {}))
    _router(b, nl, vocab, activate, gain)
    b.op("matmul", ("sw_att",), ("sw_logits",), (b.filled("rfc.switch.slot_of", "switch_slot", (slots, ROUTER_WIDTH),
                                                         [(1.0, 1), (0.0, slots * ROUTER_WIDTH - 1)]),))  # fmt: skip
    b.op("moe_route", ("sw_logits",), ("sw_ids", "sw_weights"), n_used=1, pick="index")
    for i in range(nl):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        fused, shape = p + "attn_qkv.weight", (qw + 2 * kvw, n)
        b.unused(p + "attn_qkv.scale", UNUSED_SCALE)
        for buf, name, lo, hi in (("q", "attn_q", 0, qw), ("k", "attn_k", qw, qw + kvw), ("v", "attn_v", qw + kvw,
                                                                                       qw + 2 * kvw)):  # fmt: skip
            b.op("matmul", ("h",), (buf,), (b.rows(f"{fused}:{buf}", "attn_qkv", fused, shape, lo, hi),))
            _delta(b, p + name, "h", buf, n, hi - lo, slots, rank)
        if rotate:
            b.op("rope", ("q", "k"), ("q", "k"), **rope.attrs(sizes))
        b.op("kv_write", ("k", "v"), (), layer=i)
        b.op("attention", ("q",), ("att",), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads, head_dim=hd,
             scale=attn_scale)  # fmt: skip
        _projection(b, p + "attn_output", "att", "h", (n, qw), slots, rank)
        _residual(b, residual)
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        _projection(b, p + "ffn_gate", "h", "gate", (n_ff, n), slots, rank)
        _projection(b, p + "ffn_up", "h", "up", (n_ff, n), slots, rank)
        b.op("swiglu", ("gate", "up"), ("gate",))
        _projection(b, p + "ffn_down", "gate", "h", (n, n_ff), slots, rank)
        _residual(b, residual)
    tied = output_head(b, sizes, eps, bias=False)
    b.op("scale", ("logits",), ("logits",), factor=f32(1.0 / logit_scale))
    extra = {"adapters": count, "adapter_lora_rank": rank, "adapter_router_gain": gain, "logit_scale": logit_scale,
             "residual_scale": residual, "embedding_scale": embedding, "attention_scale": attn_scale,
             "router_layer": nl}  # fmt: skip
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=nl + 1, n_kv_heads=sizes.n_kv_heads, head_dim=hd, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _token_list(md: Metadata, key: str, count: int, vocab: int) -> list[int]:
    value = md.raw(key)
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise CompileError(f"{md.path}: {md.key(key)} is not an array of {md.key('adapters.count')} {count} token ids")
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in value):
        raise CompileError(f"{md.path}: {md.key(key)} names a token outside the vocabulary of {vocab}")
    md.ignored(key, "read above")
    return [int(t) for t in value]


def _substituted(b: ModelBuilder, vocab: int, n: int, substitute: dict[int, int]) -> str:
    """token_embd with each activation token's row replaced by its substitute's (llama.cpp embeds the
    substituted ids); the table itself when there is none."""
    if not substitute:
        return b.tensor("token_embd.weight", "token_embd", (vocab, n))
    ranges, start = [], 0
    for token in sorted(substitute):
        if start < token:
            ranges.append((start, token))
        ranges.append((substitute[token], substitute[token] + 1))
        start = token + 1
    if start < vocab:
        ranges.append((start, vocab))
    return b.row_ranges("token_embd.weight:switched", "token_embd", "token_embd.weight", (vocab, n), ranges)


def _router(b: ModelBuilder, n_layers: int, vocab: int, activate: list[int], gain: float) -> None:
    """sw_att[t, 0] = the softmax over the tokens so far of q.k (q = 1, k = +-gain) of v (the adapter's slot or
    0): q, k and v from compile-time tables of ROUTER_WIDTH values a token, the attention over KV layer n_layers."""
    w = ROUTER_WIDTH
    slot = {t: s + 1 for s, t in enumerate(activate)}

    def table(name: str, value_of) -> str:
        runs: list[tuple[float, int]] = []
        for token in range(vocab):
            for v, c in ((value_of(token), 1), (0.0, w - 1)):
                if runs and runs[-1][0] == v:
                    runs[-1] = (v, runs[-1][1] + c)
                else:
                    runs.append((v, c))
        return b.filled(f"rfc.switch.{name}", f"switch_{name}", (vocab, w), runs)

    for buf, name, value_of in (("sw_q", "q", lambda t: 1.0), ("sw_k", "k", lambda t: gain if t in slot else -gain),
                                ("sw_v", "v", lambda t: float(slot.get(t, 0)))):  # fmt: skip
        b.op("embed", ("tokens",), (buf,), (table(name, value_of),))
    b.op("kv_write", ("sw_k", "sw_v"), (), layer=n_layers)
    b.op("attention", ("sw_q",), ("sw_att",), layer=n_layers, n_heads=1, n_kv_heads=1, head_dim=w, scale=1.0)


def _delta(b: ModelBuilder, name: str, src: str, dst: str, n_in: int, n_out: int, slots: int, rank: int) -> None:
    """dst += lora_b[slot] (lora_a[slot] src), the slot each token's (sw_ids)."""
    a = b.tensor(name + ".lora_a", "lora_a", (slots, rank, n_in))
    bb = b.tensor(name + ".lora_b", "lora_b", (slots, n_out, rank))
    delta = f"lora_d{n_out}"
    b.buffer(delta, "T", n_out)
    b.op("moe_matmul", (src, "sw_ids"), ("lora_a",), (a,))
    b.op("moe_matmul", ("lora_a", "sw_ids"), (delta,), (bb,))
    b.op("add", (dst, delta), (dst,))


def _projection(b: ModelBuilder, name: str, src: str, dst: str, shape: tuple[int, int], slots: int, rank: int) -> None:
    """dst = name.weight src + its adapter delta (no bias; the weight's `.scale` loaded and unused, as llama.cpp)."""
    linear(b, src, dst, name, shape, bias=False, scale=False)
    _delta(b, name, src, dst, shape[1], shape[0], slots, rank)


def _residual(b: ModelBuilder, scale: float) -> None:
    if scale:
        b.op("scale", ("h",), ("h",), factor=scale)
    b.op("add", ("x", "h"), ("x",))
