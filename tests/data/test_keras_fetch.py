"""The child process that runs Keras' own dataset loader: names from the params, one line when it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from image_classification import config
from tests.conftest import PROJECT_ROOT


def fetch(*args: str, keras_home: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "image_classification.data.keras_fetch", *args]
    env = {"KERAS_HOME": str(keras_home), "PYTHONPATH": str(PROJECT_ROOT), "PATH": ""}
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_only_the_datasets_the_params_allow(tmp_path: Path) -> None:
    result = fetch("imagenet", str(tmp_path / "out.npz"), keras_home=tmp_path)
    assert result.returncode == 2
    assert f"choose from {', '.join(map(repr, config.KERAS_DATASETS))}" in result.stderr


@pytest.mark.slow
def test_a_failed_download_ends_with_a_line_naming_the_file_and_writes_nothing(tmp_path: Path) -> None:
    # An empty Keras cache: Keras tries to download, which fails here as on any offline machine.
    result = fetch("mnist", str(tmp_path / "out.npz"), keras_home=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "mnist.npz" in last
    assert not (tmp_path / "out.npz").exists()
