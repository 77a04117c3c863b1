"""Constrained decoding with llguidance over a real tokenizer (SmolLM2's, 49k tokens): random
logits sampled through the mask always give text the schema accepts; unsupported schema
features are refused by name."""

import json
import re

import jsonschema
import numpy as np
import pytest

from rfc.runtime.sampling.constraints import GrammarError, GrammarLimits, Grammars
from tests.conftest import skip_reason, smollm2

pytestmark = pytest.mark.shared

SMOLLM2 = smollm2()
SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 4},
    {
        "type": "object",
        "properties": {
            "p": {
                "type": "object",
                "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1}},
                "required": ["x"],
                "additionalProperties": False,
            }
        },
        "required": ["p"],
        "additionalProperties": False,
    },
]


@pytest.fixture(scope="module")
def smol_tokenizer(tmp_path_factory) -> str:
    """SmolLM2's tokenizer.json, as its bundle holds it."""
    if not SMOLLM2.is_file():
        pytest.skip(skip_reason(SMOLLM2))
    from tests.conftest import rfc

    out = tmp_path_factory.mktemp("constraints") / "smol"
    rfc("compile", SMOLLM2, "-o", out, "-q", "--reference-only", check=True)
    return (out / "tokenizer.json").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def smol(smol_tokenizer):
    return Grammars(smol_tokenizer, 49152, [2])


@pytest.mark.parametrize("schema", SCHEMAS)
def test_random_logits_follow_the_schema(smol, schema):
    grammar = smol.json_schema(schema, "response_format")
    rng = np.random.default_rng(0)
    for trial in range(3):
        m = grammar.matcher()
        tokens = []
        for _ in range(200):
            logits = m.mask(rng.standard_normal(49152).astype(np.float32) * 3)
            token = int(np.argmax(logits))
            assert np.isfinite(logits[token])
            m.accept(token)
            if token == 2:
                break
            tokens.append(token)
        assert tokens and m.is_done
        text = smol.tokenizer.decode_str(tokens)
        jsonschema.validate(json.loads(text), schema)


def test_grammar_cache(smol):
    a = smol.json_schema({"type": "object"}, "f")
    b = smol.json_schema({"type": "object"}, "g")
    assert b.text is a.text and (a.source, b.source) == ("f", "g")  # one compilation; each its field


@pytest.mark.parametrize(
    "schema,words",
    [
        ({"type": "object", "if": {"properties": {}}}, "if"),
        ({"type": "array", "contains": {"type": "string"}}, "contains"),
        ({"$ref": "#/definitions/missing"}, "missing"),
    ],
)
def test_unsupported_schema_is_named(smol, schema, words):
    with pytest.raises(GrammarError, match=words) as e:
        smol.json_schema(schema, "response_format")
    assert e.value.field == "response_format"


def test_gbnf(smol):
    m = smol.gbnf('root ::= "yes" | "no"', "grammar").matcher()
    allowed = np.isfinite(m.mask(np.zeros(49152, dtype=np.float32)))
    texts = {smol.tokenizer.decode_str([int(t)]) for t in np.flatnonzero(allowed)}
    assert texts and all("yes".startswith(t) or "no".startswith(t) for t in texts)
    with pytest.raises(GrammarError):
        smol.gbnf("root ::= (", "grammar")


def _sampled(grammar, seed: int, steps: int = 60) -> str:
    """Random logits through the grammar's mask until it ends: the text it let through."""
    rng, m, tokens = np.random.default_rng(seed), grammar.matcher(), []
    for _ in range(steps):
        token = int(np.argmax(m.mask(rng.standard_normal(49152).astype(np.float32) * 3)))
        m.accept(token)
        if token == 2:
            break
        tokens.append(token)
    assert m.is_done, "the grammar did not end within the steps"
    return grammar.grammars.tokenizer.decode_str(tokens)


def test_regex_and_choice(smol):
    """vLLM's regex (the whole output matches it) and choice (exactly one of the strings)."""
    pattern = r"[a-z]{2,6}@[a-z]{3}\.(com|org)"
    grammar = smol.regex(pattern, "guided_regex")
    for seed in range(3):
        assert re.fullmatch(pattern, _sampled(grammar, seed))
    options = ["positive", "negative", 'a "quoted"\nline', "neutral / unsure"]
    grammar = smol.choice(options, "structured_outputs.choice")
    assert {_sampled(grammar, seed) for seed in range(12)} <= set(options)
    assert smol.choice(list(options), "other field").text is grammar.text  # cached by the choices
    with pytest.raises(GrammarError, match="unclosed group") as e:
        smol.regex("a(b", "structured_outputs.regex")
    assert e.value.field == "structured_outputs.regex"


def _accepts(grammar, text: str) -> bool:
    m = grammar.matcher()
    for token in grammar.grammars.tokenizer.tokenize_str(text):
        if m.is_done or not m._m.consume_token(token):
            return False
    return m._m.is_accepting()


def test_unique_items_and_unknown_formats_are_ignored_and_logged(smol, caplog):
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "path": {"type": "string", "format": "path"},
            "ip": {"type": "string", "format": "ipvanyaddress"},
            "day": {"type": "string", "format": "date"},
        },
    }
    with caplog.at_level("INFO", logger="rfc.grammar"):
        g = smol.json_schema(schema, "tools[0].function.parameters")
    assert (
        "tools[0].function.parameters: ignored in the JSON schema (not enforced while decoding): "
        "format: ipvanyaddress, format: path, uniqueItems" in caplog.text
    )
    assert _accepts(g, '{"tags":["a","a"],"path":"/x","ip":"::1","day":"2024-01-31"}')
    assert not _accepts(g, '{"day":"yesterday"}')  # a format llguidance knows is still enforced


def test_open_numbers_have_at_most_16_integral_digits(smol):
    properties = {
        "i": {"type": "integer"},
        "x": {"type": "number"},
        "big": {"type": "integer", "minimum": 0, "maximum": 10**18},
    }
    g = smol.json_schema({"type": "object", "properties": properties}, "f")
    assert _accepts(g, '{"i":-9999999999999998,"x":9999999999999999.25}')
    assert not _accepts(g, '{"i":10000000000000000}') and not _accepts(g, '{"x":-10000000000000000}')
    assert _accepts(g, '{"big":100000000000000000}')  # a bound the schema sets is its own


def test_a_failure_while_decoding_tells_the_client_one_line(smol_tokenizer, caplog):
    """llguidance's error carries its parser state and the grammar's text: the client gets its
    first line, the log the rest. (Its item limit, reached with the repetition bound lifted.)"""
    lifted = Grammars(smol_tokenizer, 49152, [2], limits=GrammarLimits(max_repeat=10**7))
    m = lifted.lark('start: (("x"~100)~100)~100', "grammar").matcher()
    with caplog.at_level("WARNING", logger="rfc.grammar"), pytest.raises(GrammarError) as e:
        for _ in range(8):
            m.accept(int(np.argmax(m.mask(np.zeros(49152, dtype=np.float32)))))
    assert "\n" not in str(e.value) and "Too many items" in str(e.value)
    assert "<grammar>" in caplog.text and "<grammar>" not in str(e.value)


def test_a_token_the_mask_allows_and_the_grammar_refuses(smol):
    """SmolLM2 has no token for the byte 0xF1, so no output spells U+51D52; llguidance 1.9's
    mask still allows one token (0x91, its second byte) that its matcher then refuses. The
    engine asks `allows` before `accept`, and `refuse` ends in a GrammarError naming the field
    the request sent the grammar in, not an internal error."""
    for field_name in ("guided_regex", "structured_outputs.regex"):  # the second is a cache hit
        m = smol.regex("\U00051d52", field_name).matcher()
        logits = m.mask(np.zeros(49152, dtype=np.float32))
        allowed = np.flatnonzero(np.isfinite(logits))
        assert [m.allows(int(t)) for t in allowed] == [False] * len(allowed)
        with pytest.raises(GrammarError) as e:
            for t in allowed:
                logits = m.refuse(logits, int(t))
        assert e.value.field == field_name and "cannot write" in str(e.value)
    m = smol.choice([" red"], "guided_choice").matcher()
    for _ in range(2):  # " red", then the end of generation once the grammar is complete
        token = int(np.argmax(m.mask(np.zeros(49152, dtype=np.float32))))
        assert m.allows(token)
        m.accept(token)  # allows() consumed nothing
    assert m.is_done and token == 2
