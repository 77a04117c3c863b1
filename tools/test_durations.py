"""Each test file's seconds in a run, from pytest's JUnit XML: the weights the suite's
scheduling order comes from (tests/durations.json, read by tests/conftest.py).

    python3 -m pytest -n 2 --dist loadfile --junitxml=/tmp/junit.xml
    python tools/test_durations.py /tmp/junit.xml > tests/durations.json

.ci/run gives whole files to its two workers (`--dist loadfile`), the heaviest first: a run
ends when its last file does, so a heavy file taken up late leaves the other worker idle
(xdist's own order, by number of tests, put a 35-test file of 10-second emulator runs near the
end). Refresh the file when the suite's weight moves; a file it does not name runs after
those it names, in collection order.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def file_seconds(junit: str) -> dict[str, float]:
    """{test file (repository-relative path): seconds of its tests (setup, call and teardown)}
    from a JUnit XML document's testcases, heaviest first."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.fromstring(junit).iter("testcase"):
        classname = case.get("classname") or ""
        if not classname:
            continue
        # "tests.kernels.test_gpu_program" or "tests.unit.test_x.TestClass": the module's path
        parts = classname.split(".")
        while parts and not parts[-1].startswith("test_"):
            parts.pop()
        if not parts:
            continue
        totals["/".join(parts) + ".py"] += float(case.get("time") or 0.0)
    return dict(sorted(((f, round(s, 1)) for f, s in totals.items()), key=lambda kv: (-kv[1], kv[0])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("junit", type=Path)
    args = ap.parse_args(argv)
    json.dump(file_seconds(args.junit.read_text()), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
