"""--threads: how many threads the compute library runs, decided once at the command line.

The cpu kernels' OpenMP runtime and numpy's BLAS read their thread counts from the
environment when they load, which happens after the command has parsed its flags: setting
the variables here, before any runtime import, is how the count reaches them. The default
is the cores this process may run on (its affinity mask, which `taskset`, cgroups and
container CPU sets narrow), not the machine's core count: more threads than cores makes
every barrier wait for a descheduled thread.
"""

import os
from dataclasses import dataclass

import click

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

threads_option = click.option(
    "--threads", "compute_threads", envvar="RFC_THREADS", default=None, type=click.IntRange(min=1),
    help="Compute threads (default: the cores in this process's affinity mask; an OMP_NUM_THREADS "
         "set by the user is kept).")


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
    """Sets the thread variables for the libraries loaded after this call."""
    cores = available_cores()
    user_omp = os.environ.get("OMP_NUM_THREADS", "")
    if requested is not None:
        choice = ThreadChoice(requested, f"--threads; {cores} cores available")
    elif user_omp.isdigit() and int(user_omp) > 0:
        choice = ThreadChoice(int(user_omp), f"OMP_NUM_THREADS; {cores} cores available")
    else:
        choice = ThreadChoice(cores, "the cores in the affinity mask")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(choice.threads)
    return choice
