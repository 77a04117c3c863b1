"""Fault injection for the bound tests: make one kernel of an op device 2% wrong.

`scale_outputs(device, which, factor)` wraps the device's `launch` so that every op `which`
selects has its outputs multiplied by `factor` after the kernel ran: a kernel that is 2% off,
without building a broken one. Works on the op devices the executor interprets: the numpy
reference (numpy arrays), the cpu device (HostBuffer) and the GPU device (DeviceArray, real or
emulated), whose buffers are read back, scaled and written again.
"""

from collections.abc import Callable

import numpy as np

from rfc.artifacts.plan import Op


def _scale(device, buf, factor: float) -> None:
    if isinstance(buf, np.ndarray):
        buf *= np.float32(factor)
    elif hasattr(buf, "array"):  # cpu HostBuffer
        buf.array *= np.float32(factor)
    else:  # GPU DeviceArray
        driver = device._driver
        driver.synchronize()
        host = np.empty(buf.shape, dtype=np.float32)
        driver.copy_to_host(host, buf.ptr)
        driver.copy_to_device(buf.ptr, host * np.float32(factor))


def scale_outputs(device, which: Callable[[Op], bool], factor: float = 1.02) -> None:
    launch = device.launch

    def faulty(op, outs, ins, weights, batch):
        launch(op, outs, ins, weights, batch)
        if which(op):
            for buf in outs:
                _scale(device, buf, factor)

    device.launch = faulty
