"""tools/gpu_profile.py's split of a served step's time between the driver's calls and the host."""

import importlib
import sys
import time

import pytest

from tests.conftest import ROOT


@pytest.fixture
def gpu_profile(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))  # its sibling gpu_experiment
    module = importlib.import_module("gpu_profile")
    yield module
    sys.modules.pop("gpu_profile", None)


class FakeDriver:
    def __init__(self):
        self.calls = []

    def copy_to_device_async(self, dst, src, nbytes, stream):
        self.calls.append("h2d")

    def event_record(self, event, stream):
        self.calls.append("record")

    def graph_launch(self, graph, stream):
        self.calls.append("graph")
        time.sleep(0.010)

    def copy_to_host_async(self, dst, src, nbytes, stream):
        self.calls.append("d2h")

    def stream_synchronize(self, stream):
        self.calls.append("sync")


def test_driver_call_times_split_a_step_between_the_calls_and_the_rest(gpu_profile):
    driver = FakeDriver()
    names = gpu_profile.SERVED_CALLS

    def step(copies: int) -> float:
        t = time.perf_counter()
        for _ in range(copies):
            driver.copy_to_device_async(0, 0, 8, None)
        driver.event_record(None, None)
        driver.graph_launch(None, None)
        driver.copy_to_host_async(0, 0, 8, None)
        time.sleep(0.015)  # the host's own code
        driver.stream_synchronize(None)
        return time.perf_counter() - t

    with gpu_profile.DriverCallTimes(driver, names) as calls:
        steps = [step(2) for _ in range(5)]
    assert driver.calls == ["h2d", "h2d", "record", "graph", "d2h", "sync"] * 5  # the real methods ran
    assert not vars(driver).keys() & set(names)  # restored: the class's methods again
    line = calls.summary(steps)
    assert line.startswith("a served step's driver calls, us (median of 5): copy_to_device_async ")
    graph = float(line.split("graph_launch ")[1].split(",")[0])
    rest = float(line.split("the rest of the step (the host's code) ")[1])
    # (medians: a sleep may overrun, by milliseconds on a loaded 2-core machine; the rest with the graph's 10 ms
    # left in would be 25 ms)
    assert 10000 <= graph < 14000 and 15000 <= rest < 22000
    # a call whose count differs between steps is named, not summed
    with gpu_profile.DriverCallTimes(driver, names) as calls:
        steps = [step(i % 2) for i in range(3)]
    assert "(uneven: copy_to_device_async x1)" in calls.summary(steps)
