"""vLLM's sampling and output extras on the OpenAI routes (/v1/completions, /v1/chat/completions),
as vLLM's clients send them beside OpenAI's fields.

Honoured: `stop_token_ids` (tokens that end the output as the model's end-of-generation tokens
do: finish_reason "stop", the token's text left out), `min_tokens` (the end tokens and
`stop_token_ids` banned until that many tokens are out), `include_stop_str_in_output` (a matched
stop string stays at the end of the text), `skip_special_tokens` (false: special tokens' text in
the output), `truncate_prompt_tokens` (the prompt's last N tokens; -1: as many as the context
holds with room for one generated token), and in `stream_options` `continuous_usage_stats` (the
usage so far in every chunk: runtime/server/openai_format.py). Accepted, without effect on the output: `priority` and
`request_id` (scheduling and bookkeeping; rfc schedules first come, first served, and answers
with ids of its own).

Refused with a 400 naming the field unless left at vLLM's default: `prompt_logprobs`,
`allowed_token_ids`, `bad_words`, `use_beam_search`, `length_penalty`,
`spaces_between_special_tokens`, `cache_salt` (prefix-cache isolation rfc does not have), and
chat's `echo`. Never silently ignored: each changes what vLLM answers."""

from rfc.runtime.server.api_fields import MAX_STOP_STRINGS
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields, at_default

MAX_STOP_TOKEN_IDS = 4 * MAX_STOP_STRINGS  # the set is checked at every sampled token

# what each refused field may hold besides null: its default
_DEFAULTS = {
    "prompt_logprobs": (),
    "allowed_token_ids": (),
    "bad_words": ([],),
    "use_beam_search": (False,),
    "length_penalty": (1, 1.0),
    "spaces_between_special_tokens": (True,),
    "cache_salt": (),
}

FIELDS = (
    Field(
        "stop_token_ids",
        Kind.JSON,
        [],
        schema={"type": "array", "maxItems": MAX_STOP_TOKEN_IDS, "items": {"type": "integer", "minimum": 0}},
        description="vLLM's: token ids that end the output (left out of it)",
    ),
    Field("min_tokens", Kind.INTEGER, 0, 0, description="vLLM's: no end of the output before this many tokens"),
    Field("include_stop_str_in_output", Kind.BOOLEAN, False, description="vLLM's: keep the matched stop string"),
    Field("skip_special_tokens", Kind.BOOLEAN, True, description="vLLM's: false keeps special tokens' text"),
    Field("truncate_prompt_tokens", Kind.INTEGER, minimum=-1, description="vLLM's: the prompt's last N tokens"),
    Field("priority", Kind.INTEGER, description="vLLM's: accepted; requests are served first come, first served"),
    Field("request_id", Kind.STRING, description="vLLM's: accepted; replies carry rfc's own ids"),
    *(Field(name, Kind.JSON, description="vLLM's: refused unless at its default") for name in _DEFAULTS),
)
CHAT_ECHO = Field("echo", Kind.BOOLEAN, False, description="vLLM's: refused unless false")  # chat's only


def refuse_unsupported(f: RequestFields) -> None:
    for name, defaults in _DEFAULTS.items():
        if not at_default(f.raw(name), *defaults):
            raise bad_request(f"'{name}' is not supported (vLLM's; leave it at its default)", name)


def stop_token_ids(f: RequestFields) -> tuple[int, ...]:
    ids = f.raw("stop_token_ids")
    if (
        not isinstance(ids, list)
        or len(ids) > MAX_STOP_TOKEN_IDS
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    ):
        raise bad_request(
            f"'stop_token_ids' must be a list of at most {MAX_STOP_TOKEN_IDS} token ids", "stop_token_ids"
        )
    return tuple(ids)


def truncated(f: RequestFields, ids: list[int], context: int) -> list[int]:
    """The prompt's last `truncate_prompt_tokens` tokens (-1: all the context holds but one).
    A prompt past the context is refused before this (PromptCache.encode's bound on what is
    tokenized at all), as it is without truncation."""
    keep = f.integer("truncate_prompt_tokens")
    if keep is None:
        return ids
    if keep == 0:
        raise bad_request("'truncate_prompt_tokens' must be -1 or at least 1", "truncate_prompt_tokens")
    keep = context - 1 if keep == -1 else keep
    return ids[-keep:] if len(ids) > keep else ids
