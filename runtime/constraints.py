"""Constrained decoding: a grammar (JSON schema, Lark, GBNF) restricts which tokens a request
may sample next, through llguidance (the Rust engine llama.cpp and vLLM use; no deep-learning
framework needed).

- `Grammars` is built once per model, at load: llguidance's view of the bundle's tokenizer
  (tokenizer.json, ~0.4 s for a 49k vocabulary) and a cache of compiled grammars keyed by their
  text, so a schema sent with every request is validated once.
- `Grammar` is a validated, compiled grammar; `Grammar.matcher()` starts one request's state.
- `Matcher.mask(logits)` returns the logits with every token the grammar forbids at -inf, and
  `accept(token)` advances it. Only constrained rows call them: requests without a grammar
  pay nothing.

Every grammar problem is a `GrammarError` raised before the request is queued, naming what
the engine refuses (a schema keyword it does not implement, a syntax error): a constraint the
client asked for is never silently dropped.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import llguidance
import numpy as np

# Compiled grammars kept per model; each entry is the grammar text, a few KB at most.
_CACHE_ENTRIES = 256
# A grammar's text is bounded by the request body; this bounds what one compilation may cost.
_LIMITS = llguidance.LLParserLimits(step_lexer_fuel=2_000_000, initial_lexer_fuel=10_000_000)
# JSON as clients expect it from an API: compact, no whitespace freedom for the model to loop in.
_JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True}


class GrammarError(ValueError):
    """A grammar the engine cannot apply; `field` names the request field it came from."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Grammar:
    """A validated llguidance grammar for one model."""

    grammars: Grammars
    text: str  # llguidance's own serialized grammar

    def matcher(self) -> Matcher:
        return Matcher(self.grammars, self.text)


class Grammars:
    """The grammar side of one model: llguidance's tokenizer view and the compiled-grammar cache."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_ids: Iterable[int]):
        eos = sorted(set(eos_ids))
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos or None)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Grammar] = OrderedDict()

    def json_schema(self, schema: object, field_name: str) -> Grammar:
        if isinstance(schema, bool):  # JSON Schema's `true` and `false`
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise GrammarError(field_name, f"'{field_name}' must be a JSON schema object")
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=_JSON_OPTIONS)
        except ValueError as e:
            raise GrammarError(field_name, f"'{field_name}' is not a usable JSON schema: {e}") from None
        return self._compiled("json:" + json.dumps(schema, sort_keys=True), text, field_name)

    def any_json_object(self, field_name: str) -> Grammar:
        return self.json_schema({"type": "object"}, field_name)

    def lark(self, source: str, field_name: str) -> Grammar:
        return self._compiled("lark:" + source, llguidance.LLMatcher.grammar_from_lark(source), field_name)

    def gbnf(self, source: str, field_name: str) -> Grammar:
        """A llama.cpp GBNF grammar, through llguidance's converter to Lark."""
        try:
            text = llguidance.grammar_from("gbnf", source)
        except ValueError as e:
            raise GrammarError(field_name, f"'{field_name}' is not a GBNF grammar llguidance accepts: {e}") from None
        return self._compiled("gbnf:" + source, text, field_name)

    def _compiled(self, key: str, text: str, field_name: str) -> Grammar:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, self.tokenizer, limits=_LIMITS)
        if is_error:
            raise GrammarError(field_name, f"'{field_name}' cannot be applied: {messages[0] if messages else 'invalid'}")
        if messages:  # llguidance warns about the keywords it would ignore: a 400 naming them
            raise GrammarError(field_name, f"'{field_name}' uses what constrained decoding does not support: {'; '.join(messages)}")
        grammar = Grammar(self, text)
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return grammar


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalItems", "not", "contains", "if", "then", "else", "propertyNames")


def closed_objects(schema: object, under_all_of: bool = False) -> object:
    """A copy of `schema` where an object schema that does not say `additionalProperties`
    takes no keys beyond its `properties`, as llama.cpp's and Ollama's schema converters read
    it (JSON Schema's default would let a model pad its answer with invented keys forever).
    Branches of `allOf` stay open: closing them would make their combination unsatisfiable."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed_objects(v) for k, v in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(v) for v in out[key]]
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [closed_objects(v, under_all_of=True) for v in out["allOf"]]
    for key in (*_SUBSCHEMAS, "additionalProperties"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = closed_objects(out[key])
    if "properties" in out and "additionalProperties" not in out and not under_all_of:
        out["additionalProperties"] = False
    return out


class Matcher:
    """One request's position in its grammar."""

    def __init__(self, grammars: Grammars, text: str):
        self._m = llguidance.LLMatcher(grammars.tokenizer, text, log_level=0, limits=_LIMITS)
        if self._m.is_error():
            raise GrammarError("grammar", self._m.get_error())
        self._vocab = grammars.vocab_size
        self._words = np.empty((self._vocab + 31) // 32, dtype=np.int32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` with the tokens the grammar forbids next at -inf."""
        self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if self._m.is_error():
            raise GrammarError("grammar", self._m.get_error())
        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little", count=self._vocab).view(bool)
        return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def accept(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise GrammarError("grammar", f"token {token} breaks the grammar: {self._m.get_error()}")

    @property
    def is_done(self) -> bool:
        return self._m.is_stopped()
