"""The numpy reference of gemma3n's AltUp ops and its activation sparsity (gaussian_topk).

AltUp keeps n = n_altup streams of the hidden state; a plan holds them side by side in one
row, hs[T, n E] (stream i at columns i E .. (i + 1) E: one token's streams together, so every
op stays row-wise). The ops are as their descriptors (artifacts/ops) document them; each function here
takes and returns float32 rows, summing in float64 (the kernel tests' reference). The
ReferenceDevice's handler table (reference.py) calls the op_* wrappers.
"""

import numpy as np


def _streams(hs: np.ndarray, n: int) -> np.ndarray:
    """[T, n E] -> [T, n, E] float64."""
    return hs.astype(np.float64).reshape(len(hs), n, -1)


def _norm(x: np.ndarray) -> np.ndarray:
    """|v| over the last axis, kept (float64)."""
    return np.sqrt((x * x).sum(-1, keepdims=True))


def altup_stack(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    x64, ys = x.astype(np.float64), _streams(y, n - 1)
    ys = ys * _norm(x64)[:, None] / _norm(ys)
    return np.concatenate([x64[:, None], ys], axis=1).reshape(len(x), -1).astype(np.float32)


def altup_predict(hs: np.ndarray, coefs: np.ndarray, n: int, active: int) -> tuple[np.ndarray, np.ndarray]:
    s = _streams(hs, n)
    c = coefs.astype(np.float64).reshape(len(hs), n, n)  # [t, i, k]
    pred = (s + np.einsum("tik,tke->tie", c, s)).astype(np.float32)
    return pred.reshape(len(hs), -1), pred[:, active]


def altup_correct(
    pred: np.ndarray, x: np.ndarray, coefs: np.ndarray, scale: np.ndarray, n: int, active: int
) -> tuple[np.ndarray, np.ndarray]:
    p = _streams(pred, n)
    innovation = x.astype(np.float64) - p[:, active]
    out = (innovation[:, None] * (coefs.astype(np.float64)[:, :, None] + 1.0) + p).astype(np.float32)
    return out.reshape(len(pred), -1), out[:, active] * scale.astype(np.float32)


def altup_add(hs: np.ndarray, x: np.ndarray, n: int, first: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(hs with x added to streams 1.., its streams first .. first + m - 1)."""
    s = hs.reshape(len(hs), n, -1).copy()
    s[:, 1:] += x[:, None]
    return s.reshape(len(hs), -1), s[:, first : first + m].reshape(len(hs), -1)


def altup_merge(hs: np.ndarray, u: np.ndarray, n: int, active: int) -> np.ndarray:
    s, us = _streams(hs, n), _streams(u, n - 1)
    us = us * _norm(s[:, active])[:, None] / _norm(us)
    return ((s[:, 0] + us.sum(axis=1)) * np.float64(np.float32(1.0 / n))).astype(np.float32)


def gaussian_topk(x: np.ndarray, std_mul: float) -> np.ndarray:
    v = x.astype(np.float64)
    mean = v.mean(axis=-1, keepdims=True)
    std = np.sqrt(((v - mean) ** 2).sum(axis=-1, keepdims=True) / (v.shape[-1] - 1))
    return np.maximum(v - (mean + float(np.float32(std_mul)) * std), 0.0).astype(np.float32)


# -- ReferenceDevice handlers (reference.py's _HANDLERS) --------------------------------------------


def op_altup_stack(device, outs, ins, weights, attrs, batch):
    outs[0][...] = altup_stack(ins[0], ins[1], attrs["n_altup"])


def op_altup_predict(device, outs, ins, weights, attrs, batch):
    outs[0][...], outs[1][...] = altup_predict(ins[0], ins[1], attrs["n_altup"], attrs["active"])


def op_altup_correct(device, outs, ins, weights, attrs, batch):
    outs[0][...], outs[1][...] = altup_correct(*ins, weights[0], attrs["n_altup"], attrs["active"])


def op_altup_add(device, outs, ins, weights, attrs, batch):
    m = outs[1].shape[1] // ins[1].shape[1]
    outs[0][...], outs[1][...] = altup_add(ins[0], ins[1], attrs["n_altup"], attrs["first"], m)


def op_altup_merge(device, outs, ins, weights, attrs, batch):
    outs[0][...] = altup_merge(ins[0], ins[1], attrs["n_altup"], attrs["active"])


def op_gaussian_topk(device, outs, ins, weights, attrs, batch):
    outs[0][...] = gaussian_topk(ins[0], attrs["std_mul"])
