"""Shared test fixtures: where the test data is (tests/testdata.py), compiled bundles cached
per session."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# One thread for numpy's BLAS in the test processes and the servers and tools they start (set
# before numpy is first imported): .ci/run runs a worker per core, and a BLAS thread of its own
# in each only competes with the other worker (its helper spun waiting for work, some 2.5% of
# the machine in a profile of the GPU tests).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

from tests import testdata

ROOT = Path(__file__).resolve().parents[1]
# In the cache; pytest_sessionstart makes them the first time, before any test module is imported.
FIXTURES = testdata.fixtures_dir()
VOCAB = testdata.vocab_dir()
CHAT_TEMPLATES = testdata.CHAT_TEMPLATES
DEMO_MODEL = ROOT / "compiler" / "demo" / "stories260K.gguf"
smollm2, skip_reason = testdata.smollm2, testdata.skip_reason  # a fetched model: its path, why it is missing

TINY_MODELS = testdata.fixture_names()
# The tiny fixtures that hold every weight format and every architecture between them (the
# mixture of experts too): the per-fixture GPU build sweeps run these by default, because an
# sm_90 build of one fixture takes 10-26 s on two cores and the rest repeat what these cover
# (llama-Q4_K_M's Q4_K and Q6_K are in llama-Q2_K, llama-Q5_K_M's Q5_K in llama-Q3_K_M, ...).
# A sweep marks the others `exhaustive`: `pytest -m "exhaustive or not exhaustive"` sweeps every
# fixture.
_SWEEP = {"tiny-deepseek2-Q8_0", "tiny-llama-Q2_K", "tiny-llama-Q3_K_M", "tiny-llama-Q4_0", "tiny-llama-Q4_1",
          "tiny-llama-Q5_0", "tiny-llama-Q5_1", "tiny-llama-Q8_0", "tiny-llama-BF16", "tiny-llama-F16",
          "tiny-gemma2-Q8_0", "tiny-gemma3-Q8_0", "tiny-phi3-Q8_0", "tiny-qwen2-Q8_0", "tiny-qwen3-Q8_0",
          "tiny-mixtral-Q4_K_M", "tiny-llama-IQ_MIX", "tiny-gpt-oss-Q8_0", "tiny-glm4moe-Q8_0",
          "tiny-granitemoe-Q8_0", "tiny-mistral3temp-Q8_0", "tiny-gemma4-Q8_0",
          "tiny-gemma4moe-Q8_0"}  # fmt: skip
SWEEP_MODELS = [m for m in TINY_MODELS if m in _SWEEP]


def shared_basetemp(tmp_path_factory) -> Path:
    """The session's base temp dir, the same for every pytest-xdist worker (a worker's own
    basetemp is a folder inside it): for build caches that any worker may fill, whose entries
    are content-keyed and written atomically, so a build one worker made serves the other."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def rfc(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Runs the `rfc` command line in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-c", "from rfc.cli.main import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rfc {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_compile_refused(model: Path, tmp_path: Path, words: str) -> None:
    """`rfc compile model` is refused at once: exit 2, one line naming `words`, no traceback,
    nothing written."""
    import time

    out = tmp_path / "out"
    started = time.monotonic()
    proc = rfc("compile", model, "-o", out / "bundle", "--no-cache")
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture(scope="session")
def bundle_cache(tmp_path_factory):
    """Compiles each model at most once per test session (for the cpu target)."""
    root = tmp_path_factory.mktemp("bundles")
    locks = shared_basetemp(tmp_path_factory) / "bundle-locks"
    built: dict[tuple[str, tuple[str, ...]], Path] = {}

    def get(model: Path, targets: tuple[str, ...] = ("cpu",), op_exports: bool = False) -> Path:
        """`op_exports`: the cpu library exports each op's kernel too (the kit's CpuOpDevice)."""
        key = (str(model), targets, op_exports)
        if key not in built:
            from rfc.compiler.pipeline import CompileOptions, compile_model

            name = f"{Path(model).stem}-{'-'.join(targets)}{'-ops' if op_exports else ''}"
            out = root / name
            # one worker at a time per bundle: the other waits, then takes the kernels from the build cache
            with testdata._locked(locks / name):
                compile_model(CompileOptions(model=Path(model), out_dir=out, targets=targets, op_exports=op_exports))
            built[key] = out
        return built[key]

    yield get
    shutil.rmtree(root, ignore_errors=True)


# A passing test's tmp_path is emptied after its teardown (tests/conftest.py below): the suite writes
# ~6 GB of per-test bundles and GGUFs, and CI's disk is shared (a full run once ended in "No space
# left on device"). The directory itself stays, so that pytest never numbers a later test's tmp_path
# the same: a library a worker loaded from one path is the one dlopen hands back for that path
# again (pytest's tmp_path_retention_policy "failed" deletes the directory, and a later test
# with the same name prefix got the earlier one's unrolled.so, so its own code never ran).
_CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    path = (getattr(item, "funcargs", None) or {}).get("tmp_path")
    result = yield  # the test's fixtures torn down first: its servers stopped, its files closed
    if isinstance(path, Path) and item.stash.get(_CALL_PASSED, False):
        for child in path.iterdir() if path.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    return result


def pytest_sessionstart(session):
    try:
        testdata.make_fixtures()
        testdata.make_vocab()
    except testdata.TestDataError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config, items):
    """`exhaustive` tests stay out of a run that selects by no marker expression (-m), unless
    named by their full node id (with the parameters) on the command line: the default run
    samples the cross products that `pytest -m "exhaustive or not exhaustive"` runs in full.
    Then the files heaviest first (_heaviest_first)."""
    if not config.option.markexpr:
        named = set(config.args)
        keep, drop = [], []
        for item in items:
            (drop if item.get_closest_marker("exhaustive") and item.nodeid not in named else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    items[:] = _heaviest_first(items, DURATIONS)


# Seconds each test file took in a measured run (tools/test_durations.py writes it from a JUnit
# XML). .ci/run hands whole files to its workers in collection order (--dist loadfile
# --no-loadscope-reorder): the heaviest first, so that the last files taken up are short ones
# and neither worker waits long for the other at the end.
DURATIONS = Path(__file__).with_name("durations.json")


def _heaviest_first(items: list, durations: Path) -> list:
    """`items` with each file's tests together, the files by their measured seconds (most
    first); files the measurement does not name after them, in collection order, as are
    all files without one."""
    try:
        weights = json.loads(durations.read_text())
    except (OSError, ValueError):
        return items
    order: dict[str, int] = {}
    for item in items:
        order.setdefault(item.nodeid.split("::", 1)[0], len(order))

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return (-float(weights.get(path, 0.0)), order[path])

    return sorted(items, key=key)  # stable: a file's own tests keep their order


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-cases",
        type=int,
        default=None,
        help="cases per fuzz test (default: each test's own small, CI-sized number)",
    )


@pytest.fixture(scope="session")
def fuzz_cases(request):
    """fuzz_cases(default) -> the number of cases a fuzz test runs: --fuzz-cases when given."""
    given = request.config.getoption("--fuzz-cases")
    return lambda default: given if given is not None else default
