"""Which layouts the weight planner writes for which targets, and which entry each target
reads (compiler/weight_plan.py), without building any kernel."""

import pytest

from rfc.artifacts.formats import PACKED_FORMATS, PLANAR_FORMATS, Kernels, target_layout
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from rfc.compiler.targets import parse_targets
from rfc.compiler.weight_plan import plan_weights
from tests.conftest import FIXTURES, skip_reason, smollm2

pytestmark = pytest.mark.skipif(not (FIXTURES / "tiny-llama-Q4_0.gguf").is_file(), reason="fixtures not found")


def _uses(model: str, *targets: str):
    spec = build_spec(read_gguf(FIXTURES / f"tiny-{model}.gguf"))
    return spec, plan_weights(spec, parse_targets(targets)).uses


def _matmul_only(spec) -> set[str]:
    readers: dict[str, set[str]] = {}
    for op in spec.plan.ops:
        for w in op.weights:
            readers.setdefault(w, set()).add(op.kind)
    return {w for w, r in readers.items() if r <= {"matmul", "moe_matmul"}}


@pytest.mark.parametrize("model", ["llama-Q4_0", "llama-Q6_K", "mixtral-Q8_0", "llama-tied-F16"])
def test_gpu_targets_store_matmul_weights_planar(model):
    spec, uses = _uses(model, "sm_90", "gfx1100")
    matmul = _matmul_only(spec)
    assert [u.name for u in uses] == [u.name for u in spec.weights], "no variants when every target reads one layout"
    for u in uses:
        planar = target_layout(u.format, Kernels.GPU)
        want = planar.name if planar is not None and u.name in matmul else None
        assert u.packed == want, (u.name, u.format, u.packed)
    assert all(u.packed is None for u in uses if u.name == "token_embd.weight"), "the embed kernel gathers GGUF rows"


def test_cpu_and_gpu_targets_each_read_their_layout_written_once():
    """cpu + two GPU targets: the cpu layouts under the plan names, one variant per weight the
    GPU reads in another layout (Q6_K output: planar; Q4_0: planar beside Q4_0x8), at the end."""
    spec, uses = _uses("llama-Q4_0", "cpu", "sm_90", "sm_80")
    names = [u.name for u in uses]
    assert len(names) == len(set(names))
    primary, variants = uses[: len(spec.weights)], uses[len(spec.weights) :]
    assert [u.name for u in primary] == [u.name for u in spec.weights]
    assert {u.packed for u in primary} - {None} <= set(PACKED_FORMATS)
    assert variants and all(
        u.name == f"{u.name.split('#')[0]}#{u.packed}" and u.packed in PLANAR_FORMATS for u in variants
    )
    assert {u.name.split("#")[0] for u in variants} == _matmul_only(spec) - {"token_embd.weight"}


def test_every_target_reads_its_layout_through_its_weight_map():
    """One weight map per target: the cpu variants read the plan's names (an empty map), each
    GPU target the variant of every weight it reads in another layout; entries are keyed by
    (weight, format), each written once."""
    spec = build_spec(read_gguf(FIXTURES / "tiny-llama-Q4_0.gguf"))
    cpu, avx512, sm90, sm80 = targets = parse_targets(("cpu", "cpu-avx512", "sm_90", "sm_80"))
    plan = plan_weights(spec, targets)
    assert plan.weight_maps[cpu] == plan.weight_maps[avx512] == {}
    assert plan.weight_maps[sm90] == plan.weight_maps[sm80] != {}
    by_name = {u.name: u for u in plan.uses}
    for weight, entry in plan.weight_maps[sm90].items():
        assert entry == f"{weight}#{by_name[entry].packed}" and by_name[entry].packed in PLANAR_FORMATS
    assert all(u.name.split("#")[0] == w and u.stored_format == f for (w, f), u in plan.entries.items())
    (gpu,) = parse_targets(("sm_90",))
    assert plan_weights(spec, (gpu,)).weight_maps == {gpu: {}}


def test_cpu_only_bundles_are_unchanged():
    spec, uses = _uses("llama-Q4_0", "cpu")
    assert len(uses) == len(spec.weights) and not any(u.packed in PLANAR_FORMATS for u in uses)


SMOLLM2 = smollm2()


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=skip_reason(SMOLLM2))
def test_a_tied_embedding_is_repacked_for_the_cpu_and_kept_as_gguf_for_the_gpu():
    """SmolLM2's Q8_0 token embedding is also its output matrix: the cpu stores it Q8_0x8 (its
    embedding lookup gathers rows from that layout), a GPU target reads a GGUF variant."""
    spec = build_spec(read_gguf(SMOLLM2))
    (tied,) = [u for u in spec.weights if u.name == "token_embd.weight"]
    assert tied.format == "Q8_0"
    cpu_only = {u.name: u for u in plan_weights(spec, parse_targets(["cpu"])).uses}
    assert cpu_only["token_embd.weight"].packed == "Q8_0x8"
    mixed = {u.name: u for u in plan_weights(spec, parse_targets(["cpu", "sm_90"])).uses}
    assert mixed["token_embd.weight"].packed == "Q8_0x8"
    assert mixed["token_embd.weight#Q8_0"].packed is None and mixed["token_embd.weight#Q8_0"].format == "Q8_0"
    gpu_only = {u.name: u for u in plan_weights(spec, parse_targets(["sm_90"])).uses}
    assert gpu_only["token_embd.weight"].packed is None
