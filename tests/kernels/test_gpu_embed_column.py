"""The embed op's `column` (a slice of each row of a wider table: Gemma 4's per-layer embeddings,
compiler/arch/ple.py) in the GPU embed kernel (templates/gpu_embed.hip.j2), without a GPU: planned
for gfx90a (wave 64) and sm_90 (wave 32) by gpu_plan, launched in the emulator against the
reference device's op_embed over the table runtime/model/quants.py decodes, for a Q8_0 and a Q4_K
table sliced at a block boundary past the row's first; and the validator's refusal of a slice
that is not whole blocks. (The cpu step program's sliced rows: tiny-gemma4e's bounds tests.)

Sizes: 16 rows of 1,024 values, the slice columns 512..768 (Q4_K: its 3rd block of 256), 5 tokens.
Tolerance 1e-6 relative: the same float32 decoding and scale on both sides."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
from rfc.artifacts.validate import PlanError, check_plan_weights
from rfc.compiler.codegen import gpu
from rfc.compiler.codegen.gpu_plan import KERNEL_ARGS, plan_kernels
from rfc.compiler.targets import parse_target
from rfc.runtime.model.quants import dequantize
from tests import testdata
from tests.kernels.gpu_emulator import build_source_emulator, needs_emulator

V, C, W, COLUMN, SCALE = 16, 1024, 256, 512, 16.0
TOKENS = np.array([3, 0, 15, 7, 9], dtype=np.int32)


def _table(fmt: str) -> tuple[WeightLayout, np.ndarray]:
    rng = np.random.default_rng(26)
    raw = np.frombuffer(
        testdata._generator().encode(rng.standard_normal((V, C)).astype(np.float32), fmt), dtype=np.uint8
    )
    return WeightLayout(256, (TensorEntry("tbl", "per_layer_token_embd", fmt, (V, C), 0, raw.nbytes, ""),)), raw


def _plan(column: int) -> Plan:
    return Plan(buffers=(Buffer("tokens", ("T",), "i32"), Buffer("x", ("T", W))),
                ops=(Op("embed", ("tokens",), ("x",), ("tbl",), {"column": column, "scale": SCALE}),),
                kv=KVSpec(1, 1, 8), input_tokens="tokens", output_logits="x", output_hidden="x", vocab_size=V, n_embd=W,
                context_length=64)  # fmt: skip


@needs_emulator
@pytest.mark.parametrize("target", ["gfx90a", "sm_90"])
@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_K"])
def test_sliced_rows_match_the_reference_in_the_emulator(fmt, target, tmp_path):
    layout, raw = _table(fmt)
    plan = _plan(COLUMN)
    check_plan_weights(plan, layout)
    specs, (kernel,) = plan_kernels(parse_target(target), plan, layout)
    spec = next(s for s in specs if s.name == kernel)
    assert spec.args == KERNEL_ARGS["embed"]
    lib = ctypes.CDLL(str(build_source_emulator(gpu.render_source(parse_target(target), specs), [kernel], tmp_path)))
    out = np.zeros((len(TOKENS), W), dtype=np.float32)
    ptrs = [ctypes.c_void_p(a.ctypes.data) for a in (out, TOKENS, raw)]
    n_rows = ctypes.c_int(len(TOKENS))
    params = (ctypes.c_void_p * 4)(*[ctypes.addressof(p) for p in ptrs], ctypes.addressof(n_rows))
    fn = getattr(lib, f"rfc_emu_launch_{kernel}")
    fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p]
    fn(len(TOKENS), 1, 1, spec.threads, ctypes.cast(params, ctypes.c_void_p))
    table = dequantize(raw, fmt, (V, C)).astype(np.float32)
    want = table[TOKENS, COLUMN : COLUMN + W] * np.float32(SCALE)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=0)
    assert np.abs(out - table[TOKENS, :W] * np.float32(SCALE)).max() > 0.1  # another slice would not pass


@pytest.mark.parametrize("column", [100, 1024 - 128])
def test_a_slice_of_partial_blocks_or_past_the_row_is_refused(column):
    """Q4_K blocks are 256 values: a slice at 100 splits one, one at 896 runs past the row."""
    layout, _ = _table("Q4_K")
    with pytest.raises(PlanError, match="blocks|has no columns"):
        check_plan_weights(_plan(column), layout)
