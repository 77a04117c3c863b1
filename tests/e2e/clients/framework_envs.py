"""One virtual environment per agent-framework family, for tests/e2e/clients/test_framework_clients.py.

The frameworks pin `openai` against each other (llama-index wants `openai<3`, openai-agents
`openai>=3`), so the test extras install none of them and the suite skips their checks. This
runner makes an environment per family (on top of the interpreter's own packages, so the
test extras are there), installs the family and rfc (editable) into it, and runs the family's
checks there against a real `rfc serve`:

    python -m tests.e2e.clients.framework_envs                 # every family
    python -m tests.e2e.clients.framework_envs instructor      # one

Environments are kept in ~/.cache/rfc/client-envs/<family> (RFC_CLIENT_ENVS overrides) and
reused; the exit status is the first failing family's pytest status."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TESTS = "tests/e2e/clients/test_framework_clients.py"
# family -> (packages, the pytest -k expression that selects its checks)
FAMILIES = {
    "pydantic-ai": (["pydantic-ai-slim[openai]"], "pydantic_ai"),
    "instructor": (["instructor"], "instructor"),
    "openai-agents": (["openai-agents"], "openai_agents"),
    "langchain": (["langchain-openai"], "langchain"),
}


def environment(family: str) -> Path:
    """The family's interpreter, the environment made and filled on first use."""
    home = Path(os.environ.get("RFC_CLIENT_ENVS", Path.home() / ".cache" / "rfc" / "client-envs")) / family
    python = home / "bin" / "python"
    marker = home / ".installed"
    packages, _ = FAMILIES[family]
    # The marker names the packages and the checkout rfc is installed from: an environment made
    # for another checkout (another clone, a worktree) gets this one's rfc installed again.
    want = " ".join(packages) + "\n" + str(ROOT) + "\n"
    have = marker.read_text() if marker.is_file() else ""
    if not have.startswith(" ".join(packages) + "\n"):
        venv.EnvBuilder(system_site_packages=True, with_pip=True, clear=True).create(home)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        have = ""
    if have != want:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
        marker.write_text(want)
    return python


def main(argv: list[str]) -> int:
    unknown = [f for f in argv if f not in FAMILIES]
    if unknown:
        print(f"unknown families: {', '.join(unknown)} (known: {', '.join(FAMILIES)})", file=sys.stderr)
        return 2
    status = 0
    for family in argv or list(FAMILIES):
        python = environment(family)
        run = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", TESTS, "-k", FAMILIES[family][1]],
            cwd=ROOT,
        )
        status = status or run.returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
