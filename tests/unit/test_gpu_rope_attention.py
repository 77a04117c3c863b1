"""The one-token list's rope + KV write inside its attention launch
(compiler/codegen/gpu_rope_attention.py), as planned: which launches fold, their arguments, and
where they do not (plans only: no toolchain; the emulator tests in tests/kernels run them)."""

import dataclasses

import pytest

from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.program import Arena, ArenaSlot, ArgKind, StepProgram
from rfc.compiler.codegen import gpu_rope_attention
from rfc.compiler.codegen.gpu import plan_target
from rfc.compiler.codegen.gpu_rope_attention import SUFFIX, _apart
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from rfc.compiler.targets import parse_target
from rfc.compiler.weight_plan import plan_weights
from tests.conftest import FIXTURES


def _program(model: str, target: str):
    t = parse_target(target)
    spec = build_spec(read_gguf(FIXTURES / f"tiny-{model}.gguf"))
    weights = plan_weights(spec, [t])
    layout = WeightLayout(
        256, tuple(TensorEntry(u.name, u.role, u.stored_format, u.shape, 0, 0, "") for u in weights.uses)
    )
    specs, _ops, program, _sample = plan_target(t, spec.plan, layout, weights.weight_maps[t])
    return spec.plan, {s.name: s for s in specs}, program


@pytest.mark.parametrize("target", ["sm_90", "gfx1100"])
def test_each_layer_folds_its_rope_and_kv_write_into_the_attention_launch(target):
    plan, specs, program = _program("llama-Q4_K_M", target)
    decode, single = [x.kernel for x in program.launches], program.single_launches
    ropes = [i for i, k in enumerate(decode) if "_kv_write_" in k]
    assert len(ropes) == plan.kv.n_layers and len(single) == len(decode) - len(ropes)
    folded = [x for x in single if x.kernel.endswith(SUFFIX)]
    assert len(folded) == plan.kv.n_layers and not any("_kv_write_" in x.kernel for x in single)
    for layer, (i, launch) in enumerate(zip(ropes, folded)):
        rope_kv, attention = program.launches[i], program.launches[i + 1]
        twin = specs[launch.kernel]
        rope, kv_write = twin.params["rope_kv"]["rope"], twin.params["rope_kv"]["kv_write"]
        assert decode[i] == f"{rope}_{kv_write.removeprefix('rfc_')}" and twin.steps == () and twin.prefill is None
        # the attention's arguments, then the rope + KV write's k, v and slots (KV layer `layer`'s cache)
        assert launch.args[: len(attention.args)] == attention.args and launch.grid == attention.grid
        own = dict(zip((a for a, _k in specs[rope_kv.kernel].args), rope_kv.args))
        assert launch.args[len(attention.args) :] == (own["k"], own["v"], own["slots"])
        assert [a.value for a in launch.args if a.kind is ArgKind.KV] == [layer, layer]
        # its shared floats hold the angles, the rotated k row and the store's staging row
        p = twin.params
        assert p["p_floats"] >= 2 * p["rope_kv"]["half"] + 2 * p["head_dim"]
    # the decode and prefill lists keep their launches
    assert len(ropes) == sum("_kv_write_" in x.kernel for x in program.prefill_launches)


def test_not_on_64_lane_waves_nor_with_the_switch_off(monkeypatch):
    _plan, _specs, program = _program("llama-Q4_K_M", "gfx90a")
    assert not any(x.kernel.endswith(SUFFIX) for x in program.single_launches)
    monkeypatch.setattr(gpu_rope_attention, "ROPE_IN_ATTENTION", False)
    _plan, _specs, program = _program("llama-Q4_K_M", "sm_90")
    assert len(program.single_launches) == len(program.launches)
    assert not any(x.kernel.endswith(SUFFIX) for x in program.single_launches)


def test_buffers_that_share_arena_bytes_are_not_apart():
    """A one-layer model's attention output may take its k and v's bytes (their last reader, the
    KV write, runs before it): folded, a block would write them while another still reads."""
    slots = (ArenaSlot("q", 0, 512), ArenaSlot("k", 512, 128), ArenaSlot("v", 640, 128), ArenaSlot("att", 512, 512))
    program = StepProgram("sm_90", Arena(8, 8, 1, 256, slots, 1024))
    assert not _apart(program, ("q", "k", "v"), ["att"])
    apart = dataclasses.replace(program.arena, slots=(*slots[:3], ArenaSlot("att", 768, 512)))
    assert _apart(dataclasses.replace(program, arena=apart), ("q", "k", "v"), ["att"])
