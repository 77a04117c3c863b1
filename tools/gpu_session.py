"""rfc and llama.cpp on a lent GPU in one call: the measurement the GPU goals are judged by.

A lent GPU machine has no network and little time, so everything is prepared here first:

    python tools/gpu_session.py prepare .peer            # on this machine (PyPI reachable)
    python tools/gpu_session.py run .peer --target sm_90  # on the GPU machine, carrying .peer

`prepare` puts into DIR (~40 MB, within what a device call carries): the wheels of rfc's
dependencies (`pip download`, installed there with `--no-index`), the llama.cpp source that
llama-cpp-python 0.3.36 vendors (the same release the tests' goldens come from) as a tarball,
and with `--kernels TARGET` the kernel build cache filled by compiling every fixture for that
target (nvcc/hipcc runs here, not on the card's time). The fixtures are made there from their
seed (tests/testdata.py, seconds).

`run` installs the wheels, starts building llama.cpp's `llama-bench` for the card in the
background (CUDA for sm_XY, HIP for gfx*), runs `tools/gpu_check.py --bench` (every fixture
against llama.cpp's logits and the reference device, then the benchmark shapes), waits for
the build, runs `llama-bench -ngl 99 -p 512 -n 128 -r 3` on the same GGUFs gpu_check made, and
prints one table of both sides with their ratios, the card, the driver and the date: what
docs/benchmarks.md records. Exit status: gpu_check's, or 3 when llama-bench could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# The parts of vendor/llama.cpp that llama-bench's build needs (no tests, no web UI, no models).
LLAMA_PARTS = ("CMakeLists.txt", "cmake", "common", "ggml", "include", "src", "tools", "vendor", "licenses", "LICENSE")
BENCH_ARGS = ["-ngl", "99", "-p", "512", "-n", "128", "-r", "3", "-o", "json"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def prepare(out: Path, kernels: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    wheels = out / "wheels"
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", str(wheels), str(ROOT), "setuptools>=68", "wheel"])
    for built in wheels.glob("rfc-*.whl"):  # rfc itself is installed from the checkout (editable)
        built.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, LLAMA_CPP_PYTHON])
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as t:
            t.extractall(tmp, filter="data")
        vendor = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        with tarfile.open(out / "llama.tar.xz", "w:xz") as t:
            for part in LLAMA_PARTS:
                if (vendor / part).exists():
                    t.add(vendor / part, arcname=part, filter=lambda i: None if i.name.endswith(".gguf") else i)
    if kernels:  # fill a kernel cache, so the card's time is not spent in nvcc/hipcc
        cache = Path(tempfile.mkdtemp(prefix="rfc-kernels-"))
        for target in kernels:
            for gguf in sorted(_fixtures().glob("tiny-*.gguf")):
                with tempfile.TemporaryDirectory() as tmp:
                    subprocess.run([sys.executable, "-c", "from rfc.cli.main import main; main()", "compile", str(gguf),
                                    "--arch", target, "-o", f"{tmp}/b", "-q", "--cache-dir", str(cache)], check=False)
        with tarfile.open(out / "kernels.tar.xz", "w:xz") as t:  # ~60 MB of objects pack to ~1 MB
            t.add(cache, arcname="kernels")
        shutil.rmtree(cache)
    print(f"prepared {out}: carry it to the GPU machine and run `python tools/gpu_session.py run {out}`")


def _fixtures() -> Path:
    """The test fixtures, made from their seed (in seconds, no network: tests/testdata.py)."""
    sys.path.insert(0, str(ROOT))
    from tests import testdata

    return testdata.make_fixtures()


def _llama_build(src: Path, target: str) -> tuple[subprocess.Popen, Path]:
    """Starts llama-bench's build for the card; returns the process and the binary's path."""
    build = src / "build"
    gpu = (["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={target.removeprefix('sm_')}"] if target.startswith("sm_")
           else ["-DGGML_HIP=ON", f"-DAMDGPU_TARGETS={target}"])
    script = (f"cmake -S {src} -B {build} {' '.join(gpu)} -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF "
              "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null && "
              f"cmake --build {build} -j {os.cpu_count() or 4} --target llama-bench >/dev/null")
    log = open(src / "build.log", "w")
    return subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT), build / "bin" / "llama-bench"


def card() -> str:
    """The card and its driver, as nvidia-smi (or rocm-smi) says."""
    for cmd in (["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                ["rocm-smi", "--showproductname", "--showdriverversion"]):
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
    lines = ["| model | rfc batch-1 decode tok/s | llama.cpp tg128 | ratio | rfc prefill 512 tok/s | llama.cpp pp512 | ratio "
             "| rfc batch 16 / batch 1 | rfc weights GB/s |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for b in rfc.get("bench", []):
        peer = by_file.get(Path(b["gguf"]).name, {})

        def cell(kind: str, ours: float) -> tuple[str, str]:
            r = peer.get(kind)
            if not r:
                return "-", "-"
            return f"{r['avg_ts']:,.1f} ± {r.get('stddev_ts', 0):,.1f}", f"**{ours / r['avg_ts']:.2f}**"

        tg, tg_ratio = cell("tg", b["b1"])
        pp, pp_ratio = cell("pp", b["prefill"])
        lines.append(f"| {b['model']} | {b['b1']:,.1f} | {tg} | {tg_ratio} | {b['prefill']:,.0f} | {pp} | {pp_ratio} "
                     f"| {b['b16'] / b['b1']:.2f} | {b['gbps']:,.0f} |")
    return "\n".join(lines)


def run(peer: Path, target: str, out: Path) -> int:
    wheels = peer / "wheels"
    if wheels.is_dir():
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "-e", str(ROOT)])
    if (peer / "kernels.tar.xz").is_file():
        with tarfile.open(peer / "kernels.tar.xz") as t:
            t.extractall(Path.home() / ".cache" / "rfc", filter="data")
    src = Path(tempfile.mkdtemp(prefix="llama-peer-"))
    with tarfile.open(peer / "llama.tar.xz") as t:
        t.extractall(src, filter="data")
    t0 = time.monotonic()
    build, bench_bin = _llama_build(src, target)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "rfc.json"
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--target", target, "--bench",
                            "--fixtures", str(_fixtures()), "--out", str(out), "--json", str(report)])
    build.wait()
    print(f"llama-bench build: exit {build.returncode} after {time.monotonic() - t0:.0f} s ({src / 'build.log'})",
          file=sys.stderr)
    rfc = json.loads(report.read_text()) if report.is_file() else {"bench": []}
    llama: list[dict] = []
    status = check.returncode
    for b in rfc["bench"]:
        try:
            r = subprocess.run([str(bench_bin), "-m", b["gguf"], *BENCH_ARGS], capture_output=True, text=True, timeout=300)
            llama += json.loads(r.stdout or "[]")
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            print(f"llama-bench on {b['gguf']}: {e}", file=sys.stderr)
            status = status or 3
    (out / "llama-bench.json").write_text(json.dumps(llama, indent=1))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{card()}, {target}, {when}; rfc: tools/gpu_check.py --bench; llama.cpp: llama-bench {' '.join(BENCH_ARGS[:-2])} "
          f"({LLAMA_CPP_PYTHON}'s vendored llama.cpp)\n")
    print(ratio_table(rfc, llama))
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="on a machine with PyPI: wheels, llama.cpp's source, kernels")
    p.add_argument("dir", type=Path)
    p.add_argument("--kernels", action="append", default=[], metavar="TARGET",
                   help="also fill the kernel cache for this target (repeatable), e.g. sm_90")
    r = sub.add_parser("run", help="on the GPU machine: rfc's checks and benchmarks and llama-bench, one table")
    r.add_argument("dir", type=Path)
    r.add_argument("--target", default="sm_90")
    r.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rfc-gpu-session")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dir, args.kernels)
        return 0
    return run(args.dir, args.target, args.out)


if __name__ == "__main__":
    sys.exit(main())
