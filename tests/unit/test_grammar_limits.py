"""The grammar limits, measured without recursion before
llguidance sees a grammar, and matchers released when their request ends."""

import pytest

from rfc.runtime.sampling.grammar_limits import (
    GrammarError,
    GrammarLimits,
    check_choice,
    check_grammar,
    check_regex,
    check_schema,
    repetition_product,
)

LIMITS = GrammarLimits()


def _ref_chain(n: int) -> dict:
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


def _rules(n: int) -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "x"\n'


@pytest.mark.parametrize(
    "text, product",
    [
        ("^(x{1000}){100}$", 100_000),
        (r"^\d{3}-\d{4}$", 4),
        ("[a-z{}]{1,64}", 64),
        ("(a|b{5}){3}c{7}", 15),
        ("a{2,}", 2),
        ("x*y+z?", 1),
        (r"\{5\}", 1),
        ("((a{10}){10}){10}", 1000),
        # in a regex a quote, an apostrophe or a # is a character, not a literal or a comment
        ('^"(x{1000}){100}"$', 100_000),
        ("'(x{1000}){100}", 100_000),
        ("# (x{1000}){100}", 100_000),
    ],
)
def test_repetition_product(text, product):
    assert repetition_product(text) == product


@pytest.mark.parametrize(
    "text, syntax, product",
    [
        ('"{9999}" x{2}', "gbnf", 2),  # a literal's text is not structure
        ('# don\'t\nroot ::= ("x"{100}){1000}', "gbnf", 100_000),  # an apostrophe hides nothing
        ('root ::= "a" # {9999}\n', "gbnf", 1),
        ('root ::= "unclosed\nr ::= ("x"{100}){1000}', "gbnf", 100_000),  # a literal ends at its line
        ("[ x ~ 1000 ] ~ 100", "lark", 100_000),  # Lark's [...] is an optional group
        ('start: /"(x{1000}){100}"/', "lark", 100_000),  # a /regex/ is measured as one
        ("start: (/x{100}/)~1000", "lark", 100_000),
        ('// don\'t\nstart: ("x"~100)~1000', "lark", 100_000),
        ("start: a // ~9999\n", "lark", 1),
    ],
)
def test_grammar_repetition_product(text, syntax, product):
    assert repetition_product(text, syntax) == product


def test_ref_chains_are_measured_through_their_links():
    check_schema(_ref_chain(500), "f", LIMITS)
    with pytest.raises(GrammarError, match="3003 levels deep") as e:
        check_schema(_ref_chain(3000), "response_format", LIMITS)
    assert e.value.field == "response_format"


def test_recursive_schemas_are_recursion_not_depth():
    tree = {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}
    check_schema(tree, "f", LIMITS)
    mutual = {
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}},
        "$ref": "#/$defs/a",
    }
    check_schema(mutual, "f", LIMITS)


def test_shared_definitions_are_measured_once():
    """A diamond of references 30 levels deep has 2^30 paths: memoized, it is linear."""
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(30)}
    defs["d30"] = {"type": "integer"}
    check_schema({"$ref": "#/$defs/d0", "$defs": defs}, "f", LIMITS)


def test_schema_size_and_patterns():
    with pytest.raises(GrammarError, match="bytes"):
        check_schema({"enum": ["x" * 1000] * 200}, "f", LIMITS)
    with pytest.raises(GrammarError, match="pattern repeats 100000"):
        check_schema({"properties": {"a": {"pattern": "^(x{1000}){100}$"}}}, "f", LIMITS)
    with pytest.raises(GrammarError, match="patternProperties"):
        check_schema({"patternProperties": {"(y{200}){200}": {}}}, "f", LIMITS)


def test_gbnf_rules_depth_and_repetitions():
    check_grammar(_rules(400), "gbnf", "grammar", LIMITS)
    with pytest.raises(GrammarError, match="6002 rules"):
        check_grammar(_rules(6000), "gbnf", "grammar", LIMITS)
    with pytest.raises(GrammarError, match="1002 levels deep"):
        check_grammar(_rules(1000), "gbnf", "grammar", LIMITS)
    with pytest.raises(GrammarError, match="repeats 100000"):
        check_grammar('root ::= ("x"{100}){1000}', "gbnf", "grammar", LIMITS)
    # literals, classes and comments are not structure: an apostrophe in a comment hides nothing
    check_grammar('# don\'t\nroot ::= "(((" [)(]{1,5} item\nitem ::= "a"\n', "gbnf", "grammar", LIMITS)
    with pytest.raises(GrammarError, match="deep"):
        check_grammar("# don't\n" + _rules(1000), "gbnf", "grammar", LIMITS)


def test_lark_rules_and_embedded_schemas():
    lark = "start: a\n" + "".join(f"a{i}: a{i + 1}\n" for i in range(10)) + 'a10: "x"\na: a0\n'
    check_grammar(lark, "lark", "grammar", LIMITS)
    with pytest.raises(GrammarError, match="\\$ref"):
        check_grammar("start: %json " + '{"$ref": "#/x"}' * 3000, "lark", "grammar", LIMITS)


def test_matchers_are_released_when_their_request_ends(tmp_path):
    """Each finished constrained request kept its matcher (its lexer states: ~36 MB for one
    pattern) among the 1,024 finished states the engine remembers."""
    from rfc.runtime.sampling.constraints import Grammars
    from rfc.runtime.engine.engine import Engine, GenerationRequest
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.sampling.sampler import SamplingParams
    from tests.conftest import DEMO_MODEL, rfc

    bundle = tmp_path / "demo"
    rfc("compile", DEMO_MODEL, "-o", bundle, "--reference-only", "-q", check=True)
    model = load_model(bundle, LoadOptions(device="ref"))
    grammars = Grammars((bundle / "tokenizer.json").read_text(encoding="utf-8"), model.vocab_size, [2])
    engine = Engine(model)
    schema = {"type": "string", "pattern": "^(ab{3}){2}$"}
    request = GenerationRequest(
        prompt_ids=[1],
        params=SamplingParams(temperature=0.0),
        max_tokens=4,
        constraint=grammars.json_schema(schema, "json_schema"),
    )
    state = engine.submit(request)
    assert state.matcher is not None
    while not state.finished:
        engine.step()
    assert state.matcher is None and engine.get(state.request_id) is state


def test_regexes_and_choices_within_the_limits():
    check_regex(r"[a-z]+@[a-z]+\.com", "guided_regex", LIMITS)
    with pytest.raises(GrammarError, match="regex repeats 100000") as e:
        check_regex('"(x{1000}){100}"', "guided_regex", LIMITS)
    assert e.value.field == "guided_regex"
    with pytest.raises(GrammarError, match="600 levels deep"):
        check_regex("(" * 600 + "a" + ")" * 600, "f", LIMITS)
    check_regex(r"[(]{3}\(" * 200, "f", LIMITS)  # classes and escapes are not groups
    with pytest.raises(GrammarError, match="bytes"):
        check_regex("a" * (LIMITS.max_bytes + 1), "f", LIMITS)
    assert check_choice(["yes", "no"], "f", LIMITS) == ["yes", "no"]
    for bad in ([], "yes", ["a", 1], None):
        with pytest.raises(GrammarError, match="non-empty list of strings"):
            check_choice(bad, "structured_outputs.choice", LIMITS)
    with pytest.raises(GrammarError, match="2001 choices"):
        check_choice(["x"] * 2001, "f", LIMITS)
    with pytest.raises(GrammarError, match="bytes"):
        check_choice(["x" * 1000] * 200, "f", LIMITS)
