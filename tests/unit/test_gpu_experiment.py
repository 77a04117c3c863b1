"""tools/gpu_experiment.py's parts that run without a GPU: reading ncu's CSV into per-kernel
time, and setting a codegen constant everywhere it was imported (gpu_fuse imports gpu_plan's
MATMUL_ROW_STEPS by value), then putting it back."""

import importlib.util
from pathlib import Path

from tests.kernels.gpu_support import gpu_build_cache  # noqa: F401  (the session's kernel cache)

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_experiment", ROOT / "tools" / "gpu_experiment.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

HEADER = (
    '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
    '"Device","CC","gpu__time_duration.sum"'
)  # ncu's own header line
NCU_CSV = f"""==PROF== Connected to process 123 (/usr/bin/python3)
==PROF== Disconnected from process 123
{HEADER}
"","","","","","","","","","","","ns"
"0","123","python3","127.0.0.1","rfc_add_rmsnorm_2048","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","8,704"
"1","123","python3","127.0.0.1","rfc_matmul_q4_0p_2048x2048","1","7","(256, 1, 1)","(256, 1, 1)","0","9.0","10,624"
"2","123","python3","127.0.0.1","rfc_add_rmsnorm_2048","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","8,696"
"""


def test_ncu_rows_are_kernels_in_launch_order_with_their_nanoseconds():
    rows = tool.parse_ncu(NCU_CSV)
    assert rows == [
        ("rfc_add_rmsnorm_2048", 8704.0),
        ("rfc_matmul_q4_0p_2048x2048", 10624.0),
        ("rfc_add_rmsnorm_2048", 8696.0),
    ]
    table = tool.kernel_table(rows).splitlines()
    assert table[1].split() == ["rfc_add_rmsnorm_2048", "2", "17.4", "8.70", "62.1%"]
    assert table[-1] == "GPU time 28.0 us over 3 kernels"


def test_a_variant_sets_a_constant_in_every_module_that_imported_it_and_restores_it():
    from rfc.compiler.codegen import gpu_fuse, gpu_plan

    before = gpu_plan.MATMUL_ROW_STEPS
    old = tool._override("gpu_plan.MATMUL_ROW_STEPS=3 gpu_plan.INT8_MATMUL_THREADS=128")
    try:
        assert gpu_plan.MATMUL_ROW_STEPS == gpu_fuse.MATMUL_ROW_STEPS == 3
        assert gpu_plan.INT8_MATMUL_THREADS == 128
    finally:
        for (module, name), value in old.items():
            setattr(__import__(module, fromlist=[name]), name, value)
    assert gpu_plan.MATMUL_ROW_STEPS == gpu_fuse.MATMUL_ROW_STEPS == before


def test_a_variant_links_the_plain_bundles_weights_where_they_are_the_same(tmp_path, gpu_build_cache):
    """`variants` compiles each variant with the plain bundle's weights.bin linked in, not packed
    again, where the plan's weights are the plain bundle's tensor for tensor: the bundle that
    comes out is the one a full compile writes, file for file; another GGUF's weights are packed
    as usual; the packer is put back after the compile."""
    from rfc.artifacts.bundle import open_bundle
    from rfc.compiler import pipeline
    from rfc.compiler.pipeline import CompileOptions, compile_model
    from tests.conftest import FIXTURES

    def build(gguf: str, out: str) -> Path:
        options = CompileOptions(
            model=FIXTURES / gguf, out_dir=tmp_path / out, targets=("sm_90",), cache_dir=gpu_build_cache
        )
        compile_model(options)
        return tmp_path / out

    plain = build("tiny-llama-Q4_K_M.gguf", "plain")
    packer = pipeline.write_weights
    with tool._weights_of(plain):
        linked = build("tiny-llama-Q4_K_M.gguf", "linked")
        other = build("tiny-llama-Q4_0.gguf", "other")
    assert pipeline.write_weights is packer
    assert (linked / "weights.bin").stat().st_ino == (plain / "weights.bin").stat().st_ino
    assert (other / "weights.bin").stat().st_ino != (plain / "weights.bin").stat().st_ino
    assert open_bundle(linked).manifest == open_bundle(plain).manifest
    assert open_bundle(other).layout != open_bundle(plain).layout  # packed, and verified on opening


def test_a_variants_logits_are_compared_with_the_plain_bundles():
    import numpy as np

    plain = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
    assert tool.logits_agreement(plain, plain) == "max diff 0.0000 sd, argmax 2/2"
    moved = plain.copy()
    moved[1, 1] = 4.0  # the second row's argmax changes, by 3 against a spread of ~1.1
    assert tool.logits_agreement(plain, moved) == f"max diff {3 / np.std(plain):.4f} sd, argmax 1/2"
    assert tool.logits_agreement(plain, plain[:1]).startswith("shape (1, 3)")


def test_a_variants_line_has_a_column_under_each_heading():
    """Each batched step's time under its own heading (the steps BATCHED lists), the last tok/s the
    BATCH-sequence step's."""
    header = tool.variant_header()
    row = tool.variant_row("(as compiled today)", 0.003191, 0.07204, [0.004, 0.005, 0.010042, 0.018309], "ok")
    assert [h for h in header.split() if h.startswith("b")] == [f"b{n}" for n in tool.BATCHED]
    for heading, value in (("b8 step", "10042 us"), ("b16 step", "18309 us"), ("decode step", "3191 us")):
        end = header.index(heading) + len(heading)
        assert row[:end].endswith(value), (heading, row)
    assert row.split()[-2:] == [f"{16 / 0.018309:.0f}", "ok"]
