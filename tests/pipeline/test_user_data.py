"""A user's own photo folder through the whole product: class names of any script and punctuation, photos
stored sideways, a layout mistake, and a quiet terminal. `dvc repro` for real, then predict and REST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from image_classification import artifacts
from image_classification.tracking import runs
from tests.conftest import VENV_BIN, free_port, git, make_images, make_project, pipeline_env, wait_until_up
from tests.pipeline.test_dvc_repro import dvc
from tests.serving.test_export import post

pytestmark = pytest.mark.slow

# Names MLflow refuses as metric keys, names outside ASCII, names with spaces: all valid folder names.
CLASSES = ("c++", "rock & roll (live)", "Größe groß", "Ñandú", "猫")
SIDE = 16


def write_photos(raw: Path) -> None:
    """Bar images per class, as JPEG files; every third stored turned, as phones store portrait photos."""
    dataset = make_images(classes=len(CLASSES), per_class=30, size=SIDE, channels=3)
    for row, (image, label) in enumerate(zip(dataset.images, dataset.labels, strict=True)):
        folder = raw / sorted(CLASSES)[label]
        folder.mkdir(parents=True, exist_ok=True)
        if row % 3:
            Image.fromarray(image).save(folder / f"{row:03d}.png")
        else:
            exif = Image.Exif()
            exif[0x0112] = 6  # rotate 90 degrees clockwise to view
            turned = Image.fromarray(np.ascontiguousarray(np.rot90(image, k=1)))
            turned.save(folder / f"{row:03d}.jpg", quality=100, exif=exif.tobytes())


@pytest.fixture(scope="module")
def photos_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("photos"))
    write_photos(root / "data" / "raw")
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(source="image_folder", image_height=SIDE, image_width=SIDE, channels=3, max_images=None)
    # 105 training images: batch 16 gives 7 updates an epoch, where the default 128 would give one.
    params["train"].update(epochs=6, conv_blocks=2, batch_size=16)
    params["registry"].update(min_test_accuracy=0.0)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    git(root, "rm", "--cached", "--quiet", "data/raw/.gitkeep")  # DVC takes the folder over from git
    dvc(root, "add", "data/raw")
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--message", "photos")
    result = dvc(root, "repro")
    (root / "repro.log").write_text(result.stdout + result.stderr)
    return root


def test_every_stage_takes_any_folder_name(photos_project: Path) -> None:
    statistics = artifacts.read_json(photos_project / "reports/data/statistics.json")
    assert statistics["class_names"] == sorted(CLASSES)
    assert statistics["rejected_count"] == 0
    per_class = (photos_project / "reports/evaluate/per_class.csv").read_text(encoding="utf-8")
    assert all(name in per_class for name in CLASSES)
    card = artifacts.read_json(photos_project / "models/serving/digits/model_card.json")
    assert card["class_names"] == sorted(CLASSES)
    client = MlflowClient(f"sqlite:///{photos_project / 'mlflow.db'}")
    run_id = card["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(runs.metric_keys("test_f1.", sorted(CLASSES))) <= set(run.data.metrics)
    version = client.get_model_version_by_alias("digits", "champion")
    assert version.run_id == run_id


def test_photos_stored_sideways_are_learned_upright(photos_project: Path) -> None:
    # The bars of make_images are horizontal; a sideways decode would make a third of them vertical.
    accuracy = artifacts.read_json(photos_project / "reports/evaluate/metrics.json")["accuracy"]
    assert accuracy >= 0.9


def test_the_terminal_shows_stage_lines_not_library_chatter(photos_project: Path) -> None:
    log = (photos_project / "repro.log").read_text(encoding="utf-8")
    for chatter in ("cuInit", "InitializeLog", "cudart_stub", "Add type hints", "Downloading artifacts",
                    "Creating initial MLflow database tables"):  # fmt: skip
        assert chatter not in log, chatter
    assert "prepare: 150 images of shape [16, 16, 3] in 5 classes" in log
    assert "export: registered digits version 1: blessed, now champion" in log
    # The fixture's small batch still gives few updates an epoch, and the stage says so.
    assert "train: 105 training images at train.batch_size = 16 give 7 optimizer updates an epoch" in log


def test_predict_and_rest_answer_with_the_class_names(photos_project: Path, tmp_path: Path) -> None:
    upright = photos_project / "data" / "raw" / "猫" / sorted(os.listdir(photos_project / "data/raw/猫"))[1]
    command = [sys.executable, "-m", "image_classification.serving.predict", str(photos_project / "data/raw"),
               "--output", str(tmp_path / "predictions.jsonl")]  # fmt: skip
    result = subprocess.run(command, cwd=photos_project, capture_output=True, text=True, env=pipeline_env())
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 150
    right = sum(Path(row["path"]).parent.name == row["class_name"] for row in rows)
    assert right >= 0.9 * len(rows)

    port = free_port()
    log_path = tmp_path / "serve.log"
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/digits@champion", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = pipeline_env(MLFLOW_TRACKING_URI=f"sqlite:///{photos_project / 'mlflow.db'}")
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                                  env=env)  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log_path, timeout=180)
        image = np.asarray(Image.open(upright).convert("RGB"))
        status, answer = post(f"http://127.0.0.1:{port}/invocations", {"instances": [image.tolist()]})
        assert status == 200, answer
        assert answer["predictions"][0]["class_name"] == "猫"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
