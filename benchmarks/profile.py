"""Run one stage entry point under a profiler: `python -m benchmarks.profile stages.train --params ...`.

The benchmark's throwaway project copy runs every `dvc.yaml` command through this wrapper, so the
production runner stays free of measuring code. Each stage process appends one JSON line to the file
`STAGES_PROFILE` names: the seconds from process start until the stage's work can start (interpreter
and imports), the seconds after that, those inside MLflow calls, and its peak resident memory.

The Keras stages import their library function inside `main`, once they have chosen the backend
(`image_classification.backend.use`). The profiler hooks that call: right after it, it imports the
modules `main` imports and instruments MLflow, and that moment ends the start-up.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from image_classification import backend, runner

# MLflow calls the stages make, timed. Nested calls (log_metric calling the client) are counted
# once, at the outermost level.
MLFLOW_FUNCTIONS = (
    "start_run", "end_run", "log_metric", "log_metrics", "log_param", "log_params", "log_artifact",
    "log_artifacts", "log_dict", "log_figure", "log_input", "set_tag", "set_tags", "set_experiment",
    "set_tracking_uri", "set_registry_uri", "register_model", "get_run", "search_runs",
)  # fmt: skip


def profile(module_name: str, argv: list[str], output: Path) -> int:
    """Import the stage module, run its `main` through the production runner, append its profile to `output`.

    Returns:
        The stage's exit code.
    """
    module = importlib.import_module(module_name)
    ready, startup = time.time(), seconds_since_start()
    mlflow_seconds = [0.0]  # replaced by instrument_mlflow's accumulator once MLflow is instrumented
    work_modules = imported_in_main(module)

    def prepare() -> None:
        nonlocal ready, startup, mlflow_seconds
        for name in work_modules:
            importlib.import_module(name)
        mlflow_seconds = instrument_mlflow()
        ready, startup = time.time(), seconds_since_start()

    if work_modules:
        choose = backend.use

        @functools.wraps(choose)
        def use_then_prepare(*args: object, **kwargs: object) -> None:
            choose(*args, **kwargs)
            prepare()

        backend.use = use_then_prepare
    else:
        prepare()
    try:
        return runner.execute(module_name.rsplit(".", 1)[-1], module.main, argv)
    finally:
        peak_kib = max(own_peak_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        record = {
            "stage": module_name.rsplit(".", 1)[-1],
            "startup_seconds": round(startup, 3),
            "main_seconds": round(time.time() - ready, 3),
            "mlflow_seconds": round(mlflow_seconds[0], 3),
            "peak_rss_mib": round(peak_kib / 1024, 1),
        }
        with output.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def imported_in_main(module: object) -> list[str]:
    """The project modules that the entry point's `main` imports itself (after choosing the backend)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    return [
        node.module
        for node in ast.walk(main)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("image_classification")
    ]


def own_peak_kib() -> int:
    """This process's peak resident memory since it started its program, in KiB.

    Linux's `ru_maxrss` keeps, across `exec`, the resident size the parent had when it forked: a stage
    that DVC starts would report DVC's own memory (1.5 GiB with 600,000 files to hash) whenever its
    own peak is lower. `VmHWM` in /proc/self/status belongs to this program's address space alone.
    Children are counted by `RUSAGE_CHILDREN`, whose inherited part is at most this process's size
    when it forked them.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def seconds_since_start() -> float:
    """Seconds since this process started, to a clock tick (10 ms) on Linux.

    On Linux, psutil's `create_time` adds the process's start, counted from boot, to the boot time of
    /proc/stat, which is whole seconds: an age taken against `time.time()` comes out up to a second
    long (0.73 s on the reference machine, in every process alike). /proc/uptime and the start time in
    /proc/self/stat (field 22, proc(5)) both count from boot, so their difference is exact. Elsewhere,
    psutil's `create_time`.
    """
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return time.time() - psutil.Process().create_time()


def instrument_mlflow() -> list[float]:
    """Wrap MLflow's logging functions, its client, its Keras flavour and the project's store set-up with a timer.

    Returns:
        A one-element list that accumulates the seconds spent inside them.
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
    for name in MLFLOW_FUNCTIONS:
        if hasattr(mlflow, name):
            setattr(mlflow, name, timed(getattr(mlflow, name)))
    if "image_classification.modeling.training" in sys.modules:
        # MLflow loads its Keras flavour on first use; the train stage logs its model with it.
        keras_flavor = importlib.import_module("mlflow.keras")
        keras_flavor.log_model = timed(keras_flavor.log_model)
    if "image_classification.tracking.registry" in sys.modules:
        pyfunc = importlib.import_module("mlflow.pyfunc")
        pyfunc.log_model = timed(pyfunc.log_model)
    client = mlflow.tracking.MlflowClient
    for name, member in list(vars(client).items()):
        if inspect.isfunction(member) and not name.startswith("_"):
            setattr(client, name, timed(member))
    store = sys.modules.get("image_classification.tracking.store")
    if store is not None:
        store.configure = timed(store.configure)
    return total


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: STAGES_PROFILE=FILE python -m benchmarks.profile stages.STAGE [ARGS...]", file=sys.stderr)
        return 2
    return profile(sys.argv[1], sys.argv[2:], Path(os.environ.get("STAGES_PROFILE", "stages-profile.jsonl")))


if __name__ == "__main__":
    runner.exit_now(main())
