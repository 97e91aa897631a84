"""What every entry point shares: logging, signals, and turning user errors into one line."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from image_classification.config import ParamsError

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_BAD_PARAMS = 2
EXIT_INTERRUPTED = 130
OUT_OF_MEMORY_FIX = (
    "lower data.image_height, data.image_width or data.channels, set data.max_images, or lower train.batch_size"
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def execute(stage: str, main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's `main`, mapping failures a user can fix to one line on stderr and an exit code.

    Bad params exit with 2, other user errors (a `ValueError` from the library, a missing input, a
    full disk) with 1, and an interrupt or SIGTERM with 130 after the MLflow run has been closed as KILLED.
    Set `STAGES_DEBUG=1` to get the full traceback instead.
    """
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    # TensorFlow's INFO lines (SavedModel asset paths) name temporary folders and only confuse.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # JAX's INFO lines say it found no TPU on every machine without one.
    logging.getLogger("jax").setLevel(logging.WARNING)
    # DVC and job schedulers stop stages with SIGTERM; treating it as an interrupt lets context
    # managers close MLflow runs and discard half-written outputs.
    signal.signal(signal.SIGTERM, _interrupt)
    debug = os.environ.get("STAGES_DEBUG") == "1"
    try:
        main(argv)
    except ParamsError as error:
        if debug:
            raise
        for line in str(error).splitlines():
            print(f"{stage}: error: {line}", file=sys.stderr)
        return EXIT_BAD_PARAMS
    except (ValueError, OSError) as error:
        if debug:
            raise
        print(f"{stage}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError as error:
        if debug:
            raise
        print(f"{stage}: error: out of memory ({_first_line(error)}); {OUT_OF_MEMORY_FIX}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:
        # TensorFlow's allocator fails with its own error class; matched by name so that this module
        # never imports TensorFlow.
        if debug or type(error).__name__ != "ResourceExhaustedError":
            raise
        print(
            f"{stage}: error: out of memory in TensorFlow ({_first_line(error)}); {OUT_OF_MEMORY_FIX}", file=sys.stderr
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run(stage: str, main: Callable[[Sequence[str] | None], None]) -> NoReturn:
    """Run a command-line entry point through `execute` and end the process with its exit code (`exit_now`).

    Only for `if __name__ == "__main__":` blocks: it never returns. An exception `execute` lets
    through (a bug, or any error under `STAGES_DEBUG=1`) ends the process the usual way, with its traceback.
    """
    exit_now(execute(stage, main))


def exit_now(code: int) -> NoReturn:
    """End the process with `code`: what Python's own exit does, except freeing every loaded module's objects.

    With TensorFlow loaded, that freeing took 2.0-2.3 s per process on the 2-core reference machine
    (`import keras, mlflow`, then exit: 2.3 s; this function: 0.1 s), paid by every Keras stage after
    its last output was written. The steps kept are the interpreter's own, in its order
    (`Py_FinalizeEx`): `threading._shutdown` stops thread pools and joins the other non-daemon threads,
    the `atexit` handlers run (logging is flushed, multiprocessing stops its children, temporary
    folders are removed, MLflow ends a run left open), the standard streams are flushed, and only
    then `os._exit` ends the process. Both underscored functions are the interpreter's exit steps;
    neither has a public name. Under a profiler, tracer or debugger (`python -m cProfile`, coverage,
    pdb) the usual exit is kept, so that they can write their reports.
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing left to say
            stream.flush()
    os._exit(code)


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
