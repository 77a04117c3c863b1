"""The host's own time in a served GPU step, without a GPU: a bundle's sm_* step program loaded
by the real loader over the emulated kernels (tests/kernels/gpu_emulator.py), the graph replay
made a no-op, and batch-1 steps sampled on the device (`forward_sampled`, greedy) timed.

    python tools/host_step_time.py BUNDLE [--target sm_90] [--steps 2000]
    python tools/host_step_time.py BUNDLE --engine       # Engine.step() of a batch-1 greedy decode
    python tools/host_step_time.py BUNDLE --serve 8080   # `rfc serve` over it (a card that takes no time)
    python tools/host_step_time.py BUNDLE --engine --card-us 930 [--one-at-a-time]

With --card-us a graph replay stands for a card that takes that long: the stream is a timeline
on which each replay ends that many microseconds after the later of its queueing and the end
of what was queued before it, and a synchronize (stream or event) waits for the point it
names. So the steps' time shows how much of the host's work hides behind the card's (decode
queued ahead, runtime/engine/ahead.py) and how much adds to it; --one-at-a-time turns the
queuing off for the comparison.

What it leaves out is what a card adds: the driver's copy, graph-launch and synchronize calls
and their wake-ups (gpu_profile.py's "outside the graph" line on a card is this time plus those).
Prints the median and the cProfile of the steps. With --engine the steps are the engine's (the
scheduler, the sampled step, the output stage's detokenizing in the same thread); with --serve the
server runs on the port until stopped, for tools/bench_serve.py --url or any streaming client: the
decode rate it streams is what its host side allows a card whose steps took no time (prompts run
the emulated kernels on the CPU: its time to first token means nothing).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.kernels.gpu_emulator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--target", default="sm_90")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--card-us", type=float, default=0.0, help="a graph replay takes this long on a modelled card")
    ap.add_argument("--one-at-a-time", action="store_true", help="the engine queues no step ahead (--no-decode-ahead)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--engine", action="store_true", help="time Engine.step() instead of the sampled step")
    mode.add_argument("--serve", type=int, metavar="PORT", help="run `rfc serve` over it on PORT")
    args = ap.parse_args()

    import rfc.runtime.devices as devices
    from rfc.artifacts.bundle import open_bundle
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.engine.batch import ScheduledChunk, build_batch
    from rfc.runtime.sampling.sampler import Sampler, SamplingParams
    from tests.kernels.gpu_emulator import build_emulator, loader_driver_class

    lib = build_emulator(open_bundle(args.bundle), args.target, Path(tempfile.gettempdir()) / "rfc-host-step")
    base = loader_driver_class(lib, [])

    card_s = args.card_us * 1e-6

    class Driver(base):
        busy = 0.0  # perf_counter() when the modelled card has run what was queued

        def graph_launch(self, graph, stream) -> None:  # the GPU's work skipped: the host's alone
            if card_s:
                self.busy = max(time.perf_counter(), self.busy) + card_s

        def event_create(self):
            return [0.0]

        def event_record(self, event, stream) -> None:
            event[0] = self.busy

        def event_synchronize(self, event) -> None:
            _wait_until(event[0])

        def stream_synchronize(self, stream) -> None:
            _wait_until(self.busy)

    devices.gpu_driver_class = lambda family: Driver
    if args.serve is not None:
        from rfc.cli.main import main as rfc_main

        sys.argv = ["rfc", "serve", str(args.bundle), "--port", str(args.serve), "--device", "cuda"]
        sys.argv += ["--no-decode-ahead"] if args.one_at_a_time else []
        rfc_main()
        return 0
    lm = load_model(args.bundle, LoadOptions(device="cuda"))
    if args.engine:
        return engine_steps(lm, args)
    blocks = lm.kv_pool.manager()
    blocks.allocate(0, 8)
    lm.executor.forward(build_batch([ScheduledChunk(0, 0, (5, 6, 7))], blocks))
    rows = [(Sampler(SamplingParams(temperature=0.0), [1], lm.vocab_size), False)]
    batch = build_batch([ScheduledChunk(0, 3, (9,))], blocks)

    def steps(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            lm.executor.forward_sampled(batch, rows)
            times.append(time.perf_counter() - t)
        return times

    steps(20)  # the graph's capture, first calls
    times = steps(args.steps)
    print(
        f"{args.bundle.name}: host time of a served batch-1 step, the graph replay skipped: median "
        f"{statistics.median(times) * 1e6:.1f} us, min {min(times) * 1e6:.1f} us ({args.steps} steps)"
    )
    print_profile(lambda: steps(args.steps))
    return 0


def engine_steps(lm, args) -> int:
    """--engine: Engine.step() of one request's greedy decode, stepped in this thread."""
    from rfc.runtime.engine.engine import Engine, GenerationRequest
    from rfc.runtime.engine.scheduler import SchedulerConfig
    from rfc.runtime.sampling.sampler import SamplingParams

    engine = Engine(lm, SchedulerConfig(decode_ahead=not args.one_at_a_time))
    n = min(args.steps, lm.context_length - 32)
    engine.submit(GenerationRequest([5, 6, 7, 8], SamplingParams(temperature=0.0), max_tokens=n + 20, ignore_eos=True))
    for _ in range(10):  # the prompt, the graph's capture
        engine.step()
    times = []
    for _ in range(n // 2):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    print(
        f"{args.bundle.name}: Engine.step() of a batch-1 decode, "
        f"{f'a graph replay taking {args.card_us:g} us' if args.card_us else 'the graph replay skipped'}"
        f"{', one step at a time' if args.one_at_a_time else ''}: median "
        f"{statistics.median(times) * 1e6:.1f} us, min {min(times) * 1e6:.1f} us ({len(times)} steps)"
    )
    print_profile(lambda: [engine.step() for _ in range(n // 2 - 2)])
    return 0


def _wait_until(t: float) -> None:
    """Blocks until perf_counter() reaches t, the GIL released as a driver's wait releases it."""
    while (left := t - time.perf_counter()) > 0:
        time.sleep(left - 2e-4 if left > 3e-4 else 0)


def print_profile(run) -> None:
    """The cProfile of `run()`: the 12 functions with the most own time."""
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
