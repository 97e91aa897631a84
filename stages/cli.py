"""What every stage entry point shares: logging, signals, and turning user errors into one line."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stages.params import ParamsError

logger = logging.getLogger("stages")

EXIT_ERROR = 1
EXIT_BAD_PARAMS = 2
EXIT_INTERRUPTED = 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def execute(stage: str, main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's `main`, mapping failures a user can fix to one line on stderr and an exit code.

    Bad params exit with 2, other user errors (a `ValueError` from the library, a missing input, a
    full disk) with 1, and an interrupt or SIGTERM with 130 after the MLflow run has been closed as KILLED.
    Set `STAGES_DEBUG=1` to get the full traceback instead. Set `STAGES_PROFILE` to a file to have
    the stage append one JSON line to it: the seconds from process start to `main` (interpreter and
    imports), in `main`, inside MLflow calls, and its peak resident memory.
    """
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    # TensorFlow's INFO lines (SavedModel asset paths) name temporary folders and only confuse.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # DVC and job schedulers stop stages with SIGTERM; treating it as an interrupt lets context
    # managers close MLflow runs and discard half-written outputs.
    signal.signal(signal.SIGTERM, _interrupt)
    debug = os.environ.get("STAGES_DEBUG") == "1"
    try:
        with _profiled(stage, os.environ.get("STAGES_PROFILE")):
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
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# MLflow calls the stages make, timed when profiling. Nested calls (log_metric calling the client)
# are counted once, at the outermost level.
_MLFLOW_FUNCTIONS = (
    "start_run", "end_run", "log_metric", "log_metrics", "log_param", "log_params", "log_artifact",
    "log_artifacts", "log_dict", "log_figure", "log_input", "set_tag", "set_tags", "set_experiment",
    "set_tracking_uri", "set_registry_uri", "register_model", "get_run", "search_runs",
)  # fmt: skip


@contextlib.contextmanager
def _profiled(stage: str, path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    entered = time.time()
    startup = entered - _process_start_time()
    mlflow_seconds = _instrument_mlflow()
    try:
        yield
    finally:
        peak_kib = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        )
        record = {
            "stage": stage,
            "startup_seconds": round(startup, 3),
            "main_seconds": round(time.time() - entered, 3),
            "mlflow_seconds": round(mlflow_seconds[0], 3),
            "peak_rss_mib": round(peak_kib / 1024, 1),
        }
        with Path(path).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _process_start_time() -> float:
    """When this process started, as a Unix time; psutil reads it from /proc on Linux."""
    import psutil

    return psutil.Process().create_time()


def _instrument_mlflow() -> list[float]:
    """Wrap MLflow's logging functions, its client and the project's store setup with a timer.

    Returns a one-element list that accumulates the seconds spent inside them.
    """
    total = [0.0]
    depth = [0]

    def timed(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: object, **kwargs: object) -> object:
            depth[0] += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    total[0] += time.perf_counter() - started

        return wrapper

    mlflow = sys.modules.get("mlflow")
    if mlflow is None:  # the stage does not use MLflow
        return total
    for name in _MLFLOW_FUNCTIONS:
        if hasattr(mlflow, name):
            setattr(mlflow, name, timed(getattr(mlflow, name)))
    if "stages.train" in sys.modules or "stages.registry" in sys.modules:
        # MLflow loads its Keras flavour on first use; these stages log models with it.
        keras_flavor = importlib.import_module("mlflow.keras")
        keras_flavor.log_model = timed(keras_flavor.log_model)
    client = mlflow.tracking.MlflowClient
    for name, member in list(vars(client).items()):
        if inspect.isfunction(member) and not name.startswith("_"):
            setattr(client, name, timed(member))
    tracking = sys.modules.get("stages.tracking")
    if tracking is not None:
        tracking.configure = timed(tracking.configure)
    return total
