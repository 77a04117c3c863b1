"""Planning of the GPU sampling kernel: one block per logit row samples that row's
token on the device (templates/gpu_sample.hip.j2), so a step copies token ids back instead of
[rows, vocab] logits.

The kernel's row parameters are artifacts/program.py's SAMPLE_WORDS; the planner renders their
indices and the flag bits into the template, so the runtime and the kernel read one table. The
penalty lists' capacity is the runtime's (it sizes the staging at bind time) and reaches the
kernel as an argument, which clamps every row's list to it.
"""

from rfc.artifacts.program import (
    SAMPLE_FLAG_DEVICE,
    SAMPLE_FLAG_FED,
    SAMPLE_FLAG_GREEDY,
    SAMPLE_FLAG_LOGPROB,
    SAMPLE_OUT_PLANAR,
    SAMPLE_WORDS,
)
from rfc.compiler.codegen.gpu_plan import I32, PTR, KernelSpec
from rfc.compiler.errors import CompileError
from rfc.compiler.targets import Target

SAMPLE_TEMPLATE = "gpu_sample.hip.j2"
SAMPLE_ARGS: tuple[tuple[str, str], ...] = (
    ("out", PTR),
    ("logits", PTR),
    ("params", PTR),
    ("pen", PTR),
    ("pen_raw", PTR),
    ("pen_capacity", I32),
    ("n_rows", I32),
)
SAMPLE_MAX_THREADS = 256
# Logits a thread loads ahead in a pass over its row (RFC_SAMPLE_AHEAD: the same ids in the same
# order, the same bits), by target family. With 8 an H100 took 39.7 us for a greedy 128256-token
# row (65.5 with one load at a time, docs/benchmarks.md): 8 KB in flight a block, one round trip to
# L2 after another. NVIDIA 32 (unmeasured on a card: sm_90 80 registers a thread where 8 take 56,
# no local memory); AMD keeps 8: hipcc spilled gfx1100's 32000-token kernel at 16 and at 32.
# A row with fewer ids a thread than that takes as many as it has (a 512-token vocabulary over
# 256 threads: 2): each load ahead is an unrolled copy of the pass's body, and ids past the row
# only cost the build (1.7 of 11.7 s of nvcc for a tiny llama on sm_90 at 32).
SAMPLE_AHEAD = {"cuda": 32, "hip": 8}
# Fixed-point weights are 2^40 each at most: 2^22 tokens stay below 2^63 in a 64-bit sum.
SAMPLE_MAX_VOCAB = 1 << 22


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def plan_sample_kernel(target: Target, vocab: int) -> KernelSpec:
    """The sampling kernel for a vocabulary of `vocab` logits per row."""
    if not 0 < vocab <= SAMPLE_MAX_VOCAB:
        raise CompileError(f"no GPU sampling kernel for a vocabulary of {vocab} (at most {SAMPLE_MAX_VOCAB})")
    threads = min(SAMPLE_MAX_THREADS, max(target.wave_size, _pow2_at_least(vocab)))
    name = f"rfc_sample_{vocab}"
    params = {
        "name": name,
        "threads": threads,
        "vocab": vocab,
        "n_words": len(SAMPLE_WORDS),
        "words": {w: i for i, w in enumerate(SAMPLE_WORDS)},
        "flag_device": SAMPLE_FLAG_DEVICE,
        "flag_greedy": SAMPLE_FLAG_GREEDY,
        "flag_logprob": SAMPLE_FLAG_LOGPROB,
        "flag_fed": SAMPLE_FLAG_FED,
        "ahead": min(SAMPLE_AHEAD[target.family], -(-vocab // threads)),
    }
    return KernelSpec(name, SAMPLE_TEMPLATE, params, SAMPLE_ARGS, threads, (("n_rows", 1),))


def sample_program_extra(spec: KernelSpec) -> dict:
    """What the runtime needs to bind the kernel (StepProgram.extra["sample"])."""
    return {"kernel": spec.name, "threads": spec.threads, "words": len(SAMPLE_WORDS), "out": SAMPLE_OUT_PLANAR}
