"""--cache-type-k / --cache-type-v: how the KV cache stores keys and values (llama-server's
flags and names: f16, q8_0, q4_0), decided once at the command line and passed to the loader
as a value (LoadOptions.cache_types). A quantized cache holds ~1.9x (q8_0) or ~3.6x (q4_0) the
tokens of an f16 one in the same --kv-memory; artifacts/kv_cache_type.py has the formats."""

import click

from rfc.cli.errors import fail

_NAMES = "f16, q8_0 or q4_0"


def cache_type_options(fn):
    fn = click.option(
        "--cache-type-v",
        "-ctv",
        "cache_type_v",
        envvar="RFC_CACHE_TYPE_V",
        default="f16",
        show_default=True,
        metavar="TYPE",
        help=f"KV cache type of the values: {_NAMES}.",
    )(fn)
    fn = click.option(
        "--cache-type-k",
        "-ctk",
        "cache_type_k",
        envvar="RFC_CACHE_TYPE_K",
        default="f16",
        show_default=True,
        metavar="TYPE",
        help=f"KV cache type of the keys: {_NAMES} (q8_0 halves the cache's bytes per token).",
    )(fn)
    return fn


def parse_cache_types(cache_type_k: str, cache_type_v: str):
    """The KvCacheTypes, or a one-line error naming the flag (exit status 2)."""
    from rfc.artifacts.kv_cache_type import CacheTypeError, KvCacheTypes, parse_cache_type

    try:
        return KvCacheTypes(
            parse_cache_type(cache_type_k, "--cache-type-k"), parse_cache_type(cache_type_v, "--cache-type-v")
        )
    except CacheTypeError as e:
        fail(str(e))
