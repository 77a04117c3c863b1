"""One cache root for every caller: `rfc compile`'s kernels and an in-process compile's land in
the same directory, chosen by the same rule ($RFC_CACHE_DIR, then $XDG_CACHE_HOME/rfc, then
~/.cache/rfc), so a test or a tool that points the CLI elsewhere points the compiler there too."""

from pathlib import Path

from rfc.cli.gguf_cache import cache_root as cli_cache_root
from rfc.cli.gguf_cache import default_cache_dir as bundle_cache_dir
from rfc.compiler.codegen.cache import cache_root
from rfc.compiler.pipeline import CompileOptions


def test_the_environment_chooses_the_root_for_the_cli_and_the_compiler(tmp_path, monkeypatch):
    monkeypatch.delenv("RFC_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert (
        CompileOptions(Path("m.gguf"), tmp_path / "out").cache_dir == tmp_path / "home" / ".cache" / "rfc" / "kernels"
    )

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert CompileOptions(Path("m.gguf"), tmp_path / "out").cache_dir == tmp_path / "xdg" / "rfc" / "kernels"
    assert bundle_cache_dir() == tmp_path / "xdg" / "rfc" / "bundles"

    monkeypatch.setenv("RFC_CACHE_DIR", str(tmp_path / "mine"))
    assert CompileOptions(Path("m.gguf"), tmp_path / "out").cache_dir == tmp_path / "mine" / "kernels"
    assert cli_cache_root() == cache_root() == tmp_path / "mine"
    assert cache_root(Path("/given")) == Path("/given")  # --cache-dir beats the environment
