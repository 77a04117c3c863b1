"""The Responses settings rfc cannot vary, read and echoed as applied: `truncation`,
`reasoning`, `service_tier` and `text.verbosity`. Any value OpenAI's document allows is
accepted, and the response object says what was done, which may differ from what was asked
(as OpenAI's does for `service_tier`): a client reads the echo, so nothing changes silently,
and clients that always send these settings (agent frameworks, coding agents) keep working.
A value outside the document's enums is a 400 naming the field.

- `truncation`: echoed "disabled". rfc never drops input items; an input past the context is
  the 400 `context_length_exceeded` whichever was asked.
- `reasoning`: the model reasons as its chat template does, so `effort` is echoed null (not
  applied), or "none" when asked of a model whose template does not think (what it does); a
  template that thinks gives its whole reasoning as the reasoning item's summary, echoed
  `summary: "detailed"`; on a model that does not think `summary` is null.
- `service_tier`: one tier serves everything, echoed "default".
- `text.verbosity`: the model answers at its own length, echoed "medium"."""

from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind

SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
SUMMARIES = ("auto", "concise", "detailed")
VERBOSITIES = ("low", "medium", "high")

TRUNCATION = Field(
    "truncation",
    Kind.STRING,
    "disabled",
    enum=("auto", "disabled"),
    description="accepted; echoed disabled: an input past the context is a 400, never truncated",
)
REASONING = Field(
    "reasoning",
    Kind.JSON,
    schema={
        "type": "object",
        "properties": {
            "effort": {"enum": [*EFFORTS, None]},
            "summary": {"enum": [*SUMMARIES, None]},
            "generate_summary": {"enum": [*SUMMARIES, None]},
        },
    },
    description="accepted; echoed as applied: effort null (none on a model that does not think), summary detailed on a "
    "model that thinks",
)
SERVICE_TIER = Field("service_tier", Kind.STRING, enum=SERVICE_TIERS, description="accepted; echoed as default")


def applied(truncation: str, reasoning: object, text: object, thinks: bool) -> dict:
    """The response object's `truncation`, `reasoning`, `service_tier` and `text.verbosity`
    for these request values: what rfc does (a 400 naming the field for a value outside the
    document's enums)."""
    if truncation not in ("auto", "disabled"):
        raise bad_request("'truncation' must be auto or disabled", "truncation")
    return {
        "truncation": "disabled",
        "reasoning": _reasoning(reasoning, thinks),
        "service_tier": "default",
        "verbosity": _verbosity(text),
    }


def _reasoning(raw: object, thinks: bool) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request("'reasoning' must be an object", "reasoning")
    effort = raw.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise bad_request(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}", "reasoning.effort")
    for name in ("summary", "generate_summary"):
        summary = raw.get(name)
        if summary is not None and summary not in SUMMARIES:
            raise bad_request(f"'reasoning.{name}' must be one of {', '.join(SUMMARIES)}", f"reasoning.{name}")
    return {"effort": "none" if effort == "none" and not thinks else None, "summary": "detailed" if thinks else None}


def _verbosity(text: object) -> str:
    verbosity = text.get("verbosity") if isinstance(text, dict) else None
    if verbosity is not None and verbosity not in VERBOSITIES:
        raise bad_request(f"'text.verbosity' must be one of {', '.join(VERBOSITIES)}", "text.verbosity")
    return "medium"
