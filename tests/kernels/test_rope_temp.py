"""The cpu kernels of the rope op's temperature tuning (mistral3: temp_scale, temp_floor) run op
by op (the kernel kit calls rfc_rope_freqs_temp, the per-op export the step's rope phase shares
rfc_rope_temp_token with) within the cpu's per-format bounds of the reference, and a rope kernel
2% off fails them. The step program and the GPU kernels on the same fixture:
tests/e2e/test_oracle_bounds.py, tests/kernels/test_gpu_kernels.py."""

import pytest

from tests.conftest import FIXTURES
from tests.e2e.test_oracle_bounds import _cpu_check, needs_cc, oracle  # noqa: F401  (oracle: a fixture)

pytestmark = [pytest.mark.shared, needs_cc, pytest.mark.toolchain]

PATH = FIXTURES / "tiny-mistral3temp-Q8_0.gguf"


def test_rope_temperature_kernels_op_by_op(bundle_cache, oracle):  # noqa: F811
    bundle = bundle_cache(PATH, op_exports=True)  # the kit calls each op's kernel
    ok, summary = _cpu_check(PATH, bundle, oracle, fault=lambda op: False)  # the kit, nothing scaled
    assert ok, summary
    ok, summary = _cpu_check(PATH, bundle, oracle, fault=lambda op: op.kind == "rope")
    assert not ok, f"a rope kernel 2% off passed: {summary}"
