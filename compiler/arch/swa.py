"""Interleaved sliding-window attention as llama.cpp's iSWA loaders read it (maple, granite_swa,
spark2_5): which layers slide, over how many positions, and the RoPE of the sliding layers.

llama.cpp keeps the flags in a fixed array of LLAMA_MAX_LAYERS entries filled with "not sliding"
before reading `attention.sliding_window_pattern` into it with get_arr: an array is required (no
period), and the layers past its end stay global. Its generic loader also reads a head size and a
RoPE width for the sliding layers (`attention.key_length_swa`, `attention.value_length_swa`,
`rope.dimension_count_swa`) for every architecture; graphs that build every layer with the model's
one head size cannot run a file whose sliding layers have another, so those are refused here.
"""

from dataclasses import replace

from rfc.compiler.arch.common import Rope, Sizes
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_HEAD_DIM, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError

PATTERN_KEY = "attention.sliding_window_pattern"


# llama_hparams' rope_freq_base_train_swa where a loader reads rope.freq_base_swa and the file has none (not
# the model's base: mimo2, step35)
SWA_BASE_DEFAULT = 10000.0


def sliding_window_layers(
    md: Metadata, n_layers: int, default_period: int, *, dense_first: bool = False
) -> tuple[bool, ...]:
    """llama.cpp's load_swa_pattern: per-layer flags when the key is an array (missing entries:
    global), else a period n whose layers i with i % n < n - 1 are sliding-window (with
    `dense_first`: i % n != 0, the first of each period global; n = 0: every layer)."""
    if md.is_list(PATTERN_KEY):
        flags = md.flags(PATTERN_KEY, MAX_LAYERS)
        return tuple(i < len(flags) and flags[i] for i in range(n_layers))
    n = md.int(PATTERN_KEY, 0, MAX_LAYERS, default=default_period)
    return tuple(n == 0 or (i % n != 0 if dense_first else i % n < n - 1) for i in range(n_layers))


def pattern_array(md: Metadata, n_layers: int) -> tuple[bool, ...]:
    """A flag per layer from the pattern, which must be an array (llama.cpp's get_arr: gemma4,
    maple, granite_swa, spark2_5); layers past its end are global."""
    if not md.is_list(PATTERN_KEY):
        raise CompileError(f"{md.path}: metadata {md.key(PATTERN_KEY)} must be a per-layer array "
                           f"(llama.cpp reads no period for {md.arch})")  # fmt: skip
    flags = md.flags(PATTERN_KEY, MAX_LAYERS)
    return tuple(i < len(flags) and flags[i] for i in range(n_layers))


def sliding_layers(md: Metadata, n_layers: int) -> tuple[int, tuple[bool, ...]]:
    """(the window, a flag per layer): `attention.sliding_window`, required, and the pattern array."""
    flags = pattern_array(md, n_layers)
    return md.int("attention.sliding_window", 1, MAX_CONTEXT), flags


def sliding_rope(md: Metadata, rope: Rope) -> Rope:
    """The sliding layers' RoPE: `rope.dimension_count_swa` dims (even; default the model's) at
    base `rope.freq_base_swa` (default the model's), the model's scaling otherwise."""
    n_rot = md.int("rope.dimension_count_swa", 2, MAX_HEAD_DIM, default=rope.n_rot)
    if n_rot % 2:
        raise CompileError(f"{md.path}: rope.dimension_count_swa {n_rot} must be even")
    base = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    return replace(rope, n_rot=n_rot, freq_base=base)


def require_one_head_size(md: Metadata, sizes: Sizes, n_rot: int | None) -> None:
    """Refuses sliding layers of another head size than the model's, or (`n_rot` not None) another
    RoPE width than n_rot, which the architecture's graph does not build."""
    want = {"attention.key_length_swa": sizes.head_dim, "attention.value_length_swa": sizes.v_head}
    if n_rot is not None:
        want["rope.dimension_count_swa"] = n_rot
    for key, size in want.items():
        if md.has(key) and (got := md.int(key, 0, MAX_HEAD_DIM)) != size:
            raise CompileError(f"{md.path}: metadata {md.key(key)} {got} differs from the other layers' {size}: "
                               f"{md.arch}'s graph builds every layer with one head size")  # fmt: skip
