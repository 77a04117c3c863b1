"""Identities as typed values, not strings: a manifest's target entries read
into TargetEntry, op kinds as OpKind, the devices as DeviceKind; every device declares what
the engine reads of it (runtime.core.device.Device)."""

import msgpack
import pytest

from rfc.artifacts.errors import BundleError
from rfc.artifacts.plan import OPS, Op, OpKind, pack_plan, unpack_plan
from rfc.artifacts.targets import Family, KernelArg, TargetEntry, TargetError, target_entries, target_entry
from rfc.runtime.devices import DeviceKind
from rfc.runtime.devices.cpu_step import CpuStepDevice
from rfc.runtime.devices.gpu import GpuDevice
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.core.device import Device
from rfc.runtime.engine.executor import Executor

GPU_ENTRY = {
    "name": "sm_90",
    "family": "cuda",
    "wave_size": 32,
    "kernels": "kernels/sm_90/rfc.cubin",
    "program": "kernels/sm_90/program.msgpack",
    "sources": ["kernels/sm_90/rfc.cu"],
    "kernel_args": {"k": [["out", 8, 0], ["n_rows", 4, 8]]},
    "op_kernels": ["k"],
    "launch": {},
}


def test_a_target_entry_reads_typed_fields():
    e = TargetEntry.parse(GPU_ENTRY)
    assert (e.name, e.family, e.wave_size, e.kernels, e.program) == (
        "sm_90",
        Family.CUDA,
        32,
        GPU_ENTRY["kernels"],
        GPU_ENTRY["program"],
    )
    assert e.kernel_args == {"k": (KernelArg("out", 8, 0), KernelArg("n_rows", 4, 8))} and e.op_kernels == ("k",)
    cpu = TargetEntry.parse({"name": "cpu", "family": "cpu", "kernels": "kernels/cpu/librfc_cpu.so", "abi_version": 2})
    assert cpu.family is Family.CPU and not cpu.family.is_gpu and cpu.abi_version == 2 and cpu.kernel_args == {}


@pytest.mark.parametrize(
    "bad,message",
    [
        ({**GPU_ENTRY, "family": "hip"}, "says family 'hip'"),
        ({**GPU_ENTRY, "kernels": 7}, "kernels is not a str"),
        ({**GPU_ENTRY, "sources": "rfc.cu"}, "sources is not a list"),
        ({**GPU_ENTRY, "kernel_args": {"k": [["out", 8]]}}, "kernel_args of k"),
        ({**GPU_ENTRY, "abi_version": True}, "abi_version is not a int"),
    ],
)
def test_a_malformed_target_entry_is_a_bundle_error(bad, message):
    with pytest.raises(BundleError, match=message):
        TargetEntry.parse(bad)


def test_targets_this_rfc_does_not_know_are_left_out():
    manifest = {"targets": [{"name": "tpu_v9", "family": "tpu"}, GPU_ENTRY]}
    with pytest.raises(TargetError):
        TargetEntry.parse(manifest["targets"][0])
    assert [e.name for e in target_entries(manifest)] == ["sm_90"]
    assert target_entry(manifest, "sm_90").name == "sm_90" and target_entry(manifest, "gfx1100") is None


def test_op_kinds_are_typed_and_plans_keep_their_bytes():
    op = Op("matmul", ("x",), ("y",), ("w",))
    assert op.kind is OpKind.MATMUL and op.kind == "matmul" and f"{op.kind}" == "matmul"
    assert set(OPS) == set(OpKind) and OPS["matmul"] is OPS[OpKind.MATMUL]
    assert msgpack.packb(op.kind) == msgpack.packb("matmul")
    with pytest.raises(ValueError):
        Op("convolve", ("x",), ("y",))


def test_a_plan_with_an_unknown_op_kind_is_refused():
    from rfc.artifacts.plan import Buffer, KVSpec, Plan

    buffers = (Buffer("tokens", ("T",), "i32"), Buffer("x", ("R", 4)), Buffer("y", ("R", 4)))
    plan = Plan(buffers, (Op("add", ("x", "x"), ("y",)),), KVSpec(1, 1, 4), "tokens", "y", "y", 4, 4, 16)
    raw = msgpack.unpackb(pack_plan(plan))
    assert unpack_plan(msgpack.packb(raw)).ops[0].kind is OpKind.ADD
    raw["ops"][0]["kind"] = "convolve"
    with pytest.raises(BundleError, match="convolve.*is not an op this runtime knows"):
        unpack_plan(msgpack.packb(raw))


def test_device_kinds_read_as_their_names():
    assert [str(k) for k in DeviceKind] == ["ref", "cpu", "hip", "cuda"] and DeviceKind.CPU == "cpu"
    assert [k for k in DeviceKind if k.is_gpu] == [DeviceKind.HIP, DeviceKind.CUDA]
    assert DeviceKind.REF.family is None and DeviceKind.CUDA.family is Family.CUDA


@pytest.mark.parametrize("cls", [ReferenceDevice, CpuStepDevice, GpuDevice, Executor])
def test_every_device_declares_what_the_engine_reads(cls):
    """The members of the Device protocol exist on the class itself (defaults declared), not
    only once an instance sets them."""
    members = {
        "samples_on_device",
        "host_sampling",
        "forward",
        "forward_hidden",
        "forward_scores",
        "forward_sampled",
        "runs_ahead",
        "launch_sampled",
        "copies_kv",
        "copy_kv",
        "copies_state",
        "copy_state",
    }
    for member in sorted(members):
        assert hasattr(cls, member), f"{cls.__name__} lacks {member}"
    assert {m for m in vars(Device) if not m.startswith("_")} == members
