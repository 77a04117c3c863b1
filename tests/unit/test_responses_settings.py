"""The Responses settings rfc echoes as applied or refuses with the field named."""

import pytest

from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.responses_settings import applied


@pytest.mark.parametrize("thinks", [False, True])
def test_defaults_echo_what_is_done(thinks):
    out = applied("disabled", None, None, thinks)
    assert out == {
        "truncation": "disabled",
        "service_tier": "default",
        "verbosity": "medium",
        "reasoning": {"effort": None, "summary": "detailed" if thinks else None},
    }


@pytest.mark.parametrize("summary", ["auto", "detailed", None])
def test_a_thinking_template_gives_its_whole_reasoning(summary):
    assert applied("disabled", {"summary": summary}, {}, True)["reasoning"] == {"effort": None, "summary": "detailed"}
    assert applied("disabled", {"generate_summary": summary}, {}, True)["reasoning"]["summary"] == "detailed"


def test_effort_none_applies_only_where_the_model_does_not_think():
    assert applied("disabled", {"effort": "none"}, None, False)["reasoning"]["effort"] == "none"
    assert applied("disabled", {"effort": "none"}, None, True)["reasoning"]["effort"] is None


@pytest.mark.parametrize(
    "args, thinks_summary",
    [
        (("auto", None, None, False), None),
        (("disabled", {"effort": "high"}, None, True), "detailed"),
        (("disabled", {"effort": "low", "summary": "auto"}, None, False), None),
        (("disabled", {"summary": "concise"}, None, True), "detailed"),
        (("disabled", None, {"verbosity": "high"}, False), None),
    ],
)
def test_what_rfc_cannot_vary_is_accepted_and_echoed_as_applied(args, thinks_summary):
    out = applied(*args)
    assert out["truncation"] == "disabled" and out["verbosity"] == "medium" and out["service_tier"] == "default"
    assert out["reasoning"] == {"effort": None, "summary": thinks_summary}


@pytest.mark.parametrize(
    "args, field",
    [
        (("middle", None, None, False), "truncation"),
        (("disabled", {"effort": "huge"}, None, False), "reasoning.effort"),
        (("disabled", {"summary": "short"}, None, True), "reasoning.summary"),
        (("disabled", {"generate_summary": "brief"}, None, True), "reasoning.generate_summary"),
        (("disabled", "high", None, False), "reasoning"),
        (("disabled", None, {"verbosity": "loud"}, False), "text.verbosity"),
        (("disabled", None, {"verbosity": 3}, False), "text.verbosity"),
    ],
)
def test_a_value_outside_the_documents_enums_is_a_400_naming_the_field(args, field):
    with pytest.raises(ApiError) as e:
        applied(*args)
    assert e.value.param == field and f"'{field}'" in e.value.message
