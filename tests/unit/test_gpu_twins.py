"""The one-token twins (compiler/codegen/gpu_plan.one_token_twin) and the one pass in which they
round a row of float activations (_one_token_chunk), decided from a kernel's parameters alone.
Python only: tests/kernels/test_gpu_program.py runs the twins on the emulator bit for bit."""

import pytest

from rfc.compiler.codegen import gpu_plan
from rfc.compiler.codegen.gpu_plan import KernelSpec, one_token_twin


def _matmul(k: int, chunk: int | None, lanes: int = 32) -> KernelSpec:
    params = {"name": "m", "k": k, "lanes_per_row": lanes, "tokens_per_block": gpu_plan.MATMUL_TOKENS}
    if chunk is not None:
        params["chunk"] = chunk
    grid = ((4096, 8), ("n_rows", gpu_plan.MATMUL_TOKENS))
    return KernelSpec("m", "gpu_matmul.hip.j2", params, (), 256, grid)


@pytest.mark.parametrize(
    "k,chunk,lanes,want",
    [
        (4096, 2048, 32, 4096),  # two passes of the blocks of 8 become one
        (14336, 2048, 32, 14336),  # an 8B's FFN down: seven become one
        (20480, 2048, 32, 16384),  # wider than 8 chunks: passes of 16384 columns
        (4608, 2048, 64, 4608),  # a row over two waves (INT8_ROW_WAVES)
        (2048, 2048, 32, 2048),  # one pass already: the same chunk
        (4096, 1440, 32, 1440),  # 45 sub-blocks a chunk, shared out unevenly: the lanes' order is the chunk's
        (4096, None, 32, None),  # no rounding in shared memory (the float matmuls)
    ],
)
def test_the_twin_rounds_as_wide_a_row_as_its_shared_memory_holds(k, chunk, lanes, want):
    twin = one_token_twin(_matmul(k, chunk, lanes))
    assert twin.name == "m" + gpu_plan.ONE_TOKEN_SUFFIX and twin.params["tokens_per_block"] == 1
    assert twin.grid == ((4096, 8), ("n_rows", 1))
    assert twin.params.get("chunk") == want


def test_without_the_switch_the_twin_keeps_its_chunk(monkeypatch):
    monkeypatch.setattr(gpu_plan, "ONE_TOKEN_WIDE_CHUNK", False)
    assert one_token_twin(_matmul(14336, 2048)).params["chunk"] == 2048


def test_kernels_of_one_token_blocks_have_no_twin():
    spec = _matmul(4096, 2048)
    one = KernelSpec("m", spec.template, {**spec.params, "tokens_per_block": 1}, (), 256, ((4096, 8), ("n_rows", 1)))
    assert one_token_twin(one) is None
