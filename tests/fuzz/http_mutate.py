"""Hostile JSON bodies for the HTTP fuzz test: valid requests for each route, mutated field
by field into what strangers send — wrong types, extremes, deep nesting, lone surrogates,
huge numbers, unknown keys — plus raw bytes that are not JSON at all."""

import copy
import json
import random

# One valid body per route; the mutations start from these.
VALID = {
    "/generate": {
        "prompt": "Once upon",
        "max_tokens": 4,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "stream": False,
    },
    "/v1/completions": {
        "model": "stories260K",
        "prompt": "Once",
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["."],
        "logprobs": 2,
        "n": 1,
        "seed": 3,
        "logit_bias": {"5": 1.5},
        "stream": False,
    },
    "/v1/chat/completions": {
        "model": "stories260K",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "temperature": 0.0,
        "presence_penalty": 0.1,
        "stream": False,
    },
    "/api/generate": {
        "model": "stories260K",
        "prompt": "Once",
        "stream": False,
        "options": {"num_predict": 4, "temperature": 0.3, "repeat_penalty": 1.1, "stop": ["x"]},
    },
    "/api/chat": {
        "model": "stories260K",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
        "options": {"num_predict": 4},
    },
    "/v1/messages": {"model": "stories260K", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
    "/v1/embeddings": {"model": "stories260K", "input": ["Once", "upon"]},
    "/tokenize": {"content": "Once upon a time"},
    "/detokenize": {"tokens": [1, 2, 3]},
}

STRANGE_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63),
    2**64 + 1,
    10**400,
    1e308,
    -1e308,
    5e-324,
    1e-320,
    0.5,
    -0.0,
    "",
    "x",
    "\ud800",
    "a\udfffb",
    "\x00",
    "🙂" * 50,
    "x" * 70_000,
    [],
    [1],
    [None],
    {},
    {"a": 1},
    [[[[[]]]]],
    ["\ud800"],
    [{"role": "user"}],
    [{"role": 3, "content": []}],
    [{"role": "user", "content": [{"type": "image_url"}]}],
    {"5": 1e300},
    {"-1": 1},
    {"x": "y"},
    [2**40],
    [-5],
    list(range(300)),
]


def _deep(depth: int, leaf=0):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _set_path(body, rng: random.Random):
    """Mutate one field somewhere in `body` (which is modified in place)."""
    target = body
    while isinstance(target, (dict, list)) and target and rng.random() < 0.35:
        key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
        if not isinstance(target[key], (dict, list)):
            break
        target = target[key]
    if isinstance(target, dict):
        keys = list(target) + ["unknown_" + str(rng.randrange(9)), "stream", "n", "max_tokens", "logprobs", "suffix"]
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.15 and key in target:
            del target[key]
        elif roll < 0.25:
            target[key] = _deep(rng.choice([10, 63, 65, 200, 500]))
        else:
            target[key] = copy.deepcopy(rng.choice(STRANGE_VALUES))
    elif isinstance(target, list) and target:
        target[rng.randrange(len(target))] = copy.deepcopy(rng.choice(STRANGE_VALUES))


def mutate(route: str, rng: random.Random) -> bytes:
    """A request body for `route`: usually mutated JSON, sometimes bytes that are not JSON."""
    roll = rng.random()
    if roll < 0.05:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if roll < 0.1:
        text = json.dumps(VALID[route])
        cut = rng.randrange(len(text))
        return text[:cut].encode()
    if roll < 0.13:
        return json.dumps(rng.choice(STRANGE_VALUES)).encode()
    body = json.loads(json.dumps(VALID[route]))
    for _ in range(rng.randint(1, 3)):
        _set_path(body, rng)
    # surrogates must survive json.dumps as escapes, as a hostile client would send them
    return json.dumps(body, ensure_ascii=True).encode()
