"""One home per limit: artifacts/limits.py defines every bound the compiler, the bundle
validator and the runtime share, and no other module assigns one of its names (an AST scan,
so a copy that happens to hold the same value fails as well as one that drifted)."""

import ast
from pathlib import Path

from rfc.artifacts import limits

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ROOT / "artifacts" / "limits.py"
PACKAGES = ("artifacts", "compiler", "runtime", "cli")


def _bound_names(target: ast.expr) -> list[str]:
    """The names an assignment target binds (`a, b = ...` binds both)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _bound_names(elt)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


def assigned_names(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, line) of every assignment anywhere in a module: module level, class bodies and
    functions, plain, annotated, augmented and walrus assignments alike."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            targets = [node.target]
        else:
            continue
        found += [(name, node.lineno) for t in targets for name in _bound_names(t)]
    return found


def limit_names() -> set[str]:
    return {name for name, _line in assigned_names(ast.parse(LIMITS.read_text()))}


def test_limits_holds_the_shared_bounds_and_imports_nothing():
    names = limit_names()
    assert {
        "MAX_CONTEXT",
        "MAX_LAYERS",
        "MAX_HEADS",
        "MAX_HEAD_DIM",
        "MAX_EXPERTS",
        "MAX_CONV_KERNEL",
        "STEP_TOKENS",
    } <= names
    assert all(isinstance(getattr(limits, name), int) and getattr(limits, name) > 0 for name in names)
    tree = ast.parse(LIMITS.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_no_module_redefines_a_limit():
    names = limit_names()
    redefined = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == LIMITS:
                continue
            for name, line in assigned_names(ast.parse(path.read_text(), str(path))):
                if name in names:
                    redefined.append(f"{path.relative_to(ROOT)}:{line} assigns {name}")
    assert not redefined, "import these from rfc.artifacts.limits instead:\n" + "\n".join(redefined)


def test_every_limit_is_imported_from_limits():
    """A limit no module imports is a bound nobody checks."""
    imported = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "rfc.artifacts.limits":
                    imported |= {alias.name for alias in node.names}
    assert not limit_names() - imported, f"limits no module imports: {sorted(limit_names() - imported)}"
