"""Ollama's `options` object -> the sampler and the request's limits.

Defaults are Ollama's own (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1 over the
last 64 tokens, num_predict -1), so a client gets the text it would get from Ollama's
sampler settings. Options for Ollama's runner (GPU layers, threads, mmap, batch, context size)
do not apply to a compiled bundle and are ignored, as Ollama ignores options it does not
know; a sampler Ollama has and rfc does not (mirostat, typical_p, tfs_z) is a 400 unless
it is off. A wrong type or range is a 400 naming `options.<name>`; `null` means the default,
as in Ollama's own server (its clients send nulls for unset options). The options are a
request model of their own (runtime/server/fields.py), nested in the body's `options`."""

from dataclasses import dataclass

from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.api_fields import MAX_STOP_STRINGS
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestModel, at_default

# Samplers rfc does not have, with the value that turns each off.
UNSUPPORTED_UNLESS = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0}
_STOP = {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": {"type": "string"}}]}
# Ollama's defaults; the bounds are the sampler's (runtime/sampling/sampler.py), checked here so that
# the error names Ollama's field.
OPTIONS = RequestModel(
    "OllamaOptions",
    (
        Field("temperature", Kind.NUMBER, 0.8, 0.0, 1e4),
        Field("top_k", Kind.INTEGER, 40),
        Field("top_p", Kind.NUMBER, 0.9, 0.0, 1.0, exclusive_minimum=True),
        Field("min_p", Kind.NUMBER, 0.0, 0.0, 1.0),
        Field("repeat_penalty", Kind.NUMBER, 1.1, 1e-3, 1e3),
        Field("repeat_last_n", Kind.INTEGER, 64, -1, description="-1: the whole context"),
        Field("presence_penalty", Kind.NUMBER, 0.0, -1e4, 1e4),
        Field("frequency_penalty", Kind.NUMBER, 0.0, -1e4, 1e4),
        Field("seed", Kind.INTEGER, description="-1: random"),
        Field(
            "num_predict",
            Kind.INTEGER,
            -1,
            -2,
            description="tokens to generate; -1, -2: until the context is full (not 0)",
        ),
        Field("stop", Kind.JSON, schema=_STOP),
        *(
            Field(name, Kind.NUMBER, description=f"not supported: only {off}, which turns it off")
            for name, off in UNSUPPORTED_UNLESS.items()
        ),
    ),
    description="Ollama's sampler options; runner options (num_ctx, num_gpu, num_thread…) are accepted and ignored",
)


@dataclass(frozen=True)
class OllamaOptions:
    params: SamplingParams
    num_predict: int | None  # None: until the context is full (Ollama's -1 and -2)
    stop: tuple[str, ...]


def parse_options(raw: object) -> OllamaOptions:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request("'options' must be an object", "options")
    f = OPTIONS.read(raw, "options.")
    for name, off in UNSUPPORTED_UNLESS.items():
        if not at_default(f.number(name), off):
            raise bad_request(f"options.{name} is not supported (only {off}, which turns it off)", f"options.{name}")
    seed = f.integer("seed")
    params = SamplingParams(
        temperature=f.number("temperature"),
        top_k=f.integer("top_k"),
        top_p=f.number("top_p"),
        min_p=f.number("min_p"),
        repetition_penalty=f.number("repeat_penalty"),
        presence_penalty=f.number("presence_penalty"),
        frequency_penalty=f.number("frequency_penalty"),
        penalty_last_n=f.integer("repeat_last_n"),
        seed=None if seed is None or seed < 0 else seed,  # Ollama's -1: a random seed
    )
    num_predict = f.integer("num_predict")
    if num_predict == 0:
        raise bad_request("options.num_predict must be positive, or -1 (no limit)", "options.num_predict")
    return OllamaOptions(params=params, num_predict=num_predict if num_predict > 0 else None, stop=_stop(f.raw("stop")))


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("options.stop must be a string or a list of strings", "options.stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"options.stop holds at most {MAX_STOP_STRINGS} strings", "options.stop")
    return tuple(s for s in stops if s)
