"""The GPU kernels' arguments: what this runtime packs for each op, and the load-time check
of a bundle's kernels against it and against the code object.

ARGS is this runtime's half of the contract whose compiler half is
rfc.compiler.codegen.gpu_plan.KERNEL_ARGS; the manifest's `kernel_args` (name, size,
offset per argument, read by the compiler from the code object it built) must agree with
both, and the code object itself is read again here. Any difference is a DeviceError
naming the kernel and the argument.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.plan import Op
from rfc.runtime.devices import DeviceError
from rfc.artifacts.codeobject import KernelInfo

PTR, I32 = "ptr", "i32"
SIZES = {PTR: 8, I32: 4}


@dataclass(frozen=True)
class Call:
    """One launch's operands, what the argument getters read."""

    outs: list
    ins: list
    weights: list
    batch: Any  # rfc.runtime.devices.gpu.DeviceBatch
    k_cache: int
    v_cache: int


def _rows(c: Call) -> int:
    return (c.outs or c.ins)[0].shape[0]


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # PTR or I32
    get: Callable[[Call], Any]  # a DeviceArray, a device address or an int
    only_with_weight: bool = False  # present only when the op has a weight (rope's freq factors)


# The arguments of each op kind's kernels, in order: this runtime's half of the contract
# whose compiler half is rfc.compiler.codegen.gpu_plan.KERNEL_ARGS.
ARGS: dict[str, tuple[Arg, ...]] = {
    "embed": (Arg("out", PTR, lambda c: c.outs[0]), Arg("tokens", PTR, lambda c: c.ins[0]),
              Arg("weight", PTR, lambda c: c.weights[0]), Arg("n_rows", I32, _rows)),
    "rmsnorm": (Arg("out", PTR, lambda c: c.outs[0]), Arg("x", PTR, lambda c: c.ins[0]),
                Arg("weight", PTR, lambda c: c.weights[0]), Arg("n_rows", I32, _rows)),
    "matmul": (Arg("out", PTR, lambda c: c.outs[0]), Arg("x", PTR, lambda c: c.ins[0]),
               Arg("weight", PTR, lambda c: c.weights[0]), Arg("n_rows", I32, _rows)),
    "add_bias": (Arg("out", PTR, lambda c: c.outs[0]), Arg("x", PTR, lambda c: c.ins[0]),
                 Arg("bias", PTR, lambda c: c.weights[0]), Arg("n_rows", I32, _rows)),
    "rope": (Arg("q", PTR, lambda c: c.outs[0]), Arg("k", PTR, lambda c: c.outs[1]),
             Arg("positions", PTR, lambda c: c.batch.positions),
             Arg("freq_factors", PTR, lambda c: c.weights[0], only_with_weight=True), Arg("n_rows", I32, _rows)),
    "kv_write": (Arg("k_cache", PTR, lambda c: c.k_cache), Arg("v_cache", PTR, lambda c: c.v_cache),
                 Arg("k", PTR, lambda c: c.ins[0]), Arg("v", PTR, lambda c: c.ins[1]),
                 Arg("slots", PTR, lambda c: c.batch.slots), Arg("n_rows", I32, _rows)),
    "attention": (Arg("out", PTR, lambda c: c.outs[0]), Arg("q", PTR, lambda c: c.ins[0]),
                  Arg("k_cache", PTR, lambda c: c.k_cache), Arg("v_cache", PTR, lambda c: c.v_cache),
                  Arg("positions", PTR, lambda c: c.batch.positions),
                  Arg("seq_of_token", PTR, lambda c: c.batch.seq_of_token),
                  Arg("block_tables", PTR, lambda c: c.batch.block_tables), Arg("n_rows", I32, _rows),
                  Arg("table_width", I32, lambda c: c.batch.table_width),
                  Arg("block_size", I32, lambda c: c.batch.block_size)),
    "swiglu": (Arg("out", PTR, lambda c: c.outs[0]), Arg("gate", PTR, lambda c: c.ins[0]),
               Arg("up", PTR, lambda c: c.ins[1]), Arg("n_rows", I32, _rows)),
    "add": (Arg("out", PTR, lambda c: c.outs[0]), Arg("a", PTR, lambda c: c.ins[0]),
            Arg("b", PTR, lambda c: c.ins[1]), Arg("n_rows", I32, _rows)),
    "gather_rows": (Arg("out", PTR, lambda c: c.outs[0]), Arg("x", PTR, lambda c: c.ins[0]),
                    Arg("rows", PTR, lambda c: c.batch.logit_rows), Arg("n_rows", I32, _rows)),
    "softcap": (Arg("out", PTR, lambda c: c.outs[0]), Arg("x", PTR, lambda c: c.ins[0]), Arg("n_rows", I32, _rows)),
    "moe_route": (Arg("ids", PTR, lambda c: c.outs[0]), Arg("weights", PTR, lambda c: c.outs[1]),
                  Arg("logits", PTR, lambda c: c.ins[0]), Arg("n_rows", I32, _rows)),
    "moe_matmul": (Arg("out", PTR, lambda c: c.outs[0]), Arg("x", PTR, lambda c: c.ins[0]),
                   Arg("ids", PTR, lambda c: c.ins[1]), Arg("weight", PTR, lambda c: c.weights[0]),
                   Arg("n_rows", I32, _rows)),
    "moe_combine": (Arg("out", PTR, lambda c: c.outs[0]), Arg("y", PTR, lambda c: c.ins[0]),
                    Arg("weights", PTR, lambda c: c.ins[1]), Arg("n_rows", I32, _rows)),
}


def op_args(op: Op) -> tuple[Arg, ...]:
    """The arguments this runtime packs for `op`."""
    if op.kind not in ARGS:
        raise DeviceError(f"no GPU kernel arguments known for op kind {op.kind!r}")
    return tuple(a for a in ARGS[op.kind] if op.weights or not a.only_with_weight)


def op_key(op: Op) -> tuple:
    """Identifies an op by content (Op holds a dict, so it is not hashable itself)."""
    return (op.kind, op.inputs, op.outputs, op.weights, tuple(sorted(op.attrs.items())))


def target_entry(bundle: Bundle, target: str) -> dict:
    for t in bundle.manifest["targets"]:
        if t["name"] == target:
            return t
    raise DeviceError(f"bundle {bundle.root} has no target {target}")


# -- load-time checks ---------------------------------------------------------------------------


def check_kernels(bundle: Bundle, entry: dict, code: dict[str, KernelInfo]) -> dict[str, tuple[Arg, ...]]:
    """Checks the bundle's kernels against this runtime and the code object; returns, per
    kernel, the arguments to pack. Raises DeviceError naming the first mismatch."""
    where = f"bundle target {entry['name']}"
    for field in ("kernels", "kernel_args", "launch", "op_kernels"):
        if field not in entry:
            raise DeviceError(f"{where}: the manifest has no {field!r} (a bundle from another rfc version?)")
    ops, names = bundle.plan.ops, entry["op_kernels"]
    if len(names) != len(ops):
        raise DeviceError(f"{where}: {len(names)} op kernels for {len(ops)} plan ops")
    packing: dict[str, tuple[Arg, ...]] = {}
    for i, (op, name) in enumerate(zip(ops, names)):
        args = op_args(op)
        if name in packing:
            if [a.name for a in packing[name]] != [a.name for a in args]:
                raise DeviceError(f"kernel {name} runs ops of different signatures (op {i}, {op.kind})")
            continue
        _check_manifest_args(where, name, f"op {i} ({op.kind})", args, entry["kernel_args"].get(name))
        check_code_object_args(where, name, entry["kernel_args"][name], code.get(name))
        _check_launch(where, name, entry["launch"].get(name), args, code[name], entry.get("wave_size"))
        packing[name] = args
    return packing


def _check_manifest_args(where: str, kernel: str, op: str, args: tuple[Arg, ...], declared) -> None:
    if declared is None:
        raise DeviceError(f"{where}: kernel {kernel} ({op}) has no argument layout in the manifest")
    for j in range(max(len(args), len(declared))):
        want = (args[j].name, SIZES[args[j].kind]) if j < len(args) else None
        got = (declared[j][0], declared[j][1]) if j < len(declared) else None
        if want != got:
            raise DeviceError(
                f"{where}: kernel {kernel} ({op}) argument {j}: the bundle declares "
                f"{_describe(got)}, this runtime packs {_describe(want)}"
            )


def check_code_object_args(where: str, kernel: str, declared: list, info: KernelInfo | None) -> None:
    if info is None:
        raise DeviceError(f"{where}: kernel {kernel} is not in the code object")
    if len(info.args) != len(declared):
        raise DeviceError(f"{where}: kernel {kernel} takes {len(info.args)} arguments in the code object, {len(declared)} in the manifest")
    for j, (arg, (name, size, offset)) in enumerate(zip(info.args, declared)):
        if (arg.size, arg.offset) != (size, offset) or (arg.name is not None and arg.name != name):
            raise DeviceError(
                f"{where}: kernel {kernel} argument {j} ({name}): the code object has "
                f"{arg.name or '?'} ({arg.size} bytes at offset {arg.offset}), the manifest "
                f"{name} ({size} bytes at offset {offset})"
            )


def _check_launch(where: str, kernel: str, launch, args: tuple[Arg, ...], info: KernelInfo, wave: int | None) -> None:
    if launch is None:
        raise DeviceError(f"{where}: kernel {kernel} has no launch geometry in the manifest")
    scalars = {a.name for a in args if a.kind == I32}
    for count, tile in launch["grid"]:
        if isinstance(count, str) and count not in scalars:
            raise DeviceError(f"{where}: kernel {kernel}'s grid counts {count!r}, not an integer argument")
        if not isinstance(tile, int) or tile < 1:
            raise DeviceError(f"{where}: kernel {kernel}'s grid tile {tile!r} is not a positive integer")
    if info.max_threads is not None and launch["threads"] > info.max_threads:
        raise DeviceError(f"{where}: kernel {kernel} launches {launch['threads']} threads, built for at most {info.max_threads}")
    if info.wave_size is not None and wave is not None and info.wave_size != wave:
        raise DeviceError(f"{where}: kernel {kernel} was built for wave {info.wave_size}, the target says {wave}")


def _describe(arg) -> str:
    return "nothing" if arg is None else f"{arg[0]} ({arg[1]} bytes)"
