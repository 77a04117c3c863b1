"""Small pure pieces of the server's client APIs: Ollama's options, the KV-page policy,
model-card formatting and the GGUF bundle cache key."""

from pathlib import Path

import pytest

from rfc.cli.gguf_cache import CompileRequest, cache_key
from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.model_info import parameter_size
from rfc.runtime.server.models import KvPages
from rfc.runtime.server.ollama_options import parse_options


def test_ollama_defaults_are_ollamas():
    o = parse_options(None)
    p = o.params
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.penalty_last_n) == (0.8, 40, 0.9, 1.1, 64)
    assert o.num_predict is None and o.stop == () and p.seed is None


def test_ollama_options_map_onto_the_sampler():
    o = parse_options(
        {
            "temperature": 0,
            "top_k": 5,
            "top_p": 0.5,
            "min_p": 0.1,
            "seed": 7,
            "num_predict": 12,
            "stop": ["\n"],
            "repeat_penalty": 1.0,
            "num_ctx": 4096,
            "num_gpu": 99,
            "mirostat": 0,
        }
    )
    p = o.params
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.seed, p.repetition_penalty) == (0.0, 5, 0.5, 0.1, 7, 1.0)
    assert o.num_predict == 12 and o.stop == ("\n",)
    assert parse_options({"seed": -1, "num_predict": -2}).params.seed is None


@pytest.mark.parametrize(
    "options, field",
    [
        ({"temperature": "hot"}, "options.temperature"),
        ({"top_p": 0}, "options.top_p"),
        ({"num_predict": 0}, "options.num_predict"),
        ({"top_k": 1.5}, "options.top_k"),
        ({"stop": [1]}, "options.stop"),
        ({"mirostat": 2}, "options.mirostat"),
        ({"typical_p": 0.5}, "options.typical_p"),
        ("fast", "options"),
    ],
)
def test_bad_ollama_options_name_the_field(options, field):
    with pytest.raises(ApiError) as e:
        parse_options(options)
    assert e.value.param == field and e.value.status.startswith("400")


def test_kv_pages_policy():
    assert KvPages.parse([]).pages_for(["a", "b"]) == {"a": None, "b": None}
    assert KvPages.parse(["100"]).pages_for(["a", "b"]) == {"a": 50, "b": 50}
    assert KvPages.parse(["100", "a=30"]).pages_for(["a", "b", "c"]) == {"a": 30, "b": 35, "c": 35}
    assert KvPages.parse(["a=8"]).pages_for(["a", "b"]) == {"a": 8, "b": None}
    with pytest.raises(ValueError, match="unknown models z"):
        KvPages.parse(["z=8"]).pages_for(["a"])
    with pytest.raises(ValueError):
        KvPages.parse(["many"])
    with pytest.raises(ValueError, match="leaves no pages"):
        KvPages.parse(["1"]).pages_for(["a", "b"])


def test_parameter_size_reads_like_ollamas():
    assert [parameter_size(n) for n in (260_032, 134_515_008, 1_100_048_384, 7_241_732_096, 70_553_706_496)] == [
        "260K",
        "135M",
        "1.1B",
        "7.2B",
        "71B",
    ]


def test_the_cache_key_covers_the_compile_options(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    base = CompileRequest(Path("m.gguf"))
    keys = {
        cache_key(base, "a" * 64),
        cache_key(base, "b" * 64),
        cache_key(CompileRequest(Path("m.gguf"), ("cpu", "gfx1100")), "a" * 64),
        cache_key(CompileRequest(Path("m.gguf"), chat_template=template), "a" * 64),
    }
    assert len(keys) == 4
    # content, not name
    assert cache_key(CompileRequest(Path("other-name.gguf")), "a" * 64) == cache_key(base, "a" * 64)
