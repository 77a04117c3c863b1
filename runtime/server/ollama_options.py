"""Ollama's `options` object -> the sampler and the request's limits.

Defaults are Ollama's own (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1 over the
last 64 tokens, num_predict -1), so a client gets the text it would get from Ollama's
sampler settings. Options for Ollama's runner (GPU layers, threads, mmap, batch, context size)
do not apply to a compiled bundle and are ignored, as Ollama ignores options it does not
know; a sampler Ollama has and rfc does not (mirostat, typical_p, tfs_z) is a 400 unless
it is off. A wrong type or range is a 400 naming `options.<name>`; `null` means the default,
as in Ollama's own server (its clients send nulls for unset options)."""

from dataclasses import dataclass

from rfc.runtime.sampler import SamplingParams
from rfc.runtime.server.errors import bad_request
from rfc.runtime.values import is_finite_number, shown

DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1, "repeat_last_n": 64,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "num_predict": -1}
# Samplers rfc does not have, with the value that turns each off.
UNSUPPORTED_UNLESS = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0}
MAX_STOP_STRINGS = 16


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
    raw = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    for name, off in UNSUPPORTED_UNLESS.items():
        value = raw.get(name)
        if value is not None and _number(name, value) != off:
            raise bad_request(f"options.{name} is not supported (only {off}, which turns it off)", f"options.{name}")
    seed = _integer("seed", raw.get("seed"), None)
    params = SamplingParams(
        # the sampler's bounds (runtime/sampler.py), checked here so the error names Ollama's field
        temperature=_number("temperature", raw["temperature"], 0.0, 1e4),
        top_k=_integer("top_k", raw["top_k"], None),
        top_p=_number("top_p", raw["top_p"], 0.0, 1.0, open_low=True),
        min_p=_number("min_p", raw["min_p"], 0.0, 1.0),
        repetition_penalty=_number("repeat_penalty", raw["repeat_penalty"], 1e-3, 1e3),
        presence_penalty=_number("presence_penalty", raw["presence_penalty"], -1e4, 1e4),
        frequency_penalty=_number("frequency_penalty", raw["frequency_penalty"], -1e4, 1e4),
        penalty_last_n=_integer("repeat_last_n", raw["repeat_last_n"], -1),
        seed=None if seed is None or seed < 0 else seed,  # Ollama's -1: a random seed
    )
    num_predict = _integer("num_predict", raw["num_predict"], -2)
    if num_predict == 0:
        raise bad_request("options.num_predict must be positive, or -1 (no limit)", "options.num_predict")
    return OllamaOptions(params=params, num_predict=num_predict if num_predict > 0 else None, stop=_stop(raw.get("stop")))


def _number(name: str, value: object, low: float | None = None, high: float | None = None, open_low: bool = False) -> float:
    if not is_finite_number(value):
        raise bad_request(f"options.{name} must be a number, got {shown(value)}", f"options.{name}")
    if low is not None and (value < low or (open_low and value == low)):
        raise bad_request(f"options.{name} must be {'>' if open_low else '>='} {low}, got {shown(value)}", f"options.{name}")
    if high is not None and value > high:
        raise bad_request(f"options.{name} must be <= {high}, got {shown(value)}", f"options.{name}")
    return float(value)


def _integer(name: str, value: object, low: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"options.{name} must be an integer, got {shown(value)}", f"options.{name}")
    if low is not None and value < low:
        raise bad_request(f"options.{name} must be >= {low}, got {shown(value)}", f"options.{name}")
    return value


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("options.stop must be a string or a list of strings", "options.stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"options.stop holds at most {MAX_STOP_STRINGS} strings", "options.stop")
    return tuple(s for s in stops if s)
