"""The agent frameworks' checks (test_framework_clients.py) in the suite: each family in an
environment of its own (framework_envs.py: their pins of `openai` conflict), against a real
`rfc serve`. Needs PyPI the first time a family's environment is made; without it the family
is skipped, saying why."""

import subprocess

import pytest

from tests.e2e.clients.framework_envs import FAMILIES, ROOT, environment

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_frameworks_own_calls_pass_in_their_environment(family):
    try:
        python = environment(family)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"could not install {family}'s environment (no PyPI?): {e}")
    _, selection = FAMILIES[family]
    run = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/e2e/clients/test_framework_clients.py",
            "-k",
            selection,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (run.stdout + run.stderr)[-3000:]
    assert run.returncode == 0, tail
    assert " skipped" not in tail.splitlines()[-1], f"{family}'s checks were skipped in its own environment:\n{tail}"
