"""runtime/'s folders are layers: each imports only the folders below it, never one above,
and no folders import each other in a loop (README.md, "Runtime layers").

Every import is counted, wherever it stands: at module level, inside a function, under
`if TYPE_CHECKING:`; `from rfc.runtime import x` counts as an import of the folder x."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime"

# Lowest first: a folder may import the ones before it, never one after it.
LAYERS = ["core", "model", "text", "sampling", "devices", "engine", "server"]


def _module(path: Path) -> list[str]:
    """The dotted name of a runtime file, as a list: ["rfc", "runtime", "engine", "engine"]."""
    parts = ["rfc", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports (and, for `from m import n`, also m.n, which may be a
    module), with its line: absolute and relative imports, at any depth of the file."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["rfc", "runtime"] and len(parts) > 2 and (RUNTIME / parts[2]).is_dir():
        return parts[2]
    return None


def folder_imports() -> dict[tuple[str, str], list[str]]:
    """(importing folder, imported folder) -> where, for every import between two folders."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        if path.parent == RUNTIME:
            continue  # runtime/__init__.py: a docstring
        source = path.relative_to(RUNTIME).parts[0]
        for module, line in imported_modules(path):
            target = _folder(module)
            if target is not None and target != source:
                edges.setdefault((source, target), []).append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Every folder-level loop, each as the folders around it (found by depth-first search)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_every_runtime_folder_has_a_layer():
    folders = sorted(p.name for p in RUNTIME.iterdir() if (p / "__init__.py").is_file())
    assert sorted(LAYERS) == folders, "a new runtime folder needs its place in LAYERS (and in README.md)"


def test_no_folder_imports_one_above_it():
    upward = [
        where for (a, b), places in folder_imports().items() if LAYERS.index(b) > LAYERS.index(a) for where in places
    ]
    assert upward == [], "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)


def test_no_folders_import_each_other_in_a_loop():
    assert cycles(folder_imports()) == []


def test_the_readme_states_the_order():
    assert " < ".join(f"`{name}/`" for name in LAYERS) in (ROOT / "README.md").read_text()


# The checks above must see every kind of import: these files would break the layering.
@pytest.mark.parametrize(
    "source",
    [
        "from rfc.runtime.engine.batch import ScheduledChunk\n",
        "import rfc.runtime.server.app\n",
        "def f():\n    from rfc.runtime.engine import engine\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from rfc.runtime.engine.assemble import LoadedModel\n",
        "from ..engine.executor import Executor\n",
        "from rfc.runtime import server\n",
    ],
)
def test_every_kind_of_import_is_seen(tmp_path, monkeypatch, source):
    fake = tmp_path / "runtime"
    for name in LAYERS:
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
    (fake / "devices" / "probe.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "RUNTIME", fake)
    assert [a for a, b in folder_imports() if LAYERS.index(b) > LAYERS.index(a)] == ["devices"]


def test_a_loop_is_found():
    assert cycles({("devices", "engine"): [], ("engine", "model"): [], ("model", "devices"): []}) == [
        ["devices", "engine", "model", "devices"]
    ]
