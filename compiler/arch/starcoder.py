"""`starcoder` (BigCode StarCoder 1, StarCoderBase, SantaCoder: multi-query attention), as
llama.cpp's src/models/starcoder.cpp builds it: the graph of gpt2 (compiler/arch/gpt2.py) with
one KV head for all query heads."""

from rfc.compiler.arch import classic
from rfc.compiler.arch.gpt2 import STYLE
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "starcoder", STYLE)
