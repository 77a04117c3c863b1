"""Write a llama-architecture GGUF with random weights, for benchmarks and memory tests.

    python tools/make_gguf.py OUT.gguf --size 2GB --format Q8_0
    python tools/make_gguf.py OUT.gguf --preset tinyllama-1.1b --format Q4_K_M
    python tools/make_gguf.py OUT.gguf --dim 256 --layers 2 --ffn 768 --heads 8 --kv-heads 2

A vocab of 512 reuses the stories260K SentencePiece vocab; any other size is synthetic.

Tensor infos go out first and tensor data one tensor at a time, so memory stays near the
largest single tensor whatever the file size. Quantized tensors are random block bytes whose
fp16 scales are set so every weight matrix has an RMS of about 1/sqrt(row length): a
unit-RMS input then gives unit-RMS outputs and the activations stay finite (also in fp16).
The same arguments and --seed always give the same bytes.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType
from gguf import quants as gguf_quants

Q = GGMLQuantizationType
STORIES_VOCAB = Path(__file__).resolve().parents[1] / "compiler" / "demo" / "stories260K.gguf"
STORIES_VOCAB_SIZE = 512
CONTEXT_LENGTH = 2048
_SLAB_ROWS = 1024


class SpecError(ValueError):
    """The requested model shape or format cannot be written."""


@dataclass(frozen=True)
class ModelShape:
    dim: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


PRESETS: dict[str, ModelShape] = {
    "125m": ModelShape(dim=768, layers=12, ffn=2048, heads=12, kv_heads=12, vocab=32000),
    "tinyllama-1.1b": ModelShape(dim=2048, layers=22, ffn=5632, heads=32, kv_heads=4, vocab=32000),
    "3b": ModelShape(dim=3072, layers=28, ffn=8192, heads=24, kv_heads=8, vocab=32000),
    "7b": ModelShape(dim=4096, layers=32, ffn=11008, heads=32, kv_heads=32, vocab=32000),
}


@dataclass(frozen=True)
class FileType:
    """Which tensor type each weight gets, after llama.cpp's llama-quantize mixtures."""

    ftype: LlamaFileType
    weights: Q
    output: Q
    more_bits: Q | None = None  # attn_v / ffn_down in llama.cpp's "use_more_bits" layers


FILE_TYPES: dict[str, FileType] = {
    "F32": FileType(LlamaFileType.ALL_F32, Q.F32, Q.F32),
    "F16": FileType(LlamaFileType.MOSTLY_F16, Q.F16, Q.F16),
    "BF16": FileType(LlamaFileType.MOSTLY_BF16, Q.BF16, Q.BF16),
    "Q8_0": FileType(LlamaFileType.MOSTLY_Q8_0, Q.Q8_0, Q.Q8_0),
    "Q4_0": FileType(LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, Q.Q6_K),
    "Q4_1": FileType(LlamaFileType.MOSTLY_Q4_1, Q.Q4_1, Q.Q6_K),
    "Q5_0": FileType(LlamaFileType.MOSTLY_Q5_0, Q.Q5_0, Q.Q6_K),
    "Q5_1": FileType(LlamaFileType.MOSTLY_Q5_1, Q.Q5_1, Q.Q6_K),
    "Q4_K_M": FileType(LlamaFileType.MOSTLY_Q4_K_M, Q.Q4_K, Q.Q6_K, more_bits=Q.Q6_K),
    "Q5_K_M": FileType(LlamaFileType.MOSTLY_Q5_K_M, Q.Q5_K, Q.Q6_K, more_bits=Q.Q6_K),
    "Q6_K": FileType(LlamaFileType.MOSTLY_Q6_K, Q.Q6_K, Q.Q6_K),
}
# The i-quants, every weight one type (llama-quantize mixes them): for planning and kernel tests
# at real sizes, not for quality (random grid indices and signs).
for _iq in ("IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_S"):
    FILE_TYPES[_iq] = FileType(LlamaFileType[f"MOSTLY_{_iq}"], Q[_iq], Q.Q6_K)
FILE_TYPES["Q4_K"] = FILE_TYPES["Q4_K_M"]
FILE_TYPES["Q5_K"] = FILE_TYPES["Q5_K_M"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order: the last dimension is GGUF's ne[0]
    qtype: Q

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block_size * type_size


def _use_more_bits(layer: int, layers: int) -> bool:
    # llama.cpp (llama-quant.cpp): first and last eighth of the layers, and every third between.
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def plan_tensors(shape: ModelShape, file_type: FileType) -> list[TensorSpec]:
    """Every tensor of the model, in file order, with its type."""
    d, kv = shape.dim, shape.kv_heads * shape.head_dim
    w = file_type.weights
    specs = [TensorSpec("token_embd.weight", (shape.vocab, d), w)]
    for i in range(shape.layers):
        wide = file_type.more_bits if file_type.more_bits and _use_more_bits(i, shape.layers) else w
        specs += [
            TensorSpec(f"blk.{i}.attn_norm.weight", (d,), Q.F32),
            TensorSpec(f"blk.{i}.attn_q.weight", (d, d), w),
            TensorSpec(f"blk.{i}.attn_k.weight", (kv, d), w),
            TensorSpec(f"blk.{i}.attn_v.weight", (kv, d), wide),
            TensorSpec(f"blk.{i}.attn_output.weight", (d, d), w),
            TensorSpec(f"blk.{i}.ffn_norm.weight", (d,), Q.F32),
            TensorSpec(f"blk.{i}.ffn_gate.weight", (shape.ffn, d), w),
            TensorSpec(f"blk.{i}.ffn_up.weight", (shape.ffn, d), w),
            TensorSpec(f"blk.{i}.ffn_down.weight", (d, shape.ffn), wide),
        ]
    specs += [
        TensorSpec("output_norm.weight", (d,), Q.F32),
        TensorSpec("output.weight", (shape.vocab, d), file_type.output),
    ]
    return specs


def check_shape(shape: ModelShape, file_type: FileType) -> None:
    if min(shape.dim, shape.layers, shape.ffn, shape.heads, shape.kv_heads) < 1:
        raise SpecError(f"every dimension must be positive: {shape}")
    if shape.dim % shape.heads or shape.heads % shape.kv_heads or shape.head_dim % 2:
        raise SpecError(
            f"dim {shape.dim} must split into {shape.heads} heads of even size, "
            f"and heads into {shape.kv_heads} kv heads"
        )
    if shape.vocab != STORIES_VOCAB_SIZE and shape.vocab < 3 + 256 + 1:
        raise SpecError(f"a synthetic vocab needs at least 260 tokens, got {shape.vocab}")
    for spec in plan_tensors(shape, file_type):
        block_size = GGML_QUANT_SIZES[spec.qtype][0]
        if spec.shape[-1] % block_size:
            raise SpecError(
                f"{spec.name}: rows of {spec.shape[-1]} are not whole {spec.qtype.name} blocks of {block_size}"
            )


def model_nbytes(shape: ModelShape, file_type: FileType) -> int:
    return sum(spec.nbytes for spec in plan_tensors(shape, file_type))


def shape_for_size(target: int, file_type: FileType, candidates: list[ModelShape]) -> ModelShape:
    """The candidate whose size is closest to `target` bytes, with its layer count then
    solved so the tensor data comes closest to `target`."""
    base = min(candidates, key=lambda s: abs(math.log(model_nbytes(s, file_type) / target)))
    lo, hi = 1, 1024
    while lo < hi:  # smallest layer count reaching the target
        mid = (lo + hi) // 2
        if model_nbytes(replace(base, layers=mid), file_type) < target:
            lo = mid + 1
        else:
            hi = mid
    fits = [replace(base, layers=n) for n in (max(1, lo - 1), lo)]
    return min(fits, key=lambda s: abs(model_nbytes(s, file_type) - target))


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos: int
    eos: int
    unk: int


def stories_vocab(path: Path = STORIES_VOCAB) -> Vocab:
    fields = GGUFReader(path).fields
    return Vocab(
        tokens=list(fields["tokenizer.ggml.tokens"].contents()),
        scores=list(fields["tokenizer.ggml.scores"].contents()),
        types=list(fields["tokenizer.ggml.token_type"].contents()),
        bos=int(fields["tokenizer.ggml.bos_token_id"].contents()),
        eos=int(fields["tokenizer.ggml.eos_token_id"].contents()),
        unk=int(fields["tokenizer.ggml.unknown_token_id"].contents()),
    )


def synthetic_vocab(size: int, rng: np.random.Generator) -> Vocab:
    """SentencePiece layout: <unk>, <s>, </s>, 256 byte tokens, then pieces ordered by score."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    pieces = ["▁"] + list(letters) + ["▁" + c for c in letters]
    seen = set(pieces)
    while len(pieces) < size - 259:
        word = "".join(rng.choice(letters, size=int(rng.integers(2, 9))))
        piece = "▁" + word if rng.random() < 0.5 else word
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    pieces = pieces[: size - 259]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)  # unknown, control, byte, normal
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return Vocab(tokens, scores, types, bos=1, eos=2, unk=0)


@dataclass(frozen=True)
class ScaleFields:
    """Where a block keeps its fp16 scale, and its fp16 min (if any) as a multiple of the
    scale that centres the random weights on zero."""

    d: int
    min: int | None = None
    min_ratio: float = 0.0


SCALES: dict[Q, ScaleFields] = {
    Q.Q8_0: ScaleFields(d=0),
    Q.Q4_0: ScaleFields(d=0),
    Q.Q5_0: ScaleFields(d=0),
    Q.Q4_1: ScaleFields(d=0, min=2, min_ratio=-7.5),  # w = d*q + m, q in 0..15
    Q.Q5_1: ScaleFields(d=0, min=2, min_ratio=-15.5),
    Q.Q4_K: ScaleFields(d=0, min=2, min_ratio=7.5),  # w = d*sc*q - dmin*m, q in 0..15
    Q.Q5_K: ScaleFields(d=0, min=2, min_ratio=15.5),
    Q.Q6_K: ScaleFields(d=208),
    # the i-quants: an fp16 d first in every block
    **{
        Q[iq]: ScaleFields(d=0)
        for iq in ("IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_S")
    },
}


def random_blocks(rng: np.random.Generator, qtype: Q, n_blocks: int, scale: float) -> np.ndarray:
    """Random block bytes whose fp16 scales are `scale` times a factor in [0.5, 1.5)."""
    fields = SCALES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    d = (scale * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
    blocks[:, fields.d : fields.d + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    if fields.min is not None:
        m = (d.astype(np.float32) * fields.min_ratio).astype(np.float16)
        blocks[:, fields.min : fields.min + 2] = m.view(np.uint8).reshape(n_blocks, 2)
    return blocks


@cache
def unit_rms(qtype: Q) -> float:
    """RMS of the weights `random_blocks` gives at scale 1, measured once per type."""
    sample = random_blocks(np.random.default_rng(0), qtype, 4096, 1.0)
    return float(np.sqrt(np.mean(gguf_quants.dequantize(sample, qtype) ** 2)))


def random_tensor(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    """The tensor's bytes in GGUF layout, shaped (rows, bytes per row)."""
    rows, cols = math.prod(spec.shape[:-1]), spec.shape[-1]
    if len(spec.shape) == 1:  # norm weights
        return (1.0 + rng.uniform(-0.05, 0.05, cols).astype(np.float32)).view(np.uint8)[None]
    rms = 1.0 / math.sqrt(cols)
    if spec.qtype in SCALES:
        n_blocks = rows * cols // GGML_QUANT_SIZES[spec.qtype][0]
        blocks = random_blocks(rng, spec.qtype, n_blocks, rms / unit_rms(spec.qtype))
        return blocks.reshape(rows, -1)
    # Filled a slab of rows at a time, so no float32 copy of a whole f16 tensor exists.
    out = np.empty((rows, cols), dtype=np.float32 if spec.qtype == Q.F32 else np.uint16)
    for start in range(0, rows, _SLAB_ROWS):
        w = rng.standard_normal((min(_SLAB_ROWS, rows - start), cols), dtype=np.float32)
        w *= np.float32(rms)
        if spec.qtype == Q.F16:
            w = w.astype(np.float16).view(np.uint16)
        elif spec.qtype == Q.BF16:
            w = (w.view(np.uint32) >> 16).astype(np.uint16)  # truncation is fine for noise
        out[start : start + len(w)] = w
    return out.view(np.uint8)


def write_gguf(path: Path, shape: ModelShape, format_name: str, seed: int, name: str) -> None:
    """Write the model to `path`, one tensor in memory at a time."""
    file_type = FILE_TYPES[format_name]
    check_shape(shape, file_type)
    # Separate streams, so the weights do not depend on how many draws the vocab took.
    vocab_rng, rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if shape.vocab == STORIES_VOCAB_SIZE:
        vocab = stories_vocab()
    else:
        vocab = synthetic_vocab(shape.vocab, vocab_rng)
    specs = plan_tensors(shape, file_type)

    writer = GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(shape.dim)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(int(file_type.ftype))
    writer.add_quantization_version(2)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    writer.add_unk_token_id(vocab.unk)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for spec in specs:
        row_bytes = spec.nbytes // math.prod(spec.shape[:-1])
        writer.add_tensor_info(
            spec.name,
            (*spec.shape[:-1], row_bytes),
            np.dtype(np.uint8),
            spec.nbytes,
            raw_dtype=spec.qtype,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for spec in specs:
        writer.write_tensor_data(random_tensor(rng, spec))
    writer.close()


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2GB, 500MB, 1.5GiB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="GGUF file to write")
    p.add_argument("--format", default="Q8_0", choices=sorted(FILE_TYPES), help="weight format")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model shape (default: 125m)")
    p.add_argument(
        "--size",
        type=parse_size,
        help="target file size: solves the layer count, and picks the closest preset unless --preset is given",
    )
    for flag in ("dim", "layers", "ffn", "heads", "kv-heads", "vocab"):
        p.add_argument(f"--{flag}", type=int, help="override the preset's value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="general.name (default: derived from the shape and format)")
    return p


def shape_from_args(args: argparse.Namespace) -> ModelShape:
    overrides = {
        field: getattr(args, field)
        for field in ("dim", "layers", "ffn", "heads", "kv_heads", "vocab")
        if getattr(args, field) is not None
    }
    if args.size is None:
        return replace(PRESETS[args.preset or "125m"], **overrides)
    if "layers" in overrides:
        raise SpecError("--size solves the layer count: drop --layers or --size")
    presets = [PRESETS[args.preset]] if args.preset else list(PRESETS.values())
    candidates = [replace(p, **overrides) for p in presets]
    return shape_for_size(args.size, FILE_TYPES[args.format], candidates)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shape = shape_from_args(args)
        n_params = sum(math.prod(s.shape) for s in plan_tensors(shape, FILE_TYPES[args.format]))
        name = args.name or f"random-llama-{n_params / 1e6:.0f}M-{args.format}"
        write_gguf(args.out, shape, args.format, args.seed, name)
    except SpecError as e:
        parser.error(str(e))
    size = args.out.stat().st_size
    print(f"{args.out}: {size / 1e9:.3f} GB, {n_params / 1e6:.1f}M params, {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
