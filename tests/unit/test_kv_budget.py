"""The KV pool sized from a memory budget (runtime/engine/kv_budget.py): the vLLM-style GPU
arithmetic against a fake driver's free/total, the host budget, the split over several
models, the refusal when one context does not fit, the flags' validation, and --ctx-size:
a served context shorter than the trained one, which the budget counts a full context by."""

import shutil

import pytest
from click.testing import CliRunner

from rfc.artifacts.plan import KVSpec
from rfc.cli.run_cmd import run_cmd
from rfc.cli.serve_cmd import serve_cmd
from rfc.runtime.devices import cuda
from rfc.runtime.devices.gpu import GpuDevice
from rfc.runtime.engine.kv_budget import (
    HOST_CONTEXTS,
    KvBudgetError,
    KvShare,
    KvSizing,
    block_bytes,
    budget_blocks,
    gpu_budget,
    host_budget,
    kv_itemsize,
    parse_kv_memory,
    parse_utilization,
)
from rfc.runtime.model.loader import ContextSizeError, check_ctx_size, served_context_length
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.server.models import KvPages, plan_models
from tests.conftest import FIXTURES

GiB = 1 << 30
# an 8B-like model: 32 layers, 8 KV heads of 128, f16; 128 KiB of KV per token
KV = KVSpec(n_layers=32, n_kv_heads=8, head_dim=128, dtype="f16")
PER_BLOCK = 2 * 32 * 16 * 8 * 128 * 2  # 2 MiB


def _sizing(**kw) -> KvSizing:
    return KvSizing(**{"device": "cuda", "kv": KV, "block_size": 16, "context_length": 8192, **kw})


def test_block_bytes():
    assert block_bytes(KV, 16, 2) == PER_BLOCK == 2 << 20


def test_gpu_budget_is_vllm_arithmetic():
    # 80 GiB card, 2 GiB used by others before we start, 16 GiB of weights + arena
    assert (
        gpu_budget(free=78 * GiB, total=80 * GiB, utilization=0.9, resident=16 * GiB)
        == int(0.9 * 80 * GiB) - 2 * GiB - 16 * GiB
    )
    # a share of it: two budgeted models left, the later one's 16 GiB of weights reserved
    share = KvShare(models=2, left=2, reserve_bytes=16 * GiB)
    assert gpu_budget(78 * GiB, 80 * GiB, 0.9, 16 * GiB, share) == (int(0.9 * 80 * GiB) - 34 * GiB) // 2


def test_gpu_blocks_from_a_fake_driver_are_capped_at_the_servers_use():
    calls = []

    def memory_info():
        calls.append(1)
        return 70 * GiB, 80 * GiB

    # 8k context = 512 blocks of 2 MiB = 1 GiB; 16 sequences at most = 16 GiB < budget
    blocks, budget = budget_blocks(_sizing(max_sequences=16), memory_info, resident_bytes=10 * GiB)
    assert calls and budget == int(0.9 * 80 * GiB) - 10 * GiB - 10 * GiB
    assert blocks == 16 * 512
    # a lower utilization: the budget, not the cap, decides
    blocks, budget = budget_blocks(_sizing(max_sequences=64, gpu_memory_utilization=0.5), memory_info, 10 * GiB)
    assert budget == 40 * GiB - 10 * GiB - 10 * GiB
    assert blocks == budget // PER_BLOCK == 10 * 1024


def test_refusal_names_both_numbers_and_the_flags():
    need = 512 * PER_BLOCK  # one 8k context
    with pytest.raises(KvBudgetError) as e:
        budget_blocks(_sizing(gpu_memory_utilization=0.2), lambda: (70 * GiB, 80 * GiB), 10 * GiB)
    message = str(e.value)
    assert "\n" not in message
    assert f"needs 1.00 GiB ({need} bytes)" in message
    assert "the budget is 0 B (0 bytes)" in message  # 16 - 10 - 10 GiB < 0
    assert "--gpu-memory-utilization" in message and "--kv-pages" in message
    with pytest.raises(KvBudgetError, match="--kv-memory"):
        budget_blocks(_sizing(device="cpu", kv_memory=need - 1))


def test_host_budget_and_cap():
    assert host_budget(None, 64 * GiB) == 16 * GiB  # default: a quarter of host memory
    assert host_budget(0.5, 64 * GiB, KvShare(models=4)) == 8 * GiB
    assert host_budget(3 * GiB, 64 * GiB, KvShare(models=2)) == 3 * GiB // 2
    # cpu stores f16: 1 GiB per 8k context; a 2.5-context budget gets 2.5 contexts
    blocks, _ = budget_blocks(_sizing(device="cpu", kv_memory=5 * GiB // 2))
    assert blocks == 1280
    # a big budget: the cap of 4 contexts (the default before budgets)
    blocks, _ = budget_blocks(_sizing(device="cpu"), host_total=1 << 50)
    assert blocks == HOST_CONTEXTS * 512
    # a 128k context on a 64 GiB host: 16 GiB a context, exactly the default budget: one
    blocks, _ = budget_blocks(_sizing(device="cpu", context_length=131072), host_total=64 * GiB)
    assert blocks == 8192
    with pytest.raises(KvBudgetError):
        budget_blocks(_sizing(device="cpu", context_length=131072), host_total=32 * GiB)


def test_two_models_loading_in_order_get_even_shares():
    """The split as the loader sees it: each model measures free memory as it loads."""
    total, used, weights = 80 * GiB, 2 * GiB, [10 * GiB, 10 * GiB]
    kv = []
    for n in range(2):
        share = KvShare(models=2, left=2 - n, reserve_bytes=sum(weights[n + 1 :]))
        free = total - used  # before this model's device allocates anything
        budget = gpu_budget(free, total, 0.9, weights[n], share)
        kv.append(budget)
        used += weights[n] + budget
    assert kv[0] == kv[1] == (int(0.9 * total) - 2 * GiB - 20 * GiB) // 2
    assert used <= 0.9 * total


def test_parse_flags():
    assert parse_utilization("0.9") == 0.9 and parse_utilization(1) == 1.0
    for bad in ("0", "1.5", "-0.1", "nan", "x"):
        with pytest.raises(ValueError, match="--gpu-memory-utilization"):
            parse_utilization(bad)
    assert parse_kv_memory("0.25") == 0.25
    assert (
        parse_kv_memory("8GiB") == 8 * GiB and parse_kv_memory("512M") == 512 << 20 and parse_kv_memory("4096") == 4096
    )
    for bad in ("0.0", "1.5", "0", "lots", "8 XB"):
        with pytest.raises(ValueError, match="--kv-memory"):
            parse_kv_memory(bad)


@pytest.mark.parametrize("cmd", [serve_cmd, run_cmd])
@pytest.mark.parametrize("flag,value", [("--gpu-memory-utilization", "1.5"), ("--kv-memory", "lots")])
def test_cli_refuses_a_bad_budget_in_one_line(tmp_path, cmd, flag, value):
    result = CliRunner().invoke(cmd, [str(tmp_path), flag, value])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rfc: error: {flag} {value}:")


def test_cli_reads_the_environment(tmp_path):
    result = CliRunner().invoke(serve_cmd, [str(tmp_path)], env={"RFC_GPU_MEMORY_UTILIZATION": "0"})
    assert result.exit_code == 2 and "--gpu-memory-utilization 0:" in result.output


# -- the driver and the device report free/total --------------------------------------------------


class _MemCuda:
    def __init__(self, free, total):
        self.values = (free, total)

    def cuMemGetInfo_v2(self, free_ref, total_ref):
        free_ref._obj.value, total_ref._obj.value = self.values
        return 0


def test_cuda_memory_info_from_the_driver():
    driver = cuda.CudaDriver.__new__(cuda.CudaDriver)  # no cuInit/device probing
    driver.lib = _MemCuda(12 * GiB, 16 * GiB)
    assert driver.memory_info() == (12 * GiB, 16 * GiB)
    device = GpuDevice.__new__(GpuDevice)  # only the driver is needed
    device._driver = driver
    assert device.memory_info() == (12 * GiB, 16 * GiB)


# -- against a real bundle (the reference device) ---------------------------------------------------


@pytest.fixture(scope="module")
def ref_bundles(tmp_path_factory):
    from rfc.compiler.pipeline import CompileOptions, compile_model

    root = tmp_path_factory.mktemp("kvbudget")
    compile_model(
        CompileOptions(model=FIXTURES / "tiny-llama-Q4_K_M.gguf", out_dir=root / "a", targets=(), cache_dir=None)
    )
    shutil.copytree(root / "a", root / "b")
    return root / "a", root / "b"


def test_loader_default_is_unchanged_for_small_models(ref_bundles):
    model = load_model(ref_bundles[0], LoadOptions(device="ref"))
    assert model.kv_pool.num_blocks == HOST_CONTEXTS * -(-model.context_length // 16)


def test_loader_refuses_a_budget_below_one_context(ref_bundles):
    with pytest.raises(KvBudgetError, match="not enough memory for the KV cache"):
        load_model(ref_bundles[0], LoadOptions(device="ref", kv_memory=1024))


def test_plan_models_shares(ref_bundles):
    a, b = ref_bundles
    sources = plan_models([a, b], LoadOptions(device="ref"))
    weights = (a / "weights.bin").stat().st_size
    assert [s.load.kv_share for s in sources] == [KvShare(2, 2, weights), KvShare(2, 1, 0)]
    assert all(s.load.kv_blocks is None for s in sources)
    # a model given pages keeps them and takes no share of the budget
    sources = plan_models([a, b], LoadOptions(device="ref"), KvPages.parse(["a=8"]))
    assert sources[0].load.kv_blocks == 8
    assert sources[1].load.kv_blocks is None and sources[1].load.kv_share == KvShare(1, 1, 0)
    # --kv-pages N: no budget at all
    assert [s.load.kv_blocks for s in plan_models([a, b], LoadOptions(device="ref"), KvPages.parse(["100"]))] == [
        50,
        50,
    ]


# -- --ctx-size: a served context shorter than the trained one ---------------------------------------


def test_served_context_is_the_cap_at_most_the_trained_one():
    assert served_context_length(131072, None) == 131072
    assert served_context_length(131072, 8192) == 8192
    assert served_context_length(512, 8192) == 512  # one of several models: min(N, its own)


def test_check_ctx_size_names_the_flag_and_the_limit():
    check_ctx_size(None, {"m": 512})
    check_ctx_size(512, {"m": 512})
    check_ctx_size(1, {"m": 512})
    with pytest.raises(ContextSizeError) as e:
        check_ctx_size(513, {"m": 512})
    assert str(e.value) == "--ctx-size 513 is larger than the context length of the model m (512 tokens)"
    with pytest.raises(ContextSizeError, match="at least 1"):
        check_ctx_size(0, {"m": 512})
    # several models: N up to the longest is fine (the others serve their own); above it, not
    check_ctx_size(4096, {"short": 512, "long": 4096})
    with pytest.raises(ContextSizeError, match=r"the longest of the models, long \(4096 tokens\)"):
        check_ctx_size(4097, {"short": 512, "long": 4096})


def test_a_cap_makes_a_long_context_fit_a_small_budget():
    # a 128k context needs 16 GiB on the host (f16); 8 GiB holds none of it, but 8 of 8k
    with pytest.raises(KvBudgetError) as e:
        budget_blocks(_sizing(device="cpu", context_length=131072, kv_memory=8 * GiB))
    assert "one full context of 131072 tokens needs 16.00 GiB" in str(e.value) and "--ctx-size" in str(e.value)
    blocks, _ = budget_blocks(_sizing(device="cpu", context_length=8192, kv_memory=8 * GiB))
    assert blocks == HOST_CONTEXTS * 512  # the cap: 4 contexts of the served length
    # on a GPU the cap is max_sequences full contexts of the served length, and the hint names --ctx-size
    blocks, _ = budget_blocks(_sizing(context_length=1024, max_sequences=4), lambda: (80 * GiB, 80 * GiB), 0)
    assert blocks == 4 * 64
    with pytest.raises(KvBudgetError, match="--ctx-size"):
        budget_blocks(_sizing(gpu_memory_utilization=0.01), lambda: (80 * GiB, 80 * GiB), 0)


def test_loader_serves_the_cap_and_sizes_the_pool_by_it(ref_bundles):
    full = load_model(ref_bundles[0], LoadOptions(device="ref"))
    capped = load_model(ref_bundles[0], LoadOptions(device="ref", ctx_size=40))
    assert capped.context_length == 40 and capped.trained_context_length == full.context_length > 40
    assert capped.kv_pool.num_blocks == HOST_CONTEXTS * 3  # 40 tokens: 3 pages of 16
    # a budget of one capped context is enough where the full context was refused
    need = 3 * block_bytes(capped.bundle.plan.kv, 16, kv_itemsize("ref", capped.bundle.plan.kv))
    assert load_model(ref_bundles[0], LoadOptions(device="ref", ctx_size=40, kv_memory=need)).kv_pool.num_blocks == 3
    with pytest.raises(KvBudgetError):
        load_model(ref_bundles[0], LoadOptions(device="ref", kv_memory=need))


def test_plan_models_refuses_a_cap_above_every_model(ref_bundles):
    a, b = ref_bundles
    trained = load_model(a, LoadOptions(device="ref")).context_length
    sources = plan_models([a, b], LoadOptions(device="ref", ctx_size=trained))
    assert [s.load.ctx_size for s in sources] == [trained, trained]
    with pytest.raises(ContextSizeError, match=f"--ctx-size {trained + 1} is larger than the context length"):
        plan_models([a, b], LoadOptions(device="ref", ctx_size=trained + 1))


@pytest.mark.parametrize("cmd", [serve_cmd, run_cmd])
def test_cli_refuses_a_ctx_size_above_the_model_in_one_line(ref_bundles, cmd):
    trained = load_model(ref_bundles[0], LoadOptions(device="ref")).context_length
    for args, env in (
        (["--ctx-size", str(trained + 1)], {}),
        (["--max-model-len", str(trained + 1)], {}),
        ([], {"RFC_CTX_SIZE": str(trained + 1)}),
    ):
        result = CliRunner().invoke(cmd, [str(ref_bundles[0]), "--device", "ref", *args], env=env)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"rfc: error: --ctx-size {trained + 1} is larger than")
        assert f"({trained} tokens)" in lines[0]
    result = CliRunner().invoke(cmd, [str(ref_bundles[0]), "--ctx-size", "0"])
    assert result.exit_code == 2 and "--ctx-size" in result.output
