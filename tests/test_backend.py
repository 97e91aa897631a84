from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import yaml

from image_classification import backend
from image_classification.config import BACKENDS
from tests.conftest import PROJECT_ROOT, merged, pipeline_env, raw_params

STAGE_ARGS = {
    "train": [
        "--dataset", "absent", "--membership", "absent.npz", "--model-dir", "model", "--history", "h.csv",
        "--summary", "s.json", "--timing", "t.json", "--checkpoint-dir", "checkpoints",
    ],
    "evaluate": [
        "--model-dir", "model", "--dataset", "absent", "--membership", "absent.npz", "--metrics", "m.json",
        "--per-class", "p.csv", "--confusion", "c.csv", "--figure", "f.png",
    ],
}  # fmt: skip


def test_every_backend_keras_knows_is_a_choice() -> None:
    assert set(BACKENDS) == {"tensorflow", "jax", "torch"}
    assert backend.DEFAULT == raw_params()["train"]["backend"] == "tensorflow"


@pytest.mark.parametrize("name", BACKENDS)
def test_describe_names_the_installed_versions(name: str) -> None:
    package = backend.PACKAGES[name][0]
    assert backend.describe(name) == {
        "keras.backend": name,
        "keras.backend_version": importlib.metadata.version(package),
        "keras.version": keras.__version__,
    }


def test_choosing_another_backend_after_keras_is_imported_is_refused() -> None:
    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(RuntimeError, match="Keras was imported on tensorflow before the stage chose jax"):
        backend.use("jax")


@pytest.mark.parametrize(("stage", "name", "label"), [("train", "torch", "PyTorch"), ("evaluate", "jax", "JAX")])
def test_a_missing_backend_stops_the_stage_with_one_line(tmp_path: Path, stage: str, name: str, label: str) -> None:
    # An entry of None in sys.modules is how Python marks a module as absent: find_spec returns None.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{backend.PACKAGES[name][0]!r}] = None\n")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(merged(raw_params(), {"train": {"backend": name}})))
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", "--params", str(params), *STAGE_ARGS[stage]],
        cwd=PROJECT_ROOT,
        env=pipeline_env(PYTHONPATH=f"{hide}:{PROJECT_ROOT}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"{stage}: error: train.backend = {name} needs {label}, which is not installed here; "
        "run `make install-backends` (pip install -r requirements-backends.lock)\n"
    )
    assert not (tmp_path / "model").exists()
