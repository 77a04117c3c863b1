"""The one-token twins (compiler/codegen/gpu_plan.one_token_twin) and the one pass in which they
round a row of float activations (_one_token_chunk), decided from a kernel's parameters alone.
Python only: tests/kernels/test_gpu_program.py runs the twins on the emulator bit for bit."""

import pytest

from rfc.compiler.codegen import gpu_plan
from rfc.compiler.codegen.gpu_plan import KernelSpec, one_token_twin


def _matmul(k: int, chunk: int | None, lanes: int = 32, **more) -> KernelSpec:
    params = {"name": "m", "k": k, "lanes_per_row": lanes, "tokens_per_block": gpu_plan.MATMUL_TOKENS, **more}
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
        (4608, 2048, 64, 4608),  # a row over a wave of 64 lanes (gfx90a)
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


@pytest.mark.parametrize(
    "k,q8in,lane_loads",
    [
        (14336, False, gpu_plan.ONE_TOKEN_LANE_LOADS),  # an 8B's down: 14 sub-blocks a lane, unrolled 4 at a time
        (2560, False, 3),  # 80 sub-blocks over 32 lanes: at most 3 a lane
        (768, False, None),  # 24 sub-blocks: at most one a lane, nothing to unroll
        (4096, True, None),  # the q8 walk: unrolled whole already
    ],
)
def test_a_planar_int8_twin_takes_its_loads_ahead(k, q8in, lane_loads):
    """gpu_plan.ONE_TOKEN_LOADS_AHEAD: the twin knows its one token is there, asks for
    ONE_TOKEN_MIN_BLOCKS resident blocks (its registers capped for them), and walks a chunk of
    float activations up to ONE_TOKEN_LANE_LOADS sub-blocks at a time."""
    spec = _matmul(k, min(k, 2048), q8in=q8in, planar=True)
    params = one_token_twin(spec).params
    assert params["loads_ahead"] is True and params["min_blocks"] == gpu_plan.ONE_TOKEN_MIN_BLOCKS
    assert params.get("lane_loads") == lane_loads
    assert "loads_ahead" not in spec.params  # the blocks of 8 test their tokens


@pytest.mark.parametrize(
    "target,more,blocks",
    [
        ("sm_90", {"fmt_upper": "Q4_Kp"}, gpu_plan.ONE_TOKEN_HOPPER_BLOCKS),  # the 8B's output projection
        ("sm_90a", {"fmt_upper": "Q6_Kp"}, gpu_plan.ONE_TOKEN_HOPPER_BLOCKS),  # its Q6_K down, LM head
        (
            "sm_90",
            {"fmt_groups": [{"fmt_upper": "Q4_Kp", "planar": True}, {"fmt_upper": "Q6_Kp", "planar": True}]},
            gpu_plan.ONE_TOKEN_HOPPER_BLOCKS,
        ),
        ("sm_90", {"fmt_upper": "Q4_Kp", "glu": True}, gpu_plan.ONE_TOKEN_MIN_BLOCKS),  # gate/up: spilled at three
        ("sm_90", {"fmt_upper": "Q5_Kp"}, gpu_plan.ONE_TOKEN_MIN_BLOCKS),  # spilled at three
        ("sm_90", {"fmt_groups": [{"fmt_upper": "Q8_0p", "planar": True}] * 2}, gpu_plan.ONE_TOKEN_MIN_BLOCKS),
        ("sm_80", {"fmt_upper": "Q4_Kp"}, gpu_plan.ONE_TOKEN_MIN_BLOCKS),  # spilled at three there
        ("gfx90a", {"fmt_upper": "Q4_Kp"}, gpu_plan.ONE_TOKEN_MIN_BLOCKS),
    ],
)
def test_a_twin_asks_for_three_blocks_on_hopper_where_they_fit(target, more, blocks):
    """gpu_plan._one_token_blocks: three resident blocks (80 registers) on sm_90 and newer, where
    they made the 8B's batch-1 step 4.8% faster on an H200, but two for the twins that spilled at
    three there (gate/up, Q5_K, Q8_0) and on every other target; the template is the same."""
    from rfc.compiler.targets import parse_target

    spec = _matmul(4096, 2048, q8in=True, planar=True, **more)
    params = one_token_twin(spec, parse_target(target)).params
    assert params["min_blocks"] == blocks
    assert one_token_twin(spec).params["min_blocks"] == gpu_plan.ONE_TOKEN_MIN_BLOCKS  # no target: two


def test_a_twin_of_unplanned_weights_keeps_the_walk_of_the_blocks_of_8():
    """The i-quants' decodes take too many registers for several sub-blocks' loads at once
    (they spilled under the cap): their twins, and a fused one with any such segment, keep it."""
    assert "loads_ahead" not in one_token_twin(_matmul(14336, 2048, planar=False)).params
    groups = [{"planar": True}, {"planar": False}]
    assert "loads_ahead" not in one_token_twin(_matmul(4096, 2048, planar=True, fmt_groups=groups)).params


def test_without_loads_ahead_the_twin_is_the_walk_of_the_blocks_of_8(monkeypatch):
    monkeypatch.setattr(gpu_plan, "ONE_TOKEN_LOADS_AHEAD", False)
    params = one_token_twin(_matmul(14336, 2048, planar=True)).params
    assert not {"loads_ahead", "min_blocks", "lane_loads"} & set(params)


def test_the_float_matmuls_twin_keeps_its_walk():
    spec = _matmul(4096, None, planar=True)
    spec = KernelSpec("m", "gpu_matmul_float.hip.j2", spec.params, (), 256, spec.grid)
    assert "loads_ahead" not in one_token_twin(spec).params
