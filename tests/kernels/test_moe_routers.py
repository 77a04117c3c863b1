"""Routers beyond the softmax one, end to end (moe_route's attributes).

The qwen3moe fixture gets DeepSeek-V3's kind of router: sigmoid scores, a selection bias per
layer (exp_probs_b.bias, which the recipe reads from the file), 4 groups of 2 experts of which
the 3 whose two best scores sum highest take part (expert_group_count / _used_count, from the
file), weights renormalized and scaled by 2.5. qwen3moe's loader reads no gating function and no
weight scale, so those two are set on the compiled plan (ROUTER). The bias (0, .3, .6, .9 per
group) keeps every choice far from a tie. Then: the reference within the float64 oracle's
bounds (the oracle told the same router), the cpu step program within its per-format bounds of
the reference, and on gfx90a, emulated, the router kernel exact and the logits within bounds;
the GPU's router also in gpt-oss's variant (softmax over the chosen logits, not renormalized).
"""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.targets import parse_target
from rfc.compiler.pipeline import CompileOptions
from tests.kernels.gpu_support import emulator_compile
from rfc.runtime.engine.batch import ScheduledChunk
from rfc.runtime.core.step import StepBatch
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import device_bounds, oracle_bounds, rounding_kinds
from tests.conftest import FIXTURES, shared_basetemp
from tests.e2e.test_reference_oracle import teacher_forced_logits
from tests.gguf_edit import rewrite_gguf
from tests.kernels.gpu_emulator import needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_rounding_kinds, toolchain_marks  # noqa: F401
from tests.oracle import Oracle

pytestmark = pytest.mark.shared

BIAS = [0.0, 0.0, 0.3, 0.3, 0.6, 0.6, 0.9, 0.9]
GROUPS = {"qwen3moe.expert_group_count": 4, "qwen3moe.expert_group_used_count": 3}
ROUTER = {"gating": "sigmoid", "scale": 2.5}  # DeepSeek-V3's kind (routed_scaling_factor 2.5)
GPT_OSS_ROUTER = {"gating": "softmax_weight", "norm": False, "scale": 1.5}
TOKENS = 40


def _model(tmp_path: Path) -> Path:
    src = FIXTURES / "tiny-qwen3moe-Q8_0.gguf"
    return rewrite_gguf(src, tmp_path / "tiny-qwen3moe-router-Q8_0.gguf", metadata=GROUPS,
                        add_tensors={f"blk.{i}.exp_probs_b.bias": np.array(BIAS) for i in range(2)})  # fmt: skip


def _compile(path: Path, out: Path, targets: tuple[str, ...], router: dict, cache_dir: Path | None = None) -> Path:
    """Compiles with `router` set on every moe_route of the plan the recipe made."""
    from rfc.compiler import pipeline

    real = pipeline.build_spec

    def build(model):
        spec = real(model)
        ops = tuple(replace(op, attrs={**op.attrs, **router}) if op.kind == "moe_route" else op for op in spec.plan.ops)
        return replace(spec, plan=replace(spec.plan, ops=ops))

    pipeline.build_spec = build
    try:
        emulator_compile(CompileOptions(model=path, out_dir=out, targets=targets, cache_dir=cache_dir))
    finally:
        pipeline.build_spec = real
    return out


def _tokens() -> list[int]:
    return np.load(FIXTURES / "tiny-qwen3moe-Q8_0.logits.npz")["tokens"][:TOKENS].tolist()


def _oracle(path: Path, kinds: dict | None = None) -> np.ndarray:
    o = Oracle(path, act_rounding=kinds)
    o.cfg.gating, o.cfg.w_scale, o.cfg.groups, o.cfg.groups_used = "sigmoid", 2.5, 4, 3
    return o.logits(_tokens())


def test_reference_router_matches_the_oracle(tmp_path):
    path = _model(tmp_path)
    bundle = _compile(path, tmp_path / "ref", (), ROUTER)
    plan = load_model(bundle, LoadOptions(device="ref")).bundle.plan
    routes = [op for op in plan.ops if op.kind == "moe_route"]
    assert [op.weights for op in routes] == [("blk.0.exp_probs_b.bias",), ("blk.1.exp_probs_b.bias",)]
    assert {op.attrs["groups"] for op in routes} == {4} and {op.attrs["gating"] for op in routes} == {"sigmoid"}
    ref = teacher_forced_logits(bundle, "ref", _tokens())
    oracle = _oracle(path)
    ok, summary = oracle_bounds(path.stem, ref, oracle)
    assert ok, summary
    plain = Oracle(FIXTURES / "tiny-qwen3moe-Q8_0.gguf").logits(_tokens())
    assert np.abs(oracle - plain).mean() > 0.05  # the router matters


@pytest.mark.toolchain
@pytest.mark.skipif(shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler")
def test_cpu_router_within_its_bounds(tmp_path):
    path = _model(tmp_path)
    bundle = _compile(path, tmp_path / "cpu", ("cpu",), ROUTER)
    cpu = teacher_forced_logits(bundle, "cpu", _tokens())
    ref = teacher_forced_logits(bundle, "ref", _tokens())
    model = load_model(bundle, LoadOptions(device="cpu"))
    kinds = rounding_kinds(parse_target(model.device_choice.target), {t.format for t in model.bundle.layout.tensors})
    rounding = _oracle(path, kinds) - _oracle(path) if kinds else None
    ok, summary = device_bounds(path.stem, cpu, ref, rounding)
    assert ok, summary


@needs_emulator
@pytest.mark.parametrize("router", [pytest.param(ROUTER, id="deepseek"), pytest.param(GPT_OSS_ROUTER, id="gpt-oss")])
@pytest.mark.parametrize("target", [pytest.param("gfx90a", marks=toolchain_marks("gfx90a"))])
def test_gpu_router_is_the_reference(router, target, tmp_path, tmp_path_factory, gpu_build_cache):
    """The router kernel alone on random logits (ties included): ids exactly, weights within
    float rounding; DeepSeek's: the whole model's logits within the GPU's bounds too."""
    from tests.kernels.test_gpu_kernels import BLOCK_SIZE, Pair, _close, _upload

    path = _model(tmp_path)
    bundle = _compile(path, tmp_path / target, (target,), router, gpu_build_cache)
    pair = Pair(bundle, target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    route = next(o for o in pair.bundle.plan.ops if o.kind == "moe_route")
    n_expert, k = pair.bundle.plan.buffer(route.inputs[0]).shape[1], route.attrs["n_used"]
    T = 37
    logits = (3.0 * np.random.default_rng(2).standard_normal((T, n_expert))).astype(np.float32)
    logits[30:] = 0.5  # all tied: the lower groups, the lower indexes
    batch = StepBatch(
        tokens=np.zeros(T, np.int32),
        positions=np.arange(T, dtype=np.int32),
        slots=np.arange(T, dtype=np.int32),
        seq_of_token=np.zeros(T, np.int32),
        seq_start=np.array([0, T], np.int32),
        block_tables=np.zeros((1, 3), np.int32),
        context_lens=np.array([T], np.int32),
        logit_rows=np.arange(T, dtype=np.int32),
        block_size=BLOCK_SIZE,
    )
    bias = [pair.ref.weight(route.weights[0])]
    want_ids, want_w = np.zeros((T, k), np.int32), np.zeros((T, k), np.float32)
    pair.ref.launch(route, [want_ids, want_w], [logits], bias, batch)
    ids_dev, w_dev = pair.gpu.alloc((T, k), "i32"), pair.gpu.alloc((T, k), "f32")
    pair.gpu.launch(route, [ids_dev, w_dev], [_upload(pair.gpu, logits)], [pair.gpu.weight(route.weights[0])],
                    pair.gpu.upload_batch(batch))  # fmt: skip
    got_ids = np.empty((T, k), np.int32)
    pair.gpu._driver.copy_to_host(got_ids, ids_dev.ptr)
    assert (got_ids == want_ids).all(), np.nonzero(got_ids != want_ids)
    assert (want_ids[30:] == [6, 7, 4, 5]).all()  # tied logits: the bias picks groups 3, 2, 1, then the lower index
    ok, msg = _close(pair.gpu.download(w_dev, T), want_w)
    assert ok, msg
    if router is not ROUTER:
        return
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(_tokens()), all_logits=True)])
    kinds = gpu_rounding_kinds(pair.formats)
    ok, msg = device_bounds(path.stem, gpu, ref, _oracle(path, kinds) - _oracle(path) if kinds else None)
    assert ok, msg


# The routers of the mixture-of-experts models rfc runs, at their sizes: (experts, used, attributes, selection bias).
ROUTERS = {
    "qwen3-30b-a3b": (128, 8, {}, False),
    "gpt-oss-120b": (128, 4, {"gating": "softmax_weight", "norm": False}, False),
    "glm-4.5": (160, 8, {"gating": "sigmoid", "scale": 2.5}, True),
    "deepseek-v3": (256, 8, {"gating": "sigmoid", "groups": 8, "groups_used": 4, "scale": 2.5}, True),
}


@pytest.mark.parametrize("target", [pytest.param(t, marks=toolchain_marks(t)) for t in ("sm_90", "gfx90a")])
def test_router_kernels_use_no_local_memory(target):
    """Every router variant at the sizes real models have: no stack frame, no spills (the
    weights of the chosen experts live in registers, the scores in shared memory)."""
    from rfc.artifacts.layout import TensorEntry
    from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
    from rfc.compiler.codegen.gpu import TOOLCHAINS, _compile, render_source
    from rfc.compiler.codegen.gpu_plan import _Planner
    from rfc.compiler.codegen.gpu_usage import cuda_usage, hip_usage, usage_table
    from rfc.compiler.targets import parse_target as compiler_target

    t = compiler_target(target)
    specs = []
    for name, (n_expert, n_used, attrs, biased) in ROUTERS.items():
        plan = Plan(buffers=(Buffer("tokens", ("T",), "i32"), Buffer("router", ("T", n_expert)),
                             Buffer("ids", ("T", n_used), "i32"), Buffer("w", ("T", n_used))),
                    ops=(), kv=KVSpec(1, 1, 8), input_tokens="tokens", output_logits="w", output_hidden="w",
                    vocab_size=8, n_embd=8, context_length=8)  # fmt: skip
        bias = {"bias": TensorEntry("bias", "bias", "F32", (n_expert,), 0, 4 * n_expert, "")}
        op = Op("moe_route", ("router",), ("ids", "w"), ("bias",) if biased else (), {"n_used": n_used, **attrs})
        specs.append(_Planner(t, plan, bias).spec(op))
    source = render_source(t, specs)
    if target.startswith("sm_"):
        usage = cuda_usage(source, TOOLCHAINS["cuda"].command(t))
    else:
        usage = hip_usage(_compile(TOOLCHAINS["hip"], t, source), target)
    print(f"\nrouters {target}\n{usage_table({s.name: usage[s.name] for s in specs})}")
    bad = [usage[s.name] for s in specs if usage[s.name].uses_local_memory]
    assert not bad, "\n".join(
        f"{u.name}: {u.stack_bytes} bytes stack frame, {u.spill_bytes} bytes spilled" for u in bad
    )
