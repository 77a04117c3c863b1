"""Overlapped launches: a step program's kernels started while the kernel before them runs.

At batch 1 a decode step is a chain of short kernels, each waiting for the one before to end
and then for its own launch and its first memory round trip. On targets with programmatic
dependent launch (`Target.grid_dependency`: sm_90 and newer) the runtime launches every kernel of
the step program but the first with CUDA's programmatic stream serialization, so it may start
while the kernel before still runs; each kernel then does only what needs nothing from the kernels
before (asking its weight rows into L2) and calls RFC_GRID_WAIT() (kernels/rfc_gpu.h), which
waits until the kernel before has finished and its writes are visible and lets the next kernel be
launched. A kernel that wrote or read an activation before that call would race with the kernel
before it, so the compiler refuses such a source (check_grid_wait) and only then marks the
program (`StepProgram.extra["programmatic"]`, naming the lists whose launches overlap:
OVERLAPPED_LISTS): a runtime without the mark, or a driver without
the launch, launches one kernel after another, the same kernels computing the same bits.

Every kernel waits, so a kernel's finish implies that of every kernel before it: the kernel
after next cannot overtake either.
"""

import re

from rfc.artifacts.program import EXTRA_PROGRAMMATIC
from rfc.compiler.errors import CompileError
from rfc.compiler.targets import Target

# The switch (an A/B on a card: `--variant "gpu_overlap.PROGRAMMATIC_LAUNCH=False"`, which gives
# the previous launches and, the wait being empty then, the previous instructions).
PROGRAMMATIC_LAUNCH = True
PROGRAM_FLAG = EXTRA_PROGRAMMATIC  # the step program's extra key the runtime reads
# The lists whose launches overlap: the decode lists (the batch list is one). Not the prefill list: on an H100 a 1.1B's
# 512-token prefill step took 16.97 ms with it overlapped and 15.90 ms without (6% slower,
# docs/benchmarks.md), where its decode step moved by 0.5%; a prefill kernel's blocks started
# early hold multiprocessors that the kernel before still needs.
OVERLAPPED_LISTS = ("launches", "single_launches", "batch_launches")
WAIT = "RFC_GRID_WAIT();"

_KERNEL = re.compile(r"RFC_KERNEL(?:_BLOCKS)?\([^)]*\)[^(]*?\bvoid\s+(\w+)\s*\(")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_WORD = re.compile(r"[A-Za-z_]\w*")


def programmatic(target: Target) -> bool:
    """Whether `target`'s step program is built for overlapped launches."""
    return PROGRAMMATIC_LAUNCH and target.grid_dependency


def check_grid_wait(source: str, kernel: str, free: set[str]) -> None:
    """Refuses `kernel` in `source` unless its body calls RFC_GRID_WAIT() at its top level before
    anything but declarations, scalars and the parameters in `free` (its weights and scalars):
    no other parameter named, no return, no barrier before it."""
    m = next((m for m in _KERNEL.finditer(source) if m.group(1) == kernel), None)
    if m is None:
        raise CompileError(f"kernel {kernel}: no RFC_KERNEL definition in its source")
    close = _matching(source, m.end() - 1, "(", ")")
    params = [p.strip() for p in source[m.end() : close].split(",")]
    names = {_WORD.findall(p)[-1] for p in params if _WORD.findall(p)}
    start = source.index("{", close)
    body = _COMMENT.sub(" ", source[start + 1 : _matching(source, start, "{", "}")])
    at, depth = -1, 0
    for i, c in enumerate(body):
        if c in "{(":
            depth += 1
        elif c in "})":
            depth -= 1
        elif depth == 0 and body.startswith(WAIT, i):
            at = i
            break
    if at < 0:
        raise CompileError(f"kernel {kernel}: no {WAIT} at the top level of its body")
    before = set(_WORD.findall(body[:at]))
    bad = sorted((before & (names - free)) | (before & {"return", "rfc_sync", "rfc_sync_wave"}))
    if bad:
        raise CompileError(f"kernel {kernel}: {', '.join(bad)} before {WAIT}")


def _matching(text: str, open_at: int, open_c: str, close_c: str) -> int:
    """The index of the bracket closing the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == open_c:
            depth += 1
        elif text[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
    raise CompileError("unbalanced brackets in a kernel source")
