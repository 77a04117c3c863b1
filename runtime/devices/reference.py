"""The numpy reference device: every plan op in plain numpy, the plan interpreted op by op.

It is the oracle the compiled kernels are tested against, so it favours clarity over
speed; it is also the fallback where no compiled target fits the machine. Weights are
dequantized once, on first use, and held in float64: matmuls then accumulate in float64, so
a row's result does not depend on how many rows share the batch (BLAS picks different
float32 summation orders for different shapes). Each op kind has its method, the one its
descriptor names (artifacts/ops: OpDef.reference), found in _HANDLERS.
"""

from collections.abc import Callable

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.artifacts.ops import OP_DEFS
from rfc.artifacts.ops.core import alibi_slopes
from rfc.artifacts.plan import OPS, KVSpec, Op, OpKind, StateSpec, rope_freqs
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices import DeviceKind
from rfc.runtime.core.device import InterpretedDevice
from rfc.runtime.model.kv_quant import dequantize_rows, quantize_rows, rotate
from rfc.runtime.model.quants import dequantize
from rfc.runtime.devices.state import HostState, seq_state
from rfc.runtime.devices import altup


class ReferenceDevice(HostState, InterpretedDevice):
    name = DeviceKind.REF

    def __init__(
        self, bundle: Bundle, kv: KVSpec, num_blocks: int, block_size: int, cache_types: KvCacheTypes = KvCacheTypes()
    ):
        super().__init__(bundle.plan)
        cache_types.check(kv, bundle.plan.kv_geometries())
        self._bundle = bundle
        self._entries = bundle.layout.by_name()
        self._weights: dict[str, np.ndarray] = {}
        self.cache_types = cache_types
        self._kv_width = kv.row
        self._k_rot, self._v_rot = cache_types.rotations(kv.head_dim)  # llama.cpp's rotation of quantized rows
        self.k_cache = self._cache(kv, num_blocks * block_size, cache_types.k)
        self.v_cache = self._cache(kv, num_blocks * block_size, cache_types.v)

    @staticmethod
    def _cache(kv: KVSpec, slots: int, t: CacheType) -> np.ndarray:
        """[layer, slot, row] values (f16, or f32 where the plan asks), or [layer, slot, row
        bytes] of q8_0 / q4_0 blocks (runtime/model/kv_quant.py). A row is the widest layer's
        (KVSpec.row); a narrower layer uses its first values."""
        if t is not CacheType.F16:
            return np.zeros((kv.n_layers, slots, t.row_bytes(kv.row)), dtype=np.uint8)
        return np.zeros((kv.n_layers, slots, kv.row), dtype=np.float16 if kv.dtype == "f16" else np.float32)

    def _store(self, cache: np.ndarray, t: CacheType, layer: int, slots: np.ndarray, x: np.ndarray) -> None:
        if t is CacheType.F16:
            cache[layer, slots, : x.shape[1]] = x
        else:  # whole rows: a quantized cache serves one geometry (KvCacheTypes.check)
            cache[layer, slots] = quantize_rows(x, t)

    def _load(
        self, cache: np.ndarray, t: CacheType, layer: int, slots: np.ndarray, heads: int, head_dim: int
    ) -> np.ndarray:
        """float32 [len(slots), kv heads, head_dim]: only the rows asked for are dequantized."""
        if t is CacheType.F16:
            return cache[layer, slots, : heads * head_dim].astype(np.float32).reshape(len(slots), heads, head_dim)
        rows = dequantize_rows(cache[layer, slots], t, self._kv_width)
        return rows.reshape(len(slots), heads, head_dim)

    copies_kv = True

    def copy_kv(self, src: np.ndarray, dst: np.ndarray) -> None:
        for cache in (self.k_cache, self.v_cache):
            cache[:, dst] = cache[:, src]  # every layer; whatever a slot's row holds

    # -- memory ---------------------------------------------------------------------------
    def alloc(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.zeros(shape, dtype=np.int32 if dtype == "i32" else np.float32)

    def upload_batch(self, batch: StepBatch) -> StepBatch:
        return batch

    def download(self, buf: np.ndarray, rows: int) -> np.ndarray:
        return np.array(buf[:rows], dtype=np.float32)

    def weight(self, name: str) -> np.ndarray:
        w = self._weights.get(name)
        if w is None:
            e = self._entries[name]
            raw = np.frombuffer(self._bundle.weights, dtype=np.uint8, count=e.nbytes, offset=e.offset)
            w = self._weights[name] = dequantize(raw, e.format, e.shape).astype(np.float64)
        return w

    # -- ops ------------------------------------------------------------------------------
    def launch(self, op: Op, outs: list, ins: list, weights: list, batch: StepBatch) -> None:
        attrs = {**dict(OPS[op.kind].optional), **op.attrs}  # optional attributes at their defaults
        _HANDLERS[op.kind](self, outs, ins, weights, attrs, batch)

    def op_embed(self, outs, ins, weights, attrs, batch):
        column, width = attrs["column"], outs[0].shape[1]  # a slice of wider rows: Gemma 4's per-layer table
        outs[0][...] = weights[0][ins[0], column : column + width] * attrs["scale"]

    def op_pos_embed(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0] + weights[0][batch.positions]

    def op_rmsnorm(self, outs, ins, weights, attrs, batch):
        rows, width = ins[0].shape
        x = ins[0].reshape(rows, attrs["heads"], width // attrs["heads"])
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
        y = x / np.sqrt(ms + np.float32(attrs["eps"]))
        w = weights[0].reshape(-1, y.shape[-1]) if weights else None  # [1 or heads, segment]: Mamba2's per group
        outs[0][...] = (y * w if weights else y).reshape(rows, width)  # no weight: gemma4's V norm

    def op_matmul(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0].astype(np.float64) @ weights[0].T

    def op_add_bias(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0] + weights[0]

    def op_add(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0] + ins[1]

    def op_swiglu(self, outs, ins, weights, attrs, batch):
        g, u = ins
        if attrs["activation"] == "gelu_tanh":
            c = np.float32(np.sqrt(2.0 / np.pi))
            tanh = np.tanh(c * (g + np.float32(0.044715) * g * g * g))
            outs[0][...] = np.float32(0.5) * g * (np.float32(1.0) + tanh) * u
        elif attrs["activation"] == "sigmoid":  # g [T, k]: gate j over the j-th of k segments of u's row
            seg = u.reshape(u.shape[0], g.shape[-1], -1)
            outs[0][...] = (seg / (np.float32(1.0) + np.exp(-g))[..., None]).reshape(u.shape)
        elif attrs["activation"] == "softplus":  # ggml's softplus (linear above 20); g [T, k] as sigmoid's
            sp = np.where(g > 20.0, g, np.log(np.float32(1.0) + np.exp(np.minimum(g, np.float32(20.0)))))
            seg = u.reshape(u.shape[0], g.shape[-1], -1)
            outs[0][...] = (seg * sp.astype(np.float32)[..., None]).reshape(u.shape)
        elif attrs["activation"] == "relu":  # nemotron_h's relu^2 as relu(g) * g
            outs[0][...] = np.maximum(g, np.float32(0.0)) * u
        elif attrs["activation"] == "silu_clamp":  # ggml_swiglu_clamp (maple's experts)
            limit = np.float32(attrs["limit"])
            x = np.minimum(g, limit)
            outs[0][...] = x / (np.float32(1.0) + np.exp(-x)) * np.clip(u, -limit, limit)
        elif attrs["activation"] == "silu_cap":  # build_ffn / build_moe_ffn's clamped SwiGLU (step35)
            limit = np.float32(attrs["limit"])
            outs[0][...] = np.minimum(g / (np.float32(1.0) + np.exp(-g)), limit) * np.clip(u, -limit, limit)
        elif attrs["activation"] == "swiglu_oai":
            limit, alpha = np.float32(attrs["limit"]), np.float32(attrs["alpha"])
            x = np.minimum(g, limit)
            outs[0][...] = x / (np.float32(1.0) + np.exp(-alpha * x)) * (np.clip(u, -limit, limit) + np.float32(1.0))
        elif attrs["activation"] == "linear":  # RWKV-7's output gate
            outs[0][...] = g * u
        elif attrs["activation"] == "situ":  # Kimi-K3's: ggml's scale, tanh, scale, sigmoid, mul (twice)
            f, beta, lb = np.float32, np.float32(attrs["alpha"]), np.float32(attrs["limit"])
            a = np.tanh(g * (f(1.0) / beta)) * beta * (f(1.0) / (f(1.0) + np.exp(-g)))
            outs[0][...] = a * (np.tanh(u * (f(1.0) / lb)) * lb if lb > 0 else u)
        else:
            outs[0][...] = g / (1.0 + np.exp(-g)) * u

    def op_relu(self, outs, ins, weights, attrs, batch):
        outs[0][...] = np.where(ins[0] > 0, ins[0], np.float32(0.0))

    def op_sigmoid(self, outs, ins, weights, attrs, batch):
        outs[0][...] = np.float32(1.0) / (np.float32(1.0) + np.exp(-ins[0]))

    # -- RWKV: lerps (float32, each operation rounded as ggml's), the token shift, the WKVs -------
    def op_lerp(self, outs, ins, weights, attrs, batch):
        a, b = ins
        c, p = a.shape[1], attrs.get("part", 0)
        outs[0][...] = (b - a) * weights[0].astype(np.float32)[p * c : (p + 1) * c] + a

    def op_lerp_data(self, outs, ins, weights, attrs, batch):
        a, b, m = ins
        c, p = a.shape[1], attrs.get("part", 0)
        outs[0][...] = (b - a) * m[:, p * c : (p + 1) * c] + a

    def op_token_shift(self, outs, ins, weights, attrs, batch):
        (x,) = ins
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            prev = state[0].copy()
            outs[0][lo + 1 : hi] = x[lo : hi - 1]
            outs[0][lo] = prev
            state[0] = x[hi - 1]

    def op_wkv6(self, outs, ins, weights, attrs, batch):
        r, k, v, w = ins
        gla = attrs.get("mode", "wkv6") == "gla"
        u, decay = (None, weights[0]) if gla else (weights[0], weights[1])
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], state[...] = wkv6_chunk(
                r[lo:hi], k[lo:hi], v[lo:hi], w[lo:hi], u, decay, state, attrs["n_heads"], attrs["n_kv_heads"],
                attrs["head_dim"], scale=attrs.get("scale", 1.0) if gla else None,
            )  # fmt: skip

    def op_wkv7(self, outs, ins, weights, attrs, batch):
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], outs[1][lo:hi], state[...] = wkv7_chunk(
                *(x[lo:hi] for x in ins), *weights, state, attrs["n_heads"], attrs["head_dim"]
            )

    def op_scale(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0] * np.float32(attrs["factor"])

    def op_clamp(self, outs, ins, weights, attrs, batch):
        limit = np.float32(attrs["limit"])
        outs[0][...] = np.minimum(np.maximum(ins[0], -limit), limit)

    def op_channel_div(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0] / weights[0].astype(np.float32)

    def op_gelu(self, outs, ins, weights, attrs, batch):
        x = ins[0]
        c = np.float32(np.sqrt(2.0 / np.pi))
        outs[0][...] = (
            np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * x * (np.float32(1.0) + np.float32(0.044715) * x * x)))
        )

    def op_xielu(self, outs, ins, weights, attrs, batch):
        x = ins[0]
        a_n, a_p, beta, eps = (np.float32(attrs[k]) for k in ("alpha_n", "alpha_p", "beta", "eps"))
        neg = (np.expm1(np.minimum(x, eps)) - x) * a_n + beta * x
        outs[0][...] = np.where(x > 0, a_p * x * x + beta * x, neg)

    def op_softcap(self, outs, ins, weights, attrs, batch):
        cap = np.float32(attrs["cap"])
        outs[0][...] = cap * np.tanh(ins[0] / cap)

    def op_gather_rows(self, outs, ins, weights, attrs, batch):
        outs[0][...] = ins[0][batch.logit_rows]

    def op_rope(self, outs, ins, weights, attrs, batch):
        n_rot, hd = attrs["n_rot"], attrs["head_dim"]
        half = n_rot // 2
        inv_freq = np.array(rope_freqs(attrs), dtype=np.float64)  # linear scaling or YaRN's ramp, float64
        if weights:
            inv_freq = inv_freq / weights[0].astype(np.float64)
        theta = batch.positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, half]
        cos = (np.cos(theta) * attrs["attn_factor"]).astype(np.float32)[:, None, :]
        sin = (np.sin(theta) * attrs["attn_factor"]).astype(np.float32)[:, None, :]
        for buf, heads in ((outs[0], attrs["n_heads"]), (outs[1], attrs["n_kv_heads"])):
            x = buf.reshape(len(batch.positions), heads, hd)
            if attrs["style"] == "neox":
                a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
                x[..., :half] = a * cos - b * sin
                x[..., half:n_rot] = a * sin + b * cos
            else:
                a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
                x[..., 0:n_rot:2] = a * cos - b * sin
                x[..., 1:n_rot:2] = a * sin + b * cos
        if attrs["temp_scale"]:  # llama.cpp's llm_graph_input_attn_temp: double, stored as float
            floor = np.floor(batch.positions.astype(np.float64) / attrs["temp_floor"])
            outs[0][...] *= (np.log(floor + 1.0) * attrs["temp_scale"] + 1.0).astype(np.float32)[:, None]

    def op_kv_write(self, outs, ins, weights, attrs, batch):
        layer = attrs["layer"]
        k, v = ins
        self._store(self.k_cache, self.cache_types.k, layer, batch.slots, rotate(k, self._k_rot))
        self._store(self.v_cache, self.cache_types.v, layer, batch.slots, rotate(v, self._v_rot))

    def op_attention(self, outs, ins, weights, attrs, batch):
        layer, nh, nkv, hd = attrs["layer"], attrs["n_heads"], attrs["n_kv_heads"], attrs["head_dim"]
        group = nh // nkv
        q_all = ins[0].reshape(-1, nh, hd)
        out = outs[0].reshape(-1, nh, hd)
        bs = batch.block_size
        for s in range(len(batch.context_lens)):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            ctx = batch.context_lens[s]
            table = batch.block_tables[s]
            pos = np.arange(ctx)
            slots = table[pos // bs] * bs + pos % bs
            # [ctx, nh, hd]
            k = np.repeat(self._load(self.k_cache, self.cache_types.k, layer, slots, nkv, hd), group, axis=1)
            v = np.repeat(self._load(self.v_cache, self.cache_types.v, layer, slots, nkv, hd), group, axis=1)
            q = rotate(q_all[lo:hi], self._k_rot)  # [n, nh, hd]; Q turns with K: Q.K is unchanged
            scores = np.einsum("nhd,chd->hnc", q, k) * np.float32(attrs["scale"])
            if attrs["softcap"] is not None:
                cap = np.float32(attrs["softcap"])
                scores = cap * np.tanh(scores / cap)
            if attrs.get("alibi") is not None:  # ALiBi: slope_h * -|key position - query position|, in float32
                slopes = np.array(alibi_slopes(nh, attrs["alibi"]), np.float32)[:, None, None]
                scores = scores + slopes * -np.abs(pos[None, :] - batch.positions[lo:hi, None]).astype(np.float32)[None]
            if attrs.get("pos_bias") is not None:  # a bias per head and key distance, clamped to the table's reach
                reach = attrs["pos_bias"]
                d = np.clip(pos[None, :] - batch.positions[lo:hi, None], -reach, reach) + reach  # [n, ctx]
                biases = weights[0].astype(np.float32).reshape(2 * reach + 1, nh)
                scores = scores + np.moveaxis(biases[d], -1, 0)
            # [n, ctx]; an encoder's attention sees the whole sequence (the engine runs it in one step)
            causal = pos[None, :] <= (batch.positions[lo:hi, None] if attrs.get("causal", True) else ctx - 1)
            if attrs["window"] is not None:  # keys less than window positions back (and ahead: non-causal)
                near = np.abs(pos[None, :] - batch.positions[lo:hi, None]) < attrs["window"]
                causal = causal & near
            scores = np.where(causal[None], scores, -np.inf)
            if weights and attrs.get("pos_bias") is None:  # a sink logit per head: a softmax column weighing no value
                sink = np.broadcast_to(weights[0].astype(np.float32)[:, None, None], (*scores.shape[:2], 1))
                scores = np.concatenate([scores, sink], axis=-1)
            scores -= scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            out[lo:hi] = rotate(np.einsum("hnc,chd->nhd", p[..., :ctx], v), self._v_rot)  # V's rotation undone

    # -- mixture of experts ----------------------------------------------------------------
    def op_moe_route(self, outs, ins, weights, attrs, batch):
        if attrs.get("pick", "top") == "index":  # the expert the first logit names: roundf, clamped (graniteswitch)
            x = ins[0][:, 0].astype(np.float64)
            outs[0][:, 0] = np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, ins[0].shape[1] - 1)
            outs[1][...] = 1.0
            return
        logits = ins[0].astype(np.float64)
        if attrs["gating"] == "softmax":
            p = np.exp(logits - logits.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
        elif attrs["gating"] == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-logits))
        else:  # softmax_weight: chosen by the logits, weighed by a softmax over the chosen
            p = logits
        scaled = attrs["expert_scale"]  # the last weight: each expert's output scale (gemma4)
        bias = weights[:-1] if scaled else weights
        s = p + bias[0] if bias else p.copy()  # the selection bias chooses, it does not weigh
        groups = attrs["groups"]
        if groups > 1:  # only the experts of the groups_used groups whose two best scores sum highest
            by_group = s.reshape(len(s), groups, -1)
            score = -np.sort(-by_group, axis=-1)[..., :2].sum(axis=-1)
            keep = np.argsort(-score, axis=-1, kind="stable")[:, : attrs["groups_used"]]
            mask = np.zeros(score.shape, bool)
            np.put_along_axis(mask, keep, True, axis=-1)
            s = np.where(mask[..., None], by_group, -np.inf).reshape(s.shape)
        ids = np.argsort(-s, axis=-1, kind="stable")[:, : attrs["n_used"]]  # equal: lower index first
        if (div := attrs.get("id_div", 1)) > 1:  # grovemoe's adjugate experts: llama.cpp's float scale, then cast
            ids = (ids.astype(np.float32) * np.float32(1.0 / np.float32(div))).astype(np.int64)
        w = np.take_along_axis(p, ids, axis=-1)
        if attrs["gating"] == "softmax_weight":
            w = np.exp(w - w.max(axis=-1, keepdims=True))
            w /= w.sum(axis=-1, keepdims=True)
        if attrs["norm"]:
            w = w / np.maximum(w.sum(axis=-1, keepdims=True), 2.0**-14)
        outs[0][...] = ids
        outs[1][...] = w * attrs["scale"] * (weights[-1].astype(np.float64)[ids] if scaled else 1.0)

    def op_moe_matmul(self, outs, ins, weights, attrs, batch):
        """Slots grouped by expert, one matmul per expert (how the kernels stream each expert's
        weights once for all the tokens routed to it)."""
        x, ids = ins
        w = weights[0]  # [n_expert, N, K]
        n_tok, k = ids.shape
        rows = x.reshape(n_tok, -1, w.shape[2]).astype(np.float64)  # [T, 1 or k, K]
        out = outs[0].reshape(n_tok, k, w.shape[1])
        for e in np.unique(ids):
            t, j = np.nonzero(ids == e)
            out[t, j] = rows[t, j if rows.shape[1] > 1 else 0] @ w[e].T

    def op_moe_add_bias(self, outs, ins, weights, attrs, batch):
        y, ids = ins
        n_tok, k = ids.shape
        outs[0][...] = (y.reshape(n_tok, k, -1) + weights[0][ids]).reshape(n_tok, -1)

    def op_moe_scale(self, outs, ins, weights, attrs, batch):
        y, ids = ins
        n_tok, k = ids.shape
        factor = weights[0].astype(np.float32)[ids][..., None]  # [T, k, 1]: each slot's expert's scale
        outs[0][...] = (y.reshape(n_tok, k, -1) * factor).reshape(n_tok, -1)

    def op_slot_scale(self, outs, ins, weights, attrs, batch):
        y, w = ins
        n_tok, k = w.shape
        outs[0][...] = (y.reshape(n_tok, k, -1) * w.astype(np.float32)[..., None]).reshape(n_tok, -1)

    def op_moe_combine(self, outs, ins, weights, attrs, batch):
        y, w = ins
        n_tok, k = w.shape
        outs[0][...] = np.einsum("tj,tjn->tn", w.astype(np.float64), y.reshape(n_tok, k, -1).astype(np.float64))

    # -- multi-head latent attention (deepseek2) ---------------------------------------------
    def op_head_matmul(self, outs, ins, weights, attrs, batch):
        w = weights[0]  # [heads, N, K]
        heads, _, k = w.shape
        x = ins[0].reshape(len(ins[0]), heads, -1)[:, :, :k].astype(np.float64)  # head h: its first K columns
        outs[0][...] = np.einsum("thk,hnk->thn", x, w).reshape(len(x), -1)

    def op_concat_heads(self, outs, ins, weights, attrs, batch):
        a, b = ins
        heads = attrs["heads"]
        outs[0][...] = np.concatenate([a.reshape(len(a), heads, -1), b.reshape(len(b), heads, -1)], axis=-1).reshape(
            len(a), -1
        )

    def op_slice_heads(self, outs, ins, weights, attrs, batch):
        (x,) = ins
        heads, width = attrs["heads"], attrs["width"]
        outs[0][...] = x.reshape(len(x), heads, -1)[:, :, :width].reshape(len(x), -1)

    # -- recurrent state (runtime/devices/state.py: HostState, sized by the loader) ---------------
    @property
    def state_spec(self) -> StateSpec:
        return self._plan.state

    def op_short_conv(self, outs, ins, weights, attrs, batch):
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], state[...] = short_conv_chunk(ins[0][lo:hi], weights[0], state)

    # -- recurrent layers (Gated DeltaNet) ------------------------------------------------------
    def op_ssm_conv(self, outs, ins, weights, attrs, batch):
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], state[...] = ssm_conv_chunk(
                ins[0][lo:hi], weights[0], state, weights[1] if len(weights) > 1 else None
            )

    def op_gated_delta_net(self, outs, ins, weights, attrs, batch):
        qkv, alpha, beta = ins
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], state[...] = gated_delta_net_chunk(
                qkv[lo:hi],
                alpha[lo:hi],
                beta[lo:hi],
                weights[0],
                weights[1],
                state,
                attrs["n_k_heads"],
                attrs["n_v_heads"],
                attrs["head_dim"],
                attrs["eps"],
                per_key=attrs.get("decay", "head") != "head",
                lower_bound=attrs.get("lower_bound", 0.0) if attrs.get("decay") == "key_sigmoid" else None,
            )

    def op_lightning_attention(self, outs, ins, weights, attrs, batch):
        (qkv,) = ins
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], state[...] = lightning_chunk(
                qkv[lo:hi], weights[0], state, attrs["n_heads"], attrs["head_dim"]
            )

    # -- recurrent layers (Mamba2) --------------------------------------------------------------
    def op_ssm_scan(self, outs, ins, weights, attrs, batch):
        xbc, dt = ins
        for s in range(len(batch.seq_start) - 1):
            lo, hi = batch.seq_start[s], batch.seq_start[s + 1]
            state = seq_state(self.state, self._plan.state, attrs["state"], batch, s)
            outs[0][lo:hi], state[...] = ssm_scan_chunk(
                xbc[lo:hi],
                dt[lo:hi],
                weights[0],
                weights[1],
                weights[2],
                state,
                attrs["n_heads"],
                attrs["head_dim"],
                attrs["n_groups"],
                attrs["state_size"],
                attrs["decay"] == "state",
            )


def short_conv_chunk(bcx: np.ndarray, w: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sequence's chunk through short_conv: bcx [n, 3C] (b, c, x), w [C, L], state [L-1, C]
    -> (out [n, C], the new state). u = b * x in float32 (ggml_mul), the conv summed in float64,
    then times c in float32."""
    n, c = len(bcx), bcx.shape[1] // 3
    u = bcx[:, :c] * bcx[:, 2 * c :]
    window = np.concatenate([state, u]).astype(np.float64)  # [L-1+n, C]
    conv = sum(window[k : k + n] * w[:, k] for k in range(w.shape[1]))
    return bcx[:, c : 2 * c] * conv.astype(np.float32), window[n:].astype(np.float32)


def ssm_conv_chunk(
    x: np.ndarray, w: np.ndarray, state: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One sequence's chunk through ssm_conv: x [n, C], w [C, K], state [K-1, C], bias [C] or None
    -> (out [n, C], the new state). Sums in float64, results rounded to float32 (llama.cpp sums in float32)."""
    n, k = len(x), w.shape[1]
    window = np.concatenate([state, x]).astype(np.float64)  # [K-1+n, C]
    y = sum(window[i : i + n] * w[:, i] for i in range(k))
    if bias is not None:
        y = y + bias
    out = (y / (1.0 + np.exp(-y))).astype(np.float32)
    return out, window[n:].astype(np.float32)


def gated_delta_net_chunk(
    qkv,
    alpha,
    beta,
    a,
    dt_bias,
    state,
    hk: int,
    hv: int,
    s: int,
    eps: float,
    *,
    per_key: bool = False,
    lower_bound: float | None = None,
):
    """One sequence's chunk through gated_delta_net, token by token (the recurrent form), in
    float64: qkv [n, (2 hk + hv) s], alpha/beta [n, hv], a/dt_bias [hv], state [hv, s, s]
    (M[h][j][i]: v index j, k index i) -> (out [n, hv s] float32, the new state float32).
    `per_key` (KDA): alpha [n, hv s] and dt_bias [hv s], a decay per key index; with `lower_bound`
    (bailingmoe3) the decay lower_bound * sigmoid((alpha + dt_bias) * a) instead of softplus(...) * a."""
    n = len(qkv)
    x = qkv.astype(np.float64)
    q = x[:, : hk * s].reshape(n, hk, s)
    k = x[:, hk * s : 2 * hk * s].reshape(n, hk, s)
    v = x[:, 2 * hk * s :].reshape(n, hv, s)
    q = q / np.sqrt((q * q).sum(-1, keepdims=True) + eps)
    k = k / np.sqrt((k * k).sum(-1, keepdims=True) + eps)
    heads = np.arange(hv) % hk  # v head h reads k head h % hk (ggml's broadcast)
    q, k = q[:, heads], k[:, heads]
    z = alpha.astype(np.float64) + dt_bias
    a = np.asarray(a, np.float64)
    if lower_bound is not None:
        g = lower_bound / (1.0 + np.exp(-(z.reshape(n, hv, s) * a[None, :, None])))
    else:
        sp = np.where(z > 20.0, z, np.log1p(np.exp(np.minimum(z, 20.0))))  # softplus, as ggml's (linear above 20)
        g = sp.reshape(n, hv, s) * a[None, :, None] if per_key else sp * a  # [n, hv, s] or [n, hv]
    b = 1.0 / (1.0 + np.exp(-beta.astype(np.float64)))
    m = state.astype(np.float64).copy()
    out = np.empty((n, hv, s))
    for t in range(n):
        m *= np.exp(g[t])[:, None, :] if per_key else np.exp(g[t])[:, None, None]
        d = b[t][:, None] * (v[t] - np.einsum("hji,hi->hj", m, k[t]))
        m += d[:, :, None] * k[t][:, None, :]
        out[t] = np.einsum("hji,hi->hj", m, q[t]) / np.sqrt(s)
    return out.reshape(n, hv * s).astype(np.float32), m.astype(np.float32)


def lightning_chunk(qkv, decay, state, h: int, d: int):
    """One sequence's chunk through lightning_attention, token by token, in float64: qkv [n, 3 h d]
    (head h's q, k, v at 3 h d), decay [h] (log decays), state [h, d, d] (M[h][j][i]: v index j, k
    index i) -> (out [n, h d] float32, the new state float32)."""
    n = len(qkv)
    x = qkv.astype(np.float64).reshape(n, h, 3, d)
    lam = np.exp(-np.asarray(decay, np.float64))[:, None, None]
    m = state.astype(np.float64).copy()
    out = np.empty((n, h, d))
    for t in range(n):
        q, k, v = x[t, :, 0], x[t, :, 1], x[t, :, 2]
        m = m * lam + v[:, :, None] * k[:, None, :]
        out[t] = np.einsum("hji,hi->hj", m, q)
    return out.reshape(n, h * d).astype(np.float32), m.astype(np.float32)


def wkv6_chunk(r, k, v, w, u, decay, state, h: int, hkv: int, s: int, scale: float | None = None):
    """One sequence's chunk through wkv6, token by token, in float64: r, w [n, h s], k, v [n, hkv s] (head
    j reads kv head j // (h // hkv)), u (None: gla) and decay [h s], state [h, s, s] (M[h][j][i]: value
    index j, key index i) -> (out [n, h s] float32, the new state float32). `scale`: gla's query scale."""
    n, rep = len(r), h // hkv
    f = np.float64
    rr = r.astype(f).reshape(n, h, s)
    kk = np.repeat(k.astype(f).reshape(n, hkv, s), rep, axis=1)
    vv = np.repeat(v.astype(f).reshape(n, hkv, s), rep, axis=1)
    ww = np.exp(-np.exp(w.astype(f) + np.asarray(decay, f))).reshape(n, h, s)
    m = state.astype(f).copy()
    out = np.empty((n, h, s))
    for t in range(n):
        kv = vv[t][:, :, None] * kk[t][:, None, :]  # [h, j, i]
        if scale is None:
            uu = np.asarray(u, f).reshape(h, s)
            out[t] = np.einsum("hji,hi->hj", m + uu[:, None, :] * kv, rr[t])
            m = m * ww[t][:, None, :] + kv
        else:
            kv = vv[t][:, :, None] * (kk[t] - kk[t] * ww[t])[:, None, :]
            m = m * ww[t][:, None, :] + kv
            out[t] = np.einsum("hji,hi->hj", m, rr[t] * scale)
    return out.reshape(n, h * s).astype(np.float32), m.astype(np.float32)


def wkv7_chunk(r, w, k, v, a, w0, a0, k_k, k_a, r_k, state, h: int, s: int):
    """One sequence's chunk through wkv7, token by token, in float64: r, w, k, v, a [n, h s], the five
    weights [h s], state [h, s, s] (M[h][j][i]: value index j, key index i) -> (out, bonus [n, h s]
    float32, the new state float32)."""
    n = len(r)
    f = np.float64

    def heads(x):
        return x.astype(f).reshape(n, h, s)

    def vec(x):
        return np.asarray(x, f).reshape(h, s)

    rr, kk, vv = heads(r), heads(k), heads(v)
    wd = np.exp(-0.606531 * (1.0 / (1.0 + np.exp(-(heads(w) + vec(w0))))))
    aa = 1.0 / (1.0 + np.exp(-(heads(a) + vec(a0))))
    kn = kk * vec(k_k)
    kn = kn / np.maximum(np.sqrt((kn * kn).sum(-1, keepdims=True)), 1e-12)
    ka = kk * vec(k_a)
    k2 = kk + (aa * ka - ka)
    m = state.astype(f).copy()
    out = np.empty((n, h, s))
    for t in range(n):
        sa = -np.einsum("hji,hi->hj", m, kn[t])
        m = m * wd[t][:, None, :] + vv[t][:, :, None] * k2[t][:, None, :] + sa[:, :, None] * (kn[t] * aa[t])[:, None, :]
        out[t] = np.einsum("hji,hi->hj", m, rr[t])
    bonus = vv * (k2 * rr * vec(r_k)).sum(-1, keepdims=True)
    return out.reshape(n, h * s).astype(np.float32), bonus.reshape(n, h * s).astype(np.float32), m.astype(np.float32)


def ssm_scan_chunk(xbc, dt, a, d, dt_bias, state, h: int, p: int, g: int, n_state: int, per_state: bool = False):
    """One sequence's chunk through ssm_scan, token by token, in float64: xbc [n, h p + 2 g N],
    dt [n, h], a [h] (`per_state`: [h N], Mamba-1's decay per channel and state), d/dt_bias [h], state [h, p, N]
    -> (out [n, h p] float32, the new state float32).
    Head h reads group h // (h / g) of B and C (ggml's repeat_interleave)."""
    n = len(xbc)
    v = xbc.astype(np.float64)
    x = v[:, : h * p].reshape(n, h, p)
    groups = np.arange(h) // (h // g)
    bm = v[:, h * p : h * p + g * n_state].reshape(n, g, n_state)[:, groups]  # [n, h, N]
    cm = v[:, h * p + g * n_state :].reshape(n, g, n_state)[:, groups]
    z = dt.astype(np.float64) + dt_bias
    dts = np.where(z > 20.0, z, np.log1p(np.exp(np.minimum(z, 20.0))))  # softplus, as ggml's (linear above 20)
    a = np.asarray(a, np.float64)
    if per_state:  # Mamba-1: a decay per head (channel) and state: [n, h, 1, N]
        decay = np.exp(dts[:, :, None] * a.reshape(h, n_state)[None])[:, :, None, :]
    else:
        decay = np.exp(dts * a)[:, :, None, None]  # [n, h, 1, 1]
    m = state.astype(np.float64).copy()
    out = np.empty((n, h, p))
    for t in range(n):
        m = m * decay[t] + (x[t] * dts[t][:, None])[:, :, None] * bm[t][:, None, :]
        out[t] = np.einsum("hpn,hn->hp", m, cm[t]) + x[t] * np.asarray(d, np.float64)[:, None]
    return out.reshape(n, h * p).astype(np.float32), m.astype(np.float32)


def op_hc_gates(self, outs, ins, weights, attrs, batch):
    """hy_v4's hyper-connection weights and gates, float32 in ggml's order (mul, add, sigmoid, scale, + eps)."""
    mixes, base = ins[0], weights[0].astype(np.float32)
    n, f = attrs["streams"], np.float32
    s = np.empty_like(mixes)
    s[:, :n] = mixes[:, :n] * f(attrs["scale_pre"]) + base[:n]
    s[:, n:] = mixes[:, n:] * f(attrs["scale_post"]) + base[n:]
    g = f(1.0) / (f(1.0) + np.exp(-s))
    g[:, n:] = g[:, n:] * f(attrs["magnitude"])
    out = g * f(1.0) + f(attrs["eps"])
    if not attrs["post_eps"]:  # DeepSeek-V4's mHC: its post gates without the eps
        out[:, n:] = g[:, n:]
    outs[0][...] = out


def op_hc_reduce(self, outs, ins, weights, attrs, batch):
    hs, gates = ins
    n = attrs["streams"]
    e = hs.shape[1] // n
    acc = hs[:, :e] * gates[:, :1]
    for i in range(1, n):
        acc = acc + hs[:, i * e : (i + 1) * e] * gates[:, i : i + 1]
    outs[0][...] = acc


def op_hc_post(self, outs, ins, weights, attrs, batch):
    y, residual, gates = ins
    n = attrs["streams"]
    e = y.shape[1]
    out = np.concatenate([residual[:, i * e : (i + 1) * e] + y * gates[:, n + i : n + i + 1] for i in range(n)], axis=1)
    outs[0][...] = out


def op_hc_comb(self, outs, ins, weights, attrs, batch):
    """mHC's Sinkhorn-normalized mixing matrix per row, as ggml's ops compute it: float32 values, each
    sum added in float64 and rounded (ggml_soft_max, ggml_sum_rows), divisions in float32."""
    (mix,), n, f = ins, attrs["streams"], np.float32
    eps = f(attrs["eps"])
    c = (mix * f(attrs["scale"]) + weights[0].astype(f)).reshape(-1, n, n)  # [rows, source s, destination d]
    z = np.exp((c - c.max(axis=2, keepdims=True)).astype(f))
    c = z * (1.0 / np.sum(z.astype(np.float64), axis=2, keepdims=True)).astype(f)
    c = (c + eps).astype(f)

    def norm(c, axis):  # divide by eps + the sum over `axis`
        return (c / (np.sum(c.astype(np.float64), axis=axis, keepdims=True).astype(f) + eps)).astype(f)

    c = norm(c, 1)  # over the sources: ggml's norm_cols
    for _ in range(attrs["iters"] - 1):
        c = norm(norm(c, 2), 1)
    outs[0][...] = c.reshape(len(mix), n * n)


def op_hc_mix_post(self, outs, ins, weights, attrs, batch):
    y, residual, gates, comb = ins
    n, e = attrs["streams"], y.shape[1]
    for d in range(n):
        acc = y * gates[:, n + d : n + d + 1]
        for s in range(n):
            acc = acc + residual[:, s * e : (s + 1) * e] * comb[:, s * n + d : s * n + d + 1]
        outs[0][:, d * e : (d + 1) * e] = acc


def op_hc_mean(self, outs, ins, weights, attrs, batch):
    (hs,), n = ins, attrs["streams"]
    e = hs.shape[1] // n
    acc = hs[:, :e]
    for i in range(1, n):
        acc = acc + hs[:, i * e : (i + 1) * e]
    outs[0][...] = acc * np.float32(1.0 / n)


def op_res_mix(self, outs, ins, weights, attrs, batch):
    """Kimi-K3's res_mix over the stack's first n streams, float32 in ggml's order: each stream
    RMS-normed (its squares added in float64), times w, summed in float64; their softmax; the
    streams times their weights added in order."""
    (stack,), n, f = ins, attrs["streams"], np.float32
    e = outs[0].shape[1]
    w = weights[0].astype(f)
    streams = [stack[:, i * e : (i + 1) * e] for i in range(n)]
    scores = np.empty((len(stack), n), f)
    for i, x in enumerate(streams):
        ms = (np.sum(x.astype(np.float64) * x, axis=1) / e).astype(f)  # float products, added in float64
        y = x * (f(1.0) / np.sqrt(ms + f(attrs["eps"])))[:, None]
        scores[:, i] = np.sum((y * w).astype(np.float64), axis=1).astype(f)
    z = np.exp((scores - scores.max(axis=1, keepdims=True)).astype(f))
    p = (z * (1.0 / np.sum(z.astype(np.float64), axis=1))[:, None].astype(f)).astype(f)
    acc = streams[0] * p[:, :1]
    for i in range(1, n):
        acc = acc + streams[i] * p[:, i : i + 1]
    outs[0][...] = acc


def op_put_cols(self, outs, ins, weights, attrs, batch):
    (x,), off = ins, attrs["offset"]
    outs[0][:, off : off + x.shape[1]] = x


for _fn in (op_hc_gates, op_hc_reduce, op_hc_post, op_hc_comb, op_hc_mix_post, op_hc_mean, op_res_mix, op_put_cols):
    setattr(ReferenceDevice, _fn.__name__, _fn)


# gemma3n's ops, in their own module (runtime/devices/altup.py), as methods like the rest
for _name in ("op_altup_stack", "op_altup_predict", "op_altup_correct", "op_altup_add", "op_altup_merge",
              "op_gaussian_topk"):  # fmt: skip
    setattr(ReferenceDevice, _name, getattr(altup, _name))


def _handlers() -> dict[OpKind, Callable]:
    """Each op kind's handler, the method its descriptor names (OpDef.reference)."""
    missing = [d.kind for d in OP_DEFS.values() if not callable(getattr(ReferenceDevice, d.reference, None))]
    assert not missing, f"the reference device lacks the handlers of {missing}"
    return {OpKind(kind): getattr(ReferenceDevice, d.reference) for kind, d in OP_DEFS.items()}


_HANDLERS = _handlers()
