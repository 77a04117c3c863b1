"""Constrained decoding: a grammar (JSON schema, Lark, GBNF, a regex, a list of choices)
restricts which tokens a request may sample next, through llguidance (the Rust engine
llama.cpp and vLLM use; no deep-learning framework needed).

- `Grammars` is built once per model, at load: llguidance's view of the bundle's tokenizer
  (tokenizer.json, ~0.4 s for a 49k vocabulary) and a cache of compiled grammars keyed by their
  text, so a schema sent with every request is validated once.
- `Grammar` is a validated, compiled grammar; `Grammar.matcher()` starts one request's state.
- `Matcher.mask(logits)` returns the logits with every token the grammar forbids at -inf, and
  `accept(token)` advances it. Only constrained rows call them: requests without a grammar
  pay nothing. `allows(token)` checks a drawn token first: where the mask allowed one the
  grammar refuses, `refuse` masks it and the engine draws again.

A JSON schema is read leniently first, as llama.cpp reads it (runtime/sampling/schema_lenient.py:
`uniqueItems` and unknown `format` values ignored and logged, open numbers bounded to 16
integral digits). Every grammar problem is a `GrammarError` raised before the request is queued, naming what
the engine refuses (a schema keyword it does not implement, a syntax error, a limit of
runtime/sampling/grammar_limits.py): a constraint the client asked for is never silently dropped (what
the lenient reading ignores is logged). A grammar that turns out, while decoding, to need text
the vocabulary cannot write (or that exhausts llguidance's lexer limits) fails its request with
a `GrammarError` too: the servers answer it as a 400 naming the field, never as a 500.

Compiling runs in llguidance's native code, which recurses as deep as the grammar nests and
may take a while: it happens on `GrammarWorkers` threads, with a stack sized for the deepest
grammar the limits admit and a bounded queue (full: `Busy`, a 503), never on an HTTP thread.
A request's matcher is dropped when the request ends (the engine does that), so its lexer
states go with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import llguidance
import numpy as np

from rfc.runtime.sampling.grammar_limits import (
    GrammarError,
    GrammarLimits,
    check_choice,
    check_grammar,
    check_regex,
    check_schema,
)
from rfc.runtime.sampling.schema_lenient import lenient
from rfc.runtime.core.work_pool import Busy, WorkPool

log = logging.getLogger("rfc.grammar")

__all__ = ["Busy", "Grammar", "GrammarError", "GrammarLimits", "GrammarWorkers", "Grammars", "Matcher"]

# Compiled grammars kept per model; each entry is the grammar text, a few KB at most.
_CACHE_ENTRIES = 256
# Tokens a request may draw that the mask allowed and the grammar then refused (Matcher.refuse):
# each costs a draw over the vocabulary, so a grammar that keeps doing so fails instead.
MAX_REFUSALS = 64
# JSON as clients expect it from an API: compact, no whitespace freedom for the model to loop in.
_JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True}
# llguidance recurses ~3 KiB of native stack per level of nesting (an 8 MiB thread stack
# overflowed at a 3,000-long $ref chain); the limits admit 512 levels. 64 MiB is address
# space reserved per worker, touched only as deep as a grammar goes.
_WORKER_STACK_BYTES = 64 << 20


class GrammarWorkers(WorkPool):
    """The threads that run llguidance's compilation, with a stack for the deepest grammar the
    limits admit."""

    def __init__(self, threads: int = 2, max_pending: int = 32, timeout_s: float = 10.0):
        super().__init__("grammar compilation", threads, max_pending, timeout_s, stack_bytes=_WORKER_STACK_BYTES)


@dataclass(frozen=True)
class Grammar:
    """A validated llguidance grammar for one model."""

    grammars: Grammars
    text: str  # llguidance's own serialized grammar
    schema: object = field(default=None, compare=False)  # the JSON schema it came from (None: Lark or GBNF)
    source: str = field(default="grammar", compare=False)  # the request field it came from, for errors

    def matcher(self) -> Matcher:
        return self.grammars.workers.run(lambda: Matcher(self.grammars, self.text, self.source))


class Grammars:
    """The grammar side of one model: llguidance's tokenizer view and the compiled-grammar cache."""

    def __init__(
        self,
        tokenizer_json: str,
        vocab_size: int,
        eos_ids: Iterable[int],
        limits: GrammarLimits = GrammarLimits(),
        workers: GrammarWorkers | None = None,
    ):
        eos = sorted(set(eos_ids))
        self.vocab_size = vocab_size
        self.limits = limits
        self.parser_limits = llguidance.LLParserLimits(
            max_lexer_states=limits.max_lexer_states,
            step_lexer_fuel=limits.step_lexer_fuel,
            initial_lexer_fuel=limits.initial_lexer_fuel,
        )
        self.workers = workers or GrammarWorkers(threads=1)
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos or None)
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, Grammar] = OrderedDict()

    def json_schema(self, schema: object, field_name: str) -> Grammar:
        if isinstance(schema, bool):  # JSON Schema's `true` and `false`
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise GrammarError(field_name, f"'{field_name}' must be a JSON schema object")
        check_schema(schema, field_name, self.limits)
        key = _key("json", json.dumps(schema, sort_keys=True))
        hit = self._cached(key, field_name)
        if hit is not None:
            return hit

        def build() -> str:
            read, ignored = lenient(schema)
            if ignored:
                log.info(
                    "%s: ignored in the JSON schema (not enforced while decoding): %s", field_name, ", ".join(ignored)
                )
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(closed_objects(read), defaults=_JSON_OPTIONS)
            except ValueError as e:
                raise GrammarError(field_name, f"'{field_name}' is not a usable JSON schema: {e}") from None

        return self._compiled(key, build, field_name, schema)

    def any_json_object(self, field_name: str) -> Grammar:
        return self.json_schema({"type": "object"}, field_name)

    def lark(self, source: str, field_name: str) -> Grammar:
        check_grammar(source, "lark", field_name, self.limits)
        key = _key("lark", source)
        hit = self._cached(key, field_name)
        if hit is not None:
            return hit

        def build() -> str:
            try:
                return llguidance.LLMatcher.grammar_from_lark(source)
            except ValueError as e:
                raise GrammarError(
                    field_name, f"'{field_name}' is not a Lark grammar llguidance accepts: {e}"
                ) from None

        return self._compiled(key, build, field_name)

    def gbnf(self, source: str, field_name: str) -> Grammar:
        """A llama.cpp GBNF grammar, through llguidance's converter to Lark."""
        check_grammar(source, "gbnf", field_name, self.limits)
        key = _key("gbnf", source)
        hit = self._cached(key, field_name)
        if hit is not None:
            return hit

        def build() -> str:
            try:
                return llguidance.grammar_from("gbnf", source)
            except (ValueError, RecursionError) as e:
                raise GrammarError(
                    field_name, f"'{field_name}' is not a GBNF grammar llguidance accepts: {e}"
                ) from None

        return self._compiled(key, build, field_name)

    def regex(self, source: str, field_name: str) -> Grammar:
        """Output that matches a regex whole (vLLM's `regex`; Rust regex syntax)."""
        check_regex(source, field_name, self.limits)
        key = _key("regex", source)
        hit = self._cached(key, field_name)
        return (
            hit
            if hit is not None
            else self._compiled(key, lambda: llguidance.grammar_from("regex", source), field_name)
        )

    def choice(self, options: object, field_name: str) -> Grammar:
        """Output that is exactly one of a list of strings (vLLM's `choice`)."""
        text = json.dumps(check_choice(options, field_name, self.limits))
        key = _key("choice", text)
        hit = self._cached(key, field_name)
        return (
            hit if hit is not None else self._compiled(key, lambda: llguidance.grammar_from("choice", text), field_name)
        )

    def _cached(self, key: bytes, field_name: str) -> Grammar | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        return None if hit is None else replace(hit, source=field_name)

    def _compiled(self, key: bytes, build: Callable[[], str], field_name: str, schema: object = None) -> Grammar:
        """Converts and validates on a grammar worker; caches the result."""

        def job() -> tuple[str, bool, list[str]]:
            text = build()
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
                text, self.tokenizer, limits=self.parser_limits
            )
            return text, is_error, messages

        text, is_error, messages = self.workers.run(job)
        if is_error:
            raise GrammarError(
                field_name, f"'{field_name}' cannot be applied: {messages[0] if messages else 'invalid'}"
            )
        if messages:  # llguidance warns about the keywords it would ignore: a 400 naming them
            raise GrammarError(
                field_name, f"'{field_name}' uses what constrained decoding does not support: {'; '.join(messages)}"
            )
        grammar = Grammar(self, text, schema, field_name)
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return grammar


def _key(kind: str, text: str) -> bytes:
    """A cache key that costs 32 bytes, not the grammar's text."""
    return hashlib.sha256(f"{kind}:{text}".encode("utf-8", "surrogatepass")).digest()


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

    def __init__(self, grammars: Grammars, text: str, source: str = "grammar"):
        self._source = source
        self._m = llguidance.LLMatcher(grammars.tokenizer, text, log_level=0, limits=grammars.parser_limits)
        if self._m.is_error():
            raise self._error("")
        self._vocab = grammars.vocab_size
        self._refusals = 0
        self._words = np.empty((self._vocab + 31) // 32, dtype=np.int32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` with the tokens the grammar forbids next at -inf."""
        self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if self._m.is_error():
            raise self._error("")
        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little", count=self._vocab).view(bool)
        return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def allows(self, token: int) -> bool:
        """Whether the grammar takes `token` next. The mask can allow a token the grammar then
        refuses: llguidance 1.9 does so where the grammar needs a byte the vocabulary has no
        token for (SmolLM2 has none for 0xF1, the lead byte of U+51D52)."""
        if self._m.is_stopped():  # the grammar is complete: its mask allows the end of generation alone,
            return True  # which validate_tokens counts as invalid, and accept takes
        return self._m.validate_tokens([token]) == 1

    def refuse(self, logits: np.ndarray, token: int) -> np.ndarray:
        """`logits` (masked already) with `token` at -inf too, after `allows` said no; a
        GrammarError when no token is left, or after MAX_REFUSALS (each refusal is a draw)."""
        self._refusals += 1
        out = logits.copy()
        out[token] = -np.inf
        if self._refusals > MAX_REFUSALS or not np.isfinite(out).any():
            raise GrammarError(
                self._source,
                f"'{self._source}' asks for text this model's vocabulary cannot write: "
                "no token it allows can follow here",
            )
        return out

    def accept(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise self._error(f"token {token} breaks the grammar: ")

    def _error(self, what: str) -> GrammarError:
        """llguidance's error, its first line for the client; the rest (the parser's state, the
        grammar's text) goes to the log only."""
        full = self._m.get_error()
        log.warning("constrained decoding failed: %s%s", what, full)
        return GrammarError(self._source, what + (full.splitlines() or [""])[0])

    @property
    def is_done(self) -> bool:
        return self._m.is_stopped()
