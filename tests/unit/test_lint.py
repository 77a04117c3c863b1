"""The repository passes its linter and its formatter's check: `ruff check` with the configuration in pyproject.toml
(docs/style.md: pyflakes, the pycodestyle errors that are bugs or near-bugs, 120 columns), and no
test module defines a test twice, which would leave the first one never run (pyflakes' F811
catches that too, but the GPU test modules turn F811 off for their fixture parameters)."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_check_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (the test extra pins it: pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"`ruff check .` has findings (fix them; docs/style.md):\n{proc.stdout}{proc.stderr}"


def test_ruff_format_check_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (the test extra pins it: pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"`ruff format --check .` would reformat (run `ruff format`):\n{proc.stdout}{proc.stderr}"
    )


def _duplicate_tests(source: str) -> list[str]:
    """Names of tests (functions or classes named test*/Test*) defined twice in one module or class body."""
    tree = ast.parse(source)
    found = []
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        seen: set[str] = set()
        for node in scope.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith(
                ("test", "Test")
            ):
                if node.name in seen:
                    found.append(f"{node.name} (line {node.lineno})")
                seen.add(node.name)
    return found


def test_the_duplicate_check_finds_a_shadowed_test():
    source = (
        "def test_a():\n    pass\n\nclass TestB:\n    def test_c(self):\n        pass\n\n"
        "    def test_c(self):\n        pass\n\ndef test_a():\n    pass\n"
    )
    assert _duplicate_tests(source) == ["test_a (line 11)", "test_c (line 8)"]


def test_no_test_module_defines_a_test_twice():
    found = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if (names := _duplicate_tests(path.read_text(encoding="utf-8")))
    }
    assert not found, f"tests defined twice (only the last one runs): {found}"
