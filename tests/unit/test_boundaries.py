"""The bundle is the only contract: the runtime imports neither the compiler nor gguf."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUNTIME_MODULES = [
    "rfc.runtime." + p.relative_to(ROOT / "runtime").with_suffix("").as_posix().replace("/", ".")
    for p in sorted((ROOT / "runtime").rglob("*.py"))
    if p.name != "__init__.py"
] + ["rfc.cli.run_cmd", "rfc.cli.serve_cmd"]


def test_runtime_imports_neither_compiler_nor_gguf():
    code = (
        "import sys, importlib\n"
        f"for m in {RUNTIME_MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name == m: continue\n"
        "        raise\n"
        "bad = sorted(n for n in sys.modules if n == 'gguf' or n.startswith(('gguf.', 'rfc.compiler')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"runtime modules pulled in: {out}"


def test_artifacts_uses_only_stdlib_and_msgpack():
    allowed = set(sys.stdlib_module_names) | {"msgpack"}
    for path in (ROOT / "artifacts").rglob("*.py"):  # the op registry's package (artifacts/ops) too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                rfc_ok = name.startswith("rfc.artifacts") or name == "rfc"
                assert name.split(".")[0] in allowed or rfc_ok, f"{path.relative_to(ROOT)} imports {name}"


# The one process the runtime starts: its own chat-template worker (docs/security.md).
TEMPLATE_WORKER = ROOT / "runtime" / "text" / "template_worker.py"


def test_runtime_never_runs_a_toolchain():
    """No process spawning anywhere in the runtime: it never compiles at serve time."""
    for path in (ROOT / "runtime").rglob("*.py"):
        if path == TEMPLATE_WORKER:
            continue
        text = path.read_text()
        for call in (
            "import subprocess",
            "from subprocess",
            "os.system(",
            "os.popen(",
            "Popen(",
            "os.exec",
            "os.spawn",
        ):
            assert call not in text, f"{path.relative_to(ROOT)} uses {call}"


def test_the_template_worker_starts_only_itself():
    text = TEMPLATE_WORKER.read_text()
    for call in ("os.system(", "os.popen(", "os.exec", "os.spawn", "shell=True"):
        assert call not in text
    launches = [line.strip() for line in text.splitlines() if "Popen(" in line or "sys.executable" in line]
    assert launches == [
        "self.process = subprocess.Popen(",
        '[sys.executable, "-m", "rfc.runtime.text.template_worker", str(limits.memory_bytes), repr(budget)],',
    ]


def test_compiler_does_not_import_the_runtime():
    """The two halves share only rfc.artifacts."""
    for path in (ROOT / "compiler").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert "rfc.runtime" not in stripped, f"{path.relative_to(ROOT)}: {stripped}"
