"""The tensor-core prefill attention (templates/gpu_attention_mma.hip.j2, kernels/rfc_gpu_mma.h).

On targets with half tensor cores (`Target.wmma_f16`: sm_70 and newer) the prefill list (steps of
at least gpu_plan.PREFILL_MIN_TOKENS tokens) runs an attention op over an f16 KV cache on WMMA
16x16x16, FlashAttention-style as llama.cpp's does: Q rounded to half, S = Q K^T and O = P V
with float accumulators, the online softmax in float, P rounded to half. A tile of MMA_QUERIES
query vectors (consecutive rows of one sequence x a kv head's query heads) shares each chunk of
MMA_KEYS keys, K and V as halves in shared memory. The decode list keeps the float kernels of
gpu_plan._attention, and so does every op the kernel does not take (mma_attention_spec: an f32
cache, head_dim not a multiple of 32 (16 per wave column) or above MMA_MAX_HEAD_DIM, a group of more than
MMA_QUERIES query heads). A quantized cache is the runtime's choice (k_type / v_type): the kernel
dequantizes q8_0 / q4_0 rows to half as it loads them (llama.cpp converts such a cache to f16 for
its tensor-core kernels) and turns Q and the output with the rows' rotations.
AMD targets keep the float kernels: rfc_gpu_mma.h has no HIP form.
"""

from rfc.compiler.targets import Target

PREFILL_MMA = True  # off: the prefill list keeps the float tiled attention (tools/gpu_experiment.py variants)
MMA_ATTENTION_TEMPLATE = "gpu_attention_mma.hip.j2"
MMA_QUERIES = 64  # query vectors per tile: 4 wave rows of 16
MMA_KEYS = 32  # keys per chunk: 2 wave columns of 16
MMA_WAVES_M = MMA_QUERIES // 16
# Output accumulators per lane: head_dim / 16 / waves_n fragments of 16 x 16 floats (8 registers
# each on a wave of 32) beside head_dim / 16 of Q's halves (4 each): 64 registers at 128, of the
# 123 the kernel takes there on sm_90
MMA_MAX_HEAD_DIM = 128
MMA_PAD_HALVES = 8  # after each half row: 16-byte aligned rows, 32-byte aligned fragments
MMA_PAD_FLOATS = 4  # after each score row
MMA_SHARED = 44 * 1024  # bytes, as gpu_plan.ATTENTION_TILE_SHARED: under 48 KiB of static shared memory
# Resident blocks per SM the kernel asks ptxas for (RFC_KERNEL_BLOCKS): 2 keeps head_dim 128 at 123
# registers, no spills (135 with 1: one block of 8 warps per SM); head_dim 64 needs 84-88 either way.
# Unmeasured on a card (tools/gpu_experiment.py variants --variant "gpu_attention.MMA_MIN_BLOCKS=1").
MMA_MIN_BLOCKS = 2


def mma_shared_floats(head_dim: int, q_pass: int) -> int:
    """Shared floats of the kernel's one buffer: K and V halves, scores, P halves; over them, Q's
    halves and its float rows q_pass at a time (a rotated K) before the first chunk, the float
    outputs after the last."""
    ldh, lds, ldp = head_dim + MMA_PAD_HALVES, MMA_KEYS + MMA_PAD_FLOATS, MMA_KEYS + MMA_PAD_HALVES
    chunk = (2 * MMA_KEYS * ldh + MMA_QUERIES * ldp) // 2 + MMA_QUERIES * lds
    return max(chunk, MMA_QUERIES * ldh // 2 + q_pass * head_dim, MMA_QUERIES * head_dim)


def mma_attention_spec(target: Target, spec):
    """The prefill list's kernel for attention kernel `spec` (gpu_plan._attention's per-op one),
    or None where the float kernels keep the op."""
    from rfc.compiler.codegen.gpu_plan import KernelSpec

    p = spec.params
    head_dim, group, threads, wave = p["head_dim"], p["group"], spec.threads, target.wave_size
    if not PREFILL_MMA or not target.wmma_f16 or p["kv_dtype"] != "f16":
        return None
    if head_dim % 16 or head_dim > MMA_MAX_HEAD_DIM or group > MMA_QUERIES or p["kv_row"] % 8:
        return None  # 16-byte loads of K and V rows need rows of whole 8 halves
    waves = threads // wave
    if threads % wave or waves % MMA_WAVES_M:
        return None
    waves_n = waves // MMA_WAVES_M
    if MMA_KEYS % (16 * waves_n) or head_dim % (16 * waves_n) or MMA_QUERIES * MMA_KEYS % threads:
        return None
    if threads % MMA_QUERIES or (threads // MMA_QUERIES) & (threads // MMA_QUERIES - 1):
        return None  # the softmax's lanes per query: a power of two
    lds = MMA_KEYS + MMA_PAD_FLOATS
    if MMA_QUERIES * lds < waves * 256:
        return None  # the waves' 16 x 16 stages live in the scores' rows
    # Q's float rows, where a quantized K is rotated: as many at a time as the budget allows
    q_pass = next((n for n in (64, 32, 16) if 4 * mma_shared_floats(head_dim, n) <= MMA_SHARED), None)
    if q_pass is None:
        return None
    floats = mma_shared_floats(head_dim, q_pass if p["k_rot"] else 0)
    name = f"{spec.name}_mma"
    params = {
        **p,
        "name": name,
        "wave": wave,
        "waves_m": MMA_WAVES_M,
        "waves_n": waves_n,
        "mma_rows": MMA_QUERIES // group,
        "mma_queries": MMA_QUERIES,
        "mma_keys": MMA_KEYS,
        "ldh": head_dim + MMA_PAD_HALVES,
        "lds": lds,
        "ldp": MMA_KEYS + MMA_PAD_HALVES,
        "s_frags": MMA_KEYS // 16 // waves_n,
        "o_frags": head_dim // 16 // waves_n,
        "q_pass": q_pass,
        "min_blocks": MMA_MIN_BLOCKS,
        "smem_floats": floats,
    }
    return KernelSpec(name, MMA_ATTENTION_TEMPLATE, params, spec.args, threads, spec.grid)
