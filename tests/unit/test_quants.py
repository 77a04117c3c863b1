"""runtime/model/quants.py against gguf-py's reference dequantizers.

Tolerance: none. Our decoders perform ggml's float32 operations in ggml's order, so every
value must be bit-identical to `gguf.quants.dequantize` (compared as raw bits; NaN from
random fuzz bytes compares equal to NaN).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

from rfc.artifacts.formats import PACKED_FORMATS, PLANAR_FORMATS, PLANE_ALIGN, plane_offsets, tensor_nbytes
from rfc.runtime.model import quants
from rfc.runtime.model.quants import FORMATS, QuantError, dequantize, row_nbytes
from tests.conftest import FIXTURES as FIXTURE_DIR
from tests.conftest import TINY_MODELS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = [FIXTURE_DIR / f"{name}.gguf" for name in TINY_MODELS]
MODELS = FIXTURES + [ROOT / "compiler" / "demo" / "stories260K.gguf"]

# gguf 0.19 decodes neither (Q2_0 is a type id it does not know): llama.cpp's own decoders
# (tools/fixtures/ggml_dequant.c over seeded_blocks(fmt, 512)) gave these sha256 of the float32s.
LLAMA_CPP_ONLY = {
    "Q1_0": "ff8828a9fde4dcb30de3f524d16cbd8b496b0419eff7bce6326ba99c8da1946a",
    "Q2_0": "40e2ffe7777f84693296d7b50043d2a1fb2ce8d753158d761495f755884de543",
}
GGUF_PY = sorted(set(FORMATS) - set(LLAMA_CPP_ONLY))  # the formats gguf-py dequantizes
# Q2_0 cannot be in a fixture: gguf-py, which reads the fixtures in the tests, refuses its type id
NO_FIXTURE = {"Q2_0"}


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} values differ, max |diff| {np.nanmax(abs(got - want))}"


def logical_shape(t: gguf.ReaderTensor) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(t.shape))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_matches_gguf_on_every_tensor(path: Path) -> None:
    for t in GGUFReader(path).tensors:
        if t.tensor_type.name in LLAMA_CPP_ONLY:  # no gguf-py decoder (Q1_0 in tiny-llama-IQ_MIX)
            continue
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(logical_shape(t))
        assert_identical(dequantize(t.data, t.tensor_type.name, logical_shape(t)), want)


@pytest.mark.skipif(not FIXTURES, reason=f"fixtures not found under {FIXTURE_DIR}")
def test_fixtures_cover_every_format() -> None:
    seen = {t.tensor_type.name for path in MODELS for t in GGUFReader(path).tensors}
    assert seen == set(FORMATS) - NO_FIXTURE


def test_format_table_matches_ggml() -> None:
    for name, fmt in FORMATS.items():
        if name == "Q2_0":  # ggml-common.h: QK2_0 64, a half and 16 bytes of 2-bit values
            assert (fmt.block_elems, fmt.block_bytes, fmt.ggml_type) == (64, 18, 42)
            continue
        assert (fmt.block_elems, fmt.block_bytes) == GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        assert fmt.ggml_type == GGMLQuantizationType[name].value


# Random fp16 scales include inf and NaN; numpy warns about the products, as it should.
RANDOM_BYTES_WARN = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def seeded_blocks(fmt: str, n_blocks: int) -> np.ndarray:
    """n_blocks of `fmt` from a sha256 stream (the same bytes everywhere), with finite f16 scales
    (at byte 0 in Q1_0 and Q2_0: bit 14 cleared, so the exponent is below 31)."""
    size = FORMATS[fmt].block_bytes
    stream = b"".join(hashlib.sha256(f"{fmt}/{i}".encode()).digest() for i in range(-(-n_blocks * size // 32)))
    raw = np.frombuffer(stream[: n_blocks * size], np.uint8).reshape(n_blocks, size).copy()
    raw[:, 1] &= 0xBF
    return raw


@pytest.mark.parametrize("fmt", sorted(LLAMA_CPP_ONLY))
def test_matches_llama_cpp_where_gguf_py_has_no_decoder(fmt: str) -> None:
    raw = seeded_blocks(fmt, 512)
    got = dequantize(raw, fmt, (512 * FORMATS[fmt].block_elems,))
    assert hashlib.sha256(got.tobytes()).hexdigest() == LLAMA_CPP_ONLY[fmt]


@RANDOM_BYTES_WARN
@pytest.mark.parametrize("fmt", [f for f in GGUF_PY if f.startswith("IQ")])
def test_every_grid_entry(fmt: str) -> None:
    """4096 blocks of random bytes: the i-quants' tables (up to 2048 grid entries) are all read."""
    raw = np.random.default_rng(5).integers(0, 256, (4096, FORMATS[fmt].block_bytes), np.uint8)
    n = 4096 * FORMATS[fmt].block_elems
    assert_identical(dequantize(raw, fmt, (n,)), gguf.quants.dequantize(raw, GGMLQuantizationType[fmt]).reshape(n))


@RANDOM_BYTES_WARN
@pytest.mark.parametrize("fmt", GGUF_PY)
def test_random_bytes_several_rows(fmt: str) -> None:
    # Any bit pattern is a valid block, so random bytes exercise every field of the format.
    shape = (3, 5, 2 * FORMATS[fmt].block_elems)
    raw = np.random.default_rng(0).integers(0, 256, (15, row_nbytes(fmt, shape[-1])), np.uint8)
    want = gguf.quants.dequantize(raw, GGMLQuantizationType[fmt]).reshape(shape)
    assert_identical(dequantize(raw, fmt, shape), want)
    assert_identical(dequantize(raw.reshape(-1), fmt, shape), want)


@RANDOM_BYTES_WARN
def test_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quants, "_CHUNK_BLOCKS", 7)
    raw = np.random.default_rng(1).integers(0, 256, row_nbytes("Q4_K", 256 * 20), np.uint8)
    want = gguf.quants.dequantize(raw, GGMLQuantizationType.Q4_K).reshape(4, 1280)
    assert_identical(dequantize(raw, "Q4_K", (4, 1280)), want)


def test_row_nbytes() -> None:
    assert row_nbytes("F32", 3) == 12
    assert row_nbytes("Q8_0", 64) == 68
    assert row_nbytes("Q4_K", 512) == 288
    with pytest.raises(QuantError, match="not a whole number"):
        row_nbytes("Q6_K", 300)


def test_unknown_format() -> None:
    with pytest.raises(QuantError, match="unknown weight format 'Q7_0'"):
        dequantize(np.zeros(34, np.uint8), "Q7_0", (32,))


@pytest.mark.parametrize("nbytes", [33, 35, 68])
def test_size_mismatch(nbytes: int) -> None:
    with pytest.raises(QuantError, match=f"needs 34 bytes, got {nbytes}"):
        dequantize(np.zeros(nbytes, np.uint8), "Q8_0", (1, 32))


def test_row_not_whole_blocks() -> None:
    with pytest.raises(QuantError, match="not a whole number"):
        dequantize(np.zeros(34, np.uint8), "Q8_0", (2, 16))


def test_empty_shape() -> None:
    with pytest.raises(QuantError, match="at least one dimension"):
        dequantize(np.zeros(4, np.uint8), "F32", ())


def test_quant_error_is_value_error() -> None:
    assert issubclass(QuantError, ValueError)


def test_runtime_quants_does_not_import_gguf() -> None:
    code = "import sys, rfc.runtime.model.quants; sys.exit('gguf' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@RANDOM_BYTES_WARN
@pytest.mark.parametrize("fmt", sorted(PACKED_FORMATS))
def test_packed_formats_decode_like_their_base(fmt: str) -> None:
    """A packed layout (the weight planner's repacking, rows padded to whole groups) decodes
    to exactly the values gguf-py decodes from the base format's bytes."""
    from rfc.compiler.weights import pack_x8

    base, g = PACKED_FORMATS[fmt].base, PACKED_FORMATS[fmt].group_rows
    rows, k = 13, 3 * PACKED_FORMATS[fmt].block_elems
    raw = np.random.default_rng(3).integers(0, 256, (rows, row_nbytes(base, k)), np.uint8)
    padded = np.concatenate([raw, np.zeros((-rows % g, raw.shape[1]), np.uint8)])
    want = gguf.quants.dequantize(raw, GGMLQuantizationType[base]).reshape(rows, k)
    assert_identical(dequantize(pack_x8(padded, fmt), fmt, (rows, k)), want)


@RANDOM_BYTES_WARN
@pytest.mark.parametrize("fmt", sorted(PLANAR_FORMATS))
@pytest.mark.parametrize("rows,blocks", [(1, 1), (7, 3), (13, 9)])
def test_planar_formats_decode_like_their_base(fmt: str, rows: int, blocks: int) -> None:
    """A planar GPU layout (the weight planner's repacking for gfx*/sm_*) decodes to exactly
    the values gguf-py decodes from the base format's bytes; the planes of a row start
    16-byte aligned, rows are whole multiples of 16 bytes, and unpacking is the inverse of
    packing byte for byte (random bytes: every bit of the GGUF block must survive). Block
    counts 1, 3 and 9 leave the small planes unaligned before their padding."""
    from rfc.compiler.weights_planar import pack_planar
    from rfc.runtime.model.quants_planar import unpack_planar

    f = PLANAR_FORMATS[fmt]
    k = blocks * f.block_elems
    raw = np.random.default_rng(rows * 31 + blocks).integers(0, 256, (rows, row_nbytes(f.base, k)), np.uint8)
    packed = pack_planar(raw, fmt)
    assert packed.shape == (rows, tensor_nbytes(fmt, (rows, k)) // rows) and packed.shape[1] % PLANE_ALIGN == 0
    assert all(o % PLANE_ALIGN == 0 for o in plane_offsets(fmt, k))
    assert (unpack_planar(packed.reshape(-1), fmt, rows, k) == raw).all()
    want = gguf.quants.dequantize(raw, GGMLQuantizationType[f.base]).reshape(rows, k)
    assert_identical(dequantize(packed, fmt, (rows, k)), want)


def nib16(v: np.ndarray) -> np.ndarray:
    """artifacts/formats.py's nib16 from element values, the oracle of the packer's nib16_pair:
    [..., 32] 4-bit values -> [..., 16] bytes, byte j = v[j] | v[j + 16] << 4."""
    return (v[..., :16] | (v[..., 16:] << 4)).astype(np.uint8)


def crumb8(v: np.ndarray) -> np.ndarray:
    """Likewise crumb8, the oracle of crumb8_quad: [..., 32] 2-bit values -> [..., 8] bytes, byte j
    bits 2t.. = v[j + 8t]."""
    t = v.reshape(*v.shape[:-1], 4, 8).astype(np.uint8)
    return (t[..., 0, :] | (t[..., 1, :] << 2) | (t[..., 2, :] << 4) | (t[..., 3, :] << 6)).astype(np.uint8)


def test_planar_pieces_put_elements_where_the_table_says() -> None:
    """The piece encodings artifacts/formats.py describes, element by element (the GPU
    decoders in rfc_gpu_planar.h read them so)."""
    from rfc.compiler.weights_planar import bit4

    v = np.arange(32)
    assert list(nib16(v % 16)) == [(j % 16) | ((j + 16) % 16) << 4 for j in range(16)]
    c = crumb8(v % 4)
    assert all((int(c[j]) >> (2 * t)) & 3 == (j + 8 * t) % 4 for j in range(8) for t in range(4))
    bits = (v * 7 + 3) % 5 % 2
    b = bit4(bits)
    assert all((int(b[j]) >> t) & 1 == bits[j + 4 * t] for j in range(4) for t in range(8))


def test_the_packers_pieces_straight_from_bytes_are_the_pieces_of_their_values() -> None:
    """nib16_pair and crumb8_quad (the k-quants' repacking, on 8-byte words) give nib16 of each
    nibble's values and crumb8 of each bit pair's, for every byte value in every position."""
    from rfc.compiler.weights_planar import crumb8_quad, nib16_pair

    q = np.random.default_rng(5).integers(0, 256, (64, 3, 32), np.uint8)
    q[0, 0] = np.arange(32) * 8 + 7  # (and 0x00 / 0xFF rows)
    q[1, 0], q[2, 0] = 0, 255
    pair = nib16_pair(q)
    assert pair.shape == (64, 3, 2, 16)
    assert (pair[..., 0, :] == nib16(q & 0xF)).all() and (pair[..., 1, :] == nib16(q >> 4)).all()
    quad = crumb8_quad(q)
    assert quad.shape == (64, 3, 4, 8)
    assert all((quad[..., s, :] == crumb8((q >> (2 * s)) & 3)).all() for s in range(4))
