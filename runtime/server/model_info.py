"""What a served model is, in the words clients look for: the OpenAI model card with the
model-registry fields (architecture, parameter_size, quantization, file_size_mb,
tensor_count, context_length, capabilities, details), read from the bundle's manifest.
`context_length` is the limit the server enforces (--ctx-size, else the model's own);
`trained_context_length` the model's, as its GGUF metadata has it."""

from datetime import datetime, timezone

from rfc.runtime.text.reasoning import template_thinks
from rfc.runtime.server.served_models import ServedModel

OWNER = "rfc"
_MIB = 1 << 20

# llama.cpp's `general.file_type` (enum llama_ftype) -> the quantization name users know.
# The manifest counts tensor formats, but "Q4_K_M" is a recipe over several formats that only
# the file type names.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


def quantization(manifest: dict) -> str:
    model = manifest["model"]
    named = _FILE_TYPES.get(model.get("gguf_metadata", {}).get("general.file_type"))
    if named:
        return named
    formats = model.get("formats", {})  # else the format most tensors have
    return max(formats, key=formats.get) if formats else "unknown"


def parameter_size(count: int) -> str:
    """Ollama's style: 260K, 135M, 1.1B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 10 and unit in ("B", "T") else f"{value:.0f}{unit}"
    return str(count)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


def has_chat_template(served: ServedModel) -> bool:
    return bool(served.model.manifest.get("chat_template")) and served.chat is not None


def capabilities(served: ServedModel) -> dict:
    """What the server does with this model (an encoder, bert, nothing but embeddings). `chat`
    needs the model's own template (any model can be chatted with through the ChatML fallback,
    but only one with a template was trained for it); `tools` needs a template whose tool-call
    format has a parser (`tool_call_format` names it; "generic": the template has none, and /v1 takes tools through
    llama-server's generic JSON tool calling); `thinking` a template that writes `<think>` blocks."""
    source = served.chat.source if served.chat is not None else ""
    gen = served.model.generates  # an encoder (bert) serves embeddings alone
    return {
        "completion": gen,
        "chat": gen and has_chat_template(served),
        "embeddings": True,
        "tools": gen and served.tool_format is not None,
        "tool_call_format": served.tool_format.name if served.tool_format else "generic",
        "json_schema": gen and served.grammars is not None,
        "grammar": gen and served.grammars is not None,
        "thinking": gen and template_thinks(source) and has_chat_template(served),
    }


def model_size(served: ServedModel) -> int:
    """Bytes of the model file the bundle was compiled from (the GGUF)."""
    return manifest_model_size(served.model.manifest)


def manifest_model_size(manifest: dict) -> int:
    return int(manifest.get("source", {}).get("size") or sum(f["size"] for f in manifest["files"].values()))


def bundle_size(served: ServedModel) -> int:
    return sum(f["size"] for f in served.model.manifest["files"].values())


def details(served: ServedModel) -> dict:
    """Seed 003's `details` (size as text), with Ollama's keys for the same facts."""
    return manifest_details(served.model.manifest)


def manifest_details(manifest: dict) -> dict:
    """`details` from the bundle's manifest alone (a model not loaded has no more)."""
    model = manifest["model"]
    return {
        "format": "gguf",
        "family": model["architecture"],
        "families": [model["architecture"]],
        "parameter_size": parameter_size(model["parameter_count"]),
        "quantization_level": quantization(manifest),
        "size": human_size(manifest_model_size(manifest)),
    }


def model_card(served: ServedModel) -> dict:
    """The /v1/models entry: OpenAI's four fields, then the registry's."""
    manifest = served.model.manifest
    model = manifest["model"]
    caps = capabilities(served)
    choice = served.model.device_choice
    return {
        "id": served.model_id,
        "object": "model",
        "created": served.created,
        "owned_by": OWNER,
        "architecture": model["architecture"],
        "family": model["architecture"],
        "parameter_count": model["parameter_count"],
        "parameter_size": parameter_size(model["parameter_count"]),
        "quantization": quantization(manifest),
        "file_size_mb": round(model_size(served) / _MIB, 2),
        "bundle_size_mb": round(bundle_size(served) / _MIB, 2),
        "tensor_count": sum(model.get("formats", {}).values()),
        "context_length": served.model.context_length,  # served: --ctx-size caps it
        "trained_context_length": served.model.trained_context_length,
        "embedding_length": model.get("hparams", {}).get("n_embd"),
        "vocab_size": served.model.vocab_size,
        "capabilities": caps,
        "supports_tools": caps["tools"],
        "supports_agent": False,
        "targets": [t["name"] for t in manifest["targets"]],
        "device": choice.name,
        "device_target": choice.target,
        "bundle_id": manifest["bundle_id"],
        "details": details(served),
    }


def digest(served: ServedModel) -> str:
    """A stable content id for Ollama's `digest`: the source GGUF's sha256, else the bundle id."""
    return manifest_digest(served.model.manifest)


def manifest_digest(manifest: dict) -> str:
    return manifest.get("source", {}).get("sha256") or manifest["bundle_id"]


def loaded_at(served: ServedModel) -> str:
    return datetime.fromtimestamp(served.created, timezone.utc).isoformat().replace("+00:00", "Z")
