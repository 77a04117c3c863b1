"""Device selection: a bundle target that matches this machine, else the numpy reference."""

import sys
from dataclasses import dataclass

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.plan import KVSpec
from rfc.artifacts.targets import TargetError, parse_target


class DeviceError(Exception):
    """No usable device, or a device failed; the message names what was looked for."""


@dataclass(frozen=True)
class DeviceChoice:
    name: str  # "ref", "cpu", "hip", "cuda"
    target: str | None  # the bundle target it runs ("cpu", "gfx1100", "sm_90"), None for ref


def choose_device(bundle: Bundle, requested: str = "auto") -> DeviceChoice:
    """The device to run on: a GPU target this machine has, else the best CPU variant it
    supports (highest rank: cpu-avx512 over cpu over cpu-generic), else the reference."""
    entries = bundle.manifest["targets"]
    targets = [t.get("name") for t in entries]
    if requested == "ref":
        return DeviceChoice("ref", None)
    if requested not in ("auto", "cpu", "hip", "cuda"):
        raise DeviceError(f"unknown device '{requested}' (expected auto, ref, cpu, hip or cuda)")
    wanted = ("hip", "cuda", "cpu") if requested == "auto" else (requested,)
    known = []
    for t in entries:
        try:
            known.append(parse_target(t.get("name")))
        except TargetError:
            continue  # a target this rfc does not know (a newer bundle): never chosen
    for family in wanted:
        candidates = sorted((t for t in known if t.family.value == family), key=lambda t: -t.rank)
        for t in candidates:
            if _compiled(bundle, t.name) and _present(family, t.name):
                return DeviceChoice(family, t.name)
    if requested == "auto":
        why = (f"no compiled target of this bundle ({', '.join(map(str, targets))}) runs on this machine" if targets
               else "this bundle has no compiled kernels (--reference-only)")
        print(f"rfc: warning: {why}; using the numpy reference device (slow)", file=sys.stderr)
        return DeviceChoice("ref", None)
    reasons = [f"{t.name}: {probe_reason(t.family.value, t.name) or 'not compiled'}" for t in known if t.family.value in wanted]
    raise DeviceError(
        f"device '{requested}' requested, but no bundle target can run it here "
        f"(bundle targets: {', '.join(map(str, targets))}{'; ' + '; '.join(reasons) if reasons else ''})"
    )


def _compiled(bundle: Bundle, target: str) -> bool:
    entry = next(t for t in bundle.manifest["targets"] if t["name"] == target)
    return bool(entry.get("kernels"))


# Each compiled family's module exposes `probe(target) -> str | None` (None when the machine
# can run that target, else the reason it cannot) and a `Device` class with ReferenceDevice's
# interface, constructed as Device(bundle, target, kv, num_blocks, block_size).
_FAMILY_MODULES = {"cpu": "rfc.runtime.devices.cpu", "hip": "rfc.runtime.devices.hip", "cuda": "rfc.runtime.devices.cuda"}


def _module(family: str):
    import importlib

    return importlib.import_module(_FAMILY_MODULES[family])


def _present(family: str, target: str) -> bool:
    try:
        return _module(family).probe(target) is None
    except ImportError:
        return False


def probe_reason(family: str, target: str) -> str | None:
    try:
        return _module(family).probe(target)
    except ImportError as e:
        return f"{family} device support is not installed ({e})"


def create_device(choice: DeviceChoice, bundle: Bundle, kv: KVSpec, num_blocks: int, block_size: int,
                  context_length: int | None = None):
    """`context_length`: the longest sequence served (--ctx-size; default the plan's), which
    bounds the block tables a device sizes ahead of the batches."""
    if choice.name == "ref":
        from rfc.runtime.devices.reference import ReferenceDevice

        return ReferenceDevice(bundle, kv, num_blocks, block_size)
    return _module(choice.name).Device(bundle, choice.target, kv, num_blocks, block_size, context_length=context_length)


# -- memory, for sizing the KV pool from a budget (runtime/kv_budget.py) -------------------------


def gpu_memory_info(choice: DeviceChoice) -> tuple[int, int]:
    """(free, total) bytes of the GPU that `choice` runs on, from its driver."""
    return _module(choice.name).memory_info(choice.target)


def gpu_resident_bytes(bundle: Bundle, target: str) -> int:
    """Device bytes a GPU device keeps besides its KV cache: the weights and the step
    program's activation arena (sized at compile time)."""
    from rfc.artifacts.program import unpack_program
    from rfc.runtime.devices.gpu_args import target_entry

    entry = target_entry(bundle, target)
    arena = unpack_program(bundle.file(entry["program"]).read_bytes()).arena.total_bytes if "program" in entry else 0
    from rfc.runtime.devices.gpu import device_weight_bytes

    return device_weight_bytes(bundle, entry) + arena
