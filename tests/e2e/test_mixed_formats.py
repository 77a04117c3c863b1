"""Files that mix weight formats tensor by tensor: the one the fixtures cannot hold,
and what a target without kernels for a format does.

- Q2_0 (type 42) is unknown to gguf 0.19, which reads every fixture in the tests, so no fixture
  has it: tiny-llama-IQ_MIX written again with one matrix in Q2_0 (by the fixtures' own writer,
  tools/fixtures/tiny_models.py, which needs no gguf type table) compiles for the cpu, and the cpu
  device's logits stay by the reference's as the fixture's own do (its matmul kernels are held to
  their bounds in tests/kernels). Measured: mean |cpu - ref| 0.054, top-1 0.95; the test asks 0.1
  and 0.9 (a wrong Q2_0 decoder moves a 64-wide value matrix, the mean by far more).
- The mixture of an Unsloth-style dynamic quant, as an Unsloth "UD" file holds it: F32 norms, Q8_0,
  Q6_K and Q4_K matrices beside IQ4_XS, IQ3_S, IQ2_XXS and IQ1_S ones (tiny-llama-IQ_MIX with
  three of its layer-1 matrices quantized to the classic formats instead) compiles, and the
  reference device and the cpu stay within the bounds every fixture is held to against the
  float64 oracle (tests/bounds.py: oracle_bounds, device_bounds).
- A target whose kernels lack a tensor's format (the format table's `kernels` column) refuses the
  compile naming the tensor and the format, for the cpu and for a GPU target.
"""

import shutil
from dataclasses import replace

import numpy as np
import pytest
from gguf import GGUFReader

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.formats import FORMATS, Kernels
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.pipeline import CompileOptions, compile_model
from tests import testdata
from tests.bounds import oracle_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_oracle_bounds import _cpu_check, _tokens, oracle  # noqa: F401 (oracle: the fixture)
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits

pytestmark = [pytest.mark.shared]
needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
)


def _rewritten(directory, name: str, types: dict[str, str]):
    """tiny-llama-IQ_MIX written again by the fixtures' generator with `types` (its _IQ_MIX keys)
    changed, beside a copy of its golden (for the tokens)."""
    generator = testdata._generator()
    path = directory / f"{name}.gguf"
    mix = dict(generator._IQ_MIX)
    generator._IQ_MIX.update(types)
    try:
        generator.write_fixture("tiny-llama-IQ_MIX", path)
    finally:
        generator._IQ_MIX.clear()
        generator._IQ_MIX.update(mix)
    shutil.copy(FIXTURES / "tiny-llama-IQ_MIX.logits.npz", path.with_suffix(".logits.npz"))
    return path


@pytest.fixture(scope="module")
def q2_0_model(tmp_path_factory):
    return _rewritten(tmp_path_factory.mktemp("q2_0"), "tiny-llama-Q2_0", {"attn_v.0": "Q2_0"})


UD_FORMATS = {"F32", "Q8_0", "Q6_K", "Q4_K", "IQ4_XS", "IQ3_S", "IQ2_XXS", "IQ1_S"}


@pytest.fixture(scope="module")
def ud_model(tmp_path_factory):
    path = _rewritten(tmp_path_factory.mktemp("ud"), "tiny-llama-UD",
                      {"attn_q.1": "Q8_0", "ffn_down.1": "Q6_K", "ffn_gate.1": "Q4_K"})  # fmt: skip
    assert UD_FORMATS <= {t.tensor_type.name for t in GGUFReader(path).tensors}
    return path


def test_a_ud_style_mixture_runs_on_the_reference_within_its_bounds(ud_model, bundle_cache, oracle):
    bundle = bundle_cache(ud_model, REFERENCE_ONLY)
    ok, summary = oracle_bounds(
        ud_model.stem, teacher_forced_logits(bundle, "ref", _tokens(ud_model)), oracle(ud_model)
    )
    assert ok, summary


@needs_cc
@pytest.mark.toolchain
def test_a_ud_style_mixture_runs_on_the_cpu_within_its_bounds(ud_model, bundle_cache, oracle):
    ok, summary = _cpu_check(ud_model, bundle_cache(ud_model), oracle)
    assert ok, summary


@needs_cc
@pytest.mark.toolchain
def test_a_file_with_a_q2_0_tensor_compiles_and_runs(q2_0_model, tmp_path):
    out = tmp_path / "bundle"
    compile_model(CompileOptions(model=q2_0_model, out_dir=out, targets=("cpu",)))
    assert open_bundle(out).layout.by_name()["blk.0.attn_v.weight"].format == "Q2_0"
    tokens = np.load(FIXTURES / "tiny-llama-IQ_MIX.logits.npz")["tokens"].tolist()
    cpu, ref = teacher_forced_logits(out, "cpu", tokens), teacher_forced_logits(out, "ref", tokens)
    d = np.abs(cpu - ref)
    assert d.mean() < 0.1 and (cpu.argmax(-1) == ref.argmax(-1)).mean() >= 0.9, (
        f"mean {d.mean():.3f}, max {d.max():.3f}"
    )


@pytest.mark.parametrize("target,kernels", [("cpu", Kernels.GPU), ("sm_90", Kernels.CPU)])
def test_a_target_without_kernels_for_a_format_refuses_it_by_name(target, kernels, monkeypatch, tmp_path):
    """IQ1_M's kernels taken away from the target's kind: the compile stops before any build,
    naming a tensor whose format lacks them (IQ1_M's, or another's where those lack them too)."""
    monkeypatch.setitem(FORMATS, "IQ1_M", replace(FORMATS["IQ1_M"], kernels=kernels))
    path = FIXTURES / "tiny-llama-IQ_MIX.gguf"
    with pytest.raises(CompileError) as refused:
        compile_model(CompileOptions(model=path, out_dir=tmp_path / "b", targets=(target,)))
    tensors = read_gguf(path).tensors
    named = [(n, t.format) for n, t in tensors.items() if n in str(refused.value) and t.format in str(refused.value)]
    kind = Kernels.CPU if target == "cpu" else Kernels.GPU
    assert named and all(kind not in FORMATS[fmt].kernels for _, fmt in named), str(refused.value)
