"""Keep TensorFlow's native start-up chatter off the terminal, and let everything else through.

TensorFlow's C++ code logs through absl before absl is initialised, which ignores
`TF_CPP_MIN_LOG_LEVEL`: every process that imports it prints `cudart_stub` lines twice, and the first
operation prints `failed call to cuInit: ... CUDA error` on every machine without a GPU, which reads
like a failure. `install()` wraps the first `import tensorflow` of the process (Keras' included): file
descriptor 2 goes to a temporary file while TensorFlow loads and probes its devices, then every line
that is not one of `NOISE` is written back to the real stderr, so real errors still show.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

# Start-up lines of TensorFlow 2.21 on machines with and without a GPU; nothing a user acts on.
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} .*\b(cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|cpu_feature_guard|port|dso_loader"
    r"|cuda_fft|cuda_dnn|cuda_blas|gpu_device|computation_placer)\.cc:\d+\] .*"
    r"|E\d{4} .*\bcuda_(platform|diagnostics)\.cc:\d+\] .*(cuInit|CUDA|kernel driver).*"
    r"|.*oneDNN custom operations are on.*|.*rebuild TensorFlow with the appropriate compiler flags\."
    r"|To enable the following instructions: .*"
)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str] = NOISE) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 in the block; replay the lines `noise` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode("utf-8", errors="replace").splitlines()
                if not noise.fullmatch(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Find `tensorflow` as Python would, and load it inside `filtered_stderr`."""

    def find_spec(
        self, name: str, path: object, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self.loader.exec_module(module)
            # The CUDA probe (and its cuInit error) runs on first use; run it here, inside the filter.
            module.config.list_physical_devices()


def install() -> None:
    """Wrap the process's first `import tensorflow`; does nothing once TensorFlow is loaded or the hook is in."""
    if "tensorflow" in sys.modules or any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())
