"""Runs the compiler's input stages over many GGUF files in one process, under memory and time
limits, and prints one JSON line per file: what happened.

Outcomes: "ok" (compiled), "refused" (CompileError: the CLI prints one line, exits 2),
"crash" (any other exception: a traceback for a user), "timeout", "memory".
Used by test_gguf_fuzz.py; run by hand for long campaigns.
"""

import json
import resource
import signal
import sys
import tempfile
import traceback
from pathlib import Path


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def compile_stages(path: Path, scratch: Path) -> None:
    """Everything `rfc compile` does with the file, short of running the C compiler."""
    from rfc.artifacts.plan import pack_plan
    from rfc.compiler.codegen import CodegenInput
    from rfc.compiler.codegen.cpu import render_source
    from rfc.compiler.errors import CompileError
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec
    from rfc.compiler.targets import parse_target
    from rfc.compiler.tokenizer import TokenizerError, build_tokenizer
    from rfc.compiler.weights import write_weights

    model = read_gguf(path)
    spec = build_spec(model)
    try:
        build_tokenizer(model.metadata)
    except TokenizerError as e:
        raise CompileError(str(e)) from e
    pack_plan(spec.plan)
    layout = write_weights(model, spec.weights, scratch / "weights.bin")
    render_source(CodegenInput(parse_target("cpu"), spec.hparams, spec.plan, layout, None, None))


def main() -> None:
    from rfc.compiler.errors import CompileError

    memory_bytes, seconds = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as tmp:
        for line in sys.stdin:
            path = Path(line.strip())
            outcome, detail = "ok", ""
            signal.alarm(seconds)
            try:
                compile_stages(path, Path(tmp))
            except CompileError as e:
                outcome, detail = "refused", str(e).splitlines()[0][:300] if str(e) else ""
            except _Timeout:
                outcome = "timeout"
            except MemoryError:
                outcome = "memory"
            except Exception as e:  # noqa: BLE001 - that is what the fuzzer looks for
                outcome, detail = "crash", "".join(traceback.format_exception(e))[-1500:]
            finally:
                signal.alarm(0)
            print(json.dumps({"file": str(path), "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
