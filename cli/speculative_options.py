"""The speculative-decoding flags of `rfc serve` and `rfc run` (llama-server's names):
`--spec-type`, `--model-draft`, `--spec-draft-n-max`."""

from pathlib import Path

import click

from rfc.cli.errors import fail

SPEC_TYPES = ("none", "ngram", "draft")


def spec_options(f):
    f = click.option(
        "--spec-draft-n-max",
        "spec_n_max",
        envvar="RFC_SPEC_DRAFT_N_MAX",
        default=16,
        show_default=True,
        type=click.IntRange(0, 64),
        help="Draft tokens per sequence and step at most; a request may ask fewer.",
    )(f)
    f = click.option(
        "--model-draft",
        "model_draft",
        envvar="RFC_MODEL_DRAFT",
        default=None,
        metavar="BUNDLE|SMALL.gguf",
        help="Speculative decoding's draft model: a bundle (or a GGUF, compiled first) with the same "
        "vocabulary; implies --spec-type draft.",
    )(f)
    f = click.option(
        "--spec-type",
        "spec_type",
        envvar="RFC_SPEC_TYPE",
        type=click.Choice(SPEC_TYPES),
        default=None,
        help="Speculative decoding for requests that do not choose: ngram (drafts copied from the "
        "sequence's own tokens), draft (a --model-draft's), none (default). Greedy output is "
        "unchanged; sampled output keeps its distribution.",
    )(f)
    return f


def spec_config(spec_type: str | None, n_max: int, model_draft: str | None):
    """The engine's SpecConfig from the flags; exits (2) on a contradiction."""
    from rfc.runtime.engine.speculative import SpecConfig, SpecType

    kind = SpecType(spec_type) if spec_type else (SpecType.DRAFT if model_draft else SpecType.NONE)
    if kind is SpecType.DRAFT and not model_draft:
        fail("--spec-type draft needs a draft model: --model-draft BUNDLE|SMALL.gguf")
    return SpecConfig(type=kind, n_max=n_max)


def draft_bundle(model_draft: str | None, targets, cache_dir, registry=None) -> Path | None:
    """The draft model's bundle directory (a GGUF is compiled into the cache first)."""
    if not model_draft:
        return None
    from rfc.cli.model_args import bundle_paths

    (bundle,) = bundle_paths([model_draft], targets, None, cache_dir, registry)
    return Path(bundle)
