"""Turning user input into prompt token ids: plain text or a chat rendered by the template."""

from rfc.runtime.text.chat import ChatTemplate, fallback_template
from rfc.runtime.engine.assemble import LoadedModel


def encode_prompt(model: LoadedModel, text: str) -> list[int]:
    """Token ids for `text`, with BOS/EOS as the model's tokenizer adds them.

    Special tokens written in the text (a chat template's "<|im_start|>") are matched as such;
    a BOS the text already starts with is not doubled.
    """
    ids = model.tokenizer.encode(text, add_special_tokens=True).ids
    bos = model.tokenizer_info.get("bos_id")
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def chat_template_parts(model: LoadedModel) -> tuple[str, str, str]:
    """(template source, BOS text, EOS text): what a chat template is compiled from."""
    info = model.tokenizer_info
    source = model.chat_template_source() or fallback_template()
    return source, _token_text(model, info.get("bos_id")), _token_text(model, info.get("eos_id"))


def chat_template(model: LoadedModel) -> ChatTemplate:
    """The template compiled in this process (`rfc run --chat`; the server uses worker
    processes: runtime/text/template_worker.py)."""
    source, bos, eos = chat_template_parts(model)
    return ChatTemplate(source=source, bos_token=bos, eos_token=eos)


def _token_text(model: LoadedModel, token_id: int | None) -> str:
    if token_id is None:
        return ""
    return model.tokenizer.id_to_token(token_id) or ""
