"""What every entry point shares: logging, signals, and turning user errors into one line."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

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


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
