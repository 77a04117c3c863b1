"""Per-layer embeddings (PLE: Gemma 4 E2B/E4B, gemma3n), as llama.cpp builds them
(src/models/gemma4.cpp: build_inp_per_layer, project_per_layer_inputs and the end of each layer).

Every layer i gets its own input of `width` values per token (n_embd_per_layer):

    in_i = (sqrtf(width) * per_layer_token_embd[token, i*width : (i+1)*width]
            + rmsnorm(per_layer_model_proj_i(x0) * 1/sqrtf(n_embd)) * per_layer_proj_norm) * 1/sqrtf(2)

x0 being the scaled token embedding (the stack's input) and per_layer_model_proj_i the rows
[i*width, (i+1)*width) of per_layer_model_proj; after the layer's FFN residual the layer adds

    post_norm(proj(gelu_tanh(inp_gate x) * in_i))

with its tensors blk.N.inp_gate, blk.N.proj and blk.N.post_norm (llama-arch.cpp's names).

All of it is plan ops that exist: the lookup is an `embed` of columns [i*width, (i+1)*width) of
the table (its `column` attribute), the projection a `matmul` of a row range, then `scale`,
`rmsnorm`, `add`, `swiglu` (gelu_tanh: gelu(gate) * up) and `matmul`. Each layer's input is made
where the layer uses it, from x0 kept aside (`ple_x0`): n_embd values per token alive, not
n_layers * width (E2B: 1,536, not 8,960).
"""

from dataclasses import dataclass

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.metadata import MAX_EMBD, Metadata
from rfc.compiler.errors import CompileError

KEY = "embedding_length_per_layer_input"
X0, INPUT, PROJ, GATE = "ple_x0", "ple_in", "ple_proj", "ple_gate"  # the plan buffers


@dataclass(frozen=True)
class PerLayerEmbedding:
    width: int  # n_embd_per_layer
    n_layers: int
    n_embd: int
    table: str  # per_layer_token_embd.weight [vocab, n_layers * width]
    proj: str  # per_layer_model_proj.weight [n_layers * width, n_embd] (its row ranges per layer)
    proj_norm: str  # per_layer_proj_norm.weight [width]

    @property
    def token_scale(self) -> float:
        return float(np.sqrt(np.float32(self.width)))  # sqrtf(n_embd_per_layer)

    @property
    def proj_scale(self) -> float:
        return float(np.float32(1.0) / np.sqrt(np.float32(self.n_embd)))  # 1.0f / sqrtf(n_embd)


INPUT_SCALE = float(np.float32(1.0) / np.sqrt(np.float32(2.0)))  # 1.0f / sqrtf(2.0f)


def read_per_layer_embedding(
    md: Metadata, b: ModelBuilder, n_embd: int, n_layers: int, vocab: int
) -> PerLayerEmbedding | None:
    """The file's PLE (None when embedding_length_per_layer_input is 0 or absent), its width
    bounded and the three model-wide tensors checked against it before anything is sized."""
    width = md.int(KEY, 0, MAX_EMBD, default=0)
    if not width:
        return None
    if width * n_layers > MAX_EMBD:  # E4B: 256 x 42 = 10,752
        raise CompileError(f"{md.path}: {md.key(KEY)} {width} x {n_layers} layers is too large a per-layer table")
    total = width * n_layers
    table = b.tensor("per_layer_token_embd.weight", "per_layer_token_embd", (vocab, total))
    proj = "per_layer_model_proj.weight"
    b.source(proj, (total, n_embd))  # checked here; used as row ranges, one per layer
    norm = b.tensor("per_layer_proj_norm.weight", "per_layer_proj_norm", (width,))
    return PerLayerEmbedding(width, n_layers, n_embd, table, proj, norm)


def declare_buffers(b: ModelBuilder, ple: PerLayerEmbedding) -> None:
    b.buffer(X0, "T", ple.n_embd)
    for name in (INPUT, PROJ, GATE):
        b.buffer(name, "T", ple.width)


def keep_input(b: ModelBuilder, src: str = "x") -> None:
    """ple_x0 = src: the scaled token embedding, which every layer's projection reads."""
    b.op("scale", (src,), (X0,), factor=1.0)


def layer_input(b: ModelBuilder, ple: PerLayerEmbedding, i: int, eps: float) -> None:
    """ple_in = layer i's per-layer input (the module docstring's in_i)."""
    w = ple.width
    b.op("embed", ("tokens",), (INPUT,), (ple.table,), scale=ple.token_scale, column=i * w)
    rows = b.rows(
        f"{ple.proj}:{i}", "per_layer_model_proj", ple.proj, (ple.n_layers * w, ple.n_embd), i * w, (i + 1) * w
    )
    b.op("matmul", (X0,), (PROJ,), (rows,))
    b.op("scale", (PROJ,), (PROJ,), factor=ple.proj_scale)
    b.op("rmsnorm", (PROJ,), (PROJ,), (ple.proj_norm,), eps=eps)
    b.op("add", (PROJ, INPUT), (INPUT,))
    b.op("scale", (INPUT,), (INPUT,), factor=INPUT_SCALE)


def layer_output(
    b: ModelBuilder, ple: PerLayerEmbedding, i: int, eps: float, *, src: str = "x", dst: str = "h"
) -> None:
    """dst = post_norm(proj(gelu_tanh(inp_gate src) * ple_in)) with layer i's tensors (blk.N.post_norm, ...) for
    layer i; the caller adds it to its residual (gemma4: x += h)."""
    p = f"blk.{i}."
    gate = b.tensor(p + "inp_gate.weight", "per_layer_inp_gate", (ple.width, ple.n_embd))
    b.op("matmul", (src,), (GATE,), (gate,))
    b.op("swiglu", (GATE, INPUT), (GATE,), activation="gelu_tanh")
    proj = b.tensor(p + "proj.weight", "per_layer_proj", (ple.n_embd, ple.width))
    b.op("matmul", (GATE,), (dst,), (proj,))
    norm = b.tensor(p + "post_norm.weight", "per_layer_post_norm", (ple.n_embd,))
    b.op("rmsnorm", (dst,), (dst,), (norm,), eps=eps)
