"""The cpu-amx target: the x8 layouts' multi-token matmuls on AMX int8 tiles (kernels/cpu_amx.h).

A small library (the prelude and the Q8_0x8 / Q4_0x8 / Q4_1x8 / Q4_Kx8 / Q5_Kx8 matmuls, rendered as the
compiler renders them for cpu-amx) is built on any x86-64 machine; it runs only where the CPU
has amx_tile and amx_int8 (and the OS grants the tile state), else those tests skip with the
runtime's own reason. Oracle: the float64 product of the dequantized weights (the reference
device's decoding) within matmul_bound, and -- the target's claim -- bit for bit the VNNI path
the same library takes for one token (rows do not depend on the token count or the path).
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.formats import FORMATS as FORMATS_BY_NAME
from rfc.artifacts.formats import Kernels, tensor_nbytes
from rfc.compiler.codegen import cpu
from rfc.compiler.codegen.format_table import format_params
from rfc.compiler.codegen.render import render
from rfc.compiler.targets import parse_target
from rfc.runtime.devices import cpu as cpu_device
from rfc.runtime.model.quants import dequantize
from tests.kernels.test_cpu_kernels import matmul_bound, weight_bytes

FORMATS = ("Q8_0x8", "Q4_0x8", "Q4_1x8", "Q4_Kx8", "Q5_Kx8")
# 33 groups of 8 rows: with one or two threads a tile holds an odd number of groups, so passes
# of two groups and of one (dotted twice) both run; 11 blocks a row: the odd last block; the
# k-quants: 3 super-blocks (the pipelined pass's first, middle and last, cpu_amx.h rfc_amx_k_pass)
N, K, K_SUPER = 264, 352, 768
TUNING = cpu.CpuTuning()
PRELUDE = {"abi_version": cpu.ABI_VERSION, "n_embd": K, "n_ff": K, "vocab_size": 32, "n_heads": 1, "n_kv_heads": 1,
           "head_dim": 32, "group": 1, "q_width": 32, "kv_width": 32, "kv_piece": 32, "max_k": K_SUPER,
           "op_exports": True}  # fmt: skip


def source() -> str:
    parts = [render("cpu_prelude.c.j2", {**PRELUDE, **format_params(Kernels.CPU)})]
    parts += [render("cpu_matmul_x8.c.j2", cpu._x8_params(fmt, TUNING)) for fmt in FORMATS]
    return "".join(parts)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 targets")
    path = tmp_path_factory.mktemp("amx") / cpu.LIBRARY
    path.write_bytes(cpu.compile_source(source(), cpu.compile_command(parse_target("cpu-amx"))))
    return path


@pytest.fixture(scope="module")
def amx(library: Path) -> ctypes.CDLL:
    reason = cpu_device.probe("cpu-amx")
    if reason is not None:
        pytest.skip(
            f"{reason}: the cpu-amx kernels cannot run here (still built: test_amx_build_uses_tile_instructions)"
        )
    lib = ctypes.CDLL(str(library))
    cpu_device.init_kernels(lib, "cpu-amx")
    lib.rfc_scratch_bytes.argtypes, lib.rfc_scratch_bytes.restype = [ctypes.c_int], ctypes.c_size_t
    return lib


def test_amx_build_uses_tile_instructions(library: Path):
    """The target's explicit flags (never -march=native) build the tile code on any x86-64."""
    command = cpu.compile_command(parse_target("cpu-amx"))
    assert "-mamx-tile" in command and "-mamx-int8" in command and not any("native" in c for c in command)
    if shutil.which("objdump") is None:
        pytest.skip("objdump not found: cannot look at the instructions")
    asm = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert all(op in asm for op in ("ldtilecfg", "tdpbssd", "tilerelease", "vpdpbusd"))


def test_skip_reason_names_the_missing_flags(monkeypatch):
    """A host without AMX is told which flags it lacks (the probe these tests skip with, and the
    loader's refusal: 'cannot run bundle target cpu-amx here: this CPU lacks ...')."""
    avx512 = set(parse_target("cpu-avx512").isa)
    monkeypatch.setattr(cpu_device, "cpu_flags", lambda: avx512)
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the cpu probe answers for x86-64 Linux")
    assert cpu_device.probe("cpu-amx") == "this CPU lacks amx_tile, amx_int8"
    monkeypatch.setattr(cpu_device, "cpu_flags", lambda: avx512 | {"amx_tile"})
    assert cpu_device.probe("cpu-amx") == "this CPU lacks amx_int8"


def test_a_refused_tile_state_is_a_probe_failure(monkeypatch):
    """A CPU with AMX under an OS that refuses the tile state (Linux before 5.16): the probe says
    so, so that "auto" picks the next cpu variant instead of failing at load."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the cpu probe answers for x86-64 Linux")
    monkeypatch.setattr(cpu_device, "cpu_flags", lambda: set(parse_target("cpu-amx").isa))
    monkeypatch.setattr(cpu_device, "amx_refusal", lambda: "the OS kernel refuses the AMX tile state (test)")
    assert cpu_device.probe("cpu-amx") == "the OS kernel refuses the AMX tile state (test)"
    assert cpu_device.probe("cpu-avx512") != cpu_device.probe("cpu-amx")


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_amx_matmul_matches_reference_and_the_vnni_path(amx: ctypes.CDLL, fmt: str):
    """Token counts from the format's AMX threshold on (a 16-token tile, partial ones, whole
    tiles with a remainder on the VNNI kernel), with the fused bias and residual: within the bound of the float64
    product, and every token's row bit for bit its row alone (1 token: the VNNI kernel)."""
    rng = np.random.default_rng(27)
    k = K_SUPER if FORMATS_BY_NAME[fmt].block_elems == 256 else K
    w = np.frombuffer(weight_bytes(fmt, N, k, rng), np.uint8).copy()
    assert w.size == tensor_nbytes(fmt, (N, k))
    w64 = dequantize(w, fmt, (N, k)).astype(np.float64)
    bias = rng.standard_normal(N).astype(np.float32)
    run_fn = getattr(amx, f"rfc_matmul_{fmt.lower()}")
    run_fn.restype = None
    run_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, accum = np.full((len(x), N), np.nan, np.float32), residual.copy()
        scratch = np.zeros(amx.rfc_scratch_bytes(len(x)) + 64, np.uint8)
        run_fn(_ptr(w), w.size // N, N, k, _ptr(x), len(x), _ptr(out), _ptr(bias), _ptr(accum), _ptr(scratch))
        return out, accum

    act_block_fn = getattr(amx, f"rfc_act_block_{fmt.lower()}")
    act_block_fn.restype = ctypes.c_int
    act_block = act_block_fn()
    assert act_block in (32, 256)
    threshold = cpu._x8_params(fmt, TUNING)["amx_min_tokens"]
    assert threshold > 1
    for tokens in sorted({threshold, 16, 27, 37}):  # 27, 37: whole tiles on AMX, the rest on VNNI
        x = rng.standard_normal((tokens, k)).astype(np.float32)
        residual = rng.standard_normal((tokens, N)).astype(np.float32)
        got, accum = run(x, residual)
        want = x.astype(np.float64) @ w64.T + bias
        bound = matmul_bound(w64, x, act_block)
        err = np.abs(got - want)
        assert (err <= bound).all(), (
            f"{fmt} T={tokens}: max |Δ| {err.max():.3g}, worst Δ/bound {(err / bound).max():.3g}"
        )
        np.testing.assert_array_equal(accum, residual + got)
        for t in range(tokens):
            one, one_accum = run(x[t : t + 1], residual[t : t + 1])
            np.testing.assert_array_equal(one[0], got[t], err_msg=f"{fmt} T={tokens}: token {t}")
            np.testing.assert_array_equal(one_accum[0], accum[t])
