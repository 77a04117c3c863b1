"""The repository explains itself: no tracked file points at documents it does not hold — the
sibling folder of shared material, its design and style documents, the numbered seed files, an
issue tracker's numbers. Design and style are docs/design.md and docs/style.md, the native API is
docs/native-api.md, and a change's history is its commit message."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# What a reference outside the repository looks like. `seed 0NN` is a seed file's number (a
# random seed is `--seed 0`, which this leaves alone).
# The names are spelled in pieces so that this file, which must hold them, names none of them.
SHARED, DESIGN, STYLE = "sha" + "red", "DES" + "IGN", "STY" + "LE"
OUTSIDE = re.compile(
    rf"\.\./{SHARED}|/work/{SHARED}|{DESIGN}\.md|{STYLE}\.md|seeds? ?0[0-9]{{2}}\b|seed API|seed spec"
    r"|\b[Ii]ssue #?[0-9]"
)


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    paths = [ROOT / name for name in out.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and not _binary(p)]


def _binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


def test_no_tracked_file_points_outside_the_repository():
    found = []
    for path in _tracked_text_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == THIS:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{number}: {line.strip()[:120]}")
    assert not found, "references outside the repository:\n" + "\n".join(found[:50])


@pytest.mark.parametrize(
    "line",
    [
        f"(../{SHARED}/{DESIGN}.md §7)",
        f"{STYLE}.md point 4",
        "in seed 003's shapes",
        "seeds 003/004",
        "the seed API's defaults",
        "sampling (issue 10)",
        "Issue 24 item 5: the Responses API",
        "issue #27",
        f"G=/work/{SHARED}/models/x.gguf",
    ],
)
def test_the_pattern_catches_each_kind(line):
    assert OUTSIDE.search(line)


@pytest.mark.parametrize(
    "line",
    [
        "rfc run B --seed 0 -n 8",
        "seed=0",
        "a random seed 42",
        "docs/design.md: the step program",
        "tissue 3",
    ],
)
def test_the_pattern_leaves_ordinary_text_alone(line):
    assert not OUTSIDE.search(line)
