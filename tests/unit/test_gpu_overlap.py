"""Overlapped launches (compiler/codegen/gpu_overlap.py): which targets get them, the source
check that every kernel waits for the kernel before it before it touches an activation, and that
every fixture's step program for sm_90 passes it (plans only: no toolchain)."""

import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.compiler.codegen import gpu_overlap
from rfc.compiler.codegen.gpu import plan_target, render_source
from rfc.compiler.codegen.gpu_overlap import check_grid_wait, programmatic
from rfc.compiler.errors import CompileError
from rfc.compiler.pipeline import CompileOptions, compile_model
from rfc.compiler.targets import parse_target
from tests.conftest import FIXTURES

KERNEL = """
RFC_KERNEL(256) void k(float *out, const float *x, const unsigned char *weight, int n_rows) {{
{body}
}}
"""


def _check(body: str, free=("weight", "n_rows")) -> None:
    check_grid_wait(KERNEL.format(body=body), "k", set(free))


def test_targets_with_programmatic_launch():
    assert [programmatic(parse_target(t)) for t in ("sm_90", "sm_90a", "sm_100")] == [True] * 3
    assert [programmatic(parse_target(t)) for t in ("sm_89", "sm_80", "sm_70", "gfx90a", "gfx1100", "cpu")] == [
        False
    ] * 6


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setattr(gpu_overlap, "PROGRAMMATIC_LAUNCH", False)
    assert not programmatic(parse_target("sm_90"))
    assert "#define RFC_PROGRAMMATIC" not in render_source(parse_target("sm_90"), [])


def test_the_prelude_defines_it_for_sm_90_only():
    assert "#define RFC_PROGRAMMATIC 1" in render_source(parse_target("sm_90"), [])
    assert "#define RFC_PROGRAMMATIC" not in render_source(parse_target("sm_89"), [])
    assert "#define RFC_PROGRAMMATIC" not in render_source(parse_target("gfx90a"), [])


@pytest.mark.parametrize(
    "body",
    [
        "    RFC_GRID_WAIT();\n    out[0] = x[0];",
        # declarations, scalars and weight prefetches may come first; comments are not code
        "    const int tid = RFC_TID;  // x is read below\n    RFC_SHARED float s[8];\n"
        "    if (tid < n_rows) RFC_PREFETCH_L2(weight + 128 * tid);\n    RFC_GRID_WAIT();\n"
        "    if (tid >= n_rows) return;\n    out[tid] = x[tid];",
        "    for (int q = RFC_TID; q < 64; q += 256) { RFC_PREFETCH_L2(weight + q); }\n    RFC_GRID_WAIT();\n",
    ],
)
def test_kernels_that_wait_first_pass(body):
    _check(body)


@pytest.mark.parametrize(
    "body,words",
    [
        ("    out[0] = 1.0f;", "no RFC_GRID_WAIT"),
        ("    if (RFC_TID == 0) { RFC_GRID_WAIT(); }\n    out[0] = x[0];", "no RFC_GRID_WAIT"),  # not every thread
        ("    const float v = x[0];\n    RFC_GRID_WAIT();\n    out[0] = v;", "x before"),
        ("    out[RFC_TID] = 0.0f;\n    RFC_GRID_WAIT();", "out before"),
        ("    if (RFC_TID >= n_rows) return;\n    RFC_GRID_WAIT();", "return before"),
        ("    rfc_sync();\n    RFC_GRID_WAIT();", "rfc_sync before"),
    ],
)
def test_kernels_that_touch_activations_before_the_wait_are_refused(body, words):
    with pytest.raises(CompileError, match=words):
        _check(body)


def test_a_weight_is_free_only_where_every_launch_binds_a_weight():
    with pytest.raises(CompileError, match="weight before"):
        _check("    RFC_PREFETCH_L2(weight);\n    RFC_GRID_WAIT();", free=("n_rows",))


def test_a_kernel_missing_from_its_source_is_refused():
    with pytest.raises(CompileError, match="no RFC_KERNEL"):
        check_grid_wait(KERNEL.format(body="RFC_GRID_WAIT();"), "other", set())


@pytest.mark.parametrize("gguf", sorted(FIXTURES.glob("*.gguf")), ids=lambda p: p.stem)
def test_every_fixtures_sm_90_program_waits_in_every_kernel(gguf, tmp_path):
    """Every kernel of every fixture's sm_90 program, the sampling kernel too, passes the check,
    so the program is marked for overlapped launches (plan_target raises otherwise)."""
    compile_model(CompileOptions(model=gguf, out_dir=tmp_path / "b", targets=(), cache_dir=None))
    bundle = open_bundle(tmp_path / "b")
    specs, _ops, program, sample = plan_target(parse_target("sm_90"), bundle.plan, bundle.layout)
    batch = {"batch_launches"} if program.batch_launches else set()  # (gpu_bmma's twins, where a matmul has one)
    assert program.overlapped_lists() == {"launches", "single_launches", *batch} and sample in specs
    _ops, _ops2, gfx, _sample = plan_target(parse_target("gfx90a"), bundle.plan, bundle.layout)
    assert "programmatic" not in gfx.extra
