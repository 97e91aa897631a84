"""The Keras backend a process runs on: TensorFlow, JAX or PyTorch, chosen by `train.backend`.

Keras reads the backend once, when it is first imported (`KERAS_BACKEND`, then `~/.keras/keras.json`),
so a stage calls `use` with its params before anything imports Keras; the stage entry points import
their library module only after that. This module imports neither Keras nor any backend.

The thread counts are applied here when the backend can only take them before it starts (JAX reads
`XLA_FLAGS` at import); `modeling.runtime` applies the rest once the backend is loaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

# Keras' backend name -> (the package that provides it, its name in prose).
PACKAGES = {"tensorflow": ("tensorflow", "TensorFlow"), "jax": ("jax", "JAX"), "torch": ("torch", "PyTorch")}
DEFAULT = "tensorflow"
# Every backend is one command away; the default install holds TensorFlow only.
INSTALL_FIX = "run `make install-backends` (pip install -r requirements-backends.lock)"


def use(name: str, intra_op_threads: int = 0) -> None:
    """Make `name` the Keras backend of this process; call before anything imports Keras.

    Args:
        name: `tensorflow`, `jax` or `torch` (Keras' names).
        intra_op_threads: threads inside one op; JAX takes it here, through `XLA_FLAGS`, before it
            is imported. 0 leaves the backend's default.

    Raises:
        ValueError: the backend's package is not installed; the message names the install command.
        RuntimeError: Keras is already imported on another backend in this process (a programming error:
            a module imported Keras before the stage chose its backend).
    """
    package, label = PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"train.backend = {name} needs {label}, which is not installed here; {INSTALL_FIX}")
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != name:
        raise RuntimeError(f"Keras was imported on {keras.backend.backend()} before the stage chose {name}")
    os.environ["KERAS_BACKEND"] = name
    if name == "jax" and intra_op_threads and "jax" not in sys.modules:
        # XLA's CPU client reads its thread pool size once, at start-up.
        flags = f"--xla_cpu_multi_thread_eigen={'false' if intra_op_threads == 1 else 'true'}"
        flags += f" intra_op_parallelism_threads={intra_op_threads}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def version(name: str) -> str:
    """The installed version of backend `name`'s package, as pip reports it (for example `2.21.0`)."""
    return importlib.metadata.version(PACKAGES[name][0])


def describe(name: str) -> dict[str, str]:
    """The run tags that say which backend trained a model: its name, its package's version and Keras'."""
    return {
        "keras.backend": name,
        "keras.backend_version": version(name),
        "keras.version": importlib.metadata.version("keras"),
    }
