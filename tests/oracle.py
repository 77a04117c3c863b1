"""An independent float64 forward pass: the oracle the reference device is checked against.

Written from llama.cpp's semantics (src/llama-model.cpp: load_hparams, src/models/{llama,qwen2,
qwen3,phi3,gemma2,gemma3,gemma4,smollm3,olmo2,mistral3,granite,lfm2,lfm2moe,glm4-moe,deepseek2,llama4}.cpp,
llama-graph.cpp: build_attn_mha, build_moe_ffn) and sharing no code with rfc: the GGUF is read with the `gguf` package,
weights are dequantized with `gguf.quants` (Q1_0, which it lacks, by _q1_0 below), hyperparameters are read here again,
and every op is plain float64 numpy on one sequence (teacher forcing, positions 0..n-1).

Two things are not float64, on purpose, because they are part of what is being computed:
- the KV cache holds float16 keys and values (llama.cpp's default cache type, and the plan's
  KVSpec), so K and V are rounded to float16 before attention (`kv_dtype`);
- with `act_rounding` ({weight format: activation kind}), the input of every matmul whose
  weight is in one of those formats is rounded the way int8 dot-product kernels round it
  (ACTIVATION_KINDS: blocks of 32 or 256 values, one scale each, |q| <= 127), or as
  tensor-core kernels round it (to float16). This models a compiled target's integer and
  tensor-core kernels exactly up to summation order.
"""

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


# -- activation rounding of integer kernels ----------------------------------------------------


def _round_blocks(x: np.ndarray, block: int, f16_scale: bool) -> np.ndarray:
    """Symmetric int8 rounding per block: d = max|x| / 127, q = round(x / d), value q * d (d
    stored as float16 when `f16_scale`, as in ggml's block_q8_0 / block_q8_1)."""
    rows, k = x.shape
    xb = x.reshape(rows, k // block, block)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    d = amax / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(xb * inv), -127, 127)
    if f16_scale:
        d = d.astype(np.float16).astype(np.float64)
    return (q * d).reshape(rows, k)


ACTIVATION_KINDS = {
    "q8_0": lambda x: _round_blocks(x, 32, f16_scale=True),
    "q8_1": lambda x: _round_blocks(x, 32, f16_scale=True),
    "q8_k": lambda x: _round_blocks(x, 256, f16_scale=False),
    "q8_32": lambda x: _round_blocks(x, 32, f16_scale=False),  # rfc's cpu kernels: float32 scales
    # to float16, nearest even: the tensor-core prefill matmuls (sm_70+) over F16/BF16 weights
    "f16": lambda x: x.astype(np.float16).astype(np.float64),
}


# -- weight formats gguf.quants does not decode ------------------------------------------------


def _q1_0(data: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q1_0: blocks of an f16 d and 128 bits, bit j (little-endian in
    each byte) +d when set, -d when clear."""
    blocks = data.view(np.uint8).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
    bits = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little")
    return np.where(bits == 1, d, -d).reshape(-1)


_DECODERS = {"Q1_0": _q1_0}


# -- hyperparameters, as llama.cpp reads them --------------------------------------------------


@dataclass
class Layer:
    rope_base: float
    rope_scale: float
    window: int | None
    rope: bool = True  # False: the layer's attention has no positions (smollm3's NoPE layers)
    factors: str | None = None  # this layer's RoPE frequency factors (gemma4's global layers), else Config's
    # (heads, kv heads, head_dim, n_rot) where layers differ (gemma4), else Config's
    sizes: tuple[int, int, int, int] | None = None
    # ggml_rope_ext with freq_scale 1, ext_factor 0, attn_factor 1 (OLMo 3's sliding-window layers)
    plain_rope: bool = False


@dataclass
class Mla:
    """deepseek2's multi-head latent attention sizes (load_hparams for LLM_ARCH_DEEPSEEK2)."""

    q_lora: int  # 0: Q straight from attn_q (DeepSeek-V2-Lite)
    kv_lora: int
    nope: int  # key_length_mla - n_rot
    v_dim: int  # value_length_mla
    kq_scale: float


@dataclass
class Config:
    arch: str
    n_embd: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_rot: int
    neox: bool
    eps: float
    attn_factor: float = 1.0  # ggml_rope_ext's attn_factor (llama.cpp's cparams.yarn_attn_factor)
    ext_factor: float = 0.0  # YaRN: 1 when rope.scaling.type is yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    orig_ctx: int = 0
    embed_scale: float = 1.0
    residual_scale: float = 0.0  # granite: each sublayer's output times this before its add (0: none)
    logit_scale: float = 0.0  # granite: the logits divided by this (0: none)
    q_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    qk_norm: bool = False
    qk_norm_rows: bool = False  # olmo2: one norm over the whole Q (K) row, not per head
    pre_norms: bool = True  # olmo2: none (the sublayers read the residual itself)
    post_norms: bool = False
    gelu: bool = False
    n_expert: int = 0
    n_used: int = 0
    gating: str = "softmax"  # llama.cpp's expert_gating_func: softmax or sigmoid
    norm_w: bool = True  # renormalize the chosen experts' weights (expert_weights_norm)
    w_scale: float = 0.0  # expert_weights_scale (0 and 1: none)
    groups: int = 0  # expert_group_count (> 1: grouped top-k)
    groups_used: int = 0
    dense_lead: int = 0  # leading_dense_block_count: the first layers have a dense FFN
    ffn_norm: str = "ffn_norm"  # the FFN's input norm (glm4moe: post_attention_norm)
    rope_factors: str | None = None
    tied: bool = False
    sinks: bool = False  # gpt-oss: attn_sinks, a logit per head in every softmax
    temp_scale: float = 0.0  # mistral3: q times 1 + temp_scale ln(floor(pos / orig_ctx) + 1) after RoPE
    mla: Mla | None = None  # deepseek2
    oai: bool = False  # gpt-oss experts: biased router and experts, softmax of the top-k, swiglu_oai
    # llama4: the layers with experts (None: those after dense_lead), the expert chosen by its logit
    # and its sigmoid weight on its input, Q/K RMS-normed without a weight after RoPE, the NoPE
    # layers' query temperature, the layers with chunked attention
    moe_layers: tuple[int, ...] | None = None
    weight_before: bool = False
    qk_l2: bool = False
    temp_nope: bool = False
    chunk_layers: tuple[int, ...] = ()
    layers: list[Layer] = field(default_factory=list)
    # lfm2: the gated short-conv layers (head_count_kv 0); the final norm's name
    short_conv: tuple[int, ...] = ()
    out_norm: str = "output_norm.weight"
    # qwen35: the Gated DeltaNet layers (their indices), the attention's output gate, and the
    # rope pairs that interleaved M-RoPE turns by position (the others by the 4th position, 0 for text)
    recurrent: tuple[int, ...] = ()
    attn_gate: bool = False
    rope_turns: np.ndarray | None = None
    # granitehybrid, nemotron_h: the Mamba2 layers (head_count_kv 0); nemotron_h: one mixer per
    # layer (Mamba2, attention or a squared-ReLU MLP: the layers with a feed_forward_length)
    mamba: tuple[int, ...] = ()
    mlp: tuple[int, ...] | None = None
    # gemma4: V RMS-normed per head without a weight; the residual times layer_output_scale after each layer
    v_norm: bool = False
    out_scale: bool = False
    # gemma4 E2B/E4B: per-layer embeddings of `ple` values per layer; the layers that read another's
    # K/V (llama.cpp's `reuse`: the last shared_kv_layers, from layer n_kv - 2 if sliding else n_kv - 1)
    ple: int = 0
    kv_source: dict[int, int] = field(default_factory=dict)
    # command-r, cohere2: LayerNorms (rows centred first: llama.cpp's LLM_NORM), attention and FFN side by
    # side from one norm, the logits times logit_scale
    layer_norm: bool = False
    parallel: bool = False
    qk_norm_after_rope: bool = False  # hunyuan: the per-head Q/K norms after RoPE
    out_bias: bool = True  # False: attn_output.bias is loaded and not added (build_attn(wo, NULL): ernie4_5, falcon-h1)
    logit_mul: float = 0.0


def _f32(x: float) -> float:
    return float(np.float32(x))


def read_config(md: dict, tensors: dict) -> Config:
    arch = md["general.architecture"]
    k = lambda key, default=None: md.get(f"{arch}.{key}", default)  # noqa: E731
    n_embd, n_heads = k("embedding_length"), k("attention.head_count")
    if isinstance(n_heads, list):  # hybrids (granitehybrid): per layer, 0 on the recurrent layers
        n_heads = max(n_heads)
    head_dim = k("attention.key_length", n_embd // n_heads)
    scaling = k("rope.scaling.type", "linear")
    assert scaling in ("none", "linear", "yarn", "longrope"), scaling
    factor = k("rope.scaling.factor", k("rope.scale_linear", 0.0))
    scale = 1.0 if scaling == "none" or not factor else 1.0 / factor
    base = k("rope.freq_base", 10000.0)
    c = Config(
        arch=arch, n_embd=n_embd, n_layers=k("block_count") - k("nextn_predict_layers", 0), n_heads=n_heads,
        n_kv_heads=k("attention.head_count_kv", n_heads), head_dim=head_dim,
        n_rot=k("rope.dimension_count", head_dim),
        neox=arch not in ("llama", "smollm3", "mistral3", "granite", "granitemoe", "command-r", "cohere2", "glm4",
                          "ernie4_5", "ernie4_5-moe"), eps=k("attention.layer_norm_rms_epsilon"),
        attn_factor=k("rope.scaling.attn_factor", 1.0), n_expert=k("expert_count", 0), n_used=k("expert_used_count", 0),
        tied="output.weight" not in tensors,
    )  # fmt: skip
    full = Layer(base, scale, None)
    c.layers = [full] * c.n_layers
    ctx = k("context_length")
    c.orig_ctx = k("rope.scaling.original_context_length", 0) or ctx  # n_ctx_orig_yarn
    _read_yarn(c, k, scaling, scale)
    if arch == "mistral3":  # llama 4 style temperature tuning, floor scale n_ctx_orig_yarn
        c.temp_scale = _f32(k("attention.temperature_scale", 0.0))
    if arch == "phi3" or (scaling == "longrope" and arch in LONG_SHORT_LOADERS):
        which = "long" if ctx > c.orig_ctx else "short"  # get_rope_factors, serving the training context
        if f"rope_factors_{which}.weight" in tensors:
            c.rope_factors = f"rope_factors_{which}.weight"
    elif arch in LONG_SHORT_LOADERS and "rope_freqs.weight" in tensors:
        c.rope_factors = "rope_freqs.weight"
    if arch in ("qwen3", "qwen3moe", "qwen3vl", "qwen3vlmoe"):  # qwen3vl*: M-RoPE's sections below
        c.qk_norm = True
    if arch in ("granite", "granitemoe"):  # src/models/granite.cpp: the four multipliers, float32
        c.embed_scale = _f32(k("embedding_scale", 0.0)) or 1.0
        c.residual_scale, c.logit_scale, c.q_scale = (
            _f32(k("residual_scale", 0.0)),
            _f32(k("logit_scale")),
            _f32(k("attention.scale", 0.0)),
        )
        if arch == "granite" and not k("rope.scaling.finetuned", True):  # granite's loader: the switch for RoPE
            c.layers = [Layer(base, scale, None, rope=False)] * c.n_layers
    if arch == "olmo2":  # src/models/olmo2.cpp
        c.pre_norms, c.post_norms, c.qk_norm_rows = False, True, True
        if window := k("attention.sliding_window", 0):  # OLMo 3: load_swa_pattern(4), unscaled RoPE when sliding
            pattern = k("attention.sliding_window_pattern", 4)
            if isinstance(pattern, list):
                local = [i < len(pattern) and bool(pattern[i]) for i in range(c.n_layers)]
            else:
                local = [pattern == 0 or i % pattern < pattern - 1 for i in range(c.n_layers)]
            c.layers = [Layer(base, 1.0, window, plain_rope=True) if on else full for on in local]
    if arch in ("command-r", "cohere2"):  # src/models/command-r.cpp, cohere2.cpp: the output always tied
        c.layer_norm, c.parallel, c.tied = True, True, True
        c.qk_norm = "blk.0.attn_q_norm.weight" in tensors  # Command R+: LayerNorms per head (weight [heads, head_dim])
        c.eps, c.logit_mul = k("attention.layer_norm_epsilon"), _f32(k("logit_scale", 0.0))
    if arch == "cohere2":  # load_swa_pattern(4): RoPE on the sliding-window layers only
        pattern = k("attention.sliding_window_pattern", 4)
        if isinstance(pattern, list):
            local = [i < len(pattern) and bool(pattern[i]) for i in range(c.n_layers)]
        else:
            local = [pattern == 0 or i % pattern < pattern - 1 for i in range(c.n_layers)]
        factors = "rope_freqs.weight" if "rope_freqs.weight" in tensors else None
        c.layers = [Layer(base, scale, k("attention.sliding_window"), factors=factors) if on
                    else Layer(base, scale, None, rope=False)
                    for on in local]  # fmt: skip
    # src/models/exaone4.cpp: post-norms only, per-head Q/K norms; windows (and RoPE only there) at 64 layers
    if arch == "exaone4":
        c.pre_norms, c.post_norms, c.qk_norm = False, True, True
        c.rope_factors = "rope_freqs.weight" if "rope_freqs.weight" in tensors else None
        if c.n_layers == 64:
            pattern = k("attention.sliding_window_pattern", 4)
            if isinstance(pattern, list):
                local = [i < len(pattern) and bool(pattern[i]) for i in range(c.n_layers)]
            else:
                local = [pattern == 0 or i % pattern < pattern - 1 for i in range(c.n_layers)]
            window = k("attention.sliding_window", 4096)
            c.layers = [Layer(base, scale, window) if on else Layer(base, scale, None, rope=False) for on in local]
    if arch == "bailingmoe2":  # src/models/bailingmoe2.cpp (MTP blocks not run): the file's gating, norm and scale
        c.gating = {1: "softmax", 2: "sigmoid"}[k("expert_gating_func")]
        c.norm_w, c.w_scale = bool(k("expert_weights_norm", False)), _f32(k("expert_weights_scale", 0.0))
        c.groups, c.groups_used = k("expert_group_count", 0), k("expert_group_used_count", 0)
        c.dense_lead, c.qk_norm = k("leading_dense_block_count", 0), True
    if arch == "minimax-m2":  # src/models/minimax-m2.cpp: whole-row Q/K norms, sigmoid (the file's) routing with a bias
        c.qk_norm_rows = True
        c.gating = {1: "softmax", 2: "sigmoid"}[k("expert_gating_func")]
    if arch == "seed_oss":  # src/models/seed-oss.cpp
        c.ffn_norm = "post_attention_norm"
    if arch in ("ernie4_5", "ernie4_5-moe", "falcon-h1"):  # their graphs call build_attn with wo and no bias
        c.out_bias = False
    if arch == "ernie4_5-moe":  # src/models/ernie4-5-moe.cpp: experts where i >= lead and (i + 1) % step == 0
        step, lead = k("interleave_moe_layer_step"), k("leading_dense_block_count", 0)
        c.moe_layers = tuple(i for i in range(c.n_layers) if i >= lead and (i + 1) % step == 0)
    if arch in ("hunyuan-dense", "hunyuan-moe"):  # src/models/hunyuan-vl.cpp, hunyuan-moe.cpp
        c.qk_norm, c.qk_norm_after_rope = True, True
        alpha = k("rope.scaling.alpha", 0.0) if arch == "hunyuan-dense" else 0.0
        if alpha > 0:  # XDRoPE's NTK alpha, float32 as the loader computes it
            f32 = np.float32
            eff = float(f32(base) * np.power(f32(alpha), f32(head_dim) / f32(head_dim - 2), dtype=f32))
            c.layers = [Layer(eff, scale, None)] * c.n_layers
    # src/models/glm4.cpp: sandwich norms; M-RoPE sections (text: every section at the position) turn as NeoX
    if arch == "glm4":
        c.post_norms, c.neox = True, any(k("rope.dimension_sections", [0]))
    if arch == "smollm3":  # src/models/smollm3.cpp: n_no_rope_layer_step 4
        c.layers = [full if (i + 1) % 4 else Layer(base, scale, None, rope=False) for i in range(c.n_layers)]
    if arch in ("gemma2", "gemma3"):
        c.post_norms, c.gelu = True, True
        c.embed_scale = _f32(math.sqrt(n_embd))
        big = c.n_layers == (46 if arch == "gemma2" else 62)
        c.q_scale = _f32(1.0 / np.sqrt(np.float32(n_embd // n_heads if big else head_dim)))
        pattern_default = 2 if arch == "gemma2" else 6
        window = k("attention.sliding_window", 4096 if arch == "gemma2" else 0)
        pattern = k("attention.sliding_window_pattern", pattern_default)
        if isinstance(pattern, list):
            local = [i < len(pattern) and bool(pattern[i]) for i in range(c.n_layers)]
        else:
            local = [pattern == 0 or i % pattern < pattern - 1 for i in range(c.n_layers)]
        if arch == "gemma2":
            c.tied = True
            c.attn_softcap = k("attn_logit_softcapping", 50.0)
            c.final_softcap = k("final_logit_softcapping", 30.0)
            swa = Layer(k("rope.freq_base_swa", base), scale, window)
        else:
            c.qk_norm = True
            c.final_softcap = k("final_logit_softcapping", 0.0) or None
            swa = Layer(k("rope.freq_base_swa", 10000.0), 1.0, window)
            if not window:
                local = [False] * c.n_layers
        c.layers = [swa if is_local else full for is_local in local]
    # src/models/lfm2.cpp: head_count_kv 0 marks a short-conv layer; Q/K normed per head
    if arch in ("lfm2", "lfm2moe"):
        per_layer = list(k("attention.head_count_kv"))
        c.short_conv = tuple(i for i, n in enumerate(per_layer) if n == 0)
        c.n_kv_heads = max(per_layer)
        c.qk_norm, c.out_norm = True, "token_embd_norm.weight"
    if arch == "lfm2moe":  # src/models/lfm2moe.cpp: required gating func, weights renormalized, no scale
        c.gating = {1: "softmax", 2: "sigmoid"}[k("expert_gating_func")]
        c.dense_lead = k("leading_dense_block_count", 0)
    # src/models/gemma4.cpp, dense text path: score scale 1, V normed, proportional RoPE on global layers
    if arch == "gemma4":
        c.post_norms, c.gelu, c.qk_norm, c.v_norm, c.out_scale = True, True, True, True, True
        c.embed_scale, c.q_scale = _f32(math.sqrt(n_embd)), 1.0
        c.final_softcap = k("final_logit_softcapping", 30.0) or None  # hparams' default 30 when the key is absent
        c.moe_layers = ()  # 26B-A4B: ffn() is every layer's dense MLP; gemma4_experts adds the routed experts
        flags = list(k("attention.sliding_window_pattern"))
        local = [i < len(flags) and bool(flags[i]) for i in range(c.n_layers)]
        heads, kv = k("attention.head_count"), k("attention.head_count_kv", k("attention.head_count"))
        heads, kv = (x if isinstance(x, list) else [x] * c.n_layers for x in (heads, kv))
        dims = (k("attention.key_length_swa"), c.head_dim)  # llama.cpp's n_embd_head_k(il): sliding, global
        rots = (k("rope.dimension_count_swa", c.n_rot), c.n_rot)  # n_rot_swa defaults to n_rot
        c.n_heads, c.n_kv_heads = max(heads), max(kv)
        c.layers = [Layer(k("rope.freq_base_swa", 10000.0), 1.0, k("attention.sliding_window"),
                          sizes=(heads[i], kv[i], dims[0], rots[0])) if local[i] else
                    Layer(base, scale, None, factors="rope_freqs.weight", sizes=(heads[i], kv[i], dims[1], rots[1]))
                    for i in range(c.n_layers)]  # fmt: skip
        c.ple = k("embedding_length_per_layer_input", 0)
        n_kv = c.n_layers - k("attention.shared_kv_layers", 0)
        c.kv_source = {i: n_kv - (2 if local[i] else 1) for i in range(n_kv, c.n_layers)}
    if arch == "gemma3n":  # src/models/gemma3n.cpp: gemma4's attention (score scale 1, V normed); AltUp, Laurel, PLE
        c.gelu, c.qk_norm, c.v_norm = True, True, True
        # 30: hparams' default, never read
        c.embed_scale, c.q_scale, c.final_softcap = _f32(math.sqrt(n_embd)), 1.0, 30.0
        pattern = k("attention.sliding_window_pattern", 5)
        local = [i < len(pattern) and bool(pattern[i]) if isinstance(pattern, list) else i % pattern < pattern - 1
                 for i in range(c.n_layers)]  # fmt: skip
        swa = Layer(k("rope.freq_base_swa", 10000.0), 1.0, k("attention.sliding_window"))
        c.layers = [swa if on else full for on in local]
        c.ple = k("embedding_length_per_layer_input")
        c.kv_source = {i: 20 - (2 if local[i] else 1) for i in range(20, c.n_layers)}  # n_layer_kv_from_start 20
    if arch == "glm4moe":  # src/models/glm4-moe.cpp (the nextn_predict_layers MTP blocks are not run)
        c.gating = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}[k("expert_gating_func", 0)]
        c.norm_w, c.w_scale = bool(k("expert_weights_norm", False)), _f32(k("expert_weights_scale", 0.0))
        c.groups, c.groups_used = k("expert_group_count", 0), k("expert_group_used_count", 0)
        c.dense_lead, c.ffn_norm = k("leading_dense_block_count", 0), "post_attention_norm"
        c.qk_norm = "blk.0.attn_q_norm.weight" in tensors
    if arch == "deepseek2":  # src/models/deepseek2.cpp, its load_hparams and llama_context's YaRN setup
        c.neox = False
        c.gating = {0: "softmax", 1: "softmax", 2: "sigmoid"}[k("expert_gating_func", 0)]
        c.norm_w, c.w_scale = bool(k("expert_weights_norm", False)), _f32(k("expert_weights_scale", 0.0))
        c.groups, c.groups_used = k("expert_group_count", 0), k("expert_group_used_count", 0)
        c.dense_lead = k("leading_dense_block_count", 0)
        log_mul = float(np.float32(k("rope.scaling.yarn_log_multiplier", 0.0)) / np.float32(0.1))
        if c.ext_factor:  # with a log multiplier, get_mscale(f, m) / get_mscale(f, log_mul) = 1 (m = log_mul or 1)
            factor = 1.0 / scale
            c.attn_factor = (1.0 if log_mul else 1.0 + 0.1 * math.log(factor)) / (1.0 + 0.1 * math.log(factor))
            c.attn_factor *= k("rope.scaling.attn_factor", 1.0)
        attn_org = c.attn_factor * (1.0 + 0.1 * math.log(1.0 / scale))
        mscale = attn_org * (1.0 + 0.1 * log_mul * math.log(1.0 / scale))
        key_mla = k("attention.key_length_mla")
        c.mla = Mla(
            k("attention.q_lora_rank", 0),
            k("attention.kv_lora_rank"),
            key_mla - c.n_rot,
            k("attention.value_length_mla"),
            mscale * mscale / math.sqrt(key_mla),
        )
    # src/models/qwen35.cpp, qwen35moe.cpp, qwen3next.cpp, load_hparams
    if arch in ("qwen35", "qwen35moe", "qwen3next"):
        c.qk_norm, c.attn_gate, c.ffn_norm = True, True, "post_attention_norm"
        flags = k("attention.recurrent_layers")
        if flags is None:
            interval = k("full_attention_interval", 4)
            flags = [(i + 1) % interval != 0 for i in range(c.n_layers)]
        c.recurrent = tuple(i for i in range(c.n_layers) if flags[i])
    if arch in ("qwen35", "qwen35moe", "qwen3vl", "qwen3vlmoe"):  # IMROPE sections (qwen3next: plain NeoX)
        sec = list(k("rope.dimension_sections", [0, 0, 0, 0])) + [0] * 4
        total = sum(sec[:4])
        sector = np.arange(c.n_rot // 2) % total
        c.rope_turns = (
            ((sector % 3 == 0) & (sector < 3 * sec[0]))
            | ((sector % 3 == 1) & (sector < 3 * sec[1]))
            | ((sector % 3 == 2) & (sector < 3 * sec[2]))
        )
    if arch == "granitehybrid":  # src/models/granite-hybrid.cpp: granite's multipliers, Mamba2 where head_count_kv is 0
        per_layer = list(k("attention.head_count_kv"))
        c.mamba = tuple(i for i, n in enumerate(per_layer) if n == 0)
        c.n_kv_heads, c.neox = max(per_layer), False
        c.embed_scale = _f32(k("embedding_scale", 0.0)) or 1.0
        c.residual_scale, c.logit_scale, c.q_scale = (
            _f32(k("residual_scale", 0.0)),
            _f32(k("logit_scale", 0.0)),
            _f32(k("attention.scale", 0.0)),
        )
        if not k("rope.scaling.finetuned", True):
            c.layers = [Layer(base, scale, None, rope=False)] * c.n_layers
    # src/models/nemotron-h.cpp: no RoPE; a layer is Mamba2, attention or an MLP
    if arch in ("nemotron_h", "nemotron_h_moe"):
        kv, ff = list(k("attention.head_count_kv")), list(k("feed_forward_length"))
        c.mlp = tuple(i for i in range(c.n_layers) if ff[i])
        c.mamba = tuple(i for i in range(c.n_layers) if not ff[i] and not kv[i])
        c.n_kv_heads = max(kv)
        c.eps = k("attention.layer_norm_rms_epsilon", k("attention.layer_norm_epsilon"))
        c.layers = [Layer(base, scale, None, rope=False)] * c.n_layers
    if arch == "nemotron_h_moe":  # its MLP layers: sigmoid-routed squared-ReLU experts, a shared one (nemotron-h.cpp)
        c.gating, c.norm_w, c.w_scale = (
            "sigmoid",
            bool(k("expert_weights_norm", False)),
            _f32(k("expert_weights_scale", 0.0)),
        )
        c.groups, c.groups_used = k("expert_group_count", 0), k("expert_group_used_count", 0)
    if arch == "gpt-oss":  # src/models/openai-moe.cpp
        c.q_scale = _f32(1.0 / np.sqrt(np.float32(c.n_rot)))
        c.ffn_norm, c.sinks, c.oai = "post_attention_norm", True, True
        pattern = k("attention.sliding_window_pattern", 2)
        local = [pattern == 0 or i % pattern < pattern - 1 for i in range(c.n_layers)]
        swa = Layer(k("rope.freq_base_swa", base), scale, k("attention.sliding_window"))
        c.layers = [swa if is_local else full for is_local in local]
    if arch == "llama4":  # src/models/llama4.cpp and its loader (no sliding_window key: chunks of 8192)
        c.neox, c.gating, c.norm_w, c.weight_before = False, "sigmoid", False, True
        step = k("interleave_moe_layer_step")
        c.moe_layers = tuple(i for i in range(c.n_layers) if step and (i + 1) % step == 0)
        c.qk_l2, c.temp_nope = c.n_expert != 128, True  # use_kq_norm: not the 17B-128E type
        # n_no_rope_layer_step 4
        c.layers = [Layer(base, scale, None, rope=(i + 1) % 4 != 0) for i in range(c.n_layers)]
        c.chunk_layers = tuple(i for i in range(c.n_layers) if i % 4 < 3)  # load_swa_pattern(ml, 4)
        if "rope_freqs.weight" in tensors:
            c.rope_factors = "rope_freqs.weight"
    return c


# The loaders that read rope_factors_long/short when the scaling type is longrope (else rope_freqs).
LONG_SHORT_LOADERS = ("llama", "mistral3", "granite", "granitemoe")
YARN_KEY_LOADERS = ("mistral3",)  # the loaders that read rope.scaling.yarn_beta_* and yarn_log_multiplier
# The dense FFN's (biases, weight scales) each architecture's graph passes llama.cpp's build_ffn
# (src/models/<arch>.cpp); one not listed passes both.
FFN_PASSES = {
    "qwen2": (False, False),
    "phi3": (False, False),
    "gemma2": (False, False),
    "gemma3": (False, False),
    "olmo2": (False, False),
    "lfm2": (False, False),
    "lfm2moe": (False, False),
    "qwen3vl": (False, False),
    "deepseek2": (False, False),
    "glm4moe": (False, False),
    "bailingmoe2": (False, False),
    "qwen3": (False, True),
    "smollm3": (True, False),
    "granite": (True, False),
    "granitehybrid": (True, False),
    "command-r": (False, False),
    "cohere2": (False, True),
    "exaone4": (False, False),
    "glm4": (False, False),
    "seed_oss": (False, False),
    "ernie4_5": (False, False),
    "ernie4_5-moe": (False, False),
    "hunyuan-dense": (False, False),
    "hunyuan-moe": (False, False),
    "falcon-h1": (True, False),
}
# The architectures whose graph passes build_ffn its shared experts' weight scales.
SHARED_SCALES = ("qwen35moe", "qwen3next", "nemotron_h_moe")


def _read_yarn(c: Config, k, scaling: str, freq_scale: float) -> None:
    """llama_context's rope setup: ext_factor 1 for yarn, and the attn_factor it passes to ggml."""
    attn = 1.0
    if scaling == "yarn":
        c.ext_factor = 1.0  # the betas stay 32 and 1 unless the loader reads the keys
        log_mul = 0.0
        if c.arch in YARN_KEY_LOADERS:
            c.beta_fast, c.beta_slow = k("rope.scaling.yarn_beta_fast", 32.0), k("rope.scaling.yarn_beta_slow", 1.0)
            log_mul = k("rope.scaling.yarn_log_multiplier", 0.0)
        factor = 1.0 / freq_scale
        mscale = lambda m: 1.0 if factor <= 1.0 else 1.0 + 0.1 * m * math.log(factor)  # noqa: E731  (get_mscale)
        attn = mscale(1.0) / mscale(log_mul) if log_mul else mscale(1.0)
        attn /= 1.0 + 0.1 * math.log(factor)  # ggml's rope multiplies it back
    c.attn_factor = attn * c.attn_factor


# -- the forward pass ------------------------------------------------------------------------------


class Oracle:
    def __init__(self, path: Path, kv_dtype=np.float16, act_rounding: dict[str, str] | None = None):
        self.reader = GGUFReader(path)
        self.md = {key: f.contents() for key, f in self.reader.fields.items() if not key.startswith("GGUF.")}
        self.raw = {t.name: t for t in self.reader.tensors}
        self.cfg = read_config(self.md, self.raw)
        self.kv_dtype = kv_dtype
        self.act_rounding = act_rounding or {}
        self._cache: dict[str, np.ndarray] = {}

    def w(self, name: str) -> np.ndarray:
        if name not in self._cache:
            t = self.raw[name]
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            decode = _DECODERS.get(t.tensor_type.name, lambda data: dequantize(data, t.tensor_type))
            self._cache[name] = decode(np.array(t.data)).astype(np.float64).reshape(shape)
        return self._cache[name]

    def per_layer_inputs(self, tokens: list[int], x0: np.ndarray) -> np.ndarray:
        """gemma4's per-layer inputs [n, n_layers, ple] (build_inp_per_layer, project_per_layer_inputs)."""
        c, n = self.cfg, len(tokens)
        looked_up = self.w("per_layer_token_embd.weight")[np.asarray(tokens)].reshape(n, c.n_layers, c.ple) * math.sqrt(
            c.ple
        )
        proj = (self.linear(x0, "per_layer_model_proj.weight") / math.sqrt(c.n_embd)).reshape(n, c.n_layers, c.ple)
        return (self.norm(proj, "per_layer_proj_norm.weight") + looked_up) / math.sqrt(2.0)

    def has(self, name: str) -> bool:
        return name in self.raw

    def linear(self, x: np.ndarray, name: str, weight: np.ndarray | None = None, *, scaled: bool = True) -> np.ndarray:
        """x @ W^T, times the weight's `.scale` where the file has one value there (llama.cpp's
        build_lora_mm; gemma4's [n_embd] ffn_gate_inp.scale scales the router's input instead);
        `scaled` False: without it."""
        kind = self.act_rounding.get(self.raw[name].tensor_type.name)
        if kind is not None:
            x = ACTIVATION_KINDS[kind](x)
        out = x @ (self.w(name) if weight is None else weight).T
        scale = name.removesuffix(".weight") + ".scale"
        use = scaled and weight is None and self.has(scale) and self.w(scale).size == 1
        return out * self.w(scale)[0] if use else out

    def ffn_linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """One matmul of the dense FFN as llama.cpp's build_ffn makes it: x @ W^T, plus `.bias`,
        times `.scale`, each only where the architecture's graph passes it (FFN_PASSES)."""
        bias, scale = FFN_PASSES.get(self.cfg.arch, (True, True))
        stem = name.removesuffix(".weight")
        out = self.linear(x, name, scaled=False) + (self.bias(stem) if bias else 0.0)
        if scale and self.has(stem + ".scale") and self.w(stem + ".scale").size == 1:
            out = out * self.w(stem + ".scale")[0]
        return out

    def bias(self, name: str) -> np.ndarray | float:
        """`name.bias` where the file has it, else 0."""
        return self.w(name + ".bias") if self.has(name + ".bias") else 0.0

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.cfg.layer_norm:
            x = x - np.mean(x, axis=-1, keepdims=True)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.eps) * self.w(name)

    def rope(self, x: np.ndarray, layer: Layer) -> np.ndarray:
        """x [n, heads, head_dim] at positions 0..n-1 (ggml_rope_ext: rope_yarn on every pair)."""
        c = replace(self.cfg, n_rot=layer.sizes[3]) if layer.sizes else self.cfg
        half = c.n_rot // 2
        extrap = np.arange(len(x))[:, None] * layer.rope_base ** (-2.0 * np.arange(half) / c.n_rot)[None, :]
        if layer.factors or c.rope_factors:
            extrap = extrap / self.w(layer.factors or c.rope_factors)
        if c.rope_turns is not None:  # M-RoPE for text: t, h, w positions are the token's, the 4th is 0
            extrap = extrap * c.rope_turns
        theta, mscale = layer.rope_scale * extrap, 1.0 if layer.plain_rope else c.attn_factor
        if c.ext_factor and not layer.plain_rope:  # YaRN: ramp between the extrapolated and interpolated angles
            corr = lambda beta: c.n_rot * math.log(c.orig_ctx / (beta * 2 * math.pi)) / (2 * math.log(layer.rope_base))  # noqa: E731
            low, high = max(0, math.floor(corr(c.beta_fast))), min(c.n_rot - 1, math.ceil(corr(c.beta_slow)))
            mix = (1 - np.clip((np.arange(half) - low) / max(0.001, high - low), 0, 1)) * c.ext_factor
            theta = theta * (1 - mix) + extrap * mix
            mscale *= 1 + 0.1 * math.log(1 / layer.rope_scale)
        cos, sin = np.cos(theta)[:, None, :] * mscale, np.sin(theta)[:, None, :] * mscale
        y = x.copy()
        if c.neox:
            a, b = x[..., :half], x[..., half : c.n_rot]
            y[..., :half], y[..., half : c.n_rot] = a * cos - b * sin, a * sin + b * cos
        else:
            a, b = x[..., 0 : c.n_rot : 2], x[..., 1 : c.n_rot : 2]
            y[..., 0 : c.n_rot : 2], y[..., 1 : c.n_rot : 2] = a * cos - b * sin, a * sin + b * cos
        return y

    def qkv(self, h: np.ndarray, p: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.cfg
        q_w, kv_w = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        if self.has(p + "attn_qkv.weight"):
            qkv = self.linear(h, p + "attn_qkv.weight")
            q, k, v = qkv[:, :q_w], qkv[:, q_w : q_w + kv_w], qkv[:, q_w + kv_w :]
        elif self.cfg.arch == "gemma4" and not self.has(p + "attn_v.weight"):  # V is K's projection
            q, k = self.linear(h, p + "attn_q.weight"), self.linear(h, p + "attn_k.weight")
            v = k.copy()
        else:
            q, k, v = (self.linear(h, f"{p}attn_{x}.weight") for x in "qkv")
        for name in ("q", "k", "v"):
            if self.has(f"{p}attn_{name}.bias"):
                bias = self.w(f"{p}attn_{name}.bias")
                q, k, v = (q + bias, k, v) if name == "q" else (q, k + bias, v) if name == "k" else (q, k, v + bias)
        return q, k, v

    def attention(self, h: np.ndarray, i: int) -> np.ndarray:
        c, layer, p = self.cfg, self.cfg.layers[i], f"blk.{i}."
        if c.mla:
            return self.mla_attention(h, i)
        n = len(h)
        if layer.sizes:  # this layer's heads and head size (gemma4's sliding and global layers differ)
            c = replace(c, n_heads=layer.sizes[0], n_kv_heads=layer.sizes[1], head_dim=layer.sizes[2])
        if i in c.kv_source:  # gemma4's shared KV: Q alone, K and V those the source layer cached
            q = self.linear(h, p + "attn_q.weight")
            k, v = (np.zeros((n, c.n_kv_heads * c.head_dim)) for _ in "kv")  # replaced after the norms and RoPE
        else:
            q, k, v = self.qkv(h, p)
        if c.attn_gate:  # qwen35: attn_q holds each head's query then its output gate
            qg = q.reshape(n, c.n_heads, 2 * c.head_dim)
            q, gate = qg[..., : c.head_dim].reshape(n, -1), qg[..., c.head_dim :].reshape(n, -1)
        if c.qk_norm_rows:
            q, k = self.norm(q, p + "attn_q_norm.weight"), self.norm(k, p + "attn_k_norm.weight")
        q = q.reshape(n, c.n_heads, c.head_dim)
        k = k.reshape(n, c.n_kv_heads, c.head_dim)
        v = v.reshape(n, c.n_kv_heads, c.head_dim)
        if c.qk_norm and not c.qk_norm_after_rope:
            q = self.norm(q, p + "attn_q_norm.weight")
            k = k if i in c.kv_source else self.norm(k, p + "attn_k_norm.weight")
        if c.v_norm:
            v = v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + c.eps)
        if layer.rope:
            q, k = self.rope(q, layer), self.rope(k, layer)
        if c.qk_norm_after_rope:
            q, k = self.norm(q, p + "attn_q_norm.weight"), self.norm(k, p + "attn_k_norm.weight")
        if c.temp_scale:
            q = q * (np.log(np.floor(np.arange(n) / c.orig_ctx) + 1.0) * c.temp_scale + 1.0)[:, None, None]
        if c.qk_l2 and layer.rope:  # llama4: Llama4TextL2Norm (an RMS norm without a weight) after RoPE
            q, k = (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + c.eps) for x in (q, k))
        if c.temp_nope and not layer.rope:  # llama4's NoPE layers: 1 + 0.1 ln(floor((pos + 1) / 8192) + 1)
            q = q * (np.log(np.floor((np.arange(n) + 1.0) / 8192) + 1.0) * 0.1 + 1.0)[:, None, None]
        k = k.astype(self.kv_dtype).astype(np.float64)
        v = v.astype(self.kv_dtype).astype(np.float64)
        if c.kv_source:
            k, v = self._kv[c.kv_source[i]] if i in c.kv_source else self._kv.setdefault(i, (k, v))
        group = c.n_heads // c.n_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) * (c.q_scale or 1.0 / math.sqrt(c.head_dim))
        if c.attn_softcap:
            scores = c.attn_softcap * np.tanh(scores / c.attn_softcap)
        pos = np.arange(n)
        allowed = pos[None, :] <= pos[:, None]
        if i in c.chunk_layers:  # llama4's chunked attention: keys of the query's own chunk of 8192
            allowed &= pos[None, :] >= (pos[:, None] // 8192) * 8192
        if layer.window:
            allowed &= pos[:, None] - pos[None, :] < layer.window
        scores = np.where(allowed[None], scores, -np.inf)
        if c.sinks:  # ggml_soft_max_add_sinks: the head's sink joins the max and the sum, weighs nothing
            sink = np.repeat(self.w(p + "attn_sinks.weight")[:, None, None], n, axis=1)
            scores = np.concatenate([scores, sink], axis=-1)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs[..., :n], v).reshape(n, c.n_heads * c.head_dim)
        if c.attn_gate:
            out = out / (1.0 + np.exp(-gate))
        return self.linear(out, p + "attn_output.weight") + (self.bias(p + "attn_output") if c.out_bias else 0.0)

    def short_conv(self, h: np.ndarray, i: int) -> np.ndarray:
        """lfm2's conv block (build_shortconv_block): in_proj to b, c, x; a causal depthwise
        conv of b * x over the last l_cache inputs (zeros before the first token: the state a
        fresh sequence starts from); times c; out_proj."""
        p, n = f"blk.{i}.", len(h)
        bcx = self.linear(h, p + "shortconv.in_proj.weight")
        e = bcx.shape[1] // 3
        b, cg, x = bcx[:, :e], bcx[:, e : 2 * e], bcx[:, 2 * e :]
        w = self.w(p + "shortconv.conv.weight")  # [channels, kernel]
        taps = w.shape[1]
        window = np.concatenate([np.zeros((taps - 1, e)), b * x])
        conv = sum(window[j : j + n] * w[:, j] for j in range(taps))
        return self.linear(cg * conv, p + "shortconv.out_proj.weight")

    def mla_attention(self, h: np.ndarray, i: int) -> np.ndarray:
        """deepseek2's attention, decompressed (llama.cpp runs it absorbed; the math is the same):
        per head K = [wk_b^T latent, rope key], V = wv_b latent, from the float16-cached latent
        (kv_lora, normed) and rope key (n_rot, shared by the heads). The per-head products read
        float activations (as the compiled head_matmul kernels do): no act_rounding there."""
        c, m, p = self.cfg, self.cfg.mla, f"blk.{i}."
        n = len(h)
        if m.q_lora:
            q = self.linear(
                self.norm(self.linear(h, p + "attn_q_a.weight"), p + "attn_q_a_norm.weight"), p + "attn_q_b.weight"
            )
        else:
            q = self.linear(h, p + "attn_q.weight")
        q = q.reshape(n, c.n_heads, m.nope + c.n_rot)
        kv = self.linear(h, p + "attn_kv_a_mqa.weight")
        latent, k_pe = self.norm(kv[:, : m.kv_lora], p + "attn_kv_a_norm.weight"), kv[:, m.kv_lora :]
        q_pe, k_pe = self.rope(q[..., m.nope :], c.layers[i]), self.rope(k_pe[:, None, :], c.layers[i])
        latent = latent.astype(self.kv_dtype).astype(np.float64)
        k_pe = k_pe.astype(self.kv_dtype).astype(np.float64)
        k_nope = np.einsum("tr,hrd->thd", latent, self.w(p + "attn_k_b.weight"))  # [n, heads, nope]
        v = np.einsum("tr,hvr->thv", latent, self.w(p + "attn_v_b.weight"))  # [n, heads, v_dim]
        scores = (
            np.einsum("qhd,khd->hqk", q[..., : m.nope], k_nope) + np.einsum("qhd,kd->hqk", q_pe, k_pe[:, 0])
        ) * m.kq_scale
        pos = np.arange(n)
        scores = np.where((pos[None, :] <= pos[:, None])[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khv->qhv", probs, v).reshape(n, c.n_heads * m.v_dim)
        return self.linear(out, p + "attn_output.weight")

    def delta_net(self, h: np.ndarray, i: int, chunk: int = 16) -> np.ndarray:
        """qwen35's linear-attention layer (build_layer_attn_linear): the QKV projection through
        a causal conv + SiLU, Q and K L2-normalized, the gated delta rule in its chunked form
        (llama.cpp's build_delta_net_chunking: per chunk of `chunk` tokens a triangular solve
        for the deltas, then the state carried over), the per-head RMS norm gated by SiLU(z)."""
        md, p = self.md, f"blk.{i}."
        k_ = lambda key: md[f"{self.cfg.arch}.{key}"]  # noqa: E731
        s, hk, hv = k_("ssm.state_size"), k_("ssm.group_count"), k_("ssm.time_step_rank")
        n = len(h)
        r = hv // hk
        if self.has(p + "attn_qkv.weight"):
            mixed = self.linear(h, p + "attn_qkv.weight")  # [n, (2 hk + hv) s]
            z = self.linear(h, p + "attn_gate.weight").reshape(n, hv, s)
        else:  # qwen3next's legacy ssm_in: per key head [q, k, v of its r heads, z of its r heads]
            qkvz = self.linear(h, p + "ssm_in.weight").reshape(n, hk, 2 * s + 2 * r * s)
            parts = [qkvz[..., :s], qkvz[..., s : 2 * s], qkvz[..., 2 * s : 2 * s + r * s]]
            mixed = np.concatenate([x.reshape(n, -1) for x in parts], axis=1)
            z = qkvz[..., 2 * s + r * s :].reshape(n, hv, s)
        w = self.w(p + "ssm_conv1d.weight")  # [channels, kernel]
        kern = w.shape[1]
        padded = np.concatenate([np.zeros((kern - 1, mixed.shape[1])), mixed])
        conv = sum(padded[j : j + n] * w[:, j] for j in range(kern))
        conv = conv / (1.0 + np.exp(-conv))
        q = conv[:, : hk * s].reshape(n, hk, s)
        k = conv[:, hk * s : 2 * hk * s].reshape(n, hk, s)
        v = conv[:, 2 * hk * s :].reshape(n, hv, s)
        q = q / np.sqrt((q * q).sum(-1, keepdims=True) + self.cfg.eps)
        k = k / np.sqrt((k * k).sum(-1, keepdims=True) + self.cfg.eps)
        if self.cfg.arch == "qwen3next":  # repeat-interleave: value head h reads key head h // r
            q, k = np.repeat(q, r, axis=1), np.repeat(k, r, axis=1)
        else:
            q, k = np.tile(q, (1, r, 1)), np.tile(k, (1, r, 1))  # ggml_repeat_4d: head h reads h % hk
        if self.has(p + "ssm_ba.weight"):  # qwen3next: per key head its r beta rows, then its r alpha rows
            ba = self.linear(h, p + "ssm_ba.weight").reshape(n, hk, 2 * r)
            beta_in, alpha = ba[..., :r].reshape(n, hv), ba[..., r:].reshape(n, hv)
        else:
            beta_in, alpha = self.linear(h, p + "ssm_beta.weight"), self.linear(h, p + "ssm_alpha.weight")
        alpha = alpha + self.w(p + "ssm_dt.bias")
        g = np.log1p(np.exp(alpha)) * self.w(p + "ssm_a")  # [n, hv]
        b = 1.0 / (1.0 + np.exp(-beta_in))
        out = np.zeros((n, hv, s))
        for head in range(hv):
            state = np.zeros((s, s))  # S[i][j]: k index i, v index j
            for c0 in range(0, n, chunk):
                sl = slice(c0, min(n, c0 + chunk))
                qc, kc, vc, bc = q[sl, head] / math.sqrt(s), k[sl, head], v[sl, head], b[sl, head]
                G = np.cumsum(g[sl, head])
                decay = np.exp(G[:, None] - G[None, :])  # [t, u]: exp(G_t - G_u)
                lower = np.tril(np.ones((len(G), len(G))), -1)
                A = bc[:, None] * decay * (kc @ kc.T) * lower
                rhs = bc[:, None] * (vc - np.exp(G)[:, None] * (kc @ state))
                d = np.linalg.solve(np.eye(len(G)) + A, rhs)  # the deltas of the chunk
                out[sl, head] = np.exp(G)[:, None] * (qc @ state) + (decay * (qc @ kc.T) * np.tril(np.ones_like(A))) @ d
                state = np.exp(G[-1]) * state + (kc * np.exp(G[-1] - G)[:, None]).T @ d
        normed = (
            out / np.sqrt(np.mean(out * out, axis=-1, keepdims=True) + self.cfg.eps) * self.w(p + "ssm_norm.weight")
        )
        return self.linear((normed * z / (1.0 + np.exp(-z))).reshape(n, hv * s), p + "ssm_out.weight")

    def mamba2(self, h: np.ndarray, i: int) -> np.ndarray:
        """The Mamba2 mixer (build_mamba2_layer): ssm_in to z, xBC, dt; xBC through the causal conv
        plus its bias and SiLU; the scan in its quadratic (state-space dual) form, y_t = sum over
        s <= t of exp(L_t - L_s) dt_s (C_t . B_s) x_s with L the running sum of dt A, no state
        carried (head h reads group h // (H / G)); y + D x; times SiLU(z); an RMS norm per group;
        ssm_out."""
        md, p, n = self.md, f"blk.{i}.", len(h)
        k_ = lambda key: md[f"{self.cfg.arch}.{key}"]  # noqa: E731
        d_inner, n_st, heads, groups = (
            k_("ssm.inner_size"),
            k_("ssm.state_size"),
            k_("ssm.time_step_rank"),
            k_("ssm.group_count"),
        )
        hd = d_inner // heads
        zxbcdt = self.linear(h, p + "ssm_in.weight")
        width = d_inner + 2 * groups * n_st
        z, xbc, dt = zxbcdt[:, :d_inner], zxbcdt[:, d_inner : d_inner + width], zxbcdt[:, d_inner + width :]
        w = self.w(p + "ssm_conv1d.weight")  # [channels, kernel]
        padded = np.concatenate([np.zeros((w.shape[1] - 1, width)), xbc])
        conv = sum(padded[j : j + n] * w[:, j] for j in range(w.shape[1]))
        if self.has(p + "ssm_conv1d.bias"):
            conv = conv + self.w(p + "ssm_conv1d.bias")
        conv = conv / (1.0 + np.exp(-conv))
        x = conv[:, :d_inner].reshape(n, heads, hd)
        bm = conv[:, d_inner : d_inner + groups * n_st].reshape(n, groups, n_st)
        cm = conv[:, d_inner + groups * n_st :].reshape(n, groups, n_st)
        dt = np.log1p(np.exp(dt + self.w(p + "ssm_dt.bias")))  # [n, heads]
        big_l = np.cumsum(dt * self.w(p + "ssm_a").reshape(-1), axis=0)
        causal = np.tril(np.ones((n, n), bool))
        y = np.zeros((n, heads, hd))
        for head in range(heads):
            g = head // (heads // groups)
            seg = np.where(causal, big_l[:, head][:, None] - big_l[:, head][None, :], -np.inf)
            y[:, head] = (np.exp(seg) * (cm[:, g] @ bm[:, g].T) * dt[None, :, head]) @ x[:, head]
        y = (y + x * self.w(p + "ssm_d").reshape(-1)[None, :, None]).reshape(n, d_inner)
        y = (y * z / (1.0 + np.exp(-z))).reshape(n, groups, d_inner // groups)
        y = (
            y
            / np.sqrt(np.mean(y * y, axis=-1, keepdims=True) + self.cfg.eps)
            * self.w(p + "ssm_norm.weight").reshape(groups, -1)
        )
        return self.linear(y.reshape(n, d_inner), p + "ssm_out.weight")

    def ffn(self, h: np.ndarray, i: int) -> np.ndarray:
        c, p = self.cfg, f"blk.{i}."
        if c.oai:
            return self.moe_oai(h, p)
        if c.n_expert and (i in c.moe_layers if c.moe_layers is not None else i >= c.dense_lead):
            return self.moe(h, p)
        if c.arch in ("phi3", "glm4"):  # one ffn_up of gate, then up
            gate_up = self.ffn_linear(h, p + "ffn_up.weight")
            half = gate_up.shape[1] // 2
            gate, up = gate_up[:, :half], gate_up[:, half:]
        else:
            gate = self.ffn_linear(h, p + "ffn_gate.weight")
            up = self.ffn_linear(h, p + "ffn_up.weight")
        act = self.gelu(gate) if c.gelu else gate / (1.0 + np.exp(-gate))
        return self.ffn_linear(act * up, p + "ffn_down.weight")

    @staticmethod
    def gelu(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * x * (1.0 + 0.044715 * x * x)))

    def moe(self, h: np.ndarray, p: str) -> np.ndarray:
        """build_moe_ffn: softmax or sigmoid gating, a selection bias (exp_probs_b) that chooses
        without weighing, grouped top-k (the groups_used groups whose two best experts sum
        highest), top n_used, weights renormalized (norm_w) and scaled (w_scale), SwiGLU experts;
        plus the shared experts' FFN where the layer has one."""
        c = self.cfg
        logits = self.linear(h, p + "ffn_gate_inp.weight")
        if c.gating == "sigmoid":
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
        select = probs + self.w(p + "exp_probs_b.bias") if self.has(p + "exp_probs_b.bias") else probs
        if c.weight_before:  # llama4: chosen by the logits themselves
            select = logits
        relu2 = not self.has(p + "ffn_gate_exps.weight")  # nemotron_h_moe: down(relu(up x)^2), no gate
        x_in = self.linear(h, p + "ffn_latent_down.weight") if self.has(p + "ffn_latent_down.weight") else h
        out = np.zeros(x_in.shape)
        gate_w = None if relu2 else self.w(p + "ffn_gate_exps.weight")
        up_w, down_w = (self.w(f"{p}ffn_{x}_exps.weight") for x in ("up", "down"))
        for t in range(len(h)):
            sel = select[t].copy()
            if c.groups > 1:
                per_group = sel.reshape(c.groups, -1)
                group_score = np.array([np.sort(g)[-2:].sum() for g in per_group])
                kept = np.argsort(-group_score, kind="stable")[: c.groups_used]
                sel = np.where(np.isin(np.arange(c.groups), kept)[:, None], per_group, -np.inf).reshape(-1)
            top = np.argsort(-sel, kind="stable")[: c.n_used]
            weights = probs[t, top]
            if c.norm_w:
                weights = weights / max(weights.sum(), 2.0**-14)
            if c.w_scale not in (0.0, 1.0):
                weights = weights * c.w_scale
            for e, wt in zip(top, weights):
                x = x_in[t : t + 1] * wt if c.weight_before else x_in[t : t + 1]  # llama4: the weight on the input
                u = self.linear(x, p + "ffn_up_exps.weight", up_w[e])
                if relu2:
                    act = np.maximum(u, 0.0) ** 2
                else:
                    g = self.linear(x, p + "ffn_gate_exps.weight", gate_w[e])
                    act = g / (1.0 + np.exp(-g)) * u
                y = self.linear(act, p + "ffn_down_exps.weight", down_w[e])[0]
                out[t] += y if c.weight_before else wt * y
        if self.has(p + "ffn_latent_up.weight"):  # Nemotron 3 Super: the experts' sum back to n_embd
            out = self.linear(out, p + "ffn_latent_up.weight")
        if relu2:  # the shared expert: squared ReLU too
            return out + self.linear(
                np.maximum(self.linear(h, p + "ffn_up_shexp.weight"), 0.0) ** 2, p + "ffn_down_shexp.weight"
            )
        if self.has(p + "ffn_gate_shexp.weight"):
            sc = c.arch in SHARED_SCALES
            g, u = (
                self.linear(h, p + "ffn_gate_shexp.weight", scaled=sc),
                self.linear(h, p + "ffn_up_shexp.weight", scaled=sc),
            )
            shared = self.linear(g / (1.0 + np.exp(-g)) * u, p + "ffn_down_shexp.weight", scaled=sc)
            if self.has(p + "ffn_gate_inp_shexp.weight"):  # qwen35moe: times sigmoid(a logit per token)
                gate = self.linear(
                    h, p + "ffn_gate_inp_shexp.weight", self.w(p + "ffn_gate_inp_shexp.weight").reshape(1, -1)
                )
                shared = shared / (1.0 + np.exp(-gate))
            out = out + shared
        return out

    def gemma4_experts(self, x: np.ndarray, p: str) -> np.ndarray:
        """gemma4.cpp's routed experts (26B-A4B) over the attention block's output x: the router
        reads rms_norm(x) / sqrt(n_embd) * ffn_gate_inp.scale; softmax, the top n_used,
        renormalized; GELU(tanh)-gated experts on rms_norm(x) * pre_ffw_norm_2 (a fused
        ffn_gate_up_exps: gate rows first), each one's down output times ffn_down_exps.scale[e]
        where the file has it; their weighted sum RMS-normed by post_ffw_norm_2."""
        c = self.cfg
        r = (
            x
            / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + c.eps)
            / math.sqrt(x.shape[1])
            * self.w(p + "ffn_gate_inp.scale")
        )
        logits = self.linear(r, p + "ffn_gate_inp.weight")
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        h = self.norm(x, p + "pre_ffw_norm_2.weight")
        if self.has(p + "ffn_gate_up_exps.weight"):
            gate_name = up_name = p + "ffn_gate_up_exps.weight"
            both = self.w(gate_name)
            gate_w, up_w = both[:, : both.shape[1] // 2], both[:, both.shape[1] // 2 :]
        else:
            gate_name, up_name = p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight"
            gate_w, up_w = self.w(gate_name), self.w(up_name)
        down_w = self.w(p + "ffn_down_exps.weight")
        escale = self.w(p + "ffn_down_exps.scale") if self.has(p + "ffn_down_exps.scale") else np.ones(len(down_w))
        out = np.zeros(x.shape)
        for t in range(len(x)):
            top = np.argsort(-probs[t], kind="stable")[: c.n_used]
            weights = probs[t, top] / max(probs[t, top].sum(), 2.0**-14)
            for e, wt in zip(top, weights):
                g = self.linear(h[t : t + 1], gate_name, gate_w[e])
                u = self.linear(h[t : t + 1], up_name, up_w[e])
                out[t] += wt * escale[e] * self.linear(self.gelu(g) * u, p + "ffn_down_exps.weight", down_w[e])[0]
        return self.norm(out, p + "post_ffw_norm_2.weight")

    def moe_oai(self, h: np.ndarray, p: str) -> np.ndarray:
        """build_moe_ffn as gpt-oss calls it: router logits + bias, the top n_used logits
        softmaxed among themselves (SOFTMAX_WEIGHT), each expert's gate/up/down with its bias
        (ggml_add_id), ggml_swiglu_oai(gate, up, alpha 1.702, limit 7)."""
        c = self.cfg
        logits = self.linear(h, p + "ffn_gate_inp.weight") + self.w(p + "ffn_gate_inp.bias")
        w = {x: self.w(f"{p}ffn_{x}_exps.weight") for x in ("gate", "up", "down")}
        bias = {x: self.w(f"{p}ffn_{x}_exps.bias") for x in ("gate", "up", "down")}
        out = np.zeros_like(h)
        for t in range(len(h)):
            top = np.argsort(-logits[t], kind="stable")[: c.n_used]
            e_top = np.exp(logits[t, top] - logits[t, top].max())
            for e, wt in zip(top, e_top / e_top.sum()):
                x = h[t : t + 1]
                g = self.linear(x, p + "ffn_gate_exps.weight", w["gate"][e]) + bias["gate"][e]
                u = self.linear(x, p + "ffn_up_exps.weight", w["up"][e]) + bias["up"][e]
                g = np.minimum(g, 7.0)
                act = g / (1.0 + np.exp(-1.702 * g)) * (np.clip(u, -7.0, 7.0) + 1.0)
                out[t] += wt * (self.linear(act, p + "ffn_down_exps.weight", w["down"][e])[0] + bias["down"][e])
        return out

    def relu2_mlp(self, h: np.ndarray, i: int) -> np.ndarray:
        """nemotron_h's MLP layer: ffn_down(relu(ffn_up h)^2), biases where the file has them
        (nemotron_h_moe: the experts instead)."""
        p = f"blk.{i}."
        if self.has(p + "ffn_gate_inp.weight"):
            return self.moe(h, p)
        up = self.ffn_linear(h, p + "ffn_up.weight")
        return self.ffn_linear(np.maximum(up, 0.0) ** 2, p + "ffn_down.weight")

    def router(self, x: np.ndarray, p: str) -> np.ndarray:
        """gemma3n's altup_compute_router_modalities: tanh(altup_router(norm(x) / n_embd))."""
        return np.tanh(
            self.linear(self.norm(x, p + "altup_router_norm.weight") / self.cfg.n_embd, p + "altup_router.weight")
        )

    def gemma3n_logits(self, tokens: list[int]) -> np.ndarray:
        """src/models/gemma3n.cpp: 4 AltUp streams (stream 0 active), Laurel beside attention, the
        FFN gate sparsified in the first 10 layers, the per-layer embedding added to streams 1..3."""
        c = self.cfg
        x = self.w("token_embd.weight")[np.asarray(tokens)] * c.embed_scale
        self._kv = {}
        ple = self.per_layer_inputs(tokens, x)
        streams = altup_stack(x, [x @ w.T for w in self.w("altup_proj.weight")])
        for i in range(c.n_layers):
            p = f"blk.{i}."
            pred = altup_predict(streams, self.linear(self.router(streams[0], p), p + "altup_predict_coef.weight"))
            h = self.norm(pred[0], p + "attn_norm.weight")
            lr = self.linear(self.linear(h, p + "laurel_l.weight"), p + "laurel_r.weight")
            laurel = self.norm(lr, p + "laurel_post_norm.weight") + h
            a = self.norm(self.attention(h, i), p + "post_attention_norm.weight") + pred[0]
            a = (a + laurel) / math.sqrt(2.0)
            hf = self.norm(a, p + "ffn_norm.weight")
            gate, up = self.linear(hf, p + "ffn_gate.weight"), self.linear(hf, p + "ffn_up.weight")
            if i < 10:  # n_layer_sparsity
                gate = gaussian_topk(gate, 1.6448533535003662)
            f = self.linear(self.gelu(gate) * up, p + "ffn_down.weight")
            activated = self.norm(f, p + "post_ffw_norm.weight") + a
            coefs = self.linear(self.router(activated, p), p + "altup_correct_coef.weight")
            corrected = altup_correct(pred, activated, coefs, 0)
            g = (
                self.gelu(self.linear(corrected[0] * self.w(p + "altup_correct_scale.weight"), p + "inp_gate.weight"))
                * ple[:, i]
            )
            first = self.norm(self.linear(g, p + "proj.weight"), p + "post_norm.weight")
            streams = [corrected[0]] + [s + first for s in corrected[1:]]
        x = altup_merge(streams, [s @ w.T for s, w in zip(streams[1:], self.w("altup_unembd_proj.weight"))], 0)
        out = self.linear(self.norm(x, c.out_norm), "token_embd.weight" if c.tied else "output.weight")
        return c.final_softcap * np.tanh(out / c.final_softcap)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Teacher-forced logits float64[len(tokens), vocab]."""
        c = self.cfg
        if c.arch == "gemma3n":
            return self.gemma3n_logits(tokens)
        x = self.w("token_embd.weight")[np.asarray(tokens)] * c.embed_scale
        self._kv: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # gemma4's shared KV: each source layer's K, V
        ple = self.per_layer_inputs(tokens, x) if c.ple else None
        for i in range(c.n_layers):
            p = f"blk.{i}."
            if c.mlp is not None:  # nemotron_h: one mixer per layer, x + mixer(norm(x))
                sub = self.relu2_mlp if i in c.mlp else self.mamba2 if i in c.mamba else self.attention
                x = x + sub(self.norm(x, p + "attn_norm.weight"), i)
                continue
            if c.arch == "falcon-h1":  # x + attention(h) + mamba2(h), h = attn_norm(x); then the FFN (norm "ffn_norm")
                h = self.norm(x, p + "attn_norm.weight")
                x = x + self.attention(h, i) + self.mamba2(h, i)
                x = x + self.ffn(self.norm(x, p + "ffn_norm"), i)
                continue
            if c.parallel:  # command-r: x + attention(h) + FFN(h), h = norm(x)
                h = self.norm(x, p + "attn_norm.weight")
                x = x + self.attention(h, i) + self.ffn(h, i)
                continue
            sub = (
                self.delta_net
                if i in c.recurrent
                else self.short_conv
                if i in c.short_conv
                else self.mamba2
                if i in c.mamba
                else self.attention
            )
            a = sub(self.norm(x, p + "attn_norm.weight") if c.pre_norms else x, i)
            if c.post_norms:
                a = self.norm(a, p + "post_attention_norm.weight")
            if c.residual_scale:
                a = a * c.residual_scale
            x = x + a
            f = self.ffn(self.norm(x, f"{p}{c.ffn_norm}.weight") if c.pre_norms else x, i)
            if c.arch == "gemma4" and self.has(p + "ffn_gate_inp.weight"):  # 26B-A4B: the experts beside the MLP
                f = self.norm(f, p + "post_ffw_norm_1.weight") + self.gemma4_experts(x, p)
            if c.post_norms:
                f = self.norm(f, p + "post_ffw_norm.weight")
            if c.residual_scale:
                f = f * c.residual_scale
            x = x + f
            if ple is not None:  # gemma4's per-layer embedding after the FFN's residual
                g = self.gelu(self.linear(x, p + "inp_gate.weight")) * ple[:, i]
                x = x + self.norm(self.linear(g, p + "proj.weight"), p + "post_norm.weight")
            if c.out_scale and self.has(p + "layer_output_scale.weight"):
                x = x * self.w(p + "layer_output_scale.weight")[0]
        x = self.norm(x, c.out_norm)
        out = self.linear(x, "token_embd.weight") if c.tied else self.linear(x, "output.weight") + self.bias("output")
        if c.final_softcap:
            out = c.final_softcap * np.tanh(out / c.final_softcap)
        if c.logit_scale:
            out = out / c.logit_scale
        if c.logit_mul:
            out = out * c.logit_mul
        return out


# -- gemma3n's AltUp and activation sparsity, float64 (src/models/gemma3n.cpp) ---------------------
# The streams as llama.cpp's graph holds them, a list of n [T, E] arrays (the plan lays them side by
# side in one row: artifacts/plan.py); |v| = sqrt(sum_rows(v^2)) (calc_magnitude).


def _magnitude(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(np.square(v, dtype=np.float64), axis=-1, keepdims=True))


def altup_stack(x: np.ndarray, projected: list[np.ndarray]) -> list[np.ndarray]:
    """inp_stacked: x, then each altup_proj output times |x| / its own magnitude."""
    return [np.asarray(x, np.float64)] + [p * _magnitude(x) / _magnitude(p) for p in projected]


def altup_predict(streams: list[np.ndarray], coefs: np.ndarray) -> list[np.ndarray]:
    """predictions: all_coefs [T, n*n] reshaped to [T, n, n] (row i: stream i's mix), plus the streams."""
    n = len(streams)
    return [streams[i] + sum(coefs[:, i * n + k : i * n + k + 1] * streams[k] for k in range(n)) for i in range(n)]


def altup_correct(
    predictions: list[np.ndarray], activated: np.ndarray, coefs: np.ndarray, active: int
) -> list[np.ndarray]:
    """corrected: the innovation (activated - the active prediction) times (coef + 1), plus each prediction."""
    innovation = activated - predictions[active]
    return [innovation * (coefs[:, i : i + 1] + 1.0) + p for i, p in enumerate(predictions)]


def altup_merge(streams: list[np.ndarray], unembedded: list[np.ndarray], active: int) -> np.ndarray:
    """unembd_merged: stream 0 plus altup_unembd_proj of streams 1.. at the active stream's magnitude, averaged."""
    target = _magnitude(streams[active])
    return (streams[0] + sum(u * target / _magnitude(u) for u in unembedded)) / len(streams)


def gaussian_topk(x: np.ndarray, std_mul: float) -> np.ndarray:
    """relu(x - (mean + std_mul * std)), the std unbiased (1 / (N - 1)) over each row."""
    mean = x.mean(axis=-1, keepdims=True)
    std = np.sqrt(np.sum((x - mean) ** 2, axis=-1, keepdims=True) / (x.shape[-1] - 1))
    return np.maximum(x - mean - std_mul * std, 0.0)
