"""Chat-template rendering for /v1/chat/completions and `rfc run --chat`.

A bundle carries the model's chat template verbatim (GGUF `tokenizer.chat_template`). Whoever
published the GGUF wrote it, so it is untrusted code: it renders in jinja2's
ImmutableSandboxedEnvironment with the options and extras HF transformers' `apply_chat_template`
uses, plus what llama.cpp's server offers on top of them (`{% generation %}`, `from_json`,
`list.append`/`pop`). Three guards go beyond jinja2's own sandbox:

- reaching for an unsafe attribute raises at once; jinja2 would yield an Undefined that prints
  as an empty string and hides the attempt;
- a per-render budget caps loop iterations and calls, wall time and output size, so a hostile
  template cannot hang a server thread;
- operations that can multiply a value's size (`*`, `**`, `+`, `~`, calls, filters) are
  checked against the output cap, before the fact where the size is cheap to predict.

What the guards do not bound is the memory of one operation over a value built from shared
references (a list holding the same large string many times, then serialized): that needs a
process-level limit.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from jinja2 import Template, nodes, pass_context
from jinja2.exceptions import TemplateSyntaxError
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer


class ChatTemplateError(Exception):
    """A chat template failed to compile or render, called raise_exception(), or broke the sandbox."""


@dataclass(frozen=True)
class RenderLimits:
    """What one render may spend. The costliest template in tests/data/chat-templates takes about
    22,000 steps and 0.15 s for 200 messages and 20 tools."""

    max_output_chars: int = 1_000_000
    max_steps: int = 1_000_000  # loop iterations plus calls
    timeout_s: float = 5.0


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template; immutable and safe to render from several threads at once."""

    source: str
    bos_token: str
    eos_token: str
    limits: RenderLimits = RenderLimits()
    _compiled: Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compile once, up front: a broken template fails when the bundle loads, not per request.
        compiled = _sandbox(self.limits).compile_chat_template(self.source)
        object.__setattr__(self, "_compiled", compiled)

    def render(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list | None = None,
        **extra: Any,
    ) -> str:
        """Render the prompt text for `messages`.

        `extra` carries template-specific variables (documents, enable_thinking, date_string,
        tools_in_user_message, reasoning_effort, ...). As with HF transformers, `documents`
        defaults to None and the others stay undefined unless given, so that each template
        applies its own default.
        """
        budget = _Budget(self.limits)
        variables = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "documents": None,
            **extra,
            # Templates may append to or pop from lists; they work on copies of the caller's.
            "messages": copy.deepcopy(messages),
            "tools": copy.deepcopy(tools),
            "add_generation_prompt": add_generation_prompt,
            _BUDGET_KEY: budget,
        }
        chunks: list[str] = []
        try:
            for chunk in self._compiled.generate(variables):
                budget.add_output(len(chunk))
                chunks.append(chunk)
        except ChatTemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever fails inside template code is the template's fault
            raise ChatTemplateError(_describe_render_error(exc)) from exc
        return "".join(chunks)


def fallback_template() -> str:
    """The ChatML template used when a bundle has none (llama.cpp does the same)."""
    return _CHATML


_CHATML = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}\n"
    "{{- message['content'] -}}\n"
    "{%- elif message['content'] is iterable -%}\n"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
)

# Not a Jinja identifier, so no template can name it; the sandbox finds the render's budget here.
_BUDGET_KEY = "rfc:budget"
# Same trick for the filter that counts loop iterations: only the compiler below inserts it.
_LOOP_FILTER = "rfc:counted"
_SIZE_FILTER = "rfc:sized"
_TEMPLATE_FILENAME = "<template>"
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\d*)(?:\.(\d*))?")
_MAX_INT_BITS = 4096
_MAX_JSON_INDENT = 100
# llama.cpp's server (minja) lets templates queue tool-call ids in a list (Kimi K2 does).
_ALLOWED_LIST_MUTATIONS = frozenset({"append", "pop"})


class _LimitExceeded(SecurityError):
    """A render ran out of budget; reported like any other sandbox violation."""


class _Budget:
    """Counts the steps, wall time and output characters of one render against its limits."""

    def __init__(self, limits: RenderLimits) -> None:
        self._limits = limits
        self._steps = 0
        self._output_chars = 0
        self._deadline = time.monotonic() + limits.timeout_s

    def spend(self, steps: int = 1) -> None:
        self._steps += steps
        if self._steps > self._limits.max_steps:
            raise _LimitExceeded(f"exceeded {self._limits.max_steps} steps (loop iterations and calls)")
        if time.monotonic() > self._deadline:
            raise _LimitExceeded(f"took longer than {self._limits.timeout_s} s to render")

    def add_output(self, chars: int) -> None:
        self._output_chars += chars
        if self._output_chars > self._limits.max_output_chars:
            raise _LimitExceeded(f"output exceeds {self._limits.max_output_chars} characters")


class _GenerationExtension(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for HF's training masks.

    Rendering a prompt ignores the marks; like HF, the body gets its own scope.
    """

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _ChatSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: RenderLimits) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _GenerationExtension],
        )
        self.limits = limits
        self.globals.pop("lipsum", None)  # no chat template uses it; it only makes large text
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters["tojson"] = _tojson
        self.filters["from_json"] = json.loads
        self.filters = {name: self._guard_filter(name, fn) for name, fn in self.filters.items()}
        self.filters[_LOOP_FILTER] = _counted
        self.filters[_SIZE_FILTER] = self._checked

    def compile_chat_template(self, source: str) -> Template:
        try:
            tree = _Instrumenter().visit(self.parse(source, filename=_TEMPLATE_FILENAME))
            return self.from_string(tree)
        except TemplateSyntaxError as exc:
            message = f"chat template syntax error at line {exc.lineno}: {exc.message}"
            raise ChatTemplateError(message) from exc
        except RecursionError:
            raise ChatTemplateError("the chat template nests too deeply to compile") from None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, list) and attr in _ALLOWED_LIST_MUTATIONS:
            return True
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(
            f"template tried to access an unsafe attribute {attribute!r} of {type(obj).__name__!r} object"
        )

    # The double underscores are jinja2's: they keep the names clear of the call's own kwargs.
    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __context[_BUDGET_KEY].spend()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format in a function
        if isinstance(getattr(method, "__self__", None), str):
            __self._check_size(_predicted_text_size(method.__name__, method.__self__, args, kwargs))
        return __self._checked(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if isinstance(left, int) and isinstance(right, int):
            self._check_int_bits(_predicted_int_bits(operator, left, right))
        else:
            self._check_size(_predicted_size(operator, left, right))
        return self._checked(super().call_binop(context, operator, left, right))

    def _guard_filter(self, name: str, fn: Any) -> Any:
        # pass_context/pass_eval_context/pass_environment filters get one argument before the value.
        value_index = 1 if hasattr(fn, "jinja_pass_arg") else 0

        @functools.wraps(fn)  # keeps jinja_pass_arg, so jinja2 still passes that argument
        def guarded(*args: Any, **kwargs: Any) -> Any:
            value = args[value_index] if len(args) > value_index else None
            if isinstance(value, str):
                self._check_size(_predicted_text_size(name, value, args[value_index + 1 :], kwargs))
            return self._checked(fn(*args, **kwargs))

        return guarded

    def _checked(self, value: Any) -> Any:
        if isinstance(value, (str, list, tuple, dict)):
            self._check_size(len(value))
        elif isinstance(value, int):
            self._check_int_bits(value.bit_length())
        return value

    def _check_int_bits(self, bits: int) -> None:
        if bits > _MAX_INT_BITS:
            raise _LimitExceeded(f"built an integer larger than {_MAX_INT_BITS} bits")

    def _check_size(self, size: int) -> None:
        if size > self.limits.max_output_chars:
            raise _LimitExceeded(f"built a value larger than {self.limits.max_output_chars} items")


class _Instrumenter(NodeTransformer):
    """Routes every loop through the step budget and every `~` result through the size check."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        return nodes.Filter(self.generic_visit(node), _SIZE_FILTER, [], [], None, None, lineno=node.lineno)


@functools.lru_cache(maxsize=None)
def _sandbox(limits: RenderLimits) -> _ChatSandbox:
    return _ChatSandbox(limits)


@pass_context
def _counted(context: Context, iterable: Any) -> Any:
    budget = context[_BUDGET_KEY]
    for item in iterable:
        budget.spend()
        yield item


def _predicted_size(operator: str, left: Any, right: Any) -> int:
    """How many items (characters, elements) `left <operator> right` would hold."""
    if operator == "*" and isinstance(right, int) and hasattr(left, "__len__"):
        return len(left) * right
    if operator == "*" and isinstance(left, int) and hasattr(right, "__len__"):
        return left * len(right)
    if operator == "+" and hasattr(left, "__len__") and hasattr(right, "__len__"):
        return len(left) + len(right)
    if operator == "%" and isinstance(left, str):
        return _predicted_text_size("format", left, (), {})
    return 0


def _predicted_int_bits(operator: str, left: int, right: int) -> int:
    """An upper bound on the bits of `left <operator> right`, cheap to compute first."""
    if operator == "**":
        return left.bit_length() * max(right, 1)
    return left.bit_length() + right.bit_length()


def _predicted_text_size(name: str, text: str, args: tuple, kwargs: dict[str, Any]) -> int:
    """The length `text.<name>(*args)` (or `text|<name>(...)`) will have, for the operations
    that can grow a string by far more than their inputs; 0 for all others."""
    first = args[0] if args else kwargs.get("width", kwargs.get("tabsize"))
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        return first
    if name == "expandtabs":
        return len(text) * (first if isinstance(first, int) else 8)
    if name == "indent":
        width = len(first) if isinstance(first, str) else first if isinstance(first, int) else 4
        return len(text) + (text.count("\n") + 1) * width
    if name in ("format", "format_map"):
        return len(text) + _largest_format_number(text)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return len(text) + (text.count(args[0]) if args[0] else len(text) + 1) * len(args[1])
    return 0


def _largest_format_number(text: str) -> int:
    """The largest width or precision in a %-style or {}-style format string (0 if none)."""
    numbers = [n for match in _PERCENT_SPEC.finditer(text) for n in match.groups() if n]
    try:
        specs = [spec for _, _, spec, _ in string.Formatter().parse(text) if spec]
    except ValueError:
        specs = []  # not a {}-style format string; formatting it will fail or leave it as it is
    numbers += [n for spec in specs for n in re.findall(r"\d+", spec)]
    return max(map(int, numbers), default=0)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML; prompts need the plain JSON (as HF).
    width = len(indent) if isinstance(indent, str) else indent or 0
    if width > _MAX_JSON_INDENT:  # every line of the output would repeat it, nesting times over
        raise _LimitExceeded(f"tojson indent {width} is larger than {_MAX_JSON_INDENT}")
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
        default=_json_list,
    )


def _json_list(value: Any) -> list:
    # `tools | map(attribute='function') | tojson` hands over a generator; llama.cpp's server
    # serializes it as a list (its map returns one), and so do we.
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _describe_render_error(exc: Exception) -> str:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, SecurityError):
        detail = f"{type(exc).__name__}: {detail}"
    line = _template_line(exc.__traceback__)
    where = f" at line {line}" if line is not None else ""
    return f"chat template failed{where}: {detail}"


def _template_line(tb: TracebackType | None) -> int | None:
    """The innermost template line in a traceback jinja2 has rewritten to template lines."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
