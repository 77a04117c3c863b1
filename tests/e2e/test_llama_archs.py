"""Files as llama.cpp's own saver writes them: for every architecture rfc runs, the layout
`test-llama-archs -o` writes (every metadata key, per-layer arrays of 512 entries, biases,
`.scale` and `.input_scale` tensors), with the stories260K vocabulary and seeded weights
(tools/fixtures/llama_archs.py, which remakes each GGUF from tests/data/llama-archs/NAME.json
and checks its sha256), compiled and run against llama.cpp's teacher-forced logits of exactly
those bytes: mean |d| <= 0.05 std + 0.02 and the same top-1 wherever llama.cpp's top-1/top-2 gap
exceeds 0.5."""

import importlib.util
import shutil
import sys

import numpy as np
import pytest
from rfc.compiler.errors import CompileError
from rfc.compiler.pipeline import CompileOptions, compile_model

from tests import testdata
from tests.e2e.test_reference_oracle import teacher_forced_logits

pytestmark = pytest.mark.shared

_TOOL = testdata.ROOT / "tools" / "fixtures" / "llama_archs.py"


def _tool():
    spec = importlib.util.spec_from_file_location("llama_archs", _TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama_archs"] = module
    spec.loader.exec_module(module)
    return module


archs = _tool()
NAMES = archs.names()
# Files rfc does not yet match, with what the table of tools/fixtures/llama_archs.py shows for them.
KNOWN: dict[str, str] = {
    "deepseek2-moe": "attn_k_b stored 2-D [512, 128]: refused",
    "gemma2-dense": "router_logit_softcapping 30 (the saver's default; llama.cpp's gemma2 has no router): refused",
    "gemma3-dense": "attn_logit_softcapping 50 (llama.cpp's gemma3 does not read it): refused",
    "glm4moe-moe": "rope.dimension_sections set (llama.cpp runs it as M-RoPE): refused",
    "gpt-oss-moe": "expert .scale tensors (ffn_*_exps.scale) not applied: refused",
    "granite-dense": "final_logit_softcapping 30 (the saver's default; llama.cpp's granite does not read it): refused",
    "granite-moe": "granite with experts: refused",
    "granitehybrid-dense": "ssm_in.scale / ssm_out.scale not applied: refused",
    "granitemoe-dense": "granitemoe without experts (llama.cpp runs it as granite): refused",
    "granitemoe-moe": "expert .scale tensors not applied: refused",
    "lfm2-dense": "attention biases not applied: refused",
    "lfm2moe-moe": "attention biases not applied: refused",
    "llama-dense": "final_logit_softcapping 30 and logit_scale 0 (llama.cpp's llama reads neither): refused; "
                   "then 2.2 off: llama.cpp's build_ffn adds the FFN bias before the .scale, rfc after",
    "llama-moe": "expert .scale tensors not applied: refused",
    "llama4-moe": "expert_used_count 2: refused",
    "mistral3-dense": "final_logit_softcapping 30 and logit_scale 0 (llama.cpp's mistral3 reads neither): refused; "
                      "then 1.4 off: llama.cpp's build_ffn adds the FFN bias before the .scale, rfc after",
    "mistral3-moe": "mistral3 with experts: refused",
    "nemotron_h-dense": "ssm_in.scale / ssm_out.scale not applied: refused",
    "nemotron_h_moe-dense": "nemotron_h_moe's layer kinds as the saver writes them (2 layers of head_count_kv, 3 blocks): refused",
    "olmo2-dense": "sliding_window (OLMo 3): refused",
    "phi3-dense": "final_logit_softcapping 30 and logit_scale 0 (llama.cpp's phi3 reads neither): refused; "
                  "then 1.1 off: llama.cpp's phi3 graph applies no FFN .bias or .scale, rfc does",
    "qwen2-dense": "final_logit_softcapping 30 and logit_scale 0 (llama.cpp's qwen2 reads neither): refused; "
                   "then 0.95 off: llama.cpp's qwen2 graph applies no FFN .bias or .scale, rfc does",
    "qwen3-dense": "cls.output.weight (a classifier head llama.cpp loads and does not run for text): refused",
    "qwen35-dense": "attn_qkv.scale and the other DeltaNet .scale tensors not applied: refused",
    "qwen35moe-moe": "experts fused as ffn_gate_up_exps: refused",
    "qwen3moe-moe": "expert .scale tensors not applied: refused",
    "qwen3next-moe": "experts fused as ffn_gate_up_exps: refused",
    "smollm3-dense": "final_logit_softcapping 30 and logit_scale 0 (llama.cpp's smollm3 reads neither): refused; "
                     "then 1.1 off: llama.cpp's smollm3 graph applies FFN biases but no FFN .scale, rfc both",
}
# The cpu device compiles kernels per file: a few files of different kinds stand for the rest in the fast suite.
CPU_FAST = ("llama-dense", "qwen2-dense", "qwen3moe-moe")


def _params(fast: tuple[str, ...] = ()):
    from rfc.compiler.arch import RECIPES

    out = []
    for name in NAMES:
        # only a refusal or a mismatch is expected: a wrong sha256 or a traceback still fails
        known = pytest.mark.xfail(reason=KNOWN.get(name, ""), strict=True, raises=(CompileError, AssertionError))
        marks = [known] if name in KNOWN else []
        if (arch := archs.arch_of(archs.load(name))) not in RECIPES:
            marks = [pytest.mark.skip(reason=f"no recipe for {arch} here (its refusal: tests/unit/test_arch_catalog.py)")]
        if fast and name not in fast:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _model(name, tmp_path):
    path = tmp_path / f"{name}.gguf"
    archs.write_model(archs.load(name), path, name)
    want = archs.manifest()["fixtures"][name]["sha256"]
    if (got := testdata.sha256(path)) != want:
        raise testdata.TestDataError(f"tools/fixtures/llama_archs.py made {name}.gguf with sha256 {got}, but its goldens "
                                     f"were recorded from {want}: record them again (tools/fixtures/llama_archs.py --record)")  # fmt: skip
    return path


def _check(name, tmp_path, device, targets):
    golden = np.load(archs.DATA / f"{name}.logits.npz")
    bundle = tmp_path / "bundle"
    compile_model(CompileOptions(model=_model(name, tmp_path), out_dir=bundle, targets=targets))
    ok, stats = archs.bounds(teacher_forced_logits(bundle, device, golden["tokens"].tolist()), golden["logits"])
    assert ok, f"{name} on {device}: {stats}"


def test_every_supported_architecture_has_its_file():
    """Each architecture with a recipe has llama.cpp's files here (or the reason it cannot)."""
    from rfc.compiler.arch import RECIPES

    have = {archs.arch_of(archs.load(n)) for n in NAMES}
    missing = set(RECIPES) - have - set(archs.SKIPPED)
    assert not missing, f"record them: python tools/fixtures/llama_archs.py --record --arch {' --arch '.join(sorted(missing))}"


@pytest.mark.parametrize("name", _params())
def test_reference_matches_llama_cpp(name, tmp_path):
    _check(name, tmp_path, "ref", ())


@pytest.mark.toolchain
@pytest.mark.skipif(shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)")
@pytest.mark.parametrize("name", _params(CPU_FAST))
def test_cpu_matches_llama_cpp(name, tmp_path):
    _check(name, tmp_path, "cpu", ("cpu",))
