"""gpt-oss as it ships: MXFP4 experts (llama.cpp's gpt-oss GGUFs keep ffn_{gate,up,down}_exps in
MXFP4, everything else F16/F32/Q8_0). The tiny fixture's expert tensors replaced by random
valid MXFP4 blocks at the F16 weights' RMS (tools/fixtures/tiny_models.py random_blocks: no
quantizer here searches MXFP4's grid); the reference and the cpu against the float64 oracle,
which decodes MXFP4 with gguf-py's reference dequantizer (no llama.cpp golden: these bytes are
not the fixture's)."""

import numpy as np
import pytest

from tests import testdata
from tests.bounds import oracle_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_oracle_bounds import _cpu_check, _tokens, needs_cc, oracle  # noqa: F401
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _mxfp4_experts(tmp_path):
    from gguf import GGMLQuantizationType

    gen = testdata._generator()
    rng = np.random.default_rng(23)

    def to_mxfp4(name, data, qtype):
        if not name.endswith("_exps.weight"):
            return data, qtype
        rms = float(np.sqrt(np.mean(data.astype(np.float64) ** 2)))
        raw = rng.integers(0, 256, (data.size // 32, 17), np.uint8)
        blocks = gen.random_blocks("MXFP4", raw, rms)
        return blocks.reshape(*data.shape[:-1], data.shape[-1] // 32 * 17), GGMLQuantizationType.MXFP4

    src = FIXTURES / "tiny-gpt-oss-F16.gguf"
    path = rewrite_gguf(src, tmp_path / "tiny-gpt-ossmxfp4-F16.gguf", tensor_fn=to_mxfp4)
    from gguf import GGUFReader

    kinds = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors if "_exps." in t.name}
    assert len(kinds) == 24 and {k for n, k in kinds.items() if n.endswith(".weight")} == {"MXFP4"}
    # the tokens
    (tmp_path / "tiny-gpt-ossmxfp4-F16.logits.npz").write_bytes(src.with_suffix(".logits.npz").read_bytes())
    return path


def test_mxfp4_experts_on_the_reference(bundle_cache, oracle, tmp_path):  # noqa: F811
    path = _mxfp4_experts(tmp_path)
    ref = teacher_forced_logits(bundle_cache(path, REFERENCE_ONLY), "ref", _tokens(path))
    ok, summary = oracle_bounds(path.stem, ref, oracle(path))
    assert ok, summary


@needs_cc
@pytest.mark.toolchain
def test_mxfp4_experts_on_the_cpu(bundle_cache, oracle, tmp_path):  # noqa: F811
    path = _mxfp4_experts(tmp_path)
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary
