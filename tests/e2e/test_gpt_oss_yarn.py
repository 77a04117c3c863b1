"""gpt-oss with YaRN, as gpt-oss-20b/120b ship (rope.scaling.type yarn, factor 32 over an
original context of 4096): the tiny fixture rewritten with factor 4 over 128 (the ramp spans
pairs 0..5 of 32), on the reference and the cpu against the float64 oracle. llama.cpp 0.3.36 on
this file against the oracle: max 0.0203, mean 0.0029, top-1 100% (0.0164 / 0.0028 without
YaRN); YaRN moves the oracle's logits by 0.97 on average, so a device that ignored it fails."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.bounds import oracle_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_oracle_bounds import _cpu_check, _tokens, needs_cc, oracle  # noqa: F401
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

YARN = {"gpt-oss.rope.scaling.type": "yarn", "gpt-oss.rope.scaling.factor": 4.0,
        "gpt-oss.rope.scaling.original_context_length": 128}  # fmt: skip


def _yarn_gpt_oss(tmp_path: Path) -> Path:
    src = FIXTURES / "tiny-gpt-oss-F16.gguf"
    path = rewrite_gguf(src, tmp_path / "tiny-gpt-ossyarn-F16.gguf", metadata=YARN)
    shutil.copy(src.with_suffix(".logits.npz"), path.with_suffix(".logits.npz"))  # for the tokens
    return path


def test_yarn_on_the_reference(bundle_cache, oracle, tmp_path):  # noqa: F811
    path = _yarn_gpt_oss(tmp_path)
    bundle = bundle_cache(path, REFERENCE_ONLY)
    ropes = [op for op in _plan(bundle).ops if op.kind == "rope"]  # every layer, the sliding ones too
    assert len(ropes) == 4 and all(op.attrs["ext_factor"] == 1.0 and op.attrs["orig_ctx"] == 128 for op in ropes)
    ref = teacher_forced_logits(bundle, "ref", _tokens(path))
    ok, summary = oracle_bounds(path.stem, ref, oracle(path))
    assert ok, summary
    assert np.abs(oracle(path) - oracle(FIXTURES / "tiny-gpt-oss-F16.gguf")).mean() > 0.5  # YaRN matters here


@needs_cc
@pytest.mark.toolchain
def test_yarn_on_the_cpu(bundle_cache, oracle, tmp_path):  # noqa: F811
    path = _yarn_gpt_oss(tmp_path)
    ok, summary = _cpu_check(path, bundle_cache(path), oracle)
    assert ok, summary


def _plan(bundle_dir):
    from rfc.runtime.engine.assemble import LoadOptions, load_model

    return load_model(bundle_dir, LoadOptions(device="ref")).bundle.plan
