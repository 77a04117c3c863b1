"""--threads: how many threads the compute library runs, decided once at the command line.

The count is a value: the command passes it in LoadOptions(threads=...) to the cpu device,
whose step program takes its team size as an argument of every step. numpy's BLAS (the
reference device) reads its count only from the environment when it loads, which happens
after the command has parsed its flags, so for it alone the variables are set here, before
any runtime import. The default is the cores this process may run on (its affinity mask,
which `taskset`, cgroups and container CPU sets narrow), not the machine's core count: more
threads than cores makes every barrier wait for a descheduled thread.
"""

import os
from dataclasses import dataclass

import click

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

threads_option = click.option(
    "--threads",
    "compute_threads",
    envvar="RFC_THREADS",
    default=None,
    type=click.IntRange(min=1),
    help="Compute threads (default: the cores in this process's affinity mask; an OMP_NUM_THREADS "
    "set by the user is kept).",
)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # why this many, for the startup log

    def describe(self) -> str:
        return f"{self.threads} compute thread{'s' if self.threads != 1 else ''} ({self.source})"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def apply_threads(requested: int | None) -> ThreadChoice:
    """The compute thread count (pass `.threads` to LoadOptions); sets numpy's BLAS
    variables for the libraries loaded after this call."""
    cores = available_cores()
    user_omp = os.environ.get("OMP_NUM_THREADS", "")
    if requested is not None:
        choice = ThreadChoice(requested, f"--threads; {cores} cores available")
    elif user_omp.isdigit() and int(user_omp) > 0:
        choice = ThreadChoice(int(user_omp), f"OMP_NUM_THREADS; {cores} cores available")
    else:
        choice = ThreadChoice(cores, "the cores in the affinity mask")
    for name in BLAS_VARIABLES:
        os.environ[name] = str(choice.threads)
    return choice
