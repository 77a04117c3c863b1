"""Templates have parameters: code that renders the same whatever the plan is a header in
kernels/, which a template includes; a template holds what the planner decides."""

from pathlib import Path

import jinja2
from jinja2 import meta

ROOT = Path(__file__).resolve().parents[2]


def test_every_template_reads_a_parameter():
    """A template reads a parameter: a variable of its context, or an argument of a macro it
    defines (a library of macros other templates import, as gpu_add_rmsnorm_row.hip.j2)."""
    env = jinja2.Environment()
    fixed = []
    for path in sorted((ROOT / "templates").glob("*.j2")):
        tree = env.parse(path.read_text())
        macro_args = any(m.args for m in tree.find_all(jinja2.nodes.Macro))
        if not meta.find_undeclared_variables(tree) and not macro_args:
            fixed.append(path.name)
    assert not fixed, f"templates that read no parameter (move their C into a kernels/ header): {fixed}"


def test_headers_hold_no_jinja():
    """kernels/ headers are C as it is compiled: a header with Jinja in it is a template."""
    env = jinja2.Environment()
    for path in sorted((ROOT / "kernels").glob("*.h")):
        nodes = list(env.parse(path.read_text()).body)
        assert all(
            isinstance(n, jinja2.nodes.Output) and all(isinstance(c, jinja2.nodes.TemplateData) for c in n.nodes)
            for n in nodes
        ), f"{path.name} holds Jinja syntax"
