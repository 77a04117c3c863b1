"""Typed, bounded reads of a GGUF's metadata: the only way recipes see it.

A GGUF is untrusted input. Every count read here is an integer inside stated bounds, every
real number is finite and inside its range, and every string is one of the values the recipe
names, before anything is allocated or planned from it. The bounds are generous for real
models (a 4096-layer, 16M-token-context model would pass) and stop hostile values
(block_count = 2^31, context_length = 2^32 - 1, rms_eps = NaN) with one line.
"""

import math
import numbers
from typing import Any

# re-exported: the architecture modules import these bounds from here with the rest of the metadata
from rfc.artifacts.limits import MAX_CONTEXT, MAX_EXPERTS, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS  # noqa: F401
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_metadata import LLAMA_MAX_LAYERS
from rfc.compiler.gguf_reader import GGUFModel

MAX_EMBD = 1 << 18
MAX_FF = 1 << 20
MAX_VOCAB = 1 << 22

_REQUIRED = object()
# Keys llama.cpp reads for every architecture as a scalar or a per-layer array (get_key_or_arr):
# Metadata.int reads an array of them when its layers agree.
UNIFORM_PER_LAYER = frozenset({"attention.head_count", "attention.head_count_kv", "feed_forward_length",
                               "swiglu_clamp_exp", "swiglu_clamp_shexp"})  # fmt: skip


class Metadata:
    """The `<arch>.*` keys of one model (and `general.*`, `tokenizer.*` by their full names), read
    with bounds."""

    def __init__(self, model: GGUFModel, arch: str):
        self.model = model
        self.arch = arch
        self.path = model.path.name

    def key(self, key: str) -> str:
        return key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"

    def has(self, key: str) -> bool:
        full = self.key(key)
        self.model.keys_read.add(full)
        return full in self.model.metadata or full in self.model.unread

    def ignored(self, key: str, why: str) -> None:
        """Records a key the recipe knowingly leaves alone (llama.cpp ignores it for this
        architecture too: `why`), so that math_keys.py does not refuse it."""
        del why  # the reason is for the reader of the recipe
        self.model.keys_read.add(self.key(key))

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as decoded (a number, a string, a list), `default` when absent; the recipe
        checks it itself (M-RoPE's sections)."""
        return self._raw(key, default)

    def _raw(self, key: str, default: Any) -> Any:
        full = self.key(key)
        self.model.keys_read.add(full)
        if full in self.model.unread:  # an array over its bound, left undecoded (gguf_metadata.py)
            raise CompileError(self.model.unread[full])
        if full in self.model.metadata:
            return self.model.metadata[full]
        if default is _REQUIRED:
            raise CompileError(f"{self.path}: missing metadata {full}")
        return default

    def int(self, key: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
        value = self._raw(key, default)
        if key in UNIFORM_PER_LAYER and isinstance(value, (list, tuple)):
            value = self._uniform(key, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CompileError(f"{self.path}: metadata {self.key(key)} must be an integer, got {_show(value)}")
        if not lo <= value <= hi:
            raise CompileError(f"{self.path}: metadata {self.key(key)} = {int(value)} is outside [{lo}, {hi}]")
        return int(value)

    def _uniform(self, key: str, value: list) -> Any:
        """A per-layer array read where the recipe has one value for every layer: its first
        block_count entries, which must be equal (llama.cpp's saver writes these keys as arrays
        of LLAMA_MAX_LAYERS entries whatever the model)."""
        n_layers = self.model.metadata.get(self.key("block_count"))
        if isinstance(n_layers, bool) or not isinstance(n_layers, numbers.Integral) or not 1 <= n_layers <= len(value):
            raise CompileError(f"{self.path}: metadata {self.key(key)} has {len(value)} entries, not one per layer")
        if len({repr(v) for v in value[:n_layers]}) != 1:
            raise CompileError(f"{self.path}: metadata {self.key(key)} differs between layers, which rfc's {self.arch} "
                               "recipe does not support")  # fmt: skip
        return value[0]

    def float(self, key: str, lo: float, hi: float, default: Any = _REQUIRED, *, open_lo: bool = False) -> float:
        """A finite real in [lo, hi] ((lo, hi] with open_lo)."""
        value = self._raw(key, default)
        if key in UNIFORM_PER_LAYER and isinstance(value, (list, tuple)):
            value = self._uniform(key, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise CompileError(f"{self.path}: metadata {self.key(key)} must be a number, got {_show(value)}")
        value = float(value)
        if not math.isfinite(value) or value < lo or value > hi or (open_lo and value == lo):
            bounds = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
            raise CompileError(f"{self.path}: metadata {self.key(key)} = {value} is not a finite number in {bounds}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> str:
        value = self._raw(key, default)
        if not isinstance(value, str) or value not in choices:
            raise CompileError(
                f"{self.path}: metadata {self.key(key)} = {_show(value)} is not supported (supported: "
                f"{', '.join(choices)})"
            )
        return value

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._raw(key, default)
        if not isinstance(value, (bool, numbers.Integral)):
            raise CompileError(f"{self.path}: metadata {self.key(key)} must be a boolean, got {_show(value)}")
        return bool(value)

    def is_list(self, key: str) -> bool:
        return isinstance(self._raw(key, None), (list, tuple))

    def flags(self, key: str, max_len: int) -> tuple[bool, ...]:
        """An array of booleans or integers read as per-entry switches (nonzero: on), at most
        max_len entries, or LLAMA_MAX_LAYERS when that is more (a per-layer array as llama.cpp's
        saver writes it: 512 entries, of which the recipe reads the first block_count)."""
        value = self._raw(key, _REQUIRED)
        max_len = max(max_len, LLAMA_MAX_LAYERS)
        if not isinstance(value, (list, tuple)) or len(value) > max_len:
            raise CompileError(f"{self.path}: metadata {self.key(key)} is not an array of at most {max_len} entries")
        if not all(isinstance(v, (bool, numbers.Integral)) for v in value):
            raise CompileError(f"{self.path}: metadata {self.key(key)} is not an array of booleans or integers")
        return tuple(bool(v) for v in value)

    def per_layer(self, key: str, n_layers: int, lo: int, hi: int, default: Any = _REQUIRED) -> tuple[int, ...]:
        """An integer for every layer: one for all (a scalar) or an array of at least n_layers
        entries, the first n_layers each in [lo, hi] (llama.cpp's get_key_or_arr: per-layer head
        counts; its saver writes LLAMA_MAX_LAYERS entries whatever the layer count, and the
        decoder bounded the array by that already)."""
        value = self._raw(key, default)
        if not isinstance(value, (list, tuple)):
            return (self.int(key, lo, hi, default),) * n_layers
        if len(value) < n_layers:
            raise CompileError(f"{self.path}: metadata {self.key(key)} has {len(value)} entries for {n_layers} layers")
        value = value[:n_layers]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and lo <= v <= hi for v in value):
            raise CompileError(f"{self.path}: metadata {self.key(key)} is not an array of integers in [{lo}, {hi}]")
        return tuple(int(v) for v in value)

    def per_layer_float(
        self, key: str, n_layers: int, lo: float, hi: float, default: Any = _REQUIRED
    ) -> tuple[float, ...]:
        """A finite real in [lo, hi] for every layer: one for all (a scalar) or an array of at
        least n_layers entries, of which the first n_layers are read (get_key_or_arr: step35's
        per-layer SwiGLU clamps)."""
        value = self._raw(key, default)
        if not isinstance(value, (list, tuple)):
            return (self.float(key, lo, hi, default),) * n_layers
        if len(value) < n_layers:
            raise CompileError(f"{self.path}: metadata {self.key(key)} has {len(value)} entries for {n_layers} layers")
        value = value[:n_layers]
        if not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
            for v in value
        ):
            raise CompileError(f"{self.path}: metadata {self.key(key)} is not an array of numbers in [{lo}, {hi}]")
        return tuple(float(v) for v in value)

    def text(self, key: str, default: Any = _REQUIRED, max_len: int = 256) -> str:
        """A string shown to people (a model's name): data only, never put into source."""
        value = self._raw(key, default)
        if not isinstance(value, str):
            raise CompileError(f"{self.path}: metadata {self.key(key)} must be a string, got {_show(value)}")
        return value[:max_len]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
