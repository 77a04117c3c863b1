"""No local memory in the hot GPU kernels: every generated kernel of the fixtures
that cover every format and architecture (conftest.SWEEP_MODELS; every fixture in the
exhaustive run) is built for sm_90 (the prefill list's tensor-core matmuls too),
and the matmul and attention kernels must have no stack frame (ptxas' numbers, as the cubin
records them: gpu_usage.cubin_usage; spills live in the frame); gfx code objects must have
no private segment and no spills in them either. A per-lane `float w[256]` block decode (the
kernels once had) is a 1024-byte stack frame in local memory: this is the test that
catches it, since the emulator tests cannot (local memory is correct, only slow). The cubin
reading is held to `nvcc -Xptxas -v`'s report on one fixture and on kernels made to have a
stack and to spill. Run with -s for the tables.

The default run samples the sweep (the rest is `exhaustive`): on sm_90 the fixtures in
SM_DEFAULT, every weight format between them (the llama-* ones, IQ_MIX's IQ rows)
and each kind of expert matmul (mixtral's, gpt-oss's biased MXFP4 experts, gemma4moe's fused
gate/up) and deepseek2's head matmuls; the dense fixtures of other architectures repeat those
matmul kernels at other sizes, and attention at every real model's size has its own test below.
On gfx each fixture of GFX_MODELS runs on one of the two wave sizes (GFX_DEFAULT: mostly the
target test_gpu_kernels builds it for anyway), so every format and expert kind is checked on a
gfx target and each gfx target on several formats.
"""

import shlex
import shutil

import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.codeobject import CodeObjectError, cubin_resources
from rfc.compiler.codegen.gpu_usage import (
    KernelUsage,
    bundle_usage,
    cubin_usage,
    cuda_usage,
    hip_usage,
    parse_ptxas,
    usage_table,
)
from rfc.artifacts.targets import target_entry
from tests.conftest import SWEEP_MODELS, TINY_MODELS
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401

pytestmark = pytest.mark.shared

SM_MODELS = ["stories260K", *(m.removeprefix("tiny-") for m in TINY_MODELS)]
SM_DEFAULT = {"stories260K", "llama-Q2_K", "llama-Q3_K_M", "llama-Q4_0", "llama-Q4_1", "llama-Q5_0", "llama-Q5_1",
              "llama-Q8_0", "llama-BF16", "llama-F16", "llama-IQ_MIX", "mixtral-Q4_K_M", "gpt-oss-Q8_0",
              "gemma4moe-Q8_0", "deepseek2-Q8_0"}  # fmt: skip
assert {f"tiny-{m}" for m in SM_DEFAULT - {"stories260K"}} <= set(SWEEP_MODELS)
GFX_MODELS = ["deepseek2-Q8_0", "llama-Q4_K_M", "llama-Q2_K", "llama-Q3_K_M", "llama-Q6_K", "llama-Q5_1",
              "mixtral-Q4_K_M", "gemma2-F16", "llama-IQ_MIX", "gpt-oss-Q8_0", "glm4moe-Q8_0",
              "granitemoe-Q8_0", "mistral3temp-Q8_0", "llama4-Q8_0"]  # fmt: skip
GFX_DEFAULT = {"gfx1100": {"llama-Q4_K_M", "llama-Q2_K", "llama-Q3_K_M", "llama-Q5_1", "mixtral-Q4_K_M", "gemma2-F16"},
               "gfx90a": {"deepseek2-Q8_0", "llama-Q6_K", "llama-IQ_MIX", "gpt-oss-Q8_0", "glm4moe-Q8_0",
                          "granitemoe-Q8_0", "mistral3temp-Q8_0", "llama4-Q8_0"}}  # fmt: skip
assert GFX_DEFAULT["gfx1100"] | GFX_DEFAULT["gfx90a"] == set(GFX_MODELS), "every fixture on one gfx target by default"


def _exhaustive_unless(default: bool) -> list:
    return [] if default else [pytest.mark.exhaustive]


def _usage(bundle_dir, target: str) -> dict[str, KernelUsage]:
    bundle = open_bundle(bundle_dir)
    return bundle_usage(bundle, target_entry(bundle.manifest, target))


def _check(model: str, target: str, usage: dict[str, KernelUsage]) -> None:
    print(f"\n{model} {target}\n{usage_table(usage)}")
    hot = [u for u in usage.values() if u.is_hot]
    assert hot, f"no matmul or attention kernels found in {model} {target}"
    bad = [u for u in hot if u.uses_local_memory]
    assert not bad, "\n".join(u.local_memory() for u in bad)


@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=toolchain_marks("sm_90") + _exhaustive_unless(m in SM_DEFAULT)) for m in SM_MODELS]
)
def test_sm90_hot_kernels_use_no_local_memory(model, gpu_bundle):
    """Including the prefill list's tensor-core matmuls, which every model with a matmul in a
    format they take has (F32-only models, stories260K among them, have none), and its
    tensor-core attention."""
    from rfc.artifacts.program import unpack_program
    from rfc.compiler.codegen.gpu_mma import MMA_FORMATS

    usage = _usage(gpu_bundle(model, "sm_90"), "sm_90")
    _check(model, "sm_90", usage)
    bundle = open_bundle(gpu_bundle(model, "sm_90"))
    program = unpack_program(bundle.file(target_entry(bundle.manifest, "sm_90").program).read_bytes())
    prefill_only = {launch.kernel for launch in program.prefill_launches} - {
        launch.kernel for launch in program.launches
    }
    # tensor-core matmuls: half (rfc_matmul_mma_*) or int8 (rfc_matmul_imma_*, formats of gpu_imma.IMMA_FORMATS)
    mma = {k for k in prefill_only if k.startswith(("rfc_matmul_mma_", "rfc_matmul_imma_"))}
    # the int8 ones' inputs rounded once a step (gpu_imma.IMMA_PREQUANT), one kernel per input width, where
    # no launch before hands them on rounded (gpu_fuse's q8 hand-offs: qwen35's every int8 input is)
    rounding = {k for k in prefill_only if k.startswith("rfc_quantize_q8_")}
    assert not rounding or any(k.startswith("rfc_matmul_imma_") for k in mma), sorted(rounding)
    assert all(not usage[k].uses_local_memory for k in rounding)
    # attention on half tensor cores (gpu_attention.py) in an attention op's place: hot, so _check held it
    # to no local memory
    attention = {k for k in prefill_only if k.startswith("rfc_attention_") and k.endswith("_mma")}
    assert all(usage[k].is_hot for k in attention)
    # the plain twins of the decode list's q8 hand-off (gpu_fuse.DECODE_Q8: the fused add + rmsnorm)
    twins = {k for k in prefill_only if f"{k}_q8" in {launch.kernel for launch in program.launches}}
    assert all(not usage[k].uses_local_memory for k in twins)
    # any add + rmsnorm kernel only the prefill list launches
    own_runs = {k for k in prefill_only if k.startswith("rfc_add_rmsnorm_")}
    assert all(not usage[k].uses_local_memory for k in own_runs)
    # the activations that round their output for the down matmul (gpu_plan.GLU_Q8)
    glu = {k for k in prefill_only if k.startswith(("rfc_swiglu_", "rfc_glu_")) and "_q8" in k}
    assert all(not usage[k].uses_local_memory for k in glu)
    # the rest: per-op kernels of runs the decode list fuses (the prefill list launches them one by one)
    rest = prefill_only - mma - rounding - attention - twins - own_runs - glu
    assert rest <= set(target_entry(bundle.manifest, "sm_90").op_kernels), sorted(rest)
    assert bool(mma) == any(t.format in MMA_FORMATS for t in bundle.layout.tensors), sorted(mma)
    assert mma <= set(usage) and all(usage[k].is_hot for k in mma)


@pytest.mark.parametrize("model", [pytest.param("stories260K", marks=toolchain_marks("sm_90"))])
def test_cubin_usage_is_what_ptxas_reports(model, gpu_bundle):
    """The bundle's cubin read as the checks above read it, against `-Xptxas -v` on the
    bundle's own source and command (one more nvcc run, on the smallest fixture): the same
    kernels, registers, stack and shared memory; the report's spills inside the stack."""
    bundle = open_bundle(gpu_bundle(model, "sm_90"))
    entry = target_entry(bundle.manifest, "sm_90")
    _assert_same_usage(
        cubin_usage(bundle.file(entry.kernels).read_bytes()),
        cuda_usage(bundle.read_text(entry.sources[0]), shlex.split(entry.compile_command)),
    )


def _assert_same_usage(cubin: dict[str, KernelUsage], ptxas: dict[str, KernelUsage]) -> None:
    assert sorted(cubin) == sorted(ptxas)
    for name, want in ptxas.items():
        got = cubin[name]
        assert (got.registers, got.stack_bytes, got.shared_bytes) == (
            want.registers,
            want.stack_bytes,
            want.shared_bytes,
        ), (got, want)
        assert want.stack_bytes > 0 or not want.spill_bytes, want  # what cubin_usage counts on


# A kernel with a stack frame (a per-thread array indexed at run time), one that spills (more
# live values than the 32 registers that __launch_bounds__(1024, 2) leaves it), and one with
# neither, with static shared memory.
LOCAL_MEMORY_SOURCE = r"""
extern "C" __global__ void rfc_matmul_local_array(const float* x, const int* idx, float* y) {
    float w[64];
    int k = idx[threadIdx.x];
    for (int i = 0; i < 64; ++i) w[(i * 7 + k) & 63] = x[threadIdx.x * 64 + i] * (i + 1);
    y[threadIdx.x] = w[idx[threadIdx.x + 1] & 63];
}

extern "C" __global__ void __launch_bounds__(1024, 2) rfc_matmul_spills(const float* x, float* y, int n) {
    float acc[48];
#pragma unroll
    for (int j = 0; j < 48; ++j) acc[j] = x[j * 1024 + threadIdx.x];
    for (int i = 0; i < n; ++i) {
#pragma unroll
        for (int j = 0; j < 48; ++j) acc[j] = acc[j] * acc[(j + 7) % 48] + x[(i * 48 + j) * 1024 + threadIdx.x];
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 48; ++j) s += acc[j] * (j + 1);
    y[threadIdx.x] = s;
}

extern "C" __global__ void rfc_matmul_shared(const float* x, float* y) {
    __shared__ float tile[256];
    tile[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = tile[255 - threadIdx.x];
}
"""


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_cubin_usage_catches_stack_frames_and_spills(target):
    """The check above fails on kernels with local memory when it reads the cubin: a local
    array, and spills (which ptxas puts in the stack frame, the only thing the cubin records
    of them); and the cubin reading is ptxas' report on these kernels too."""
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile
    from rfc.compiler.targets import parse_target

    t = parse_target(target)
    binary = _compile(TOOLCHAINS["cuda"], t, LOCAL_MEMORY_SOURCE)
    for cut in (binary[:64], binary[: len(binary) // 2]):  # the section table past the end
        with pytest.raises(CodeObjectError):
            cubin_resources(cut)
    usage = cubin_usage(binary)
    print(f"\nlocal memory {target}\n{usage_table(usage)}")
    assert usage["rfc_matmul_local_array"].stack_bytes >= 256 and usage["rfc_matmul_local_array"].uses_local_memory
    assert usage["rfc_matmul_spills"].registers <= 32 and usage["rfc_matmul_spills"].uses_local_memory
    assert not usage["rfc_matmul_shared"].uses_local_memory and usage["rfc_matmul_shared"].shared_bytes == 1024
    with pytest.raises(AssertionError, match="rfc_matmul_local_array: .* bytes stack frame"):
        _check("local memory", target, usage)
    ptxas = cuda_usage(LOCAL_MEMORY_SOURCE, TOOLCHAINS["cuda"].command(t))
    assert ptxas["rfc_matmul_spills"].spill_bytes > 0, ptxas["rfc_matmul_spills"]  # it does spill
    _assert_same_usage(usage, ptxas)


@pytest.mark.parametrize(
    "model,target",
    [
        pytest.param(m, t, marks=toolchain_marks(t) + _exhaustive_unless(m in GFX_DEFAULT[t]), id=f"{m}-{t}")
        for t in ("gfx1100", "gfx90a")
        for m in GFX_MODELS
    ],
)
def test_gfx_hot_kernels_use_no_private_memory(model, target, gpu_bundle):
    _check(model, target, _usage(gpu_bundle(model, target), target))


def test_ptxas_report_parsing():
    report = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'rfc_matmul_q6_k_512x256' for 'sm_90'
ptxas info    : Function properties for rfc_matmul_q6_k_512x256
    1024 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 1024 bytes cumulative stack size
ptxas info    : Compile time = 52.598 ms
ptxas info    : Compiling entry function 'rfc_attention_f16_8x2x32' for 'sm_90'
ptxas info    : Function properties for rfc_attention_f16_8x2x32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 3232 bytes smem
"""
    usage = parse_ptxas(report)
    assert usage["rfc_matmul_q6_k_512x256"] == KernelUsage("rfc_matmul_q6_k_512x256", 32, 1024, 8, 0)
    assert usage["rfc_attention_f16_8x2x32"] == KernelUsage("rfc_attention_f16_8x2x32", 40, 0, 0, 3232)
    assert usage["rfc_matmul_q6_k_512x256"].uses_local_memory and usage["rfc_matmul_q6_k_512x256"].is_hot
    assert not usage["rfc_attention_f16_8x2x32"].uses_local_memory


# Attention at the real models' sizes, which no fixture has: (query heads, kv heads, head_dim,
# window) per layer, and the context. The kernels' registers grow with the group of query heads
# per kv head and with head_dim (threads = head_dim where over 256, so sm_90 allows 65536 /
# threads registers), and the quantized KV loops (k_type / v_type) come on top where the model
# can be served with them.
REAL_ATTENTION = {
    "llama3-8b": ([(32, 8, 128, None)], 8192),  # a group of 4
    "llama3-70b": ([(64, 8, 128, None)], 8192),  # 8: gfx1100 spilled 120 bytes in the split kernel
    "qwen3-235b": ([(64, 4, 128, None)], 32768),  # 16: gfx1100 1 KiB of stack, gfx90a 112 bytes of spills
    # Gemma 4 31B: sliding layers of 16 kv heads x 256, global ones of 4 x 512 in the same rows
    # (f16 caches only: the layers differ); sm_90 spilled 64 bytes at 512 threads
    "gemma4-31b": ([(32, 16, 256, 1024), (32, 4, 512, None)], 32768),
}


def _attention_plan(layers: list[tuple[int, int, int, int | None]], context: int):
    """A plan of kv_write + attention per layer, nothing else: the kernels a model of these
    shapes gets (the KV row the widest layer's, as the recipes build it)."""
    from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan

    buffers, ops = [], []
    for i, (heads, kv_heads, head_dim, window) in enumerate(layers):
        q, k, v, o = (f"{x}{i}" for x in "qkvo")
        buffers += [
            Buffer(q, ("T", heads * head_dim)),
            Buffer(k, ("T", kv_heads * head_dim)),
            Buffer(v, ("T", kv_heads * head_dim)),
            Buffer(o, ("T", heads * head_dim)),
        ]
        attrs = {"layer": i, "n_heads": heads, "n_kv_heads": kv_heads, "head_dim": head_dim, "scale": head_dim**-0.5}
        ops += [
            Op("kv_write", (k, v), (), (), {"layer": i}),
            Op("attention", (q,), (o,), (), attrs | ({"window": window} if window else {})),
        ]
    widest = max(layers, key=lambda layer: layer[1] * layer[2])
    return Plan(
        buffers=tuple(buffers),
        ops=tuple(ops),
        kv=KVSpec(len(layers), widest[1], widest[2]),
        input_tokens="tokens",
        output_logits="o0",
        output_hidden="o0",
        vocab_size=32000,
        n_embd=layers[0][0] * layers[0][2],
        context_length=context,
    )


@pytest.mark.parametrize("target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "gfx1100", "gfx90a")])
def test_attention_at_real_model_sizes_uses_no_local_memory(target):
    """Every REAL_ATTENTION model's attention kernels (per-op, split, reduce, and the twin of the
    one that writes the output rows that also rounds them for the output projection on targets
    of 32-lane waves: gpu_fuse.ATTENTION_Q8) and kv_write, in one source per target (one build): no stack frame,
    no spills."""
    from rfc.artifacts.layout import WeightLayout
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_fuse import Fusion, _attention_writer, _q8_variant, q8_decode_layout
    from rfc.compiler.codegen.gpu_plan import plan_kernels
    from rfc.compiler.targets import parse_target

    t = parse_target(target)
    specs = {}
    for layers, context in REAL_ATTENTION.values():
        for spec in plan_kernels(t, _attention_plan(layers, context), WeightLayout(256, ()))[0]:
            assert specs.setdefault(spec.name, spec) == spec, f"two models' {spec.name} differ"
            writer = _attention_writer(spec)
            if writer is not None and writer.params["head_dim"] % 32 == 0 and writer.params["wave"] == 32:
                width = writer.params["n_heads"] * writer.params["head_dim"]
                own = Fusion(0, 1, writer, tuple((0, n) for n, _k in writer.args))
                twin = _q8_variant(own, {"q8": True, "q8_width": width, **q8_decode_layout(width)}).spec
                specs.setdefault(twin.name, twin)
    source = render_source(t, list(specs.values()))
    binary = _compile(TOOLCHAINS[t.family], t, source)
    usage = cubin_usage(binary) if t.family == "cuda" else hip_usage(binary, target)
    assert {n for n in specs if n.startswith("rfc_attention_")} <= {n for n, u in usage.items() if u.is_hot}
    assert {"rfc_attention_f16_64x4x128_split", "rfc_attention_f16_32x4x512_r4096"} <= set(usage)
    _check("real model sizes", target, usage)


# Encoders' attention at their real sizes (non-causal: every key of the sequence): (query heads, head_dim,
# extra attributes), the context. T5-XXL's encoder (Flux's, SD3's text encoder; UMT5-XXL's alike) adds its
# position-bias table (32 buckets: reach 91); BERT-large's plain.
REAL_ENCODERS = {
    "t5-xxl": (64, 64, {"pos_bias": 91}, 512),
    "bert-large": (16, 64, {}, 512),
}


@pytest.mark.parametrize("target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "gfx1100", "gfx90a")])
def test_encoder_attention_at_real_model_sizes_uses_no_local_memory(target):
    """REAL_ENCODERS' attention kernels (the per-op one and, on sm_90, the prefill list's tensor-core
    one) in one source per target: no stack frame, no spills."""
    from rfc.artifacts.layout import TensorEntry, WeightLayout
    from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_plan import plan_kernels
    from rfc.compiler.targets import parse_target

    t = parse_target(target)
    specs = {}
    for name, (heads, head_dim, extra, context) in REAL_ENCODERS.items():
        width = heads * head_dim
        weights = ()
        if "pos_bias" in extra:
            size = (2 * extra["pos_bias"] + 1) * heads
            weights = (TensorEntry(f"{name}.pb", "attn_pos_bias", "F32", (size,), 0, 4 * size, ""),)
        plan = Plan(
            buffers=tuple(Buffer(b, ("T", width)) for b in "qkvo"),
            ops=(
                Op("kv_write", ("k", "v"), (), (), {"layer": 0}),
                Op(
                    "attention",
                    ("q",),
                    ("o",),
                    tuple(w.name for w in weights),
                    {
                        "layer": 0,
                        "n_heads": heads,
                        "n_kv_heads": heads,
                        "head_dim": head_dim,
                        "scale": 1.0,
                        "causal": False,
                        **extra,
                    },
                ),  # fmt: skip
            ),
            kv=KVSpec(1, heads, head_dim),
            input_tokens="tokens",
            output_logits="",
            output_hidden="o",
            vocab_size=32000,
            n_embd=width,
            context_length=context,
        )
        specs |= {spec.name: spec for spec in plan_kernels(t, plan, WeightLayout(256, weights))[0]}
    assert "rfc_attention_f16_64x64x64_bidir_pb91" in specs and (
        t.family != "cuda" or any(n.endswith("_pb91_mma") for n in specs)
    )
    binary = _compile(TOOLCHAINS[t.family], t, render_source(t, list(specs.values())))
    usage = cubin_usage(binary) if t.family == "cuda" else hip_usage(binary, target)
    assert {n for n in specs if n.startswith("rfc_attention_")} <= {n for n, u in usage.items() if u.is_hot}
    _check("encoders' real sizes", target, usage)


@pytest.mark.parametrize("target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "gfx1100", "gfx90a")])
def test_rwkv_kernels_at_real_model_sizes_use_no_local_memory(target):
    """RWKV's kernels at RWKV-7 World 2.9B's sizes (2560 channels, 40 heads of 64) and QRWKV6's K/V of 8 heads,
    in one source per target: token_shift, the lerps, wkv6 and its gla mode, wkv7, sigmoid: no stack frame, no
    spills (a thread per state row: the wkv kernels keep the head's vectors in shared memory)."""
    from rfc.artifacts.layout import TensorEntry, WeightLayout
    from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan, StateSpec, StateTensor
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_plan import plan_kernels
    from rfc.compiler.targets import parse_target

    heads, size = 40, 64
    c = heads * size
    widths = {"x": c, "xp": c, "r": c, "k": c, "kv": 8 * size, "v": c, "w": c, "a": c, "o": c, "b": c, "m": 6 * c}
    heads_attrs = {"n_heads": heads, "head_dim": size}
    ops = (
        Op("token_shift", ("x",), ("xp",), (), {"state": 0}),
        Op("lerp", ("x", "xp"), ("r",), ("mu",), {"part": 3}),
        Op("lerp_data", ("x", "xp", "m"), ("k",), (), {"part": 4}),
        Op("wkv6", ("r", "k", "v", "w"), ("o",), ("u", "d"), {"state": 1, "n_kv_heads": heads, **heads_attrs}),
        Op("wkv6", ("r", "kv", "kv", "w"), ("o",), ("d",),
           {"state": 1, "n_kv_heads": 8, "mode": "gla", "scale": 0.125, **heads_attrs}),
        Op("wkv7", ("r", "w", "k", "v", "a"), ("o", "b"), ("u",) * 5, {"state": 2, **heads_attrs}),
        Op("sigmoid", ("o",), ("o",), (), {}),
    )  # fmt: skip
    state = StateSpec(
        (StateTensor(0, (1, c)), StateTensor(0, (heads, size, size)), StateTensor(0, (heads, size, size)))
    )
    plan = Plan(buffers=tuple(Buffer(n, ("T", w)) for n, w in widths.items()), ops=ops, kv=KVSpec(0, 1, 1),
                input_tokens="tokens", output_logits="o", output_hidden="x", vocab_size=8, n_embd=c, context_length=64,
                state=state)  # fmt: skip
    layout = WeightLayout(256, tuple(TensorEntry(n, n, "F32", (k * c,), i * 6 * 4 * c, 4 * k * c, "")
                                     for i, (n, k) in enumerate((("mu", 6), ("u", 1), ("d", 1)))))  # fmt: skip
    t = parse_target(target)
    specs = plan_kernels(t, plan, layout)[0]
    binary = _compile(TOOLCHAINS[t.family], t, render_source(t, specs))
    usage = cubin_usage(binary) if t.family == "cuda" else hip_usage(binary, target)
    names = {s.name for s in specs}
    assert {"rfc_wkv7_40x64", "rfc_wkv6_40x40x64", "rfc_token_shift_2560"} <= names <= set(usage)
    bad = [usage[n].local_memory() for n in sorted(names) if usage[n].uses_local_memory]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "gfx1100", "gfx90a")])
def test_residual_and_stream_mixes_at_real_sizes_use_no_local_memory(target):
    """Kimi-K3's residual mixes at its sizes (n_embd 7168, 93 layers banked every 12: a stack of 9 streams) and a
    stack of MAX_RES_STREAMS, put_cols into the last slot, situ over the experts' 2048; mHC's kernels at
    DeepSeek-V4's (4 streams of 7168, 20 Sinkhorn iterations): no stack frame, no spills (res_mix keeps its
    scores in shared memory, hc_comb its 16 values in registers)."""
    from rfc.artifacts.layout import TensorEntry, WeightLayout
    from rfc.artifacts.limits import MAX_RES_STREAMS
    from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_plan import plan_kernels
    from rfc.compiler.targets import parse_target

    e = 7168
    widths = {"x": e, "s": 9 * e, "big": MAX_RES_STREAMS * e, "g": 2048, "u": 2048, "hs": 4 * e, "hs2": 4 * e,
              "mix": 8, "gates": 8, "cmix": 16, "comb": 16}  # fmt: skip
    ops = (
        Op("put_cols", ("x",), ("s",), (), {"offset": 8 * e}),
        Op("res_mix", ("s",), ("x",), ("w",), {"streams": 9, "eps": 1e-5}),
        Op("res_mix", ("big",), ("x",), ("w",), {"streams": MAX_RES_STREAMS, "eps": 1e-5}),
        Op("swiglu", ("g", "u"), ("g",), (), {"activation": "situ", "alpha": 4.0, "limit": 25.0}),
        Op("hc_gates", ("mix",), ("gates",), ("b8",), {"streams": 4, "eps": 1e-6, "magnitude": 2.0, "post_eps": False}),
        Op("hc_comb", ("cmix",), ("comb",), ("b16",), {"streams": 4, "scale": 0.5, "eps": 1e-6, "iters": 20}),
        Op("hc_mix_post", ("x", "hs", "gates", "comb"), ("hs2",), (), {"streams": 4}),
        Op("hc_mean", ("hs2",), ("x",), (), {"streams": 4}),
    )
    plan = Plan(buffers=tuple(Buffer(n, ("T", w)) for n, w in widths.items()), ops=ops, kv=KVSpec(0, 1, 1),
                input_tokens="tokens", output_logits="g", output_hidden="x", vocab_size=8, n_embd=e,
                context_length=64)  # fmt: skip
    layout = WeightLayout(256, (TensorEntry("w", "w", "F32", (e,), 0, 4 * e, ""),
                                TensorEntry("b8", "b8", "F32", (8,), 4 * e, 32, ""),
                                TensorEntry("b16", "b16", "F32", (16,), 4 * e + 256, 64, "")))  # fmt: skip
    t = parse_target(target)
    specs = plan_kernels(t, plan, layout)[0]
    binary = _compile(TOOLCHAINS[t.family], t, render_source(t, specs))
    usage = cubin_usage(binary) if t.family == "cuda" else hip_usage(binary, target)
    names = {s.name for s in specs}
    assert len(names) == 8 and names <= set(usage)
    bad = [usage[n].local_memory() for n in sorted(names) if usage[n].uses_local_memory]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("vocab", [pytest.param(v, marks=toolchain_marks("sm_90")) for v in (32000, 262144)])
def test_sm90_sampling_kernel_uses_no_local_memory(vocab):
    """The sampling kernel (templates/gpu_sample.hip.j2), alone, at the largest vocabulary
    the issue names: no stack frame, no spills."""
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_sample import plan_sample_kernel
    from rfc.compiler.targets import parse_target

    target = parse_target("sm_90")
    spec = plan_sample_kernel(target, vocab)
    usage = cubin_usage(_compile(TOOLCHAINS["cuda"], target, render_source(target, [spec])))
    print(f"\nsampling sm_90\n{usage_table(usage)}")
    u = usage[spec.name]
    assert not u.uses_local_memory, u.local_memory()


@pytest.mark.parametrize(
    "target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "sm_80", "gfx90a", "gfx1100")]
)
def test_imma_matmuls_at_real_model_sizes_use_no_local_memory(target, monkeypatch):
    """The prefill list's int8 tensor-core matmuls as the planner tiles them for real models
    (the fixtures' matrices are all small-tile ones): every format they take, over an 8B's
    4096 x 4096 (the big tile where the target has it, 128 x 128 with prefetch) and 1024 x 4096
    (the small one), the 16-wave big tile on NVIDIA (IMMA_BIG_TILE "128x128w16": at most 128
    registers a thread, its 512 threads' budget), the segmented launch of a TinyLlama's q, k
    and v (2048 + 256 + 256 rows of 2048), and its down projection split over K (IMMA_SPLIT_K), in
    one source per target: no stack frame, no spills, static shared memory within CUDA's 48 KiB."""
    import dataclasses

    from rfc.compiler.codegen import gpu_imma

    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_imma import (
        IMMA_BIG_TILE_INSTRUCTIONS,
        IMMA_FORMATS,
        IMMA_TILINGS,
        IMMA_W16_INSTRUCTIONS,
        imma_matmul_spec,
        imma_segments_spec,
    )
    from rfc.compiler.codegen.gpu_plan import weight_geometry
    from rfc.compiler.targets import parse_target

    t = parse_target(target)
    specs = [imma_matmul_spec(t, weight_geometry(f, rows, 4096)) for f in IMMA_FORMATS for rows in (4096, 1024)]
    tiles = {(s.params["tile_m"], s.params["prefetch"]) for s in specs}
    assert tiles == ({(128, True), (64, False)} if t.imma in IMMA_BIG_TILE_INSTRUCTIONS else {(64, False)}), tiles
    segments = [
        imma_segments_spec([imma_matmul_spec(t, weight_geometry(f, rows, 2048)) for rows in (2048, 256, 256)])
        for f in IMMA_FORMATS
    ]
    assert all(segments)
    specs += segments
    if t.imma in IMMA_W16_INSTRUCTIONS:
        for f in IMMA_FORMATS:
            s = imma_matmul_spec(t, weight_geometry(f, 4096, 4096), IMMA_TILINGS["128x128w16"])
            specs.append(dataclasses.replace(s, name=s.name + "_w16", params={**s.params, "name": s.name + "_w16"}))
    # split K (gpu_imma.IMMA_SPLIT_K, off by default): a TinyLlama's 2048 x 5632 down projection, and its reduction
    monkeypatch.setattr(gpu_imma, "IMMA_SPLIT_K", 2)
    split = [imma_matmul_spec(t, weight_geometry(f, 2048, 5632)) for f in IMMA_FORMATS]
    assert all(s.params["split_k"] == 2 and s.params["tile_n"] == 64 for s in split)
    specs += split
    reduce = gpu_imma.split_reduce_spec(split[0])
    binary = _compile(TOOLCHAINS[t.family], t, render_source(t, [*specs, reduce]))
    usage = cubin_usage(binary) if t.family == "cuda" else hip_usage(binary, target)
    assert not usage[reduce.name].uses_local_memory
    assert {s.name for s in specs} <= {n for n, u in usage.items() if u.is_hot}
    _check("int8 matmuls at real model sizes", target, usage)
    assert all(usage[s.name].shared_bytes <= 48 * 1024 for s in specs)


# The one-token twins at real model sizes (no fixture's rows are this wide): an 8B's
# 4096 / 14336 in the k-quants, Q8_0 and i-quants, a TinyLlama's 2048 / 5632 in the legacy
# quants (its 5632-wide down: sub-blocks shared out unevenly, so the unrolled walk has a
# remainder).
REAL_TWIN_MODELS = {
    "8b": (
        ["--dim", "4096", "--ffn", "14336", "--heads", "32", "--kv-heads", "8"],
        ("Q4_K_M", "Q5_K_M", "Q8_0", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ2_XXS"),
    ),
    "1.1b": (["--dim", "2048", "--ffn", "5632", "--heads", "32", "--kv-heads", "4"], ("Q4_0", "Q5_1")),
}


@pytest.fixture(scope="module")
def real_twin_models(tmp_path_factory):
    """One-layer GGUFs of REAL_TWIN_MODELS' shapes (vocab 512), written once for the module."""
    from tests.kernels.gpu_support import make_gguf

    root = tmp_path_factory.mktemp("real-twins")
    paths = []
    for shape, (args, formats) in REAL_TWIN_MODELS.items():
        for fmt in formats:
            path = root / f"{shape}-{fmt}.gguf"
            make_gguf(path, *args, "--layers", "1", "--vocab", "512", "--format", fmt)
            paths.append(path)
    yield paths
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of GGUFs: CI's disk is shared


@pytest.mark.parametrize(
    "target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "sm_80", "gfx90a", "gfx1100")]
)
def test_one_token_matmuls_at_real_model_sizes_use_no_local_memory(target, real_twin_models):
    """The one-token list's matmul twins of real models (gpu_plan.one_token_twin: loads ahead,
    registers capped by RFC_KERNEL_BLOCKS for ONE_TOKEN_MIN_BLOCKS blocks, ONE_TOKEN_HOPPER_BLOCKS on
    sm_90 but for the twins that spilled there at three), and the kernels of the
    FFN's hand-off in both decode lists (gpu_glu_handoff.py), planned as the
    compiler plans them (weights planned, not written) and built in one source per target: no
    stack frame, no spills. On sm_90 three blocks (80 registers) spilled the Q5_K and Q8_0
    gate/up twins, and two (128) the i-quants' (which keep the blocks of 8's walk)."""
    from rfc.compiler.codegen.gpu_glu_handoff import PRODUCER_SUFFIX, READER_SUFFIX
    from rfc.compiler.codegen.gpu_plan import ONE_TOKEN_SUFFIX
    from rfc.compiler.targets import parse_target

    t = parse_target(target)

    def keep(s) -> bool:
        # and the decode list's (blocks of 8 tokens): its IQ4 gate/up kernels spilled 104-144 bytes on
        # sm_80 and sm_90 until their walk was unrolled by two (gpu_fuse.GLU_Q8_UNROLL)
        return s.name.endswith((ONE_TOKEN_SUFFIX, PRODUCER_SUFFIX, READER_SUFFIX)) or ONE_TOKEN_SUFFIX + "_" in s.name

    twins = _planned_kernels(t, real_twin_models, keep)
    # the FFN's hand-off in both decode lists (gpu_glu_handoff.py): gate/up + SwiGLU rounding its output for
    # the down matmul, which reads it rounded (an 8B's 14336-wide row: its walk unrolled by 7, and by 2 in
    # blocks of 8 tokens)
    assert {"rfc_matmul_q6_kp_4096x14336_t1_q8in", "rfc_matmul_q4_0p_2048x5632_t1_q8in"} <= set(twins)
    assert {"rfc_matmul_q6_kp_4096x14336_q8in", "rfc_matmul_q4_0p_2048x5632_q8in"} <= set(twins)
    glu = "rfc_matmul_swiglu_{}_14336x4096_q8{}_q8out"
    assert {glu.format("q4_kp", ""), glu.format("q4_kp", "_t1"), glu.format("iq4_xs", "_t1")} <= set(twins)
    assert {glu.format("iq4_xs", ""), glu.format("iq4_nl", ""), glu.format("iq2_xxs", "")} <= set(twins)
    if t.wave_size == 32:  # the q8 hand-off's readers: the gate/up with its SwiGLU, the output projection
        assert {"rfc_matmul_q5_kp_4096x4096_q8_t1"} <= set(twins)
    _check_built("one-token twins at real model sizes", t, twins)


def _planned_kernels(t, paths, keep) -> dict:
    """The kernels `keep` picks among those the compiler plans for target `t` from each GGUF of
    `paths` (weights planned, not written), by name: one spec a name."""
    from rfc.artifacts.layout import TensorEntry, WeightLayout
    from rfc.compiler.codegen.gpu import plan_target
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec
    from rfc.compiler.weight_plan import plan_weights

    kept = {}
    for path in paths:
        spec = build_spec(read_gguf(path))
        weights = plan_weights(spec, [t])
        layout = WeightLayout(
            256, tuple(TensorEntry(u.name, u.role, u.stored_format, u.shape, 0, 0, "") for u in weights.uses)
        )
        for s in plan_target(t, spec.plan, layout, weights.weight_maps[t])[0]:
            if keep(s):
                assert kept.setdefault(s.name, s) == s, f"two models' {s.name} differ"
    return kept


def _check_built(label: str, t, specs: dict) -> None:
    """`specs` built in one source for target `t`: each a hot kernel, none with local memory."""
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source

    binary = _compile(TOOLCHAINS[t.family], t, render_source(t, list(specs.values())))
    usage = cubin_usage(binary) if t.family == "cuda" else hip_usage(binary, t.name)
    assert set(specs) <= {n for n, u in usage.items() if u.is_hot}
    _check(label, t.name, usage)


# (gfx1100 has none: gpu_bmma.BMMA_INSTRUCTIONS; sm_80's ptxas allots registers otherwise than sm_90's for the
# twins that stage their tokens: gpu_bmma.STAGE_TOKENS)
@pytest.mark.parametrize("target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "sm_80", "gfx90a")])
def test_batch_twins_at_real_model_sizes_use_no_local_memory(target, real_twin_models, monkeypatch):
    """The decode list's batch twins (gpu_bmma.BATCH_MMA) of real models, planned
    as the compiler plans them and built in one source per target: no stack frame, no spills
    (its fragments, a chunk's decodes and the accumulators of 32 rows x 16 tokens a lane). The
    gate/up twin took 255 registers and a stack frame on sm_90 while the next chunk's loads sat
    behind a test of the chunk (ptxas copied the loop around it); they run unconditionally now,
    loading nothing past K."""
    from rfc.compiler.codegen import gpu_bmma
    from rfc.compiler.targets import parse_target

    monkeypatch.setattr(gpu_bmma, "BATCH_MMA", True)
    t = parse_target(target)
    twins = _planned_kernels(t, real_twin_models, lambda s: s.template == gpu_bmma.BMMA_TEMPLATE)
    assert any(n.endswith("_swiglu_q8out") for n in twins) and any("x14336" in n for n in twins), sorted(twins)
    _check_built("batch twins at real model sizes", t, twins)
