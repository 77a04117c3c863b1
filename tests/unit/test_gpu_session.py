"""tools/gpu_session.py's table: rfc's benchmark rows beside llama-bench's JSON on the same
GGUF, with the ratios the GPU goals are stated in."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_session", ROOT / "tools" / "gpu_session.py")
gpu_session = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_session)


def test_ratios_pair_each_model_with_llama_bench_on_the_same_file():
    rfc = {
        "bench": [
            {
                "model": "bench-tinyllama-1.1b-Q4_0",
                "gguf": "/tmp/x/bench-tinyllama-1.1b-Q4_0.gguf",
                "b1": 1000.0,
                "b16": 9000.0,
                "prefill": 40000.0,
                "gbps": 640.0,
            },
            {
                "model": "bench-llama3-8b-Q4_K_M",
                "gguf": "/tmp/x/bench-llama3-8b-Q4_K_M.gguf",
                "b1": 300.0,
                "b16": 2400.0,
                "prefill": 9000.0,
                "gbps": 1500.0,
            },
        ]
    }
    llama = [  # llama-bench -o json: one object per test, pp (n_gen 0) and tg (n_prompt 0)
        {
            "model_filename": "/tmp/x/bench-tinyllama-1.1b-Q4_0.gguf",
            "n_prompt": 512,
            "n_gen": 0,
            "avg_ts": 32000.0,
            "stddev_ts": 10.0,
        },
        {
            "model_filename": "/tmp/x/bench-tinyllama-1.1b-Q4_0.gguf",
            "n_prompt": 0,
            "n_gen": 128,
            "avg_ts": 800.0,
            "stddev_ts": 2.0,
        },
    ]
    table = gpu_session.ratio_table(rfc, llama).splitlines()
    assert table[2].startswith(
        "| bench-tinyllama-1.1b-Q4_0 | 1,000.0 | 800.0 ± 2.0 | **1.25** | 40,000 | 32,000.0 ± 10.0 | **1.25** | 9.00 |"
    )
    # no llama-bench row for the 8B: its cells say so instead of a made-up ratio
    assert table[3].startswith("| bench-llama3-8b-Q4_K_M | 300.0 | - | - | 9,000 | - | - | 8.00 |")


def test_fixture_order_puts_llama_formats_first_then_one_file_per_architecture():
    names = [
        "tiny-gemma2-F16",
        "tiny-gemma2-Q8_0",
        "tiny-llama-Q8_0",
        "tiny-llama-Q4_0",
        "tiny-llama-BF16",
        "tiny-mixtral-Q4_K_M",
        "tiny-mixtral-Q8_0",
        "tiny-phi3-F16",
    ]
    order = [p.stem for p in gpu_session.fixture_order([Path(f"/f/{n}.gguf") for n in names])]
    assert order[:2] == ["tiny-llama-Q4_0", "tiny-llama-Q8_0"]  # FIRST_FIXTURES' order
    # Q8_0 where there is one
    assert order[2:6] == ["tiny-gemma2-Q8_0", "tiny-llama-BF16", "tiny-mixtral-Q8_0", "tiny-phi3-F16"]
    assert sorted(order) == sorted(names)  # nothing lost, nothing twice


def test_a_variant_compile_sets_the_codegen_constant_before_the_cli_runs():
    """`prepare --variant` compiles the benchmark shapes with the constants `run --variant` times:
    the child process sets them (in every codegen module that imported them) before rfc's CLI."""
    code = gpu_session.VARIANT_COMPILE.format(tools=str(gpu_session.ROOT / "tools"))
    probe = code.replace(
        "main()",
        "from rfc.compiler.codegen import gpu_fuse, gpu_plan; "
        "print(gpu_plan.MATMUL_ROW_STEPS, gpu_fuse.MATMUL_ROW_STEPS)",
    )
    out = subprocess.run([sys.executable, "-c", probe, "gpu_plan.MATMUL_ROW_STEPS=3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "3"]
    plain = subprocess.run([sys.executable, "-c", probe, ""], capture_output=True, text=True)
    assert plain.stdout.split() != ["3", "3"]


def test_the_serving_phase_runs_both_servers_under_the_same_load(tmp_path):
    """rfc serve on the card's device and llama-server with 16 slots on the same GGUF, the same
    clients, completions and tokens; without a llama-server binary, rfc alone."""
    (tmp_path / "llama-server").write_text("")
    logs = tmp_path / "logs"
    cmds = dict(gpu_session.serve_commands(Path("/b/bench-x-sm_90"), Path("/g/bench-x.gguf"), "cuda", tmp_path, logs))
    assert list(cmds) == ["rfc", "llama", "rfc-one-at-a-time"]
    assert cmds["rfc"][cmds["rfc"].index("--bundle") + 1] == "/b/bench-x-sm_90"
    assert "--device cuda" in cmds["rfc"]
    server = cmds["llama"][cmds["llama"].index("--server-cmd") + 1]
    assert "-m /g/bench-x.gguf" in server and "-np 16" in server and "-ngl 99" in server and "{port}" in server

    def load(cmd):
        return cmd[cmd.index("--clients") : cmd.index("--json") + 1]

    assert load(cmds["llama"]) == load(cmds["rfc"]) and load(cmds["rfc"])[1] == "1,16"
    one = cmds["rfc-one-at-a-time"]  # the same server and load, one client, the queuing off
    assert "--device cuda --no-decode-ahead" in one and load(one) == ["--clients", "1", *load(cmds["rfc"])[2:]]
    # each server's own output kept beside the client's (the 16-client shortfall on the H100 left none)
    for name, cmd in cmds.items():
        assert cmd[-2:] == ["--server-log", str(logs / f"serve-{name}-server.log")]
    names = [name for name, _ in gpu_session.serve_commands(Path("/b"), Path("/g.gguf"), "hip", None, logs)]
    assert names == ["rfc", "rfc-one-at-a-time"]


def test_memcheck_covers_a_dense_a_moe_and_a_hybrid_fixture_and_the_big_tiles_racecheck_the_dense(tmp_path):
    for name in gpu_session.SANITIZE_FIXTURES + ("gemma3-Q8_0",):
        (tmp_path / f"tiny-{name}.gguf").write_bytes(b"")
    bundle = tmp_path / "bench-tinyllama-1.1b-Q4_0-sm_90"
    bundle.mkdir()
    check = ["python", "gpu_check.py", "--target", "sm_90"]
    cmds = dict(gpu_session.sanitize_commands(tmp_path, bundle, check))
    assert set(cmds) == {"fixtures", bundle.name, "racecheck"}
    for name, cmd in cmds.items():
        assert Path(cmd[0]).name == "compute-sanitizer"
        tool = "racecheck" if name == "racecheck" else "memcheck"
        assert cmd[1:5] == ["--tool", tool, "--error-exitcode", "9"]
    # racecheck (shared memory between a block's threads) over the dense fixture's checks alone
    assert cmds["racecheck"][5:] == [*check, "--decode", "8", str(tmp_path / "tiny-llama-Q4_K_M.gguf")]
    models = [Path(a).stem.removeprefix("tiny-") for a in cmds["fixtures"] if a.endswith(".gguf")]
    assert models == list(gpu_session.SANITIZE_FIXTURES)  # the three kinds, not every fixture
    assert cmds["fixtures"][5:9] == check
    assert cmds[bundle.name][-3:-1] == ["_steps", str(bundle)]  # a 512-token prefill and a graph step
    # no benchmark bundle (its phase failed): the fixtures alone
    names = [n for n, _ in gpu_session.sanitize_commands(tmp_path, tmp_path / "absent", check)]
    assert names == ["fixtures", "racecheck"]


def test_the_logs_come_back_as_one_tarball_even_when_the_run_fails(tmp_path, monkeypatch):
    import tarfile

    logs = tmp_path / "logs"

    def failing_run(*args, **kwargs):
        logs.mkdir()
        (logs / "rfc-bench.log").write_text("half a phase\n")
        raise KeyboardInterrupt  # a timeout's signal, say

    monkeypatch.setattr(gpu_session, "run", failing_run)
    pack = tmp_path / "out" / "logs.tgz"
    try:
        gpu_session.main(["run", str(tmp_path / "peer"), "--logs", str(logs), "--pack", str(pack)])
    except KeyboardInterrupt:
        pass
    with tarfile.open(pack) as t:
        assert t.getnames() == ["logs", "logs/rfc-bench.log"]


def test_ncu_detail_profiles_the_first_launches_of_the_named_kernels_in_the_profiled_steps(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_experiment", ROOT / "tools" / "gpu_experiment.py")
    gpu_experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_experiment)
    bundle = tmp_path / "bench-llama3-8b-Q4_K_M-sm_90"
    cmd = gpu_experiment.ncu_detail_command(bundle, tmp_path / "lists.json", "rfc_matmul_imma_.*14336", 4)
    assert cmd[0] == "ncu" and cmd[cmd.index("--kernel-name") + 1] == "regex:rfc_matmul_imma_.*14336"
    assert cmd[cmd.index("--launch-count") + 1] == "4"
    sections = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--section"]
    assert sections == list(gpu_experiment.NCU_SECTIONS) and "Occupancy" in sections
    assert cmd[-3:] == ["_steps", str(bundle), str(tmp_path / "lists.json")]  # the same steps as `ncu`


def test_each_ncu_detail_regex_gets_its_own_ncu_run_and_folder(tmp_path, monkeypatch):
    seen = {}

    def fake_run(*args):
        seen["ncu_detail"] = args[-1]
        return 0

    monkeypatch.setattr(gpu_session, "run", fake_run)
    regexes = ["rfc_matmul_.*_t1", "rfc_matmul_imma_.*14336"]
    argv = ["run", str(tmp_path / "peer"), "--logs", str(tmp_path / "logs")]
    assert gpu_session.main(argv + [a for r in regexes for a in ("--ncu-detail", r)]) == 0
    assert seen["ncu_detail"] == tuple(regexes)

    runs = []
    monkeypatch.setattr(gpu_session, "_checked_run", lambda cmd, env, log, timeout: runs.append((cmd, log)) or 0)
    monkeypatch.setattr(gpu_session, "_phase", lambda name, deadline: 600.0)
    rfc = {"bench": [{"gguf": str(tmp_path / "bench-tinyllama.gguf")}, {"gguf": str(tmp_path / "bench-8b.gguf")}]}
    status = gpu_session._extra_phases(
        rfc, tmp_path / "out", "sm_90", tmp_path, {}, 0.0, tmp_path / "fixtures", [], (), False, False,
        True, "", 0.5, tuple(regexes),
    )  # fmt: skip
    ncu = [(cmd, log) for cmd, log in runs if "ncu-detail" in cmd]
    assert [cmd[cmd.index("--kernel") + 1] for cmd, _ in ncu] == regexes
    assert all(cmd[cmd.index("ncu-detail") + 1] == str(tmp_path / "out" / "bench-8b-sm_90") for cmd, _ in ncu)
    outs = [cmd[cmd.index("--out") + 1] for cmd, _ in ncu]
    assert len(set(outs)) == 2 and len({log for _, log in ncu}) == 2  # one run does not overwrite the other's
    assert status == 0


def test_each_benchmark_bundle_gets_a_batch_1_step_profile(tmp_path):
    """After the table, tools/gpu_profile.py on every benchmark bundle that was built, at batch 1
    and the variants' 33-token context, on the card's device; none for a bundle that is not there."""
    small, large = tmp_path / "bench-tinyllama-1.1b-Q4_0-sm_90", tmp_path / "bench-llama3-8b-Q4_K_M-sm_90"
    small.mkdir()
    cmds = dict(gpu_session.step_profile_commands([small, large], "sm_90"))
    assert list(cmds) == [small.name]
    cmd = cmds[small.name]
    assert Path(cmd[1]).name == "gpu_profile.py" and cmd[2] == str(small)
    assert cmd[cmd.index("--device") + 1] == "cuda" and cmd[cmd.index("--batch") + 1] == "1"
    assert cmd[cmd.index("--context") + 1] == "32"
    large.mkdir()
    hip = dict(gpu_session.step_profile_commands([small, large], "gfx90a"))
    assert list(hip) == [small.name, large.name]
    assert all(c[c.index("--device") + 1] == "hip" for c in hip.values())


def test_the_served_step_of_each_profile_goes_under_the_table_with_its_ratio(tmp_path):
    """served_rates reads each step profile's served batch-1 step (gpu_profile.py's line) and
    divides it by llama-bench's tg128 on the same GGUF, and the steps queued ahead beside it where
    the profile timed them; a profile without the line (it failed)
    and a model llama-bench did not run give no ratio."""
    line = "served step (tokens chosen on the device): median {ms} ms, {rate} tok/s; its graph with ..."
    queued = "served steps queued ahead (each fed the ids of the step before, ...): 0.900 ms a step, 1111.1 tok/s; ..."
    (tmp_path / "step-profile-bench-tinyllama-1.1b-Q4_0-sm_90.log").write_text(
        "loading\n" + line.format(ms="1.000", rate="1000.0") + "\n" + queued + "\n"
    )
    (tmp_path / "step-profile-bench-llama3-8b-Q4_K_M-sm_90.log").write_text(line.format(ms="4.000", rate="250.0"))
    (tmp_path / "step-profile-other-sm_90.log").write_text("Traceback: out of memory\n")
    llama = [
        {"model_filename": "/g/bench-tinyllama-1.1b-Q4_0.gguf", "n_prompt": 512, "n_gen": 0, "avg_ts": 39000.0},
        {"model_filename": "/g/bench-tinyllama-1.1b-Q4_0.gguf", "n_prompt": 0, "n_gen": 128, "avg_ts": 800.0},
    ]
    text = gpu_session.served_rates(tmp_path, llama)
    lines = [x for x in text.splitlines() if x.startswith("- ")]
    assert lines == [
        "- bench-llama3-8b-Q4_K_M-sm_90: the served batch-1 step alone 250.0 tok/s (4.000 ms)",
        "- bench-tinyllama-1.1b-Q4_0-sm_90: the served batch-1 step alone 1,000.0 tok/s (1.000 ms), "
        "**1.25x** llama.cpp's tg128; queued ahead as the engine serves decode 1,111.1 tok/s (0.900 ms), **1.39x**",
    ]
    assert gpu_session.served_rates(tmp_path / "absent", llama) == ""


def test_a_follow_up_finds_the_first_calls_llama_build(tmp_path):
    """The newest llama-peer-*/build whose llama-bench was built (bench.done), where a follow-up
    resumes llama-server's build; none where no build got that far."""
    assert gpu_session.previous_llama_build(tmp_path) is None
    unfinished = tmp_path / "llama-peer-a" / "build"
    unfinished.mkdir(parents=True)
    assert gpu_session.previous_llama_build(tmp_path) is None
    old, new = tmp_path / "llama-peer-b" / "build", tmp_path / "llama-peer-c" / "build"
    for i, build in enumerate((old, new)):
        build.mkdir(parents=True)
        (build / "bench.done").touch()
        os.utime(build / "bench.done", (1000 + i, 1000 + i))
    assert gpu_session.previous_llama_build(tmp_path) == new


def test_the_encoder_phase_runs_every_encoders_llama_cpp_files_on_the_card(tmp_path):
    """Every architecture whose tests/data/llama-archs files are encoders (hidden states recorded) is
    in ENCODER_ARCHS, and the phase's command builds them for the card and runs them on its device."""
    from tests.e2e.test_llama_archs import archs as llama_archs

    encoders = {llama_archs.arch_of(d) for d in map(llama_archs.load, llama_archs.names()) if d.get("encoder")}
    assert set(gpu_session.ENCODER_ARCHS) == encoders
    cmd = gpu_session.encoder_command("sm_90", tmp_path, 100.0)
    assert Path(cmd[1]).name == "llama_archs.py" and cmd[2:5] == ["--devices", "cuda@sm_90", "--strict"]
    assert cmd[cmd.index("--time-limit") + 1] == "100.0"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--arch"] == list(gpu_session.ENCODER_ARCHS)
    assert gpu_session.encoder_command("gfx90a", tmp_path, 0)[3] == "hip@gfx90a"


def test_the_encoder_phase_fails_unless_every_file_matches():
    """llama_archs.py --strict, the phase's exit status: 0 when every file run matches llama.cpp on the
    devices asked for, 1 when one does not run there (here a device that does not exist)."""
    tool = [sys.executable, str(ROOT / "tools" / "fixtures" / "llama_archs.py"), "--arch", "t5encoder", "--strict"]
    ok = subprocess.run([*tool, "--devices", "ref"], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0 and ok.stdout.count("| match |") == 6, ok.stdout + ok.stderr  # rows, then the table
    bad = subprocess.run([*tool, "--devices", "nowhere@ref"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "| match |" not in bad.stdout, bad.stdout + bad.stderr
