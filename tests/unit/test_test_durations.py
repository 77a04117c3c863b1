"""tools/test_durations.py (each test file's seconds from a JUnit XML) and the order
tests/conftest.py gives the files from them: the heaviest first, a file's tests together."""

import importlib.util
import json
from types import SimpleNamespace

from tests.conftest import ROOT, _heaviest_first

spec = importlib.util.spec_from_file_location("test_durations_tool", ROOT / "tools" / "test_durations.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.unit.test_a" name="test_one" time="1.5" />
<testcase classname="tests.unit.test_a" name="test_two[x]" time="2.25" />
<testcase classname="tests.kernels.test_b.TestGroup" name="test_three" time="10.0" />
<testcase classname="tests.e2e.clients.test_c" name="test_four" time="0.5"><skipped /></testcase>
<testcase classname="" name="collect error" time="0.1" />
</testsuite></testsuites>"""


def test_the_seconds_of_each_file_heaviest_first():
    seconds = tool.file_seconds(JUNIT)
    assert seconds == {"tests/kernels/test_b.py": 10.0, "tests/unit/test_a.py": 3.8, "tests/e2e/clients/test_c.py": 0.5}
    assert list(seconds) == ["tests/kernels/test_b.py", "tests/unit/test_a.py", "tests/e2e/clients/test_c.py"]


def test_files_run_heaviest_first_each_files_tests_together_in_their_order(tmp_path):
    ids = ["tests/a.py::t1", "tests/a.py::t2", "tests/b.py::t1", "tests/c.py::t1", "tests/c.py::t2[x]", "tests/d.py::t"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"tests/c.py": 50.0, "tests/b.py": 7.5, "tests/gone.py": 99.0}))
    got = [i.nodeid for i in _heaviest_first(items, durations)]
    # measured files first, heaviest first; the unmeasured ones after them in their own order
    assert got == [
        "tests/c.py::t1", "tests/c.py::t2[x]", "tests/b.py::t1", "tests/a.py::t1", "tests/a.py::t2", "tests/d.py::t",
    ]  # fmt: skip
    # no measurement (or an unreadable one): collection order
    assert [i.nodeid for i in _heaviest_first(items, tmp_path / "absent.json")] == ids
    durations.write_text("{not json")
    assert [i.nodeid for i in _heaviest_first(items, durations)] == ids


def test_the_suites_measurement_names_files_that_exist():
    """tests/durations.json, refreshed from a measured run: every file it names is a test file
    of the repository (a renamed one would silently lose its place), with its seconds."""
    weights = json.loads((ROOT / "tests" / "durations.json").read_text())
    assert weights and all(s >= 0 for s in weights.values())
    missing = [f for f in weights if not (ROOT / f).is_file()]
    assert not missing, f"tests/durations.json names files that are gone: {missing} (tools/test_durations.py)"
