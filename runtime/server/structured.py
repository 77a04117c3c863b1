"""What a request asks of its output beyond text, in every API's words -> one `OutputPlan`:
the tools to render into the prompt, the grammar that constrains sampling, and how to read
the output (reasoning, tool calls).

- Tools are OpenAI-shaped here (`{"type": "function", "function": {name, description,
  parameters}}`); Ollama's are already, Anthropic's and the legacy `functions` are mapped.
- `tool_choice`: `auto` renders the tools and parses calls out of free output with the
  template family's parser; `none` renders no tools; `required` and a named function
  constrain the output to a JSON list of calls (`[{"name", "arguments"}]`) by grammar, so the
  call is valid with any model (a response format does not apply to a forced call).
- Generic tool calling, as llama-server's generic format: where the template has no tool-call
  format (it renders no tools, or none we parse), the tools are described in a system message
  and `auto` constrains the output to `{"tool_calls": [...]}` or `{"response": "..."}`; the
  same grammar keeps the tools callable when `auto` comes with a response format, which then
  constrains the `response` alone.
- A JSON schema or grammar the engine cannot apply is a 400 naming the field, before the
  request is queued."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from rfc.runtime.text.assistant_output import OutputSpec
from rfc.runtime.sampling.constraints import Busy, Grammar, GrammarError
from rfc.runtime.text.reasoning import prompt_opens_thinking, template_is_harmony, template_thinks, thinking_tags
from rfc.runtime.server.call_schema import calls_schema, generic_schema
from rfc.runtime.server.errors import bad_request, unavailable
from rfc.runtime.server.served_models import ServedModel

MAX_TOOLS = 128
# OpenAI allows a-z, A-Z, 0-9, _ and -; MCP adds . and :. Matched whole (re's `$` would let a
# trailing newline through, where the document's ECMA-262 pattern does not).
TOOL_NAME_PATTERN = "^[A-Za-z0-9_.:-]{1,128}$"
_NAME = re.compile(TOOL_NAME_PATTERN.strip("^$"))


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"  # auto | none | required | function
    name: str | None = None  # mode "function": the one function to call


@dataclass
class OutputPlan:
    tools: list[dict] = field(default_factory=list)  # rendered into the prompt
    choice: ToolChoice = ToolChoice()
    parallel: bool = True
    grammar: Grammar | None = None  # response_format, json_schema, grammar, Ollama format
    grammar_field: str | None = None
    thinking: bool | None = None  # enable_thinking asked for (None: the template's default)
    split_reasoning: bool = True
    # OpenAI's response format constrains the answer, not the calls (True); Ollama's `format`
    # constrains the whole output, which a client may shape as the template's own call (False)
    format_is_answer: bool = True

    @property
    def render_tools(self) -> list[dict] | None:
        return self.tools if self.tools and self.choice.mode != "none" else None

    @property
    def format_schema(self) -> object:
        """The JSON schema of the response format (None: none, or a Lark / GBNF grammar)."""
        return self.grammar.schema if self.grammar is not None else None

    def generic(self, served: ServedModel) -> bool:
        """Whether the tools go through llama-server's generic JSON (`{"tool_calls": [...]}` or
        `{"response": ...}`, described in a system message): where the template has no tool-call
        format to render and parse, and where a response format must leave the tools callable
        (tool_choice auto: the format constrains the answer, not the calls)."""
        if not self.tools or self.choice.mode == "none":
            return False
        return served.tool_format is None or (
            self.choice.mode == "auto" and self.format_schema is not None and self.format_is_answer
        )

    def prompt_args(self, served: ServedModel) -> dict:
        """render_chat's `tools` (those the template renders) and `note` (the generic
        instructions, where the template cannot render the tools or the calls' form)."""
        if not self.generic(served):
            return {"tools": self.render_tools, "note": None}
        native = served.tool_format is not None
        return {
            "tools": self.render_tools if native else None,
            "note": generic_note(None if native else [t["function"] for t in self.tools], self.choice.mode == "auto"),
        }

    def constraint(self, served: ServedModel) -> Grammar | None:
        """The grammar sampling follows: the forced calls' (a response format does not apply
        to them), the generic tool calling's, else the response format's."""
        if self.tools and self.choice.mode in ("required", "function"):
            check_tool_schemas(served, self)
            return grammar(served, "tool_choice", lambda g: g.json_schema(_calls_schema(self), "tools"))
        if self.generic(served):
            if served.grammars is None and self.grammar is None:
                return None  # no constrained decoding for this model: the reply is read as written
            check_tool_schemas(served, self)
            chosen = [t["function"] for t in self.tools]
            schema = generic_schema(chosen, not self.parallel, self.format_schema)
            return grammar(
                served, self.grammar_field or "tools", lambda g: g.json_schema(schema, self.grammar_field or "tools")
            )
        return self.grammar

    def output_spec(self, served: ServedModel, prompt: str) -> OutputSpec:
        source = served.chat.source if served.chat is not None else ""
        thinks = self.split_reasoning and template_thinks(source)
        forced = bool(self.tools) and self.choice.mode in ("required", "function")
        generic = not forced and self.generic(served)
        fmt = served.tool_format if self.tools and self.choice.mode == "auto" and not generic else None
        return OutputSpec(
            thinks=thinks,
            harmony=thinks and template_is_harmony(source),
            starts_inside=thinks and prompt_opens_thinking(prompt),
            tags=thinking_tags(source),
            tool_format=fmt,
            tools=tuple(self.tools),
            forced_calls=forced,
            generic_calls=generic,
            call_prefix=fmt.opened_by(prompt) if fmt is not None else "",
        )


def generic_note(functions: list[dict] | None, auto: bool) -> str:
    """The system message of generic tool calling (llama-server's words): the tools, where the
    template does not render them, and the JSON to answer in."""
    parts = []
    if functions is not None:
        listed = [{"type": "function", "function": f} for f in functions]
        parts.append(
            "You can call any of the following tools to satisfy the user's requests: "
            + json.dumps(listed, indent=2, ensure_ascii=False)
        )
    if auto:
        parts.append(
            "Respond in JSON format, either with `tool_calls` (a list of requests to call tools, each "
            '{"name": ..., "arguments": {...}}) or with `response` (a reply to the user\'s request).'
        )
    else:
        parts.append(
            'Respond in JSON format with a list of requests to call tools, each {"name": ..., "arguments": {...}}.'
        )
    return "\n\n".join(parts)


def grammar(served: ServedModel, field_name: str, build) -> Grammar:
    if served.grammars is None:
        raise bad_request(f"constrained decoding is not available for this model: {served.grammars_error}", field_name)
    try:
        return build(served.grammars)
    except GrammarError as e:
        raise bad_request(str(e), e.field) from None
    except Busy as e:
        raise unavailable(f"{e}; retry later") from None


def openai_tools(raw: object, field_name: str = "tools") -> list[dict]:
    """Validated OpenAI `tools` (function tools only)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise bad_request(f"'{field_name}' must be a list of at most {MAX_TOOLS} tools", field_name)
    out = []
    for i, tool in enumerate(raw):
        where = f"{field_name}[{i}]"
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            raise bad_request(
                f"'{where}' must be {{'type': 'function', 'function': {{...}}}} (only function tools are supported)",
                where,
            )
        out.append({"type": "function", "function": function_spec(tool["function"], f"{where}.function")})
    _unique_names(out, field_name)
    return out


def tool_plan(raw_tools: object, raw_choice: object, parallel: bool = True) -> OutputPlan:
    """OpenAI's `tools` and `tool_choice` (a choice other than auto or none needs tools)."""
    tools = openai_tools(raw_tools)
    if not tools:
        if raw_choice not in (None, "none", "auto"):
            raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
        return OutputPlan()
    return OutputPlan(tools=tools, choice=openai_tool_choice(raw_choice, tools), parallel=parallel)


def legacy_functions(raw: object) -> list[dict]:
    """The deprecated `functions` list as tools."""
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise bad_request(f"'functions' must be a list of at most {MAX_TOOLS} functions", "functions")
    tools = [{"type": "function", "function": function_spec(f, f"functions[{i}]")} for i, f in enumerate(raw)]
    _unique_names(tools, "functions")
    return tools


def function_spec(fn: object, where: str, parameters_key: str = "parameters") -> dict:
    if not isinstance(fn, dict):
        raise bad_request(f"'{where}' must be an object", where)
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad_request(f"'{where}.name' must be 1-128 letters, digits, '_', '-', '.' or ':'", f"{where}.name")
    description = fn.get("description", "")
    if not isinstance(description, str):
        raise bad_request(f"'{where}.description' must be a string", f"{where}.description")
    params = fn.get(parameters_key, {"type": "object", "properties": {}})
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise bad_request(f"'{where}.{parameters_key}' must be a JSON schema object", f"{where}.{parameters_key}")
    spec = {"name": name, "description": description, "parameters": params}
    if fn.get("strict") is not None:
        spec["strict"] = bool(fn.get("strict"))
    return spec


def openai_tool_choice(raw: object, tools: list[dict], field_name: str = "tool_choice") -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    name = None
    if isinstance(raw, dict):
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else raw.get("name")  # {"name"}: legacy function_call
    if not isinstance(name, str):
        raise bad_request(
            f"'{field_name}' must be 'auto', 'none', 'required' or {{'type': 'function', 'function': {{'name': ...}}}}",
            field_name,
        )
    return named_choice(name, tools, field_name)


def named_choice(name: str, tools: list[dict], field_name: str) -> ToolChoice:
    if name not in {t["function"]["name"] for t in tools}:
        raise bad_request(f"'{field_name}' names '{name}', which is not among the tools", field_name)
    return ToolChoice("function", name)


def check_tool_schemas(served: ServedModel, plan: OutputPlan, field_name: str = "tools") -> None:
    """Each constrained function's parameters (forced, or all in generic `auto`) compile as a
    grammar (a 400 naming the tool if not)."""
    for i, tool in enumerate(plan.tools):
        fn = tool["function"]
        if plan.choice.mode in ("required", "auto") or fn["name"] == plan.choice.name:
            grammar(
                served,
                f"{field_name}[{i}].function.parameters",
                lambda g: g.json_schema(fn["parameters"], f"{field_name}[{i}].function.parameters"),
            )


def _calls_schema(plan: OutputPlan) -> dict:
    """The JSON the output is forced into: a list of calls, each a tool's name and arguments."""
    chosen = [
        t["function"] for t in plan.tools if plan.choice.mode == "required" or t["function"]["name"] == plan.choice.name
    ]
    return calls_schema(chosen, single=plan.choice.mode == "function" or not plan.parallel)


def _unique_names(tools: list[dict], field_name: str) -> None:
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise bad_request(f"'{field_name}' has two tools with the same name", field_name)
