"""The replay receipt of a response (OpenAI's `system_fingerprint`): which bundle, on which
device, with which kernel variant answered. The same bundle on the same machine gives the same
fingerprint after every restart; another kernel variant (cpu-avx512 against cpu, another GPU
target, the reference device) or KV-cache type gives another. Together with a request's
parameters and seed it names everything its tokens and logprobs depend on where the target is
batch invariant (docs/determinism.md): not the batch, not the thread count, not the prefix
cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rfc.runtime.engine.assemble import LoadedModel

BUNDLE_ID_CHARS = 12  # of the bundle id, a digest of every file of the bundle: kernels and weights too


def system_fingerprint(model: LoadedModel) -> str:
    """fp_<bundle id>_<kernel variant>[_kv-<k>-<v>]: readable, so that a user can tell which
    build, target and cache type to replay on."""
    bundle_id = str(model.manifest.get("bundle_id", ""))[:BUNDLE_ID_CHARS] or "unknown"
    choice = model.device_choice
    parts = ["fp", bundle_id, str(choice.target or choice.name)]
    # a quantized KV cache changes the results: it is part of the receipt (f16, the default, is not named)
    # (a device without cache types stores f16)
    types = getattr(model.device, "cache_types", None)
    k, v = (str(getattr(getattr(types, name, None), "value", "f16")) for name in ("k", "v"))
    if (k, v) != ("f16", "f16"):
        parts.append(f"kv-{k}-{v}")
    return "_".join(parts)
