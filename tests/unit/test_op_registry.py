"""One descriptor per op (artifacts/ops): every op kind a plan may hold has every part, for every
target family, and each part the descriptor names exists where it says — the reference handler,
the cpu templates and step-program lowering, the GPU templates, lowering and argument list, and
the kernel test kit's runner. `problems` is the check; the last tests show it catches a
descriptor that lacks a part."""

import dataclasses
import sys
from pathlib import Path

import pytest

from rfc.artifacts.ops import I32, OP_DEFS, PTR, CpuPart, GpuPart, OpDef, OpKind, OpSchema
from rfc.compiler.codegen.cpu_step import _Lowering
from rfc.compiler.codegen.gpu_plan import KERNEL_ARGS, _Planner
from rfc.runtime.devices.reference import ReferenceDevice

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.kernels.kit.cpu import _CALLS as KIT_CALLS  # noqa: E402 (the repository root on the path first)

TEMPLATES = ROOT / "templates"


def problems(d: OpDef) -> list[str]:
    """What a descriptor lacks or names wrongly; empty for a complete one."""
    found = []
    s = d.schema
    if not isinstance(s, OpSchema) or not s.doc:
        found.append("a schema with its doc")
    if not callable(d.check):
        found.append("a shape rule (check)")
    if not callable(getattr(ReferenceDevice, d.reference or "", None)):
        found.append(f"a reference handler (ReferenceDevice.{d.reference})")
    optional = {name for name, _ in s.optional} if isinstance(s, OpSchema) else set()
    required = set(s.attrs) if isinstance(s, OpSchema) else set()
    if not isinstance(d.cpu, CpuPart):
        found.append("a cpu part")
    else:
        if not d.cpu.templates or not all((TEMPLATES / t).is_file() for t in d.cpu.templates):
            found.append(f"cpu templates in templates/ ({d.cpu.templates})")
        if not callable(getattr(_Lowering, d.cpu.lower or "", None)):
            found.append(f"a cpu lowering (cpu_step._Lowering.{d.cpu.lower})")
        if not set(d.cpu.attrs) <= optional:
            found.append(f"cpu attrs among the optional attributes ({sorted(set(d.cpu.attrs) - optional)})")
        if not set(d.cpu.per_op) <= optional | required:
            found.append(f"per-op attrs among the attributes ({sorted(set(d.cpu.per_op) - optional - required)})")
        if d.cpu.vectors_from is not None and isinstance(s, OpSchema) and not 0 <= d.cpu.vectors_from < s.weights[1]:
            found.append(f"vector weights from one of its weights (vectors_from {d.cpu.vectors_from})")
    if not isinstance(d.gpu, GpuPart):
        found.append("a GPU part")
    else:
        if not d.gpu.templates or not all((TEMPLATES / t).is_file() for t in d.gpu.templates):
            found.append(f"GPU templates in templates/ ({d.gpu.templates})")
        if not callable(getattr(_Planner, d.gpu.lower or "", None)):
            found.append(f"a GPU lowering (gpu_plan._Planner.{d.gpu.lower})")
        names = [name for name, _ in d.gpu.args]
        if not d.gpu.args or len(set(names)) != len(names) or any(k not in (PTR, I32) for _, k in d.gpu.args):
            found.append("a GPU argument list of distinct names, each a ptr or an i32")
        elif ("n_rows", I32) not in d.gpu.args and ("n_seqs", I32) not in d.gpu.args:
            found.append("a GPU argument for the launch's count (n_rows or n_seqs)")
        if isinstance(s, OpSchema) and (
            len(d.gpu.outputs) != s.outputs or not set(d.gpu.outputs) | set(d.gpu.weights) <= set(names)
        ):
            found.append(f"GPU parameters for its {s.outputs} outputs and its weights among its arguments")
        if isinstance(s, OpSchema) and len(d.gpu.weights) > s.weights[1]:
            found.append(f"at most {s.weights[1]} GPU weight parameters")
    if OpKind(d.kind) not in KIT_CALLS:
        found.append("a runner in the kernel test kit (tests/kernels/kit/cpu.py)")
    return found


@pytest.mark.parametrize("kind", sorted(OP_DEFS))
def test_every_op_has_every_part(kind):
    assert problems(OP_DEFS[kind]) == []


def test_the_registry_is_every_kind_once():
    assert [str(k) for k in OpKind] == list(OP_DEFS)
    assert all(d.kind == kind for kind, d in OP_DEFS.items())
    assert KERNEL_ARGS == {kind: d.gpu.args for kind, d in OP_DEFS.items()}


def test_a_new_kind_with_no_handlers_fails_the_check():
    """A descriptor for an op nothing implements yet: every part it names is missing."""
    scale = OP_DEFS["scale"]
    new = dataclasses.replace(
        scale,
        kind="scale",  # a kind the kit knows: only the named parts are missing
        reference="op_frobnicate",
        cpu=CpuPart(("cpu_frobnicate.c.j2",), lower="_frobnicate"),
        gpu=GpuPart(("gpu_frobnicate.hip.j2",), lower="_frobnicate", args=scale.gpu.args),
    )
    found = " | ".join(problems(new))
    for part in ("reference handler", "cpu templates", "cpu lowering", "GPU templates", "GPU lowering"):
        assert part in found, found


@pytest.mark.parametrize(
    "change, part",
    [
        (dict(cpu=None), "a cpu part"),
        (dict(gpu=None), "a GPU part"),
        (dict(check=None), "shape rule"),
        (dict(schema=OpSchema(1, 1, (0, 0), ("factor",))), "doc"),
        (dict(cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_scale", attrs=("factor2",))), "cpu attrs"),
        (dict(gpu=GpuPart(("gpu_scale.hip.j2",), lower="_scale", args=(("out", PTR), ("x", "f64")))), "argument"),
        (dict(gpu=GpuPart(("gpu_scale.hip.j2",), lower="_scale", args=(("out", PTR), ("x", PTR)))), "count"),
        (dict(gpu=dataclasses.replace(OP_DEFS["scale"].gpu, outputs=("y",))), "outputs"),
        (dict(gpu=dataclasses.replace(OP_DEFS["scale"].gpu, weights=("w",))), "weight parameters"),
        (dict(cpu=dataclasses.replace(OP_DEFS["scale"].cpu, vectors_from=0)), "vector weights"),
    ],
)
def test_a_descriptor_lacking_a_part_fails_the_check(change, part):
    assert problems(OP_DEFS["scale"]) == []
    found = " | ".join(problems(dataclasses.replace(OP_DEFS["scale"], **change)))
    assert part in found, found


@pytest.mark.parametrize("target", ["cpu", "sm_90"])
def test_a_kernel_outside_its_descriptors_templates_is_refused(target, tmp_path, monkeypatch):
    """The code generators hold the descriptor to its word: an op whose kernel comes from another
    template than its descriptor names fails the compile (before any toolchain runs)."""
    from rfc.compiler.errors import CompileError
    from rfc.compiler.pipeline import CompileOptions, compile_model

    add = OP_DEFS["add"]
    wrong = dataclasses.replace(
        add,
        cpu=dataclasses.replace(add.cpu, templates=("cpu_mla.c.j2",)),
        gpu=dataclasses.replace(add.gpu, templates=("gpu_scale.hip.j2",)),
    )
    monkeypatch.setitem(OP_DEFS, "add", wrong)
    demo = ROOT / "compiler" / "demo" / "stories260K.gguf"
    with pytest.raises(CompileError, match="add"):
        compile_model(CompileOptions(model=demo, out_dir=tmp_path / "b", targets=(target,), cache_dir=None))
