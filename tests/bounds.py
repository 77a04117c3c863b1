"""Error bounds for logits, in three layers, each tight enough that one kernel
computing 2% off fails it:

1. **llama.cpp** (`llama_cpp_bounds`): what the fixtures' README measured between exact math and
   llama.cpp, whose CPU backend rounds activations to 8 bits in every quantized matmul. Float
   formats: max |Δ| <= 0.05 (BF16 0.15). Quantized: mean |Δ| <= 0.15, and top-1 agreement at
   every position where llama.cpp's top-1/top-2 gap exceeds 0.5 (below that a correct
   implementation may pick the other token). Loose by nature: llama.cpp is not exact.
2. **the float64 oracle** (`oracle_bounds`): the reference device against tests/oracle.py, an
   independent float64 forward pass with the same float16 KV cache. What remains is float32
   activations and the float16 roundings they flip: max |Δ| <= 1e-2, mean <= 1e-3 (measured:
   at most 4e-3 / 4.4e-4, on gemma3), some fifty times tighter than layer 1.
3. **per format** (`device_bounds`): a compiled device against the reference device. A device
   whose kernels read float activations sits at float noise (FLOAT_MAX, FLOAT_MEAN). One whose
   integer kernels round activations (artifacts/formats.py: each format's `cpu_act`) moves
   away from exact math by what that rounding does to this model, which the oracle measures:
   D = oracle(activations rounded as the device rounds them) - oracle(exact). The device must
   stay within ROUNDING_MEAN x mean |D| (mean |device - ref| and mean |D| agree within 1% on
   every fixture: the same kind of noise, drawn again) and ROUNDING_MAX x max |D|, plus the
   float noise. A 2% error in every matmul of one format moves the mean by 24% or more on
   the fixtures (the least: Q5_K, two tensors of tiny-llama-Q3_K_M).
"""

import numpy as np

from rfc.artifacts.formats import weight_format
from rfc.artifacts.targets import Family, Target

FLOAT_EXACT = ("F32", "F16")
FLOAT_MAX, FLOAT_MEAN = 1e-2, 1e-3  # float32 kernels vs the reference: summation order and the f16 KV
# roundings it flips, as between the reference and the oracle (measured: 4.4e-3 / 3.8e-4 at most, GPU, 64 tokens)
ORACLE_MAX, ORACLE_MEAN = 1e-2, 1e-3
ROUNDING_MEAN, ROUNDING_MAX = 1.1, 1.5
TOP1_GAP = 0.5

# The AVX2 cpu kernels round activations as each format's cpu_act says (formats.py): in blocks of
# 32 (q8_32, q8_32p: the same values in another order) or of 256 (q8_k, with float32 rather than
# float16 scales, which changes |D| by well under 1%). The formats newer than the k-quants read
# q8_32 where llama.cpp's kernels read q8_K: the bound follows what the cpu does.
_ORACLE_KIND = {"q8_32": "q8_32", "q8_32p": "q8_32", "q8_k": "q8_k"}  # formats.py cpu_act -> tests/oracle.py kind


def _stats(d: np.ndarray) -> tuple[float, float]:
    d = np.abs(d)
    return float(d.max()), float(d.mean())


def llama_cpp_bounds(name: str, logits: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    d_max, d_mean = _stats(logits - expected)
    top = np.sort(expected, axis=-1)
    clear = top[:, -1] - top[:, -2] > TOP1_GAP
    agree = logits.argmax(-1) == expected.argmax(-1)
    summary = (
        f"{name}: max {d_max:.4f} mean {d_mean:.4f} top1 {agree.mean():.3f} "
        f"({int((~agree & clear).sum())} disagreements where llama.cpp's gap > {TOP1_GAP})"
    )
    fmt = name.rsplit("-", 1)[-1]
    if fmt in FLOAT_EXACT:
        return d_max <= 0.05, summary
    if fmt == "BF16":
        return d_max <= 0.15, summary
    return d_mean <= 0.15 and bool(agree[clear].all()), summary


def oracle_bounds(name: str, ref: np.ndarray, oracle: np.ndarray) -> tuple[bool, str]:
    d_max, d_mean = _stats(ref - oracle)
    summary = f"{name}: ref vs float64 oracle max {d_max:.2e} (<= {ORACLE_MAX}) mean {d_mean:.2e} (<= {ORACLE_MEAN})"
    return d_max <= ORACLE_MAX and d_mean <= ORACLE_MEAN, summary


def rounding_kinds(target: Target | None, formats: set[str]) -> dict[str, str]:
    """{weight format: tests/oracle.py activation kind} for the formats whose matmuls round
    activations on `target` (None: the reference device, which rounds nothing)."""
    if target is None or target.family is not Family.CPU or "avx2" not in target.isa:
        return {}  # GPU kernels and the portable C kernels read float activations
    kinds = {}
    for f in formats:
        fmt = weight_format(f)
        gguf_name = fmt.base or f  # the oracle reads the GGUF: a packed layout rounds as its base format
        if fmt.cpu_act is not None:
            kinds[gguf_name] = _ORACLE_KIND[fmt.cpu_act]
    return kinds


def device_bounds(name: str, device: np.ndarray, ref: np.ndarray, rounding: np.ndarray | None) -> tuple[bool, str]:
    """`rounding`: D = oracle(rounded) - oracle(exact), or None for float activations."""
    r_max, r_mean = _stats(rounding) if rounding is not None else (0.0, 0.0)
    lim_max, lim_mean = ROUNDING_MAX * r_max + FLOAT_MAX, ROUNDING_MEAN * r_mean + FLOAT_MEAN
    d_max, d_mean = _stats(device - ref)
    summary = (
        f"{name}: device vs ref max {d_max:.2e} (<= {lim_max:.2e}) mean {d_mean:.2e} (<= {lim_mean:.2e}); "
        f"activation rounding alone: max {r_max:.2e} mean {r_mean:.2e}"
    )
    return d_max <= lim_max and d_mean <= lim_mean, summary


# -- KV-cache quantization (--cache-type-k/-v) ----------------------------------------------
# llama.cpp's own deviation from its F16-cache goldens when it caches K and V as q8_0 / q4_0
# (tools/fixtures/llama_logits.cpp with LLAMA_LOGITS_CACHE_TYPE, flash attention on as llama.cpp
# needs for a quantized V; 0.3.36, the portable build): (mean, max) |Δ| over the 64 x 512
# teacher-forced logits. With flash attention on and an F16 cache it moves by 6.7e-4 / 5.0e-3
# (tiny-llama-F32) and 2.9e-3 / 1.9e-2 (tiny-qwen3-F16): the quantization is nearly all of it.
# llama.cpp rotates quantized rows (a Hadamard matrix, where head_dim is a multiple of 64: tiny-qwen3's,
# not tiny-llama's 32), and so does rfc. rfc measured (reference and cpu alike): tiny-llama-F32 q8_0
# 0.0157 / 0.110, q4_0 0.262 / 1.69; tiny-qwen3-F16 q8_0 0.0344 / 0.202, q4_0 0.536 / 3.02 (unrotated:
# 0.545 / 3.60).
KV_CACHE_LLAMA = {
    ("tiny-llama-F32", "q8_0"): (0.01841, 0.1384),
    ("tiny-llama-F32", "q4_0"): (0.26331, 1.7149),
    ("tiny-qwen3-F16", "q8_0"): (0.04257, 0.2475),
    ("tiny-qwen3-F16", "q4_0"): (0.53906, 3.0227),
}
KV_Q4_MEAN = 1.1  # q4_0's noise is large and drawn differently (llama.cpp also rounds Q to q8_0 for
# the dot products): its mean within 10% of llama.cpp's, no bound on one logit's worst case
KV_QUANTIZED_LEAST = 0.5  # and at least half llama.cpp's deviation: the cache really is quantized
# (an F16 cache deviates 25-60x less)
KV_CPU_SHARE = 0.25  # cpu vs reference with a quantized cache, as a share of what quantizing moves
# the reference's logits by. The cpu's K and V differ from the reference's by float noise, which flips
# a value to the next quantization step now and then (tiny-qwen3 q8_0: 1 of 8192 quants in layer 0's
# K, 21 in layer 1's, a few f16 scales): measured 1e-4 to 0.057 of it. A dequantization 2% off
# moves the logits by 5x the quantization noise itself, 20x this bound.


def kv_cache_bounds(name: str, cache_type: str, logits: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    """Logits with a quantized KV cache against llama.cpp's F16-cache goldens: q8_0 within
    llama.cpp's own q8_0 deviation (mean and max), q4_0's mean within KV_Q4_MEAN of its."""
    d_max, d_mean = _stats(logits - expected)
    mean, worst = KV_CACHE_LLAMA[name, cache_type]
    summary = (
        f"{name} {cache_type}: max {d_max:.4f} mean {d_mean:.5f} (llama.cpp's own: max {worst:.4f} mean {mean:.5f})"
    )
    if d_mean < KV_QUANTIZED_LEAST * mean:
        return False, summary + ": too close to the F16 goldens for a quantized cache"
    if cache_type == "q8_0":
        return d_mean <= mean and d_max <= worst, summary
    return d_mean <= KV_Q4_MEAN * mean, summary
