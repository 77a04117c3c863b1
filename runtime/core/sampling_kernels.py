"""The cpu kernel library's host sampling functions (kernels/cpu_sample.h), through ctypes.

A bundle with a cpu target carries them in its kernel library; the engine hands them to
every request's Sampler, which uses them for the filtered and temperature draws, top
logprobs and the logprob normalizer. Without them (a GPU-only bundle, a bundle compiled
before they existed, the reference device) the Sampler's numpy code does the same work.
"""

from __future__ import annotations

import ctypes
import math
import threading
from ctypes import c_double, c_int64, c_void_p

import numpy as np

BAD_LOGITS = -1  # kernels/cpu_sample.h RFC_SAMPLE_BAD_LOGITS
NO_MEMORY = -2

_SIGNATURES = {
    "rfc_sample_row": (
        [
            c_void_p,
            c_int64,
            c_double,
            c_int64,
            c_double,
            c_double,
            c_double,
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_void_p,
            c_int64,
            c_void_p,
            c_void_p,
        ],
        c_int64,
    ),  # fmt: skip
    "rfc_sample_logprobs": ([c_void_p, c_int64, c_int64, c_void_p, c_void_p, c_void_p, c_void_p], c_double),
}


class KernelLogitsError(ValueError):
    """The row holds a NaN or has no finite largest logit."""


class SamplingKernels:
    """One set of scratch rows, shared by the requests of one engine (a lock serializes the
    calls: the engine samples on one thread, the lock only keeps a second caller safe)."""

    def __init__(self, lib: ctypes.CDLL):
        self._fns = {}
        for name, (argtypes, restype) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
            self._fns[name] = fn
        self._lib = lib  # keeps the library loaded while the functions are referenced
        self._lock = threading.Lock()
        self._n = 0
        self._ints = self._floats = np.empty(0)
        self._ptrs: tuple[int, ...] = ()
        self._top = np.empty(0, np.int32)  # a joint draw's top logprob ids

    @classmethod
    def from_library(cls, lib: ctypes.CDLL) -> "SamplingKernels | None":
        """The library's sampling functions, or None when it lacks them (compiled earlier)."""
        if not all(hasattr(lib, name) for name in _SIGNATURES):
            return None
        return cls(lib)

    def _scratch(self, n: int) -> None:
        n = max(n, 64)  # the draw keeps its block sums (doubles) in a float row
        if n > self._n:
            self._ints = np.empty((2, n), np.int32)
            self._floats = np.empty((3, n), np.float32)
            self._n = n
            # addresses once: an ndarray's .ctypes costs microseconds per access
            self._ptrs = (*(int(r.ctypes.data) for r in self._ints), *(int(r.ctypes.data) for r in self._floats))
            self._top = np.empty(n, np.int32)

    def sample(self, x: np.ndarray, temperature: float, top_k: int, min_p: float, top_p: float, u: float,
               top_logprobs: int | None = None) -> tuple[int, tuple[float, np.ndarray | None] | None]:  # fmt: skip
        """A token drawn from float32 logits `x` (see rfc_sample_row); u uniform in [0, 1).
        With top_logprobs, also what logprobs(x, top_logprobs) gives, from the same passes."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.size
        with self._lock:
            self._scratch(n)
            i0, i1, f0, f1, f2 = self._ptrs
            joint = top_logprobs is not None
            k = top_logprobs if joint and 0 < top_logprobs < n else 0
            lse = c_double()
            token = _checked(self._fns["rfc_sample_row"](x.ctypes.data, n, temperature, top_k, min_p, top_p, u, i0, f0,
                                                         f1, f2, i1, k, self._top.ctypes.data,
                                                         ctypes.byref(lse) if joint else None))  # fmt: skip
            return token, ((lse.value, self._top[:k].copy() if k else None) if joint else None)

    def logprobs(self, x: np.ndarray, k: int) -> tuple[float, np.ndarray | None]:
        """log(sum(exp(x))) -- NaN for a NaN anywhere, the largest value when it is infinite --
        and, for 0 < k < x.size, the ids of the k largest logits (ties by lowest id), ascending."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            self._scratch(x.size)
            i0, i1, f0, f1, _ = self._ptrs
            want = 0 < k < x.size
            lse = float(self._fns["rfc_sample_logprobs"](x.ctypes.data, x.size, k if want else 0, i0, f0, f1, i1))
            return lse, (self._ints[0, :k].copy() if want and math.isfinite(lse) else None)


def _checked(status: int) -> int:
    if status == BAD_LOGITS:
        raise KernelLogitsError("the logits hold a NaN or no finite largest value")
    if status == NO_MEMORY:
        raise MemoryError("the sampling kernel could not allocate its sort buffer")
    return int(status)
