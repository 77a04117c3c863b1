"""The recurrent-state cpu kernels (short_conv, ssm_conv, gated_delta_net, ssm_scan) called
directly, with explicit states: test_cpu_short_conv, test_cpu_delta_net and test_cpu_ssm_scan
build a library of a one-layer plan of just their ops (zero weights: the tests pass their own
through the exported functions), native (AVX2) and portable, and lay out batches of sequences
the same way.

Calls take pointers: `ptr` (None for a sequence without a slot), `slot_ptrs` (the per-sequence
array of slot pointers), `layout` (positions and seq_start of sequences given by their first
position and length).
"""

import ctypes
import platform
from collections.abc import Sequence

import numpy as np
import pytest

from rfc.artifacts.layout import TensorEntry, WeightLayout, align_up
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan, StateSpec, StateTensor
from rfc.compiler.codegen import CodegenInput, cpu
from rfc.compiler.spec import HParams
from rfc.compiler.targets import parse_target

BUILDS = ["native", "portable"]
TARGETS = {"native": "cpu", "portable": "cpu-generic"}

# sequence 0 starts at position 0 (its slot holds stale values), 1 decodes one token, 2 continues
# a chunk, 3 has no slot (from position 0)
STARTS, LENGTHS = [0, 9, 5, 0], [5, 1, 7, 3]


def state_plan(
    buffers: dict[str, int], ops: tuple[Op, ...], states: tuple[tuple[int, ...], ...], output: str, hidden: str
) -> Plan:
    """A plan of `ops` over token-row buffers of the given widths (n_embd: the hidden one's), one
    state tensor per shape."""
    return Plan(buffers=tuple(Buffer(name, ("T", width)) for name, width in buffers.items()), ops=ops,
                kv=KVSpec(1, 1, 8), input_tokens="tokens", output_logits=output, output_hidden=hidden, vocab_size=8,
                n_embd=buffers[hidden], context_length=64,
                state=StateSpec(tuple(StateTensor(0, shape) for shape in states)))  # fmt: skip


def _zero_weights(weights: dict[str, tuple[int, ...]]) -> WeightLayout:
    entries, end = [], 0
    for name, shape in weights.items():
        off, nbytes = align_up(end), int(np.prod(shape)) * 4
        entries.append(TensorEntry(name, name, "F32", shape, off, nbytes, ""))
        end = off + nbytes
    return WeightLayout(256, tuple(entries))


def open_library(
    build: str,
    tmp_path_factory,
    architecture: str,
    plan: Plan,
    weights: dict[str, tuple[int, ...]],
    argtypes: dict[str, list],
) -> ctypes.CDLL:
    """The plan's kernels compiled for `build` (native: skipped off x86-64), loaded, with the
    exports' argument types declared."""
    if build == "native" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native build is tested on x86-64")
    hp = HParams(architecture=architecture, name=f"{architecture}-state-ops-test", context_length=64,
                 n_embd=plan.n_embd, n_ff=8, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=8, n_rot=8,
                 rope_style="neox", rope_freq_base=1e4, rope_freq_scale=1.0, rope_scaling_type="none", rms_eps=1e-5,
                 vocab_size=8, tied_embeddings=False, qkv_bias=False, rope_freq_factors=False)  # fmt: skip
    target = parse_target(TARGETS[build])
    source = cpu.render_source(CodegenInput(target, hp, plan, _zero_weights(weights), None, None), step=False)
    path = tmp_path_factory.mktemp(build) / cpu.LIBRARY
    path.write_bytes(cpu.compile_source(source, cpu.compile_command(target)))
    lib = ctypes.CDLL(str(path))
    for name, types in argtypes.items():
        getattr(lib, name).argtypes = types
    return lib


def ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def layout(starts: Sequence[int], lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """positions and seq_start of sequences starting at `starts`, `lengths` tokens each."""
    positions = np.concatenate([np.arange(p, p + n) for p, n in zip(starts, lengths)]).astype(np.int32)
    return positions, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def slot_ptrs(arrays: list[np.ndarray | None]):
    return (ctypes.c_void_p * len(arrays))(*[ptr(a) for a in arrays])


def assert_close(got, want, rtol, atol):
    err = np.abs(got - want)
    assert (err <= rtol * np.abs(want) + atol).all(), f"max |Δ| {err.max():.3g}"
