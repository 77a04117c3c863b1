"""Writes the architecture status table of docs/architectures.md from compiler/arch/catalog.py
and RECIPES (between its `arch-table` markers). `--check` only says whether it is current.

    python tools/arch_table.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfc.compiler.arch import RECIPES
from rfc.compiler.arch.catalog import render_into

DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the table is out of date")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = render_into(text, RECIPES)
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python tools/arch_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
