"""Bounds on what a client's grammar may ask of the grammar engine, checked before llguidance
sees the input.

llguidance compiles grammars recursively in native code: a chain of 3,000 `$ref`s or 6,000
GBNF rules that name each other overflows an 8 MiB thread stack and ends the process
(SIGSEGV, no exception to catch), and a regex such as `^(x{1000}){100}$` makes its lexer
build states without end as the model writes. So every grammar is measured first, in Python
and without recursion, against `GrammarLimits`: its size, its rule count, the longest chain of
references and nesting through which compilation recurses, and the product of nested counted
repetitions (`{m,n}`, `~ m..n`) that an automaton unrolls. Over a limit: a `GrammarError`
naming the field and the limit (a 400). Compilation then runs on threads with a stack sized
for the deepest input these limits admit (runtime/sampling/constraints.py `GrammarWorkers`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from rfc.runtime.core.request_error import RequestError


class GrammarError(RequestError):
    """A grammar the engine cannot apply; `field` names the request field it came from."""


@dataclass(frozen=True)
class GrammarLimits:
    """Each bound with its default (docs/security.md lists them)."""

    max_bytes: int = 128 << 10  # a schema (as compact JSON) or a grammar's text
    max_rules: int = 2_000  # GBNF / Lark rules; schema subschemas and $refs count alike
    max_depth: int = 512  # nesting plus $ref / rule hops: what compilation recurses through
    max_repeat: int = 10_000  # product of nested counted repetitions in one regex or rule
    max_lexer_states: int = 50_000  # llguidance's lexer automaton, built lazily while decoding
    step_lexer_fuel: int = 200_000  # llguidance's work per token (its default)
    initial_lexer_fuel: int = 1_000_000  # llguidance's work for the first mask (its default)

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_rules, self.max_depth, self.max_repeat, self.max_lexer_states) < 1:
            raise ValueError("grammar limits must be positive")


def check_schema(schema: object, field: str, limits: GrammarLimits) -> None:
    """A JSON schema within the limits: bytes, subschemas, the longest path through nesting and
    local `$ref`s (a reference cycle is recursion, which compiles lazily, and is allowed),
    and the repetitions of every `pattern`."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_bytes:
        raise GrammarError(field, f"'{field}' is {size} bytes as JSON; the limit is {limits.max_bytes}")
    nodes = _subschemas(schema, field, limits)
    depth = _longest_path(schema, nodes)
    if depth > limits.max_depth:
        raise GrammarError(
            field, f"'{field}' nests (through $ref chains) {depth} levels deep; the limit is {limits.max_depth}"
        )


def check_grammar(source: str, syntax: str, field: str, limits: GrammarLimits) -> None:
    """A GBNF or Lark grammar within the limits: bytes, rules, nesting depth (brackets plus the
    longest chain of rules naming rules) and counted repetitions."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise GrammarError(field, f"'{field}' is {size} bytes; the limit is {limits.max_bytes}")
    rules = _rules(source, syntax)
    if len(rules) > limits.max_rules:
        raise GrammarError(field, f"'{field}' has {len(rules)} rules; the limit is {limits.max_rules}")
    if source.count("$ref") > limits.max_rules:  # Lark's %json {...} embeds a schema
        raise GrammarError(field, f"'{field}' holds more than {limits.max_rules} $refs")
    depth = _rule_chain(rules) + _bracket_depth(source, syntax)
    if depth > limits.max_depth:
        raise GrammarError(
            field, f"'{field}' nests (through rules naming rules) {depth} levels deep; the limit is {limits.max_depth}"
        )
    product = repetition_product(source, syntax)
    if product > limits.max_repeat:
        raise GrammarError(
            field, f"'{field}' repeats {product} times in nested counted repetitions; the limit is {limits.max_repeat}"
        )


def check_regex(source: str, field: str, limits: GrammarLimits) -> None:
    """A regex the whole output must match (vLLM's `regex`) within the limits: bytes, nesting
    of groups, and the product of nested counted repetitions its automaton would unroll."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise GrammarError(field, f"'{field}' is {size} bytes; the limit is {limits.max_bytes}")
    depth = _regex_depth(source)
    if depth > limits.max_depth:
        raise GrammarError(field, f"'{field}' nests groups {depth} levels deep; the limit is {limits.max_depth}")
    _check_pattern(source, "regex", field, limits)


def check_choice(options: object, field: str, limits: GrammarLimits) -> list[str]:
    """vLLM's `choice`: a non-empty list of strings, the output exactly one of them; as many
    as a grammar may have rules, and as many bytes in all as a grammar's text."""
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise GrammarError(field, f"'{field}' must be a non-empty list of strings")
    if len(options) > limits.max_rules:
        raise GrammarError(field, f"'{field}' has {len(options)} choices; the limit is {limits.max_rules}")
    size = sum(len(o.encode("utf-8", "surrogatepass")) for o in options)
    if size > limits.max_bytes:
        raise GrammarError(field, f"'{field}' is {size} bytes; the limit is {limits.max_bytes}")
    return options


def _class_end(text: str, i: int) -> int:
    """The index just past the character class that opens at text[i] ("["): a leading "^" and
    a "]" right after it belong to the class, escapes are skipped."""
    n = len(text)
    j = i + 1
    if j < n and text[j] == "^":
        j += 1
    if j < n and text[j] == "]":
        j += 1
    while j < n and text[j] != "]":
        j += 2 if text[j] == "\\" else 1
    return j + 1


def _regex_depth(source: str) -> int:
    """How deep a regex's groups nest (escapes and character classes skipped)."""
    depth = best = i = 0
    n = len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(source, i)
            continue
        if c == "(":
            depth += 1
            best = max(best, depth)
        elif c == ")" and depth:
            depth -= 1
        i += 1
    return best


# -- JSON schemas -------------------------------------------------------------------------------


def _subschemas(schema: object, field: str, limits: GrammarLimits) -> int:
    """Counts the containers of the schema (each a possible subschema) and checks each
    pattern; iterative, since the schema may be built to exhaust recursion."""
    count, refs = 0, 0
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            count += 1
            for key, item in value.items():
                if key == "$ref":
                    refs += 1
                elif key == "pattern" and isinstance(item, str):
                    _check_pattern(item, f"{field} pattern", field, limits)
                elif key == "patternProperties" and isinstance(item, dict):
                    for pattern in item:
                        _check_pattern(pattern, f"{field} patternProperties key", field, limits)
                stack.append(item)
        elif isinstance(value, list):
            count += 1
            stack.extend(value)
    if count + refs > limits.max_rules * 8:  # subschemas are cheaper than rules
        raise GrammarError(
            field, f"'{field}' has {count + refs} subschemas and references; the limit is {limits.max_rules * 8}"
        )
    return count


def _check_pattern(pattern: str, what: str, field: str, limits: GrammarLimits) -> None:
    product = repetition_product(pattern)
    if product > limits.max_repeat:
        raise GrammarError(
            field,
            f"'{field}': the {what} repeats {product} times in nested counted repetitions; "
            f"the limit is {limits.max_repeat}",
        )


def _resolve(root: object, ref: object) -> object | None:
    """The target of a local reference (`#`, `#/$defs/x`, any JSON pointer into the schema);
    None for one that leaves the document or names nothing (llguidance reports those)."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _longest_path(root: object, nodes: int) -> int:
    """The longest path from the root through containers and `$ref` hops, counting a hop
    back onto the path (recursion) as its end. Iterative DFS with memoized depths, so a
    shared definition is measured once: O(containers + references)."""
    memo: dict[int, int] = {}
    on_path: set[int] = set()
    # frames: (node, children iterator, best depth among finished children)
    stack: list[list] = []

    def children(node: object) -> list:
        if isinstance(node, dict):
            out = [v for k, v in node.items() if k != "$ref" and isinstance(v, (dict, list))]
            target = _resolve(root, node.get("$ref"))
            if isinstance(target, (dict, list)):
                out.append(target)
            return out
        return [v for v in node if isinstance(v, (dict, list))]

    if not isinstance(root, (dict, list)):
        return 0
    stack.append([root, iter(children(root)), 0])
    on_path.add(id(root))
    while stack:
        frame = stack[-1]
        child = next(frame[1], None)
        if child is None:
            stack.pop()
            on_path.discard(id(frame[0]))
            memo[id(frame[0])] = frame[2] + 1
            if stack:
                stack[-1][2] = max(stack[-1][2], frame[2] + 1)
            continue
        key = id(child)
        if key in memo:
            frame[2] = max(frame[2], memo[key])
        elif key in on_path:
            frame[2] = max(frame[2], 1)  # recursion: compiled as a rule that names itself
        else:
            on_path.add(key)
            stack.append([child, iter(children(child)), 0])
    return memo[id(root)]


# -- GBNF and Lark ------------------------------------------------------------------------------

_GBNF_RULE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9_.-]*)[ \t]*::=", re.MULTILINE)
_LARK_RULE = re.compile(r"^[ \t]*\??([A-Za-z_][A-Za-z0-9_]*)(?:\.-?[0-9]+)?[ \t]*:", re.MULTILINE)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _rules(source: str, syntax: str) -> dict[str, str]:
    """{rule name: its body text, literals removed}: the rule graph, by a linear scan."""
    pattern = _GBNF_RULE if syntax == "gbnf" else _LARK_RULE
    heads = list(pattern.finditer(source))
    rules: dict[str, str] = {}
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(source)
        rules[head.group(1)] = rules.get(head.group(1), "") + " " + _without_literals(source[head.end() : end], syntax)
    return rules


def _rule_chain(rules: dict[str, str]) -> int:
    """The longest chain of rules naming rules (cycles end a chain): what a recursive
    compiler descends through."""
    graph = {name: [r for r in set(_IDENT.findall(body)) if r in rules] for name, body in rules.items()}
    memo: dict[str, int] = {}
    for start in graph:
        if start in memo:
            continue
        on_path = {start}
        stack = [(start, iter(graph[start]), 0)]
        while stack:
            name, it, best = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(name)
                memo[name] = best + 1
                if stack:
                    parent = stack[-1]
                    stack[-1] = (parent[0], parent[1], max(parent[2], best + 1))
                continue
            if nxt in memo:
                stack[-1] = (name, it, max(best, memo[nxt]))
            elif nxt not in on_path:
                on_path.add(nxt)
                stack.append((nxt, iter(graph[nxt]), 0))
    return max(memo.values(), default=0)


def _without_literals(text: str, syntax: str) -> str:
    """`text` with comments, quoted strings, character classes (GBNF) and /regexes/ (Lark)
    blanked out: their brackets and words are not grammar structure. Linear; a literal ends
    at the end of its line at the latest, so an unclosed quote cannot hide the rules after it."""
    closers = {'"': '"', "'": "'", "[": "]"} if syntax == "gbnf" else {'"': '"', "'": "'", "/": "/"}
    comment = "#" if syntax == "gbnf" else "//"
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith(comment, i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        closer = closers.get(c)
        if closer is None:
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < n and text[j] != closer and text[j] != "\n":
            j += 2 if text[j] == "\\" else 1
        out.append(" ")
        i = j + 1
    return "".join(out)


def _bracket_depth(source: str, syntax: str) -> int:
    depth = best = 0
    for c in _without_literals(source, syntax):
        if c in "({[":
            depth += 1
            best = max(best, depth)
        elif c in ")}" and depth:
            depth -= 1
    return best


_COUNT = re.compile(r"\{\s*(\d{1,12})\s*(?:,\s*(\d{0,12})\s*)?\}|~\s*(\d{1,12})(?:\s*\.\.\s*(\d{1,12}))?")


def repetition_product(text: str, syntax: str = "regex") -> int:
    """The largest product of counted repetitions nested in `text`, a regex or a grammar
    (`syntax`: "regex", "gbnf" or "lark"): `(x{1000}){100}` -> 100,000. `*`, `+` and `?` count
    1 (a loop is one automaton state); `{m,}` counts m. A linear scan over groups. Escapes are
    skipped everywhere; a regex's and GBNF's `[...]` are character classes, skipped; Lark's
    `[...]` is an optional group. In a grammar, "quoted" literals (which end at their line) and
    comments (GBNF `#`, Lark `//`) are skipped, and a Lark /regex/ is measured as a regex whose
    product the repetition after it multiplies. In a regex, quotes and `#` are characters."""
    grammar, lark = syntax != "regex", syntax == "lark"
    comment = "//" if lark else "#"
    # Each open group keeps the largest product found inside it; closing it multiplies that
    # by the group's own count (if one follows) into the enclosing group.
    stack = [1]
    best = 1
    i, n = 0, len(text)
    last_atom = 1  # product carried by the item a following count applies to
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            last_atom = 1
            continue
        if grammar and text.startswith(comment, i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "[" and not lark:
            i = _class_end(text, i)
            last_atom = 1
            continue
        if grammar and (c == '"' or (lark and c == "/")):
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            last_atom = repetition_product(text[i + 1 : j]) if c == "/" else 1
            stack[-1] = max(stack[-1], last_atom)
            best = max(best, last_atom)
            i = j + 1
            continue
        if c == "(" or (c == "[" and lark):
            stack.append(1)
            i += 1
            continue
        if c == ")" or (c == "]" and lark):
            inner = stack.pop() if len(stack) > 1 else 1
            stack[-1] = max(stack[-1], inner)
            last_atom = inner
            i += 1
            continue
        m = _COUNT.match(text, i)
        if m is not None:
            lo, hi = m.group(1) or m.group(3), m.group(2) or m.group(4)
            count = max(int(lo), int(hi) if hi else 0)
            product = min(last_atom * max(count, 1), 1 << 62)
            stack[-1] = max(stack[-1], product)
            best = max(best, product)
            last_atom = product
            i = m.end()
            continue
        if not c.isspace():
            last_atom = 1
        i += 1
    return max(best, *stack)
