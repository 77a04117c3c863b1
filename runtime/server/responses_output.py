"""The output items of a Responses API response (a `reasoning` item, a `message` with one
`output_text`, a `function_call` per call), built from the parsed output as it comes: each
step returns the stream events it makes, in the order openai-python's accumulator reads them
(an item is added, its content grows, it is done), and the whole reply reads `items` at the
end, so a streamed response and a whole one hold the same items."""

from rfc.runtime.text.assistant_output import Delta
from rfc.runtime.text.call_ids import CallIdForm, in_form
from rfc.runtime.server.responses_input import chat_turns, new_id


class OutputItems:
    """The output items of one response, built from the parsed output as it comes; each step
    returns the stream events it makes (the whole reply reads `items` at the end)."""

    def __init__(self, call_ids: CallIdForm):
        self.items: list[dict] = []
        self._call_ids = call_ids
        self._message: dict | None = None  # the message item being written
        self._reasoning = ""

    def add(self, d: Delta) -> list[tuple[str, dict]]:
        events: list[tuple[str, dict]] = []
        self._reasoning += d.reasoning
        if d.content or d.calls:
            events += self._flush_reasoning()
        if d.content:
            if self._message is None:
                events += self._open_message()
            part = self._message["content"][0]
            part["text"] += d.content
            events.append(("response.output_text.delta", {**self._where(), "delta": d.content, "logprobs": []}))
        for call in d.calls:
            events += self._close_message("completed")
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": in_form(call.id, self._call_ids),
                "name": call.name,
                "arguments": "",
            }
            index = len(self.items)
            self.items.append(item)
            at = {"item_id": item["id"], "output_index": index}
            events.append(("response.output_item.added", {"output_index": index, "item": dict(item)}))
            item["arguments"] = call.arguments
            events += [
                ("response.function_call_arguments.delta", {**at, "delta": call.arguments}),
                ("response.function_call_arguments.done", {**at, "name": call.name, "arguments": call.arguments}),
            ]
            item["status"] = "completed" if call.complete else "incomplete"  # cut off by max_output_tokens
            events.append(("response.output_item.done", {"output_index": index, "item": dict(item)}))
        return events

    def finish(self, status: str) -> list[tuple[str, dict]]:
        events = self._flush_reasoning()
        if not self.items:  # an empty answer is still a message
            events += self._open_message()
        return events + self._close_message(status)

    def _flush_reasoning(self) -> list[tuple[str, dict]]:
        if not self._reasoning:
            return []
        item = {"id": new_id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": self._reasoning}]}
        self._reasoning = ""
        index = len(self.items)
        self.items.append(item)
        return [
            ("response.output_item.added", {"output_index": index, "item": {**item, "summary": []}}),
            ("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _open_message(self) -> list[tuple[str, dict]]:
        self._message = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.items.append(self._message)
        added = (
            "response.output_item.added",
            {"output_index": len(self.items) - 1, "item": {**self._message, "content": []}},
        )
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._message["content"].append(part)
        return [added, ("response.content_part.added", {**self._where(), "part": dict(part)})]

    def _close_message(self, status: str) -> list[tuple[str, dict]]:
        message, self._message = self._message, None
        if message is None:
            return []
        index = self.items.index(message)
        where = {"item_id": message["id"], "output_index": index, "content_index": 0}
        part = message["content"][0]
        message["status"] = status
        return [
            ("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
            ("response.content_part.done", {**where, "part": dict(part)}),
            ("response.output_item.done", {"output_index": index, "item": message}),
        ]

    def _where(self) -> dict:
        return {"item_id": self._message["id"], "output_index": self.items.index(self._message), "content_index": 0}


def turns_of(items: list[dict]) -> list[dict]:
    """A response's output items as the chat turn that continues its conversation."""
    return chat_turns(
        [
            {**i, "role": "assistant"} if i["type"] == "message" else i
            for i in items
            if i["type"] in ("message", "function_call")
        ]
    )
