"""Which runs of plan ops the GPU step program fuses (compiler/codegen/gpu_fuse.py), decided from
the op sequence alone: tiny llama's plan as the compiler plans it for gfx1100, and the same plan
with one op changed or slipped in, where a fusion must give way to the separate launches.
Python only: no kernel is built (tests/kernels/test_gpu_program.py runs the fused kernels)."""

import dataclasses

import pytest

from rfc.artifacts.formats import tensor_nbytes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, Op
from rfc.compiler.codegen.gpu_fuse import plan_fusions
from rfc.compiler.codegen.gpu_plan import plan_kernels, plan_program
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from rfc.compiler.targets import parse_target
from tests.conftest import FIXTURES

pytestmark = pytest.mark.skipif(not (FIXTURES / "tiny-llama-Q8_0.gguf").is_file(), reason="fixtures not found")
TARGET = parse_target("gfx1100")


def _layout(spec, formats: dict[str, str] | None = None) -> WeightLayout:
    entries, offset = [], 0
    for u in spec.weights:
        fmt = (formats or {}).get(u.name, u.format)
        nbytes = tensor_nbytes(fmt, u.shape)
        entries.append(TensorEntry(u.name, u.name, fmt, tuple(u.shape), offset, nbytes, ""))
        offset += -(-nbytes // 256) * 256
    return WeightLayout(256, tuple(entries))


def _runs(plan, layout) -> list[tuple[str, ...]]:
    """The fused runs of layer 0 and what closes it, as op kinds."""
    specs, op_kernels = plan_kernels(TARGET, plan, layout)
    fusions = plan_fusions(plan, specs, op_kernels)
    layer1 = next(i for i, op in enumerate(plan.ops) if op.weights and op.weights[0].startswith("blk.1."))
    return [tuple(op.kind.value for op in plan.ops[f.first : f.first + f.count]) for f in fusions if f.first < layer1]


@pytest.fixture(scope="module")
def llama():
    spec = build_spec(read_gguf(FIXTURES / "tiny-llama-Q8_0.gguf"))
    return spec, spec.plan, _layout(spec)


FUSED = [("matmul",) * 3, ("rope", "kv_write"), ("add", "rmsnorm"), ("matmul", "matmul", "swiglu"), ("add", "rmsnorm")]


def test_a_llama_layer_fuses_four_kinds_of_runs(llama):
    spec, plan, layout = llama
    assert _runs(plan, layout) == FUSED
    specs, op_kernels = plan_kernels(TARGET, plan, layout)
    fusions = plan_fusions(plan, specs, op_kernels)
    program = plan_program(
        TARGET, plan, [*specs, *{f.spec.name: f.spec for f in fusions}.values()], op_kernels, fusions
    )
    assert len(program.launches) == len(plan.ops) + spec.hparams.n_layers - sum(f.count - 1 for f in fusions)
    qkv = program.launches[2]
    assert [a.ref for a in qkv.args] == [
        "q",
        "k",
        "v",
        "h",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "n_tokens",
    ]


def _insert(plan, after: int, op: Op, buffers=()):
    return dataclasses.replace(
        plan, ops=(*plan.ops[: after + 1], op, *plan.ops[after + 1 :]), buffers=(*plan.buffers, *buffers)
    )


def test_an_op_between_the_matmuls_keeps_them_apart(llama):
    _spec, plan, layout = llama
    q = next(i for i, op in enumerate(plan.ops) if op.weights == ("blk.0.attn_q.weight",))
    scaled = _insert(plan, q, Op("scale", ("q",), ("q",), attrs={"factor": 0.5}))
    assert _runs(scaled, layout) == [("matmul",) * 2, *FUSED[1:]]  # k and v still one launch
    gate = next(i for i, op in enumerate(plan.ops) if op.weights == ("blk.0.ffn_gate.weight",))
    biased = _insert(plan, gate, Op("scale", ("gate",), ("gate",), attrs={"factor": 2.0}))
    assert ("matmul", "matmul", "swiglu") not in _runs(biased, layout)


def test_other_formats_widths_or_activations_keep_their_launches(llama):
    spec, plan, _layout_ = llama
    mixed = _layout(spec, {"blk.0.attn_v.weight": "Q4_0", "blk.0.ffn_up.weight": "Q4_0"})
    assert _runs(plan, mixed) == [("matmul",) * 2, *FUSED[1:3], FUSED[4]]  # q+k; v and gate/up/SwiGLU apart
    act = next(i for i, op in enumerate(plan.ops) if op.kind.value == "swiglu")
    gelu = dataclasses.replace(
        plan,
        ops=tuple(
            dataclasses.replace(op, attrs={**op.attrs, "activation": "gelu_tanh"}) if i == act else op
            for i, op in enumerate(plan.ops)
        ),
    )
    assert ("matmul", "matmul", "swiglu") not in _runs(gelu, _layout_)
    assert ("matmul", "matmul") in _runs(gelu, _layout_)  # gate and up: still one launch over one input


def test_a_pre_activation_read_later_or_a_fresh_output_keeps_the_launches(llama):
    _spec, plan, layout = llama
    act = next(i for i, op in enumerate(plan.ops) if op.kind.value == "swiglu")
    up = plan.ops[act].inputs[1]
    # the norm before gate/up and the SwiGLU write buffers of their own ("hf", "act"): the arena may
    # lay act over hf, whose last reader is the up matmul, while the one fused launch still reads hf
    norm, width = act - 3, plan.buffer(up).shape[1]
    renamed = {
        norm: {"outputs": ("hf",)},
        act - 2: {"inputs": ("hf",)},
        act - 1: {"inputs": ("hf",)},
        act: {"outputs": ("act",)},
        act + 1: {"inputs": ("act",)},
    }
    fresh = dataclasses.replace(
        plan,
        ops=tuple(dataclasses.replace(op, **renamed.get(i, {})) for i, op in enumerate(plan.ops)),
        buffers=(*plan.buffers, Buffer("hf", ("T", plan.n_embd)), Buffer("act", ("T", width))),
    )
    assert [op.kind.value for op in fresh.ops[norm : act + 2]] == ["rmsnorm", "matmul", "matmul", "swiglu", "matmul"]
    assert ("matmul", "matmul", "swiglu") not in _runs(fresh, layout)
    # up is read again after the SwiGLU: the fused kernel never writes it
    reread = _insert(plan, act, Op("add", ("gate", up), ("gate",)))
    assert ("matmul", "matmul", "swiglu") not in _runs(reread, layout)
