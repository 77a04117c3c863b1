"""`rfc serve model.gguf` / `rfc run model.gguf` without --arch compile for this host: its GPUs
(sm_XY from the NVIDIA driver, gfx* from the amdgpu KFD topology) and its best CPU variant.
Each host here is faked: a /proc/cpuinfo, a KFD topology tree, a driver answer and a PATH."""

from pathlib import Path

import pytest

from rfc.cli.gguf_cache import CompileRequest, cache_key
from rfc.cli.host_targets import HostProbe, best_cpu, compile_hint, gfx_name, host_targets, kfd_archs

V3 = "fpu sse sse2 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"
VNNI = V4 + " avx512_vnni"
AMX = VNNI + " amx_tile amx_int8 amx_bf16"


def _host(
    tmp_path: Path,
    flags: str,
    *,
    cuda=(),
    gfx_versions=(),
    programs=("nvcc", "hipcc"),
    amx=True,
    machine="x86_64",
    system="Linux",
) -> HostProbe:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    nodes = tmp_path / "nodes"
    for i, version in enumerate((0, *gfx_versions)):  # node 0: the CPU, as KFD lists it
        (nodes / str(i)).mkdir(parents=True, exist_ok=True)
        (nodes / str(i) / "properties").write_text(
            f"cpu_cores_count 16\nsimd_count 0\ngfx_target_version {version}\nvendor_id 4098\n"
        )
    return HostProbe(
        cpuinfo=cpuinfo,
        kfd_nodes=nodes,
        machine=lambda: machine,
        system=lambda: system,
        cuda_archs=lambda: tuple(cuda),
        amx_granted=lambda: amx,
        has_program=lambda p: p in programs,
    )


@pytest.mark.parametrize(
    ("flags", "amx", "expected"),
    [
        (AMX, True, "cpu-amx"),
        (AMX, False, "cpu-avx512"),  # the OS refuses the tile state: the next variant down
        (VNNI, True, "cpu-avx512"),
        (V4, True, "cpu"),  # AVX-512 without VNNI is not cpu-avx512
        (V3, True, "cpu"),
        ("fpu sse sse2", True, "cpu-generic"),
    ],
)
def test_the_best_cpu_variant_the_host_runs(tmp_path, flags, amx, expected):
    assert best_cpu(_host(tmp_path, flags, amx=amx)) == expected


def test_another_machine_keeps_the_portable_default(tmp_path):
    assert best_cpu(_host(tmp_path, AMX, machine="aarch64")) == "cpu"
    assert best_cpu(_host(tmp_path, AMX, system="Darwin")) == "cpu"
    unreadable = HostProbe(
        cpuinfo=tmp_path / "absent",
        kfd_nodes=tmp_path / "absent",
        machine=lambda: "x86_64",
        system=lambda: "Linux",
        cuda_archs=lambda: (),
        amx_granted=lambda: True,
    )
    assert host_targets(unreadable).targets == ("cpu-generic",)


def test_an_nvidia_host_builds_its_gpu_and_its_cpu(tmp_path):
    host = host_targets(_host(tmp_path, VNNI, cuda=("sm_90", "sm_90")))
    assert host.targets == ("sm_90", "cpu-avx512")
    assert "sm_90" in host.describe() and "cpu-avx512" in host.describe()


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (90010, "gfx90a"),
        (90402, "gfx942"),
        (110000, "gfx1100"),
        (100300, "gfx1030"),
        (120001, "gfx1201"),
        (0, None),
        (91600, None),
    ],
)
def test_kfd_target_versions_name_gfx_targets(version, name):
    assert gfx_name(version) == name


def test_an_amd_host_builds_each_gfx_found(tmp_path):
    host = host_targets(_host(tmp_path, AMX, gfx_versions=(90402, 90402, 110000)))
    assert host.targets == ("gfx942", "gfx1100", "cpu-amx")


def test_a_gpu_without_its_toolchain_is_left_out_and_said(tmp_path):
    host = host_targets(_host(tmp_path, V3, cuda=("sm_80",), programs=()))
    assert host.targets == ("cpu",) and host.gpus == ("sm_80",)
    assert "nvcc is not on PATH" in host.describe()


def test_kfd_properties_are_read_as_untrusted(tmp_path):
    nodes = tmp_path / "nodes"
    (nodes / "0").mkdir(parents=True)
    (nodes / "0" / "properties").write_text("gfx_target_version 99999999999\n")  # too long: ignored
    (nodes / "1").mkdir()
    (nodes / "1" / "properties").write_text("gfx_target_version gfx90a; rm -rf /\n")
    (nodes / "2").mkdir()  # no properties file
    assert kfd_archs(nodes) == ()
    assert kfd_archs(tmp_path / "no-such-dir") == ()


def test_the_cache_key_holds_the_detected_targets(tmp_path):
    """A cache shared by two kinds of host never hands one the other's bundle."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    avx512 = host_targets(_host(tmp_path / "a", VNNI))
    h100 = host_targets(_host(tmp_path / "b", VNNI, cuda=("sm_90",)))
    keys = {cache_key(CompileRequest(Path("m.gguf"), host.targets), "a" * 64) for host in (avx512, h100)}
    keys.add(cache_key(CompileRequest(Path("m.gguf")), "a" * 64))  # the portable cpu
    assert len(keys) == 3


def test_compile_says_its_portable_choice_and_the_hosts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    line = compile_hint(host_targets(_host(tmp_path / "a", VNNI, cuda=("sm_90",))))
    assert (
        "built for cpu (x86-64-v3" in line and "--arch sm_90 --arch cpu-avx512" in line and "--arch cpu to keep" in line
    )
    assert "--arch" not in compile_hint(host_targets(_host(tmp_path / "b", V3))).replace("no --arch", "")
