"""Which runs of plan ops the GPU step program fuses (compiler/codegen/gpu_fuse.py), decided from
the op sequence alone: tiny llama's plan as the compiler plans it for gfx1100, and the same plan
with one op changed or slipped in, where a fusion must give way to the separate launches.
Python only: no kernel is built (tests/kernels/test_gpu_program.py runs the fused kernels)."""

import dataclasses

import pytest

from rfc.artifacts.formats import tensor_nbytes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, Op
from rfc.compiler.codegen import gpu_fuse, gpu_imma, gpu_plan
from rfc.compiler.codegen.gpu_fuse import fused_specs, plan_fusions, step_fusions
from rfc.compiler.codegen.gpu_imma import imma_matmul_spec, imma_segments_spec
from rfc.compiler.codegen.gpu_plan import PROGRAM_MAX_TOKENS, plan_kernels, plan_program, weight_geometry
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
    return _layer0_runs(plan, plan_fusions(plan, *plan_kernels(TARGET, plan, layout)))


def _layer0_runs(plan, fusions) -> list[tuple[str, ...]]:
    """The runs of several ops among `fusions` up to layer 1's first op, as op kinds."""
    layer1 = next(i for i, op in enumerate(plan.ops) if op.weights and op.weights[0].startswith("blk.1."))
    # (a lone matmul's q8 twin is a hand-off, not a run: test_the_norm_hands_its_rounded_rows_on)
    return [
        tuple(op.kind.value for op in plan.ops[f.first : f.first + f.count])
        for f in fusions
        if f.first < layer1 and f.count > 1
    ]


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
    _built, program = _prefill(plan, layout)
    reduce = 0 if gpu_plan.ATTENTION_LAST_BLOCK_MERGE else spec.hparams.n_layers  # the split attention's reduce
    assert len(program.launches) == len(plan.ops) + reduce - sum(f.count - 1 for f in fusions)
    qkv = program.launches[2]
    assert [a.ref for a in qkv.args] == [
        "q",
        "k",
        "v",
        "matmul.q8",  # the first norm's rows, rounded by its launch (RMSNORM_Q8)
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


def test_other_formats_make_segments_and_other_activations_keep_their_launches(llama):
    spec, plan, _layout_ = llama
    mixed = _layout(spec, {"blk.0.attn_v.weight": "Q4_0", "blk.0.ffn_up.weight": "Q4_0"})
    # q, k and v one launch (a Q8_0 and a Q4_0 group of segments, each walked by its own code), gate
    # and up one (the SwiGLU apart: the gate/up kernel walks one format)
    assert _runs(plan, mixed) == [("matmul",) * 3, *FUSED[1:3], ("matmul",) * 2, FUSED[4]]
    specs, op_kernels = plan_kernels(TARGET, plan, mixed)
    qkv = next(f for f in plan_fusions(plan, specs, op_kernels) if f.count == 3 and f.spec.params["segs"])
    assert qkv.spec.name == "rfc_matmul_q8_0_256_q8_0_64_q4_0_64x256_fused_q8"  # (the first norm's rows rounded)
    assert [(g["fmt"], g["segs"], g["end"]) for g in qkv.spec.params["fmt_groups"]] == [
        ("q8_0", [0, 1], 320),
        ("q4_0", [2], 384),
    ]
    # the int8 tensor-core segments take one format: q and k one launch there, v its own
    assert qkv.prefill.count == 2 and qkv.prefill.spec.name == "rfc_matmul_imma_q8_0_256_64x256_segments"
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


def _hand_offs(plan, layout) -> tuple[list, object]:
    specs, op_kernels = plan_kernels(TARGET, plan, layout)
    fusions = step_fusions(plan, specs, op_kernels)
    program = plan_program(TARGET, plan, [*specs, *fused_specs(fusions)], op_kernels, fusions)
    return fusions, program


def test_the_norm_hands_its_rounded_rows_on(llama, monkeypatch):
    spec, plan, _layout_ = llama
    # v and up in another format: q, k and v one launch of two formats' segments, gate and up one
    # without their SwiGLU: every matmul that reads the norm's rows takes them rounded
    layout = _layout(spec, {"blk.1.attn_v.weight": "Q4_0", "blk.1.ffn_up.weight": "Q4_0"})
    fusions, program = _hand_offs(plan, layout)
    layer1 = [i for i, op in enumerate(plan.ops) if any(w.startswith("blk.1.") for w in op.weights)]
    start = next(f.first for f in fusions if f.spec.template == "gpu_add_rmsnorm.hip.j2" and f.first > layer1[0] - 3)
    mine = [f for f in fusions if start <= f.first <= layer1[-1]]
    kinds = [(tuple(op.kind.value for op in plan.ops[f.first : f.first + f.count]), f.spec.name) for f in mine]
    q8 = [k for k, name in kinds if name.endswith("_q8")]
    # (the attention hands its rounded rows to the output projection: the next test)
    assert q8 == [
        ("add", "rmsnorm"),
        ("matmul", "matmul", "matmul"),
        ("attention",),
        ("matmul",),
        ("add", "rmsnorm"),
        ("matmul", "matmul"),
    ]
    for f in mine:
        if f.spec.name.endswith("_q8"):  # its plain twin for the prefill list
            assert f.plain.spec.name + "_q8" == f.spec.name and "q8" not in dict(f.plain.spec.args)
    by_name = {s.name: s for s in fused_specs(fusions)}
    decode = {launch.kernel: launch for launch in program.launches}
    slot = next(s for s in program.arena.slots if s.buffer == "matmul.q8")
    for f in mine:
        refs = [a.ref for a in decode[f.spec.name].args]
        if f.spec.template == "gpu_add_rmsnorm.hip.j2":
            assert refs[2] == "matmul.q8" and by_name[f.spec.name].params["q8"]
            width = f.spec.params["width"]
            assert (
                slot.nbytes
                >= by_name[f.spec.name].params["q8_bytes"]
                == PROGRAM_MAX_TOKENS * (width + 12 * width // 32)
            )
        elif f.spec.template == "gpu_attention.hip.j2":
            assert refs[1] == "matmul.q8" and by_name[f.spec.name].params["q8"]
        elif f.spec.name.endswith("_q8"):
            assert "matmul.q8" in refs and plan.ops[f.first].inputs[0] not in refs  # the rows' float copy unread
    # the prefill list (gfx1100: tensor-core matmuls) launches the add + rmsnorm's q8 twin, whose rounding in
    # the layout both lists read (gpu_imma.q8_layout) serves its tensor-core matmuls: no rounding launch after
    # it; the matmuls' q8 twins (dp4a over the hand-off) are the decode list's alone
    pre = [launch.kernel for launch in program.prefill_launches]
    twins = [i for i, k in enumerate(pre) if k.endswith("_q8") and not k.startswith("rfc_swiglu_")]  # (GLU_Q8's)
    assert twins and all(pre[i].startswith(("rfc_add_rmsnorm_", "rfc_rmsnorm_")) for i in twins)  # (RMSNORM_Q8's)
    assert not any(pre[i + 1].startswith("rfc_quantize_q8_") for i in twins)
    # the switch off: today's kernels, no slot of the hand-off's size
    monkeypatch.setattr(gpu_fuse, "DECODE_Q8", False)
    fusions, program = _hand_offs(plan, layout)
    assert not any(f.spec.name.endswith("_q8") or f.plain for f in fusions)
    assert all(f.count > 1 for f in fusions)


def test_no_hand_off_past_a_write_of_the_rows(llama):
    _spec, plan, layout = llama
    gate = next(i for i, op in enumerate(plan.ops) if op.weights == ("blk.1.ffn_gate.weight",))
    x = plan.ops[gate].inputs[0]
    # the rows scaled in place between the norm and gate/up: the rounded copy is stale there
    scaled = _insert(plan, gate - 1, Op("scale", (x,), (x,), attrs={"factor": 0.5}))
    fusions, _program = _hand_offs(scaled, layout)
    norm = next(f for f in fusions if f.first == gate - 2)
    assert norm.spec.template == "gpu_add_rmsnorm.hip.j2" and not norm.spec.name.endswith("_q8")
    assert not any(f.first >= gate and f.spec.name.endswith("_q8") for f in fusions if f.first < gate + 4)


def test_the_attention_hands_its_rounded_rows_to_the_output_projection(llama, monkeypatch):
    """gpu_fuse.ATTENTION_Q8: the launch that writes the attention's output (its split kernel,
    whose last block merges, or whose blocks run a long step's tiles) becomes a twin that also
    rounds it into the q8 slot, and the output projection reads it there; the prefill list keeps the
    attention it had. Not where a reader of the norm before the attention comes after it (the
    slot holds one rounded input at a time: a parallel block's FFN), nor with the switch off."""
    _spec, plan, layout = llama
    fusions, program = _hand_offs(plan, layout)
    att = [f for f in fusions if f.spec.template == "gpu_attention.hip.j2"]
    assert len(att) == sum(op.kind == "attention" for op in plan.ops)
    for f in att:
        p = f.spec.params
        assert p["q8"] and p["split"] and p["merge"] and p["q8_width"] == p["n_heads"] * p["head_dim"]
        assert f.plain.spec.name + "_q8" == f.spec.name and "q8" not in dict(f.plain.spec.args)
        o = next(r for r in fusions if r.first == f.first + 1)
        assert plan.ops[o.first].weights[0].endswith("attn_output.weight")
        assert o.spec.params["q8in"] and o.spec.params["xd_offset"] == p["xd_offset"]
    decode = [launch.kernel for launch in program.launches]
    assert all(k.endswith("_split_q8") for k in decode if k.startswith("rfc_attention_"))
    assert not any(k.endswith("_q8") for k in (x.kernel for x in program.prefill_launches) if "attention" in k)
    # a reader of the norm's rows after the attention: the norm keeps its hand-off, the attention none
    q = next(i for i, op in enumerate(plan.ops) if op.weights == ("blk.1.attn_q.weight",))
    at = next(i for i in range(q, len(plan.ops)) if plan.ops[i].kind == "attention")
    again = dataclasses.replace(plan.ops[q], outputs=("q2",))
    later = _insert(plan, at, again, (dataclasses.replace(next(b for b in plan.buffers if b.name == "q"), name="q2"),))
    fusions, _program = _hand_offs(later, layout)
    by_first = {f.first: f for f in fusions}
    assert by_first[at + 1].spec.params.get("q8in")  # the norm's reader after the attention
    assert at not in by_first and not (at + 2 in by_first and by_first[at + 2].spec.params.get("q8in"))
    assert all(f.spec.params.get("q8") for f in fusions if f.spec.template == "gpu_attention.hip.j2" and f.first != at)
    # the switch off: the attention and the output projection as they were
    monkeypatch.setattr(gpu_fuse, "ATTENTION_Q8", False)
    fusions, program = _hand_offs(plan, layout)
    assert not any(f.spec.template == "gpu_attention.hip.j2" for f in fusions)
    assert any(k.endswith("_split") for k in (x.kernel for x in program.launches))


def test_the_first_and_the_last_norm_hand_their_rounded_rows_on(llama, monkeypatch):
    """gpu_fuse.RMSNORM_Q8: the plain rmsnorms whose rows int8 matmuls read (the first layer's,
    of the embeddings, and the final one, of the logit rows) become twins that also round them
    into the q8 slot, and those matmuls (layer 0's q, k and v; the LM head) read them there. The
    prefill list launches the first norm's twin too, and its tensor-core q/k/v launch then needs
    no rounding launch; the LM head's prefill launch reads the float rows. Off: as before."""
    _spec, plan, layout = llama
    fusions, program = _hand_offs(plan, layout)
    norms = [i for i, op in enumerate(plan.ops) if op.kind == "rmsnorm" and len(op.inputs) == 1]
    by_first = {f.first: f for f in fusions}
    first, last = norms[0], norms[-1]
    for i in (first, last):
        f = by_first[i]
        assert f.spec.template == "gpu_rmsnorm.hip.j2" and f.spec.params["q8"] and f.spec.name.endswith("_q8")
        assert [n for n, _k in f.spec.args][:3] == ["out", "q8", "x"] and "q8" not in dict(f.plain.spec.args)
        reader = by_first[i + 1]
        assert reader.spec.params["q8in"] and reader.spec.params["xd_offset"] == f.spec.params["xd_offset"]
    assert plan.ops[last + 1].weights == ("output.weight",)
    assert [w for op in plan.ops[first + 1 : first + 1 + by_first[first + 1].count] for w in op.weights] == [
        "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
    ]  # fmt: skip
    decode = [launch.kernel for launch in program.launches]
    assert decode[first] == by_first[first].spec.name and decode[-1] == by_first[last + 1].spec.name
    pre = [launch.kernel for launch in program.prefill_launches]
    at = pre.index(by_first[first].spec.name)
    assert pre[at + 1].startswith("rfc_matmul_imma_") and not any(
        k.startswith("rfc_quantize_q8_") for k in pre[: at + 2]
    )
    assert pre[-1] == by_first[last + 1].plain.spec.name  # the head's float launch in the prefill list
    # the switch off: the norms and their readers as they were
    monkeypatch.setattr(gpu_fuse, "RMSNORM_Q8", False)
    fusions, program = _hand_offs(plan, layout)
    assert not any(f.spec.template == "gpu_rmsnorm.hip.j2" for f in fusions)
    assert not any(k.startswith("rfc_rmsnorm_") and k.endswith("_q8") for k in (x.kernel for x in program.launches))


# -- the prefill list's segmented tensor-core matmul ------------------------------------------------


def _prefill(plan, layout) -> tuple[list, object]:
    """The kernels built (as compiler/codegen/gpu.py builds them: those either list launches) and
    the step program."""
    specs, op_kernels = plan_kernels(TARGET, plan, layout)
    fusions = step_fusions(plan, specs, op_kernels)
    program = plan_program(TARGET, plan, [*specs, *fused_specs(fusions)], op_kernels, fusions)
    launched = {launch.kernel for launch in (*program.launches, *program.prefill_launches)}
    return [*specs, *(s for s in fused_specs(fusions) if s.name in launched)], program


def test_the_prefill_list_launches_q_k_and_v_once(llama, monkeypatch):
    """One segmented int8 tensor-core launch (after the one rounding of their input) where the
    prefill list launched q, k and v one by one, and one for gate and up; the decode list as it
    was. The switch off: the kernels and both lists as before, launch for launch."""
    spec, plan, layout = llama
    built, program = _prefill(plan, layout)
    names = [launch.kernel for launch in program.prefill_launches]
    seg = [i for i, n in enumerate(names) if n.endswith("_segments")]
    assert len(seg) == 2 * spec.hparams.n_layers, names
    gate_up = program.prefill_launches[seg[1]]
    assert names[seg[1] - 1] == "rfc_add_rmsnorm_256_q8" and names[seg[1] + 1].startswith("rfc_swiglu_")
    assert [a.ref for a in gate_up.args][:2] == ["gate", "up"]
    qkv = program.prefill_launches[seg[0]]
    assert qkv.kernel == "rfc_matmul_imma_q8_0_256_64_64x256_segments"
    assert names[seg[0] - 1] == "rfc_rmsnorm_256_q8"  # the first norm leaves its rows rounded: no rounding launch
    assert [a.ref for a in qkv.args] == [
        "q",
        "k",
        "v",
        "matmul.q8",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "n_tokens",
    ]
    by_name = {s.name: s for s in built}
    assert by_name[qkv.kernel].grid == ((256 + 64 + 64, 64), ("n_rows", 64))
    monkeypatch.setattr(gpu_imma, "IMMA_SEGMENTS", False)
    built_off, off = _prefill(plan, layout)
    assert [s.name for s in built_off] == [s.name for s in built if not s.name.endswith("_segments")]
    assert off.launches == program.launches
    # three launches (one a rounding's neighbour) where one was, and two where one was, in each layer
    assert len(off.prefill_launches) == len(names) + 3 * spec.hparams.n_layers
    assert not any(launch.kernel.endswith("_segments") for launch in off.prefill_launches)


def test_gate_and_up_without_their_segments(llama, monkeypatch):
    """gpu_fuse.GLU_SEGMENTS off: the prefill list launches gate and up one by one (q, k and v
    still one launch), the decode list and every other launch as they were."""
    spec, plan, layout = llama
    _built, program = _prefill(plan, layout)
    monkeypatch.setattr(gpu_fuse, "GLU_SEGMENTS", False)
    built_off, off = _prefill(plan, layout)
    names = [launch.kernel for launch in off.prefill_launches]
    assert sum(n.endswith("_segments") for n in names) == spec.hparams.n_layers
    assert names.count("rfc_matmul_imma_q8_0_768x256") == 2 * spec.hparams.n_layers
    assert len(names) == len(program.prefill_launches) + spec.hparams.n_layers and off.launches == program.launches
    assert not any(s.name.endswith("768_768x256_segments") for s in built_off)


def test_rows_past_whole_tiles_keep_the_per_op_prefill_launches(llama, monkeypatch):
    """Every row tile must lie in one segment: with tiles of 128 rows, k's and v's 64 do not
    fill one, and the prefill list launches q, k and v one by one (the decode list still fuses
    them)."""
    spec, plan, layout = llama
    monkeypatch.setattr(gpu_imma, "IMMA_TILING", "128x128")
    built, program = _prefill(plan, layout)
    # gate's and up's rows fill whole tiles: their segments alone
    assert [s.name for s in built if s.name.endswith("_segments")] == ["rfc_matmul_imma_q8_0_768_768x256_segments"]
    names = [launch.kernel for launch in program.prefill_launches]
    q = names.index("rfc_matmul_imma_q8_0_256x256")
    assert names[q - 1 : q + 3] == [
        "rfc_rmsnorm_256_q8",
        "rfc_matmul_imma_q8_0_256x256",
        "rfc_matmul_imma_q8_0_64x256",
        "rfc_matmul_imma_q8_0_64x256",
    ]
    assert any("_fused" in launch.kernel for launch in program.launches)


def test_the_swiglu_rounds_its_output_for_the_down_matmul(llama, monkeypatch):
    """gpu_plan.GLU_Q8: each layer's SwiGLU on the prefill list is its twin that rounds its
    output into Q8_SCRATCH (no float row: only the down matmul reads it), and the down matmul
    follows with no rounding launch, whose kernel is then not built. The float row is written
    where a later op reads it too. Off: SwiGLU, rounding launch, down matmul."""
    spec, plan, layout = llama
    built, program = _prefill(plan, layout)
    names = [launch.kernel for launch in program.prefill_launches]
    twins = [i for i, n in enumerate(names) if n == "rfc_swiglu_768_q8"]
    assert len(twins) == spec.hparams.n_layers, names
    assert all(names[i + 1] == "rfc_matmul_imma_q8_0_256x768" for i in twins)
    by_name = {s.name: s for s in built}
    twin = by_name["rfc_swiglu_768_q8"]
    assert twin.params["q8"] and not twin.params["float_out"] and [n for n, _k in twin.args][:2] == ["out", "q8"]
    assert [a.ref for a in program.prefill_launches[twins[0]].args][1] == "matmul.q8"
    assert "rfc_quantize_q8_768" not in by_name and "rfc_quantize_q8_256" in by_name
    # another reader of the SwiGLU's output after the down matmul: the twin writes the float row too
    down = next(i for i, op in enumerate(plan.ops) if op.weights == ("blk.0.ffn_down.weight",))
    act = plan.ops[down - 1].outputs[0]
    ops = list(plan.ops)
    ops.insert(down + 1, dataclasses.replace(plan.ops[down], inputs=(act,), outputs=(plan.ops[down].outputs[0],)))
    read_again = dataclasses.replace(plan, ops=tuple(ops))
    assert {s.name: s for s in _prefill(read_again, layout)[0]}["rfc_swiglu_768_q8"].params["float_out"]
    monkeypatch.setattr(gpu_plan, "GLU_Q8", False)
    built_off, off = _prefill(plan, layout)
    off_names = [launch.kernel for launch in off.prefill_launches]
    assert "rfc_swiglu_768" in off_names and not any(n.startswith("rfc_swiglu_768_q8") for n in off_names)
    assert off_names.count("rfc_quantize_q8_768") == spec.hparams.n_layers
    assert len(off_names) == len(names) + spec.hparams.n_layers and off.launches == program.launches


def test_split_k_takes_small_tiles_of_long_rows(monkeypatch):
    """gpu_imma.IMMA_SPLIT_K: a small-tile matmul whose K is at least IMMA_SPLIT_MIN_K and whole
    chunks a split (a TinyLlama's 2048 x 5632 down) splits, with a third grid dimension and its
    partials for an output, over the most blocks up to the switch that share its chunks evenly; a
    big-tile one (an 8B's 14336 x 4096 gate), a short K (2048) and a K of a prime chunk count keep
    one block a tile; segments take none. Off (1, the default): none splits."""
    sm90 = parse_target("sm_90")

    def spec(rows, cols, fmt="Q4_K"):
        return imma_matmul_spec(sm90, weight_geometry(fmt, rows, cols))

    assert "split_k" not in spec(2048, 5632).params
    monkeypatch.setattr(gpu_imma, "IMMA_SPLIT_K", 2)
    down = spec(2048, 5632)
    assert down.name == "rfc_matmul_imma_q4_k_2048x5632_k2" and down.params["k_split"] == 2816
    assert down.grid[2] == (2, 1) and down.args[0] == ("partials", "ptr")
    assert down.params["split_bytes"] == 2 * PROGRAM_MAX_TOKENS * 2048 * 4
    assert all("split_k" not in s.params for s in (spec(14336, 4096), spec(2048, 2048), spec(2048, 4096 + 256)))
    monkeypatch.setattr(gpu_imma, "IMMA_SPLIT_K", 4)  # the most that share the chunks evenly: 22 by 2, 16 by 4
    assert spec(2048, 5632).params["split_k"] == 2 and spec(1024, 4096).params["split_k"] == 4
    monkeypatch.setattr(gpu_imma, "IMMA_SPLIT_K", 2)
    assert imma_segments_spec([down, spec(2048, 5632)]) is None
    reduce = gpu_imma.split_reduce_spec(down)
    assert reduce.args == (("out", "ptr"), ("partials", "ptr"), ("n_rows", "i32")) and reduce.params["parts"] == 2


def test_segments_take_kernels_that_differ_in_rows_alone():
    """imma_segments_spec: None for a partial row tile, for tilings that differ (an 8B's q takes
    the big tile on sm_90, its k and v the small one), for other formats or widths."""
    sm90 = parse_target("sm_90")

    def kernels(*weights):
        return [imma_matmul_spec(sm90, weight_geometry(f, r, c)) for f, r, c in weights]

    seg = imma_segments_spec(kernels(("Q4_K", 2048, 2048), ("Q4_K", 256, 2048), ("Q4_K", 256, 2048)))
    assert seg.name == "rfc_matmul_imma_q4_k_2048_256_256x2048_segments"
    assert [s["start"] for s in seg.params["segs"]] == [0, 2048, 2304] and seg.params["n"] == 2560
    assert [n for n, _k in seg.args] == ["out0", "out1", "out2", "q8", "weight0", "weight1", "weight2", "n_rows"]
    assert imma_segments_spec(kernels(("Q4_K", 2048, 2048), ("Q4_K", 100, 2048))) is None
    assert imma_segments_spec(kernels(("Q4_K", 4096, 4096), ("Q4_K", 1024, 4096))) is None
    assert imma_segments_spec(kernels(("Q4_K", 256, 2048), ("Q4_0", 256, 2048))) is None
    assert imma_segments_spec(kernels(("Q4_K", 256, 2048), ("Q4_K", 256, 4096))) is None
