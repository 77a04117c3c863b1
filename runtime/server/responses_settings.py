"""The Responses settings rfc cannot vary, read and echoed as applied: `truncation`,
`reasoning`, `service_tier` and `text.verbosity`. A value rfc honours comes back as what was
done (OpenAI's response object says what was applied, which may differ from what was asked
only where its document says so: `service_tier`); a value it cannot honour is a 400 naming
the field, never silently changed.

- `truncation`: "disabled" only. rfc never drops input items; an input past the context is
  the 400 `context_length_exceeded`, which is what "disabled" means. "auto" is refused.
- `reasoning`: the model reasons as its chat template does, so `effort` is not adjustable
  (null, or "none" on a model whose template does not think); a template that thinks gives
  its whole reasoning as the reasoning item's summary, echoed as `summary: "detailed"`
  ("auto" and "detailed" are that; "concise" is refused). On a model that does not think,
  `summary` must be null: there is nothing to summarize.
- `service_tier`: any of the document's values; one tier serves everything, echoed
  `"default"` (OpenAI echoes the tier actually used, which may differ from the one asked).
- `text.verbosity`: "medium" (the model's own) only; "low" and "high" are refused."""

from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind

SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
SUMMARIES = ("auto", "concise", "detailed")
VERBOSITIES = ("low", "medium", "high")

TRUNCATION = Field("truncation", Kind.STRING, "disabled", enum=("auto", "disabled"),
                   description="disabled only: an input past the context is a 400, never truncated")
REASONING = Field("reasoning", Kind.JSON, schema={"type": "object", "properties": {
    "effort": {"enum": [*EFFORTS, None]}, "summary": {"enum": [*SUMMARIES, None]},
    "generate_summary": {"enum": [*SUMMARIES, None]}}},
    description="effort: null (none on a model that does not think); summary: detailed on a model that thinks")
SERVICE_TIER = Field("service_tier", Kind.STRING, enum=SERVICE_TIERS, description="accepted; echoed as default")


def applied(truncation: str, reasoning: object, text: object, thinks: bool) -> dict:
    """The response object's `truncation`, `reasoning`, `service_tier` and `text.verbosity`
    for these request values; a 400 naming the field where one cannot be honoured."""
    if truncation != "disabled":
        raise bad_request("'truncation' auto is not supported: the input is never truncated "
                          "(an input past the context is context_length_exceeded); send 'disabled'", "truncation")
    return {"truncation": "disabled", "reasoning": _reasoning(reasoning, thinks), "service_tier": "default",
            "verbosity": _verbosity(text)}


def _reasoning(raw: object, thinks: bool) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request("'reasoning' must be an object", "reasoning")
    effort = raw.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise bad_request(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}", "reasoning.effort")
    if effort is not None and (thinks or effort != "none"):
        raise bad_request("'reasoning.effort' is not supported: the model reasons as its chat template does"
                          + ("" if thinks else " (it does not think: only 'none' applies)"), "reasoning.effort")
    name = "summary" if raw.get("summary") is not None else "generate_summary"
    summary = raw.get(name)
    if summary is not None and summary not in SUMMARIES:
        raise bad_request(f"'reasoning.{name}' must be one of {', '.join(SUMMARIES)}", f"reasoning.{name}")
    if summary is not None and not thinks:
        raise bad_request(f"'reasoning.{name}' is not supported: the model does not think", f"reasoning.{name}")
    if summary == "concise":
        raise bad_request(f"'reasoning.{name}' concise is not supported: the summary is the whole reasoning "
                          "(auto or detailed)", f"reasoning.{name}")
    return {"effort": effort, "summary": "detailed" if thinks else None}


def _verbosity(text: object) -> str:
    verbosity = text.get("verbosity") if isinstance(text, dict) else None
    if verbosity is not None and verbosity not in VERBOSITIES:
        raise bad_request(f"'text.verbosity' must be one of {', '.join(VERBOSITIES)}", "text.verbosity")
    if verbosity not in (None, "medium"):
        raise bad_request("'text.verbosity' is not supported: the model answers at its own length (medium)",
                          "text.verbosity")
    return "medium"
