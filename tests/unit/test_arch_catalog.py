"""docs/architectures.md's status table cannot drift from the recipes, and a refused
architecture is refused with its reason."""

from pathlib import Path

import pytest

from rfc.compiler.arch import RECIPES, recipe_for
from rfc.compiler.arch.catalog import LLAMA_CPP_ARCHITECTURES, NO_RECIPE, REFUSED, render_into, status
from rfc.compiler.errors import CompileError

DOC = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"


def test_the_docs_table_is_the_rendered_catalog():
    text = DOC.read_text()
    assert render_into(text, RECIPES) == text, "docs/architectures.md is out of date: run python tools/arch_table.py"


def test_every_recipe_is_a_llama_cpp_architecture_and_no_reason_contradicts_one():
    assert len(set(LLAMA_CPP_ARCHITECTURES)) == len(LLAMA_CPP_ARCHITECTURES)
    assert set(RECIPES) <= set(LLAMA_CPP_ARCHITECTURES), set(RECIPES) - set(LLAMA_CPP_ARCHITECTURES)
    assert set(REFUSED) <= set(LLAMA_CPP_ARCHITECTURES), set(REFUSED) - set(LLAMA_CPP_ARCHITECTURES)
    assert not set(REFUSED) & set(RECIPES), "an architecture with a recipe still has a refusal reason"


class _Named:
    def __init__(self, arch):
        self.metadata = {"general.architecture": arch}
        self.path = type("P", (), {"name": "m.gguf"})()


@pytest.mark.parametrize("arch", ["deepseek4", "t5", "qwen4exp", "not-an-architecture"])
def test_a_refusal_names_the_architecture_its_reason_and_the_table(arch):
    with pytest.raises(CompileError) as e:
        recipe_for(_Named(arch))
    message = str(e.value)
    assert f"unsupported architecture '{arch}'" in message and "docs/architectures.md" in message
    want = status(arch, RECIPES)[1] if arch in LLAMA_CPP_ARCHITECTURES else "not an architecture llama.cpp knows"
    assert want in message and "\n" not in message
    if arch == "deepseek4":
        assert NO_RECIPE in message
