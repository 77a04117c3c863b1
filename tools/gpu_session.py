"""rfc and llama.cpp on a lent GPU in one call: the measurement the GPU goals are judged by.

A lent GPU machine has no network and little time, so everything is prepared here first:

    python tools/gpu_session.py prepare .peer --kernels sm_90  # on this machine (PyPI reachable)
    python tools/gpu_session.py run .peer --target sm_90 --budget 540 --logs DIR  # on the GPU machine

`prepare` puts into DIR (~30 MB, within what a device call carries): the wheels of rfc's
runtime dependencies for the GPU machine's Python (`--python-version`, default 3.12; only those
its image lacks are installed there), the llama.cpp source that llama-cpp-python 0.3.36 vendors
(the same release the tests' goldens come from) as a tarball, and with `--kernels TARGET` the
kernel build cache filled by compiling every fixture and both benchmark shapes for that target
(nvcc/hipcc runs here, not on the card's time). The fixtures are made there from their seed
(tests/testdata.py, seconds).

`run` makes rfc importable without pip (its packages linked under one `rfc` folder on
PYTHONPATH), starts building llama.cpp's `llama-bench` for the card in the background (CUDA for
sm_XY, HIP for gfx*), then works in the order of what matters most, each phase bounded by what
is left of `--budget` seconds:
1. `tools/gpu_check.py --bench` on stories260K: its checks, then the benchmark shapes;
2. `llama-bench -ngl 99 -p 512 -n 128 -r 3` on the same GGUFs, and one table of both sides
   with their ratios, the card, the driver and the date: what docs/benchmarks.md records; then
   `tools/gpu_profile.py` on each benchmark bundle at batch 1 (where the table's batch-1 step
   spends its time: the graph, the sampling kernel, the copies and the host), whose served
   step, timed with no build beside it, goes under the table with its ratio to tg128 (rfc's
   `--bench` runs while llama.cpp builds on every core; llama-server's build, which follows
   llama-bench's, is stopped while llama-bench and the profiles run);
3. `tools/bench_serve.py` against `rfc serve` on the card and llama-server with 16 slots on the
   smaller benchmark GGUF: streamed completions, 1 then 16 clients (`--no-serve` skips it; a
   llama-server build the budget stopped is resumed by `--follow-up`, after its variants);
4. `rfc serve stories260K.gguf` with no --arch: its first line and /health must name the card's
   target (the GPU it detected);
5. with `--variant` (repeatable; `tools/gpu_experiment.py variants`' form, "module.NAME=value"):
   each benchmark GGUF compiled as it is and once per variant, each bundle's graph decode step
   and 512-token prefill timed (the A/B of a codegen switch in the same call);
6. with `--ncu`: `tools/gpu_experiment.py ncu` on the smaller benchmark bundle (each kernel's GPU time
   in a graph decode step and in a 512-token prefill step);
7. with `--sanitize`: `compute-sanitizer --tool memcheck` over a dense, a MoE and a hybrid
   fixture's checks (SANITIZE_FIXTURES: the prefill list, the decode graphs, the recurrent state)
   and the smaller benchmark bundle's steps (the big int8 tiles and the tensor-core prefill
   attention at a 512-token prompt), and `--tool racecheck` over the dense fixture's checks
   (shared-memory hazards: the batch twins' double-buffered copies); a phase fails on any error
   the tool reports;
8. the encoders' files of tests/data/llama-archs (ENCODER_ARCHS: BERT's family, jina-bert-v2/v3,
   ModernBERT, EmbeddingGemma, EuroBERT, NeoBERT, llama-embed, T5's encoder) built for the card and
   run there, each file's hidden states against llama.cpp's (`tools/fixtures/llama_archs.py
   --devices cuda@sm_XY`), a fifth of what is left at most;
9. `tools/gpu_check.py` on the fixtures (llama's formats first, then one file per architecture)
   until the budget runs out.
Every phase's output lands in `--logs` as it is written. Exit status: the checks' (1 when one
failed), or 3 when llama-bench could not run.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# The parts of vendor/llama.cpp that llama-bench's build needs (no tests, no web UI, no models).
LLAMA_PARTS = (
    "CMakeLists.txt",
    "cmake",
    "common",
    "ggml",
    "include",
    "src",
    "tools",
    "vendor",
    "licenses",
    "LICENSE",
    "scripts/ui-assets.cmake",  # llama-server's UI step, which with no assets embeds none
)
# Of the web UI's sources llama-server's build needs only its CMake files and templates (the UI
# itself is neither built, which takes npm, nor downloaded: -DLLAMA_USE_PREBUILT_UI=OFF).
UI_KEEP = ("tools/ui/CMakeLists.txt", "tools/ui/sources.cmake", "tools/ui/ui.cpp.in", "tools/ui/ui.h.in")


def _llama_part(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """What of llama.cpp's source the carried tarball keeps: no models, no UI sources but UI_KEEP."""
    if info.name.endswith(".gguf"):
        return None
    if info.name.startswith("tools/ui/") and info.name not in UI_KEEP:
        return None
    return info


BENCH_ARGS = ["-ngl", "99", "-p", "512", "-n", "128", "-r", "3", "-o", "json"]
VARIANT_SHARE = 0.6  # of the time left after the table, what the variants' A/B may take
SERVE_TOKENS, SERVE_REQUESTS = 128, 2  # the serving phase: tokens a completion, completions a client
# A dense, a MoE and a hybrid (recurrent) model for compute-sanitizer's memcheck
SANITIZE_FIXTURES = ("llama-Q4_K_M", "qwen3moe-Q4_K_M", "qwen35-Q4_K_M")
SANITIZE_SHARE = 0.5  # of the time left before the fixtures' checks, what --sanitize may take
# racecheck's model (shared-memory hazards between a block's threads): its checks run every list, the
# batch twins' double-buffered token copies (gpu_bmma.STAGE_TOKENS) among them
RACECHECK_FIXTURE = "llama-Q4_K_M"
# The encoders' files of tests/data/llama-archs (llama.cpp's hidden states recorded), built for the card and
# run there before the fixtures' checks: gpu_check.py's fixtures are decoders, and the emulator is not the card
ENCODER_ARCHS = ("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
                 "gemma-embedding", "eurobert", "neo-bert", "llama-embed", "t5encoder")  # fmt: skip
ENCODER_SHARE = 0.2  # of the time left before the fixtures' checks, what the encoders may take
# After the table, llama-server's build (started once llama-bench's is done) may take up to
# SERVER_BUILD_WAIT more seconds, while SERVER_BUILD_RESERVE of the budget stays for the serving
# phase and what follows; a build stopped there is resumed by a follow-up call (--follow-up).
SERVER_BUILD_WAIT = 150
SERVER_BUILD_RESERVE = 90


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def _wheel_platforms() -> list[str]:
    tags = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
        "manylinux2014_x86_64",
        "manylinux1_x86_64",
    ]
    return [arg for tag in tags for arg in ("--platform", tag)]


def _runtime_requirements() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


# rfc's CLI with a variant's codegen constants set first (argv[1]: tools/gpu_experiment.py's
# "module.NAME=value ..." form, "" for none), so `prepare` fills the cache with its kernels
VARIANT_COMPILE = (
    "import sys; sys.path.insert(0, {tools!r}); import gpu_experiment; "
    "gpu_experiment._override(sys.argv.pop(1)); from rfc.cli.main import main; main()"
)


def prepare(
    out: Path, kernels: list[str], python_version: str, without: list[str], variants: tuple = (), variants_on: str = ""
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    wheels = out / "wheels"
    skip = {w.lower().replace("_", "-") for w in without}
    requirements = [
        r
        for r in _runtime_requirements()
        if re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower().replace("_", "-") not in skip
    ]
    # --no-deps: the GPU machine's image already holds the common packages (numpy, jinja2, ...);
    # `run` installs only the wheels whose distribution it lacks.
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *_wheel_platforms(),
            "-d",
            str(wheels),
            *requirements,
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                LLAMA_CPP_PYTHON,
            ]
        )
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as t:
            t.extractall(tmp, filter="data")
        vendor = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        with tarfile.open(out / "llama.tar.xz", "w:xz") as t:
            for part in LLAMA_PARTS:
                if (vendor / part).exists():
                    t.add(
                        vendor / part,
                        arcname=part,
                        filter=_llama_part,
                    )
    if kernels:  # fill a kernel cache, so the card's time is not spent in nvcc/hipcc
        cache = Path(tempfile.mkdtemp(prefix="rfc-kernels-"))
        models = [
            Path(__file__).resolve().parents[1] / "compiler" / "demo" / "stories260K.gguf",
            *sorted(_fixtures().glob("tiny-*.gguf")),
        ]
        with tempfile.TemporaryDirectory() as ggufs:
            sys.path.insert(0, str(ROOT / "tools"))
            from gpu_check import BENCH_MODELS

            for name, make_args in BENCH_MODELS:
                _run(
                    [sys.executable, str(ROOT / "tools" / "make_gguf.py"), f"{ggufs}/{name}", *make_args],
                    stdout=subprocess.DEVNULL,
                )
                models.append(Path(ggufs) / name)
            bench = [Path(ggufs) / name for name, _ in BENCH_MODELS if variants_on in name]  # run's --variants-on
            for target in kernels:
                # every model as it is; the benchmark shapes also with each variant `run --variant` will time
                for gguf, variant in [*((m, "") for m in models), *((b, v) for v in variants for b in bench)]:
                    with tempfile.TemporaryDirectory() as tmp:
                        subprocess.run(
                            [
                                sys.executable,
                                "-c",
                                VARIANT_COMPILE.format(tools=str(ROOT / "tools")),
                                variant,
                                "compile",
                                str(gguf),
                                "--arch",
                                target,
                                "-o",
                                f"{tmp}/b",
                                "-q",
                                "--cache-dir",
                                str(cache),
                            ],
                            check=False,
                        )
        with tarfile.open(out / "kernels.tar.xz", "w:xz") as t:  # ~60 MB of objects pack to a few MB
            t.add(cache / "kernels", arcname="kernels")  # --cache-dir is rfc's cache root: kernels/ inside it
        shutil.rmtree(cache)
    print(f"prepared {out}: carry it to the GPU machine and run `python tools/gpu_session.py run {out}`")


def _fixtures() -> Path:
    """The test fixtures, made from their seed (in seconds, no network: tests/testdata.py)."""
    sys.path.insert(0, str(ROOT))
    from tests import testdata

    return testdata.make_fixtures()


def _llama_build(src: Path, target: str, server: bool = False) -> tuple[subprocess.Popen, Path]:
    """Starts llama-bench's build for the card (and llama-server's with `server`); returns the
    process and the folder of the binaries."""
    build = src / "build"
    gpu = (
        ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={target.removeprefix('sm_')}"]
        if target.startswith("sm_")
        else ["-DGGML_HIP=ON", f"-DAMDGPU_TARGETS={target}"]
    )
    script = (
        f"cmake -S {src} -B {build} {' '.join(gpu)} -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF "
        f"-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER={'ON' if server else 'OFF'} "
        "-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF >/dev/null && "
        f"nice -n 5 cmake --build {build} -j {os.cpu_count() or 4} --target llama-bench >/dev/null && touch {build}/bench.done"
        # llama-server after llama-bench: a failure of its build leaves the benchmark standing
        + (
            f" && (nice -n 5 cmake --build {build} -j {os.cpu_count() or 4} --target llama-server >/dev/null || true)"
            if server
            else ""
        )
    )
    log = open(src / "build.log", "w")
    proc = subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, build / "bin"


def previous_llama_build(tmp: Path) -> Path | None:
    """The llama.cpp build folder a first call on this machine left in `tmp` (llama-bench built
    there: its bench.done), the newest; None without one."""
    done = sorted(tmp.glob("llama-peer-*/build/bench.done"), key=lambda p: p.stat().st_mtime)
    return done[-1].parent if done else None


def _serving_phase(rfc: dict, out: Path, target: str, bins: Path | None, logs: Path, env: dict, deadline: float) -> int:
    """rfc serve and, where it was built, llama-server on the smaller benchmark shape
    (serve_commands); the phase's exit status."""
    status = 0
    left = _phase("serving: rfc serve and llama-server -np 16, streamed completions, 1 and 16 clients", deadline)
    b = rfc["bench"][0]  # the smaller benchmark shape
    bundle = out / f"{Path(b['gguf']).stem}-{target}"
    device = "cuda" if target.startswith("sm_") else "hip"
    for name, cmd in serve_commands(bundle, Path(b["gguf"]), device, bins, logs):
        status = _checked_run(cmd, env, logs / f"serve-{name}.log", max(min(left / 2 - 30, 150), 1)) or status
        left = deadline - time.monotonic()
    return status


def _pause(build: subprocess.Popen | None, stop: bool) -> None:
    """Stops (SIGSTOP) or resumes (SIGCONT) a running llama.cpp build's process group."""
    if build is not None and build.poll() is None:
        os.killpg(build.pid, signal.SIGSTOP if stop else signal.SIGCONT)


def _follow_up_serving(rfc: dict, out: Path, target: str, logs: Path, env: dict, deadline: float) -> int:
    """A follow-up's serving phase: llama-server's build resumed in the first call's build folder
    on this machine (its objects are there: cmake builds what is left), then both servers under
    the same load (_serving_phase); 0 without that folder or the benchmark GGUFs."""
    build_dir = previous_llama_build(Path(tempfile.gettempdir()))
    if build_dir is None or not rfc["bench"]:
        return 0
    bins = build_dir / "bin"
    if not (bins / "llama-server").is_file():
        left = _phase("llama-server's build, resumed from the first call's", deadline)
        cmd = ["nice", "-n", "5", "cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 4)]
        _checked_run(
            [*cmd, "--target", "llama-server"], env, logs / "llama-server-build.log", max(min(left / 3, 180), 1)
        )
    if not (bins / "llama-server").is_file():
        return 0
    return _serving_phase(rfc, out, target, bins, logs, env, deadline)


def served_rates(logs: Path, llama: list[dict]) -> str:
    """Lines for ratios.md: each benchmark bundle's served batch-1 step as its step profile
    timed it (gpu_profile.py, with no build beside it), against llama-bench's tg128 on the same
    GGUF where it ran; empty without a profile."""
    tg = {
        Path(r.get("model_filename", "")).stem: r["avg_ts"]
        for r in llama
        if r.get("n_gen") and not r.get("n_prompt") and r.get("avg_ts")
    }
    lines = []
    for log in sorted(logs.glob("step-profile-*.log")):
        text = log.read_text()
        m = re.search(r"served step \(tokens chosen on the device\): median ([0-9.]+) ms, ([0-9.]+) tok/s", text)
        if not m:
            continue
        bundle = log.stem.removeprefix("step-profile-")
        model = next((name for name in tg if bundle.startswith(name + "-")), None)
        ratio = f", **{float(m[2]) / tg[model]:.2f}x** llama.cpp's tg128" if model else ""
        line = f"- {bundle}: the served batch-1 step alone {float(m[2]):,.1f} tok/s ({m[1]} ms){ratio}"
        queued = re.search(r"served steps queued ahead \(.*?\): ([0-9.]+) ms a step, ([0-9.]+) tok/s", text)
        if queued:  # the engine's decode where the device queues steps ahead (runtime/engine/ahead.py)
            ratio = f", **{float(queued[2]) / tg[model]:.2f}x**" if model else ""
            line += f"; queued ahead as the engine serves decode {float(queued[2]):,.1f} tok/s ({queued[1]} ms){ratio}"
        lines.append(line)
    if not lines:
        return ""
    head = "\nrfc's batch-1 step as served, timed with nothing else running (gpu_profile.py, median of 50, 33-token context):\n"
    return head + "\n".join(lines) + "\n"


def card() -> str:
    """The card and its driver, as nvidia-smi (or rocm-smi) says."""
    for cmd in (
        ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
        ["rocm-smi", "--showproductname", "--showdriverversion"],
    ):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().replace("\n", "; ")
        except (OSError, subprocess.TimeoutExpired):
            continue
    return "unknown card"


def ratio_table(rfc: dict, llama: list[dict]) -> str:
    """Markdown rows: each benchmark model's rfc batch-1 decode and 512-token prefill beside
    llama-bench's tg128 and pp512 on the same GGUF, with the ratios."""
    by_file: dict[str, dict[str, dict]] = {}
    for r in llama:
        kind = "pp" if r.get("n_prompt") and not r.get("n_gen") else "tg"
        by_file.setdefault(Path(r.get("model_filename", "")).name, {})[kind] = r
    lines = [
        "| model | rfc batch-1 decode tok/s | llama.cpp tg128 | ratio | rfc prefill 512 tok/s | llama.cpp pp512 | ratio "
        "| rfc batch 16 / batch 1 | rfc weights GB/s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for b in rfc.get("bench", []):
        peer = by_file.get(Path(b["gguf"]).name, {})

        def cell(kind: str, ours: float) -> tuple[str, str]:
            r = peer.get(kind)
            if not r:
                return "-", "-"
            return f"{r['avg_ts']:,.1f} ± {r.get('stddev_ts', 0):,.1f}", f"**{ours / r['avg_ts']:.2f}**"

        tg, tg_ratio = cell("tg", b["b1"])
        pp, pp_ratio = cell("pp", b["prefill"])
        lines.append(
            f"| {b['model']} | {b['b1']:,.1f} | {tg} | {tg_ratio} | {b['prefill']:,.0f} | {pp} | {pp_ratio} "
            f"| {b['b16'] / b['b1']:.2f} | {b['gbps']:,.0f} |"
        )
    return "\n".join(lines)


def _python_env(peer: Path) -> dict[str, str]:
    """An environment in which `import rfc` works on a machine where nothing may be installed from
    a registry: the prepared wheels this Python lacks, unpacked into one folder, and rfc's packages
    linked under `rfc/` as pyproject.toml maps them (no pip install of rfc itself)."""
    import importlib.metadata
    import tomllib

    site = Path(tempfile.mkdtemp(prefix="rfc-site-"))
    missing = []
    for wheel in sorted((peer / "wheels").glob("*.whl")):
        dist = wheel.name.split("-")[0]
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(wheel))
    if missing:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--target",
                str(site),
                *missing,
            ]
        )
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    (site / "rfc").mkdir()
    for package, folder in package_dirs.items():
        if package.count(".") == 1:  # rfc.X; deeper packages are folders inside those
            (site / package.replace(".", "/")).symlink_to(ROOT / folder, target_is_directory=True)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return env


def _phase(name: str, deadline: float) -> float:
    left = deadline - time.monotonic()
    print(f"\n== {name} ({left:.0f} s of the budget left)", file=sys.stderr, flush=True)
    return left


def _checked_run(cmd: list[str], env: dict, log: Path, timeout: float) -> int:
    """Runs one phase with its output in `log`; returns its exit status, 124 when the phase ran out
    of time (then its whole process group is stopped: servers and builds it started too)."""
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"-- stopped: out of time after {timeout:.0f} s", file=f, flush=True)
            status = 124
    lines = log.read_text(errors="replace").splitlines()
    print("\n".join(lines[-60:]), file=sys.stderr, flush=True)
    return status


FIRST_FIXTURES = (
    "llama-Q4_0",
    "llama-Q4_K_M",
    "llama-Q8_0",
    "llama-Q6_K",
    "llama-Q5_K_M",
    "llama-Q2_K",
    "llama-Q3_K_M",
    "llama-F16",
    "llama-IQ_MIX",
    "qwen3-Q8_0",
    "gemma3-Q8_0",
    "gpt-oss-Q8_0",
    "qwen35-Q8_0",
    "gemma4-Q8_0",
)


def serve_commands(bundle: Path, gguf: Path, device: str, bins: Path | None, logs: Path) -> list[tuple[str, list[str]]]:
    """tools/bench_serve.py against `rfc serve` on the card and, where llama-server was built,
    against llama-server with 16 slots on the same GGUF: streamed completions of SERVE_TOKENS
    tokens, 1 then 16 clients at once, SERVE_REQUESTS each; rfc also with --no-decode-ahead and 1
    client (the queuing's A/B); each server's own output in `logs` (serve-NAME-server.log)."""
    common = ["--clients", "1,16", "--requests", str(SERVE_REQUESTS), "--max-tokens", str(SERVE_TOKENS), "--json"]
    bench = [sys.executable, str(ROOT / "tools" / "bench_serve.py")]
    cmds = [("rfc", [*bench, "--bundle", str(bundle), "--serve-args", f"--device {device}", *common])]
    if bins is not None and (bins / "llama-server").is_file():
        server = f"{bins / 'llama-server'} -m {gguf} -ngl 99 -np 16 -c {16 * 1024} --port {{port}}"
        cmds.append(("llama", [*bench, "--server-cmd", server, "--ready-path", "/health", *common]))
    # last (the phase's time goes first to the comparison): the same server stepping one step at
    # a time, 1 client, what decode queued ahead is worth served
    one = ["--clients", "1", *common[2:]]
    cmds.append(
        (
            "rfc-one-at-a-time",
            [*bench, "--bundle", str(bundle), "--serve-args", f"--device {device} --no-decode-ahead", *one],
        )
    )
    return [(name, [*cmd, "--server-log", str(logs / f"serve-{name}-server.log")]) for name, cmd in cmds]


def step_profile_commands(bundles: list[Path], target: str) -> list[tuple[str, list[str]]]:
    """tools/gpu_profile.py on each benchmark bundle at batch 1 and a 33-token context (the
    variants' step): the step as the engine runs it, the graph alone, the served step with the
    sampling kernel, the host's Python, each kernel alone. The table's batch-1 rate is the
    served step; what it spends outside the graph is this phase's to say."""
    device = "cuda" if target.startswith("sm_") else "hip"
    tool = [sys.executable, str(ROOT / "tools" / "gpu_profile.py")]
    args = ["--device", device, "--batch", "1", "--steps", "50", "--context", "32", "--top", "15"]
    return [(bundle.name, [*tool, str(bundle), *args]) for bundle in bundles if bundle.is_dir()]


def default_target_check(gguf: Path, target: str, env: dict, log: Path, timeout: float) -> int:
    """`rfc serve GGUF` with no --arch on the card: its first line must say it compiled for the
    card's target (what it detected) and /health must report the model on that GPU. 0 when both
    hold, 1 otherwise; the server's output and the verdict go to `log`."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-c", "from rfc.cli.main import main; main()", "serve", str(gguf), "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        health, deadline = None, time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None and health is None:
                try:  # ready: the model is loaded; then where it runs
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5).close()
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                        health = json.loads(r.read())
                except OSError:
                    time.sleep(0.5)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    first = next((line for line in log.read_text().splitlines() if line.startswith("rfc:")), "")
    gpu = ((health or {}).get("checks") or {}).get("gpu") or {}
    ok = target in first.split(" [")[0] and gpu.get("target") == target
    verdict = f"default target: {'ok' if ok else 'FAILED'}: first line {first!r}; /health gpu {gpu}"
    with open(log, "a") as out:
        out.write("\n" + verdict + "\n")
    print(verdict, file=sys.stderr, flush=True)
    return 0 if ok else 1


def _cuda_tool(name: str) -> str:
    """An Nsight tool: on PATH, else where the CUDA toolkit installs it."""
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/local").glob(f"cuda*/bin/{name}"), reverse=True)), None
    )
    return found or name


def sanitize_commands(fixtures: Path, bench_bundle: Path | None, gpu_check: list[str]) -> list[tuple[str, list[str]]]:
    """compute-sanitizer memcheck over SANITIZE_FIXTURES' checks and the benchmark bundle's steps,
    and racecheck over the dense fixture's (RACECHECK_FIXTURE): (log name, command); the tool's
    error exit is 9, apart from the checked program's own."""
    sanitizer = _cuda_tool("compute-sanitizer")

    def tool(name: str) -> list[str]:
        return [sanitizer, "--tool", name, "--error-exitcode", "9"]

    models = [str(p) for name in SANITIZE_FIXTURES if (p := fixtures / f"tiny-{name}.gguf").is_file()]
    cmds = [("fixtures", [*tool("memcheck"), *gpu_check, "--decode", "8", *models])]
    if bench_bundle is not None and bench_bundle.is_dir():
        steps = [sys.executable, str(ROOT / "tools" / "gpu_experiment.py"), "_steps", str(bench_bundle)]
        cmds.append((bench_bundle.name, [*tool("memcheck"), *steps, str(bench_bundle) + "-lists.json"]))
    dense = fixtures / f"tiny-{RACECHECK_FIXTURE}.gguf"
    if dense.is_file():
        cmds.append(("racecheck", [*tool("racecheck"), *gpu_check, "--decode", "8", str(dense)]))
    return cmds


def encoder_command(target: str, logs: Path, seconds: float) -> list[str]:
    """tools/fixtures/llama_archs.py over ENCODER_ARCHS' files on the card: built for `target`, run on its
    device (cuda or hip), each file's hidden states against llama.cpp's; no file started after `seconds`,
    exit 1 unless every one run matched."""
    device = ("cuda" if target.startswith("sm_") else "hip") + "@" + target
    cmd = [sys.executable, str(ROOT / "tools" / "fixtures" / "llama_archs.py"), "--devices", device, "--strict"]
    cmd += ["--time-limit", str(max(seconds, 1)), "--json", str(logs / "encoders.json")]
    return cmd + [a for arch in ENCODER_ARCHS for a in ("--arch", arch)]


def fixture_order(fixtures: list[Path]) -> list[Path]:
    """llama's weight formats and the archs seen on a card before first, then one file per
    architecture (Q8_0 where there is one), then the rest."""
    named = {p.stem.removeprefix("tiny-"): p for p in fixtures}
    first = [named[n] for n in FIRST_FIXTURES if n in named]
    archs: dict[str, Path] = {}
    for name, path in sorted(named.items()):
        arch = name.rsplit("-", 1)[0]
        if path not in first and (arch not in archs or name.endswith("Q8_0")):
            archs[arch] = path
    rest = [p for p in sorted(named.values()) if p not in first and p not in archs.values()]
    return first + [p for p in archs.values() if p not in first] + rest


def run(
    peer: Path,
    target: str,
    out: Path,
    budget: float,
    logs: Path,
    with_peer: bool = True,
    variants: tuple = (),
    serve: bool = True,
    profile: bool = False,
    sanitize: bool = False,
    follow_up: bool = False,
    variants_on: str = "",
    variant_share: float = VARIANT_SHARE,
    ncu_detail: tuple[str, ...] = (),
) -> int:
    deadline = time.monotonic() + budget
    logs.mkdir(parents=True, exist_ok=True)
    env = _python_env(peer)
    if (peer / "kernels.tar.xz").is_file():
        cache = Path.home() / ".cache" / "rfc"
        with tarfile.open(peer / "kernels.tar.xz") as t:
            t.extractall(cache, filter="data")
        for d in (cache, cache / "kernels"):
            d.chmod(0o700)  # the build cache refuses a folder others could write
    src = Path(tempfile.mkdtemp(prefix="llama-peer-"))
    with tarfile.open(peer / "llama.tar.xz") as t:
        t.extractall(src, filter="data")
    t0 = time.monotonic()
    build, bins = _llama_build(src, target, serve) if with_peer and not follow_up else (None, None)
    out.mkdir(parents=True, exist_ok=True)
    fixtures = Path(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.path.insert(0, sys.argv[1]); from tests import testdata; "
                "print(testdata.make_fixtures())",
                str(ROOT),
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    gpu_check = [
        sys.executable,
        str(ROOT / "tools" / "gpu_check.py"),
        "--target",
        target,
        "--fixtures",
        str(fixtures),
        "--out",
        str(out),
    ]
    report = logs / "rfc-bench.json"
    if follow_up:  # a second call on the same machine: the benchmark GGUFs and bundles are there
        status = 0  # (gpu_check.py's BENCH_MODELS: made by the first call; the smaller first)
        ggufs = sorted(out.glob("bench-*.gguf"), key=lambda p: p.stat().st_size)
        rfc = {"bench": [{"gguf": str(p)} for p in ggufs]}
    else:
        left = _phase("rfc: stories260K's checks, then the benchmark shapes", deadline)
        status = _checked_run(
            [*gpu_check, "--bench", "--json", str(report), str(ROOT / "compiler" / "demo" / "stories260K.gguf")],
            env,
            logs / "rfc-bench.log",
            left - (150 if build is not None else 30),
        )
        rfc = json.loads(report.read_text()) if report.is_file() else {"bench": []}
    llama: list[dict] = []
    if build is not None:
        left = _phase("llama.cpp: llama-bench on the same GGUFs", deadline)
        # llama-bench's build, not llama-server's after it (which goes on for the serving phase)
        until = time.monotonic() + max(left - 100, 1)
        while build.poll() is None and not (bins.parent / "bench.done").is_file() and time.monotonic() < until:
            time.sleep(1)
        done = (bins.parent / "bench.done").is_file()
        print(
            f"llama-bench build: {'done' if done else 'not done'} after {time.monotonic() - t0:.0f} s", file=sys.stderr
        )
        # llama-server's build (after llama-bench's) waits while llama-bench and the step profiles
        # time: 16 compilers beside them would tax both sides' host work (resumed below, or at
        # exit if a phase between raises)
        _pause(build, True)
        atexit.register(_pause, build, False)
    for b in rfc["bench"] if build is not None else []:
        try:
            r = subprocess.run(
                [str(bins / "llama-bench"), "-m", b["gguf"], *BENCH_ARGS],
                capture_output=True,
                text=True,
                timeout=max(min(120, deadline - time.monotonic() - 30), 1),
            )
            llama += json.loads(r.stdout or "[]")
            if r.returncode:
                print(f"llama-bench on {b['gguf']}: exit {r.returncode}: {r.stderr[-800:]}", file=sys.stderr)
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            print(f"llama-bench on {b['gguf']}: {e}", file=sys.stderr)
            status = status or 3
    if build is not None:
        (logs / "llama-bench.json").write_text(json.dumps(llama, indent=1))
    if follow_up:
        # llama-server from the first call's build on this machine, after the variants
        def serving() -> int:
            return _follow_up_serving(rfc, out, target, logs, env, deadline) if serve and with_peer else 0

        return _extra_phases(
            rfc, out, target, logs, env, deadline, fixtures, gpu_check, variants, profile, sanitize, True,
            variants_on, variant_share, ncu_detail, after_variants=serving,
        )  # fmt: skip
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = (
        f"{card()}, {target}, {when}; rfc: tools/gpu_check.py --bench; llama.cpp: llama-bench {' '.join(BENCH_ARGS[:-2])} "
        f"({LLAMA_CPP_PYTHON}'s vendored llama.cpp)\n\n{ratio_table(rfc, llama)}\n"
    )
    (logs / "ratios.md").write_text(table)
    print("\n" + table, flush=True)
    bench_bundles = [out / f"{Path(b['gguf']).stem}-{target}" for b in rfc["bench"]]
    if bench_bundles:
        left = _phase("where a batch-1 step's time goes: tools/gpu_profile.py on the benchmark bundles", deadline)
        for name, cmd in step_profile_commands(bench_bundles, target):
            # a profile, not a check: its exit status leaves the run's alone
            _checked_run(cmd, env, logs / f"step-profile-{name}.log", max(min(left / 8, 60), 1))
        served = served_rates(logs, llama)
        if served:
            with open(logs / "ratios.md", "a") as f:
                f.write(served)
            print(served, flush=True)
    _pause(build, False)
    if build is not None and build.poll() is None:  # llama-server's build: a bounded wait, then without it
        try:
            left = deadline - time.monotonic()
            build.wait(timeout=max(min(SERVER_BUILD_WAIT, left - SERVER_BUILD_RESERVE), 1) if serve else 0.1)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)  # cmake and its compilers with it (a follow-up resumes it)
            build.wait()
    if build is not None:
        shutil.copy(src / "build.log", logs / "llama-build.log")
    if serve and rfc["bench"]:
        status = _serving_phase(rfc, out, target, bins, logs, env, deadline) or status
    left = _phase("rfc serve GGUF with no --arch: the target it detects on the card", deadline)
    demo = ROOT / "compiler" / "demo" / "stories260K.gguf"
    status = default_target_check(demo, target, env, logs / "default-target.log", max(min(left / 3, 180), 1)) or status
    status = (
        _extra_phases(
            rfc,
            out,
            target,
            logs,
            env,
            deadline,
            fixtures,
            gpu_check,
            variants,
            profile,
            sanitize,
            False,
            variants_on,
            variant_share,
            ncu_detail,
        )
        or status  # fmt: skip
    )
    return status


def _extra_phases(
    rfc: dict,
    out: Path,
    target: str,
    logs: Path,
    env: dict,
    deadline: float,
    fixtures: Path,
    gpu_check: list[str],
    variants: tuple,
    profile: bool,
    sanitize: bool,
    follow_up: bool = False,
    variants_on: str = "",
    variant_share: float = VARIANT_SHARE,
    ncu_detail: tuple[str, ...] = (),
    after_variants: Callable[[], int] = lambda: 0,
) -> int:
    """The phases after the table: variants, `after_variants` (a follow-up's serving), ncu,
    memcheck, then the fixtures' checks (in a follow-up call, those whose bundle the first call
    did not build yet)."""
    status = 0
    if variants:
        left = _phase("rfc: codegen variants on the benchmark GGUFs", deadline)
        share = max(left - 60, 1) * variant_share  # the rest stays for the fixtures' checks
        on = [b for b in rfc["bench"] if variants_on in Path(b["gguf"]).name]
        for b in on:
            cmd = [sys.executable, str(ROOT / "tools" / "gpu_experiment.py"), "variants", b["gguf"], "--target", target]
            cmd += [arg for v in variants for arg in ("--variant", v)]
            name = Path(b["gguf"]).stem
            status = _checked_run(cmd + ["--out", str(out / "variants")], env, logs / f"variants-{name}.log",
                                  share / max(len(on), 1)) or status  # fmt: skip
    status = after_variants() or status
    bench_bundles = [out / f"{Path(b['gguf']).stem}-{target}" for b in rfc["bench"]]
    if profile and target.startswith("sm_"):
        left = _phase("ncu: each kernel's GPU time in a decode and a prefill step", deadline)
        for bundle in bench_bundles[:1]:  # the smaller shape: the 8B's ~1,000 kernels would take minutes
            cmd = [sys.executable, str(ROOT / "tools" / "gpu_experiment.py"), "ncu", str(bundle)]
            cmd += ["--out", str(logs / "ncu"), "--timeout", str(max(min(left / 4, 150), 1))]
            env_ncu = env | {"PATH": f"{Path(_cuda_tool('ncu')).parent}:{env.get('PATH', os.environ['PATH'])}"}
            # a profile, not a check: its failure (no access to the counters) leaves the exit status alone
            _checked_run(cmd, env_ncu, logs / f"ncu-{bundle.name}.log", max(min(left / 4, 150) + 20, 1))
            left = deadline - time.monotonic()
    for i, regex in enumerate(ncu_detail if target.startswith("sm_") and bench_bundles else ()):
        left = _phase(f"ncu sections: the first launches of {regex} in the largest benchmark's steps", deadline)
        bundle = bench_bundles[-1]  # the 8B: the furthest behind llama.cpp's, in decode and in prefill
        share = max(min(left / (3 * (len(ncu_detail) - i)), 200), 1)  # each regex its own ncu run
        cmd = [sys.executable, str(ROOT / "tools" / "gpu_experiment.py"), "ncu-detail", str(bundle)]
        cmd += ["--kernel", regex, "--out", str(logs / "ncu" / str(i)), "--timeout", str(share)]
        env_ncu = env | {"PATH": f"{Path(_cuda_tool('ncu')).parent}:{env.get('PATH', os.environ['PATH'])}"}
        _checked_run(cmd, env_ncu, logs / f"ncu-detail-{i}-{bundle.name}.log", share + 20)
    if sanitize and target.startswith("sm_"):
        left = _phase(
            "compute-sanitizer: memcheck on a dense, a MoE and a hybrid model and the big tiles; racecheck", deadline
        )
        share = max(left - 60, 1) * SANITIZE_SHARE
        small = bench_bundles[0] if bench_bundles else None
        cmds = sanitize_commands(fixtures, small, gpu_check)
        for name, cmd in cmds:
            log = logs / (f"{name}.log" if name == "racecheck" else f"memcheck-{name}.log")
            status = _checked_run(cmd, env, log, share / len(cmds)) or status
    left = _phase("rfc: the encoders' llama.cpp files on the card", deadline)
    share = max(left * ENCODER_SHARE, 1)
    # no file starts in the share's last 30 s (one file's build and run), or in its second half where it is short
    status = (
        _checked_run(encoder_command(target, logs, max(share - 30, share / 2)), env, logs / "encoders.log", share)
        or status
    )
    left = _phase("rfc: the fixtures' checks on the card", deadline)
    ordered = fixture_order(sorted(fixtures.glob("tiny-*.gguf")))
    if follow_up:
        ordered = [f for f in ordered if not (out / f"{f.stem}-{target}").is_dir()]
    checks = _checked_run(
        [
            *gpu_check,
            "--json",
            str(logs / "rfc-checks.json"),
            "--time-limit",
            str(max(left - 45, 1)),
            *map(str, ordered),
        ],
        env,
        logs / "rfc-checks.log",
        left - 10,
    )
    return status or checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="on a machine with PyPI: wheels, llama.cpp's source, kernels")
    p.add_argument("dir", type=Path)
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for its wheels (default 3.12)")
    p.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="DIST",
        help="a dependency the GPU machine's image already has, left out of the carried wheels "
        "(repeatable; e.g. numpy, tokenizers: the size a device call carries is bounded)",
    )
    p.add_argument(
        "--kernels",
        action="append",
        default=[],
        metavar="TARGET",
        help="also fill the kernel cache for this target (repeatable), e.g. sm_90",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='"module.NAME=value ..."',
        help="with --kernels: the benchmark shapes' kernels with these codegen constants too (run --variant)",
    )
    p.add_argument(
        "--variants-on",
        default="",
        metavar="TEXT",
        help="the variants' kernels of the benchmark GGUFs whose file name holds TEXT only (as run --variants-on "
        "will time them: each build left out is one compile of a whole benchmark model fewer here)",
    )
    r = sub.add_parser("run", help="on the GPU machine: rfc's checks and benchmarks and llama-bench, one table")
    r.add_argument("dir", type=Path)
    r.add_argument("--target", default="sm_90")
    r.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rfc-gpu-session",
        help="bundles and benchmark GGUFs (several GB: not a folder that is copied back)",
    )
    r.add_argument("--budget", type=float, default=540, help="seconds for the whole run (default 540)")
    r.add_argument(
        "--no-peer",
        action="store_true",
        help="rfc alone: no llama-bench build (its ~4 minutes), the table without llama.cpp's columns",
    )
    r.add_argument(
        "--no-serve",
        action="store_true",
        help="no serving phase (rfc serve and llama-server -np 16 under 1 and 16 streaming clients)",
    )
    r.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='"module.NAME=value ..."',
        help="also time the benchmark GGUFs compiled with these codegen constants (repeatable; gpu_experiment.py)",
    )
    r.add_argument(
        "--ncu",
        action="store_true",
        help="the smaller benchmark bundle's kernels timed by Nsight Compute (gpu_experiment ncu)",
    )
    r.add_argument(
        "--sanitize",
        action="store_true",
        help="compute-sanitizer memcheck over a dense, a MoE and a hybrid fixture and the smaller benchmark bundle",
    )
    r.add_argument(
        "--pack",
        type=Path,
        metavar="FILE.tgz",
        help="also pack --logs into this tarball at the end, however the run ends (e.g. $OUT/logs.tgz "
        "with --logs outside $OUT: a device call brings back a limited number of files)",
    )
    r.add_argument(
        "--variants-on",
        default="",
        metavar="TEXT",
        help="time the variants on the benchmark GGUFs whose file name holds TEXT only (e.g. 1.1b)",
    )
    r.add_argument(
        "--variant-share",
        type=float,
        default=VARIANT_SHARE,
        help=f"of the time left after the table, what the variants may take (default {VARIANT_SHARE})",
    )
    r.add_argument(
        "--ncu-detail",
        action="append",
        default=[],
        metavar="REGEX",
        help="Nsight Compute's sections for the first launches of the kernels matching REGEX in the largest "
        "benchmark bundle's steps (tools/gpu_experiment.py ncu-detail; e.g. 'rfc_matmul_imma_.*14336' for the "
        "prefill's int8 matmuls, 'rfc_matmul_.*_t1' for a batch-1 decode step's); repeatable, one ncu run each",
    )
    r.add_argument(
        "--follow-up",
        action="store_true",
        help="a second call on a machine still warm from a first: no table, no llama.cpp build, no serving; "
        "the phases after them on the benchmark GGUFs already in --out (variants, --ncu, --sanitize, fixtures)",
    )
    r.add_argument(
        "--logs",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rfc-gpu-logs",
        help="each phase's log, the JSON rows and ratios.md",
    )
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dir, args.kernels, args.python_version, args.without, tuple(args.variant), args.variants_on)
        return 0
    # `timeout`'s SIGTERM ends the run through `finally` (the logs still packed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    try:
        return run(
            args.dir,
            args.target,
            args.out,
            args.budget,
            args.logs,
            not args.no_peer,
            tuple(args.variant),
            not args.no_serve,
            args.ncu,
            args.sanitize,
            args.follow_up,
            args.variants_on,
            args.variant_share,
            tuple(args.ncu_detail),
        )
    finally:
        if args.pack is not None:
            pack_logs(args.logs, args.pack)


def pack_logs(logs: Path, pack: Path) -> None:
    """Every log of the run in one tarball (a device call brings back a limited number of
    files), written whatever the run's end: a timeout or a failure too."""
    pack.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack, "w:gz") as t:
        if logs.is_dir():
            t.add(logs, arcname=logs.name)


if __name__ == "__main__":
    sys.exit(main())
