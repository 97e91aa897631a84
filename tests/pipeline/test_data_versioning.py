"""Raw data under DVC: `dvc add data/raw`, reruns on every change, push/pull through the project's
local remote, `dvc checkout` of an older revision, and the data's DVC hash in the MLflow run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from image_classification.data import shards
from image_classification.modeling import trained_model
from tests.conftest import git, make_project, merged, split_images
from tests.data.test_sources import png, write_tree
from tests.pipeline.test_dvc_repro import STAGES, dvc, repro

pytestmark = pytest.mark.slow

IMAGE_PARAMS = {
    "data": {"source": "image_folder", "image_height": 12, "image_width": 12, "max_images": None},
    "export": {"model_name": "shapes"},
}


def commit(root: Path, message: str) -> str:
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--message", message)
    return git(root, "rev-parse", "HEAD").strip()


def paths(root: Path) -> dict[str, Path]:
    return {"dataset": root / "data/prepared", "membership": root / "data/split/membership.npz"}


def raw_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted((root / "data/raw").rglob("*"))
            if path.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny project on a 60-image folder tracked with `dvc add`, reproduced, committed and pushed."""
    root = make_project(tmp_path_factory.mktemp("versioned"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merged(params, IMAGE_PARAMS), sort_keys=False))
    write_tree(root / "data/raw", classes=3, per_class=20)
    git(root, "rm", "--cached", "--quiet", "data/raw/.gitkeep")  # DVC takes the folder over from git
    dvc(root, "add", "data/raw")
    assert repro(root) == STAGES
    first = commit(root, "60 images")
    dvc(root, "push")
    return {
        "root": root,
        "first": first,
        "files": raw_files(root),
        "run": trained_model.run_id(root / "models/trained"),
    }


def test_dvc_hash_of_the_data_reaches_mlflow(versioned: dict) -> None:
    root = versioned["root"]
    added = yaml.safe_load((root / "data/raw.dvc").read_text())["outs"][0]["md5"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (locked,) = [dep["md5"] for dep in lock["stages"]["prepare"]["deps"] if dep["path"] == "data/raw"]
    statistics = json.loads((root / "reports/data/statistics.json").read_text())
    assert statistics["data_version"]["digest"] == locked == added
    run = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(versioned["run"])
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == added
    assert json.loads(dataset_input.dataset.source) == {"uri": (root / "data/raw").resolve().as_uri()}
    tags = {tag.key: tag.value for tag in dataset_input.tags}
    assert tags["files"] == str(len(versioned["files"]))  # 60 images and .gitkeep, as DVC counts them
    assert tags["source"] == "image_folder"
    assert int(tags["bytes"]) == sum(len(data) for data in versioned["files"].values())
    assert run.data.tags["data.version"] == added


def test_fresh_clone_pulls_and_is_up_to_date(versioned: dict) -> None:
    clone = versioned["root"].parent / "clone"
    subprocess.run(["git", "clone", "--quiet", str(versioned["root"]), str(clone)], check=True)
    # The clone's default remote is the same folder beside it: the project's .dvc/config names it.
    dvc(clone, "pull")
    assert raw_files(clone) == versioned["files"]
    output = dvc(clone, "repro").stdout
    assert "Running stage" not in output
    assert "Data and pipelines are up to date." in output
    assert trained_model.run_id(clone / "models/trained") == versioned["run"]


def test_each_kind_of_change_reruns_prepare(versioned: dict) -> None:
    root = versioned["root"]
    folder = root / "data/raw/class_1"
    victim = sorted(folder.iterdir())[0]
    victim.unlink()
    assert repro(root, "split") == ["prepare", "split"]
    image = sorted(folder.iterdir())[0]
    image.write_bytes(png(np.full((12, 12), 99, np.uint8)))
    assert repro(root, "split") == ["prepare", "split"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merged(params, {"data": {"channels": 3}}), sort_keys=False))
    assert repro(root, "split") == ["prepare", "split"]
    with shards.open_dataset(root / "data/prepared", verify=True) as data:
        assert data.image_shape == (12, 12, 3)
    assert split_images(paths(root), "train").images.shape[3] == 3
    git(root, "checkout", "--quiet", "--", "params.yaml")


def test_new_image_reruns_all_and_checkout_restores_each_revision(versioned: dict) -> None:
    root = versioned["root"]
    git(root, "checkout", "--quiet", "--force", versioned["first"])
    dvc(root, "checkout", "--force")
    assert raw_files(root) == versioned["files"]
    shutil.copy(sorted((root / "data/raw/class_0").iterdir())[0], root / "data/raw/class_0/new image é.png")
    dvc(root, "add", "data/raw")
    assert repro(root) == STAGES
    second = commit(root, "61 images")
    second_run = trained_model.run_id(root / "models/trained")
    assert second_run != versioned["run"]

    git(root, "checkout", "--quiet", versioned["first"])
    dvc(root, "checkout")
    assert raw_files(root) == versioned["files"]
    assert trained_model.run_id(root / "models/trained") == versioned["run"]
    with shards.open_dataset(root / "data/prepared", verify=True) as data:
        assert len(data) == 60
    assert sum(len(split_images(paths(root), name)) for name in ("train", "validation", "test")) == 60
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."

    git(root, "checkout", "--quiet", second)
    dvc(root, "checkout")
    assert len(raw_files(root)) == len(versioned["files"]) + 1
    assert trained_model.run_id(root / "models/trained") == second_run
