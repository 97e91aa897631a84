"""A DVC remote on the S3 store: endpoint in the committed config, key pair only in the environment.

The data stages' outputs are pushed from one copy of the project and pulled into a fresh clone, which
then finds nothing to reproduce. Running only prepare and split keeps the round trip to seconds.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from image_classification.services.stack import Services
from tests.conftest import git, make_project
from tests.pipeline.test_experiments import SERVER, dvc

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."


@pytest.fixture(scope="module")
def pushed(shared_services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny project after `dvc repro split`, with an S3 default remote committed, pushed."""
    store = shared_services.store
    # `dvc` sends every command's stages to this server; set here too, since another pytest worker
    # may run the module that sets it.
    SERVER["uri"] = shared_services.tracking_uri
    root = make_project(tmp_path_factory.mktemp("remote"))
    dvc(root, "repro", "split")
    prefix = f"dvc-{uuid.uuid4().hex[:8]}"
    dvc(root, "remote", "add", "--default", "team", f"s3://{store.bucket}/{prefix}")
    dvc(root, "remote", "modify", "team", "endpointurl", store.endpoint)
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--message", "data stages, S3 remote")
    dvc(root, "push", **store.credentials())
    return {"root": root, "prefix": prefix}


def clone(source: Path, target: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(source), str(target)], check=True)
    return target


def test_committed_config_holds_the_endpoint_and_no_secret(shared_services: Services, pushed: dict) -> None:
    store = shared_services.store
    config = (pushed["root"] / ".dvc/config").read_text()
    assert f"url = s3://{store.bucket}/{pushed['prefix']}" in config
    assert f"endpointurl = {store.endpoint}" in config
    assert store.secret_access_key not in config
    assert store.access_key_id not in config
    assert not (pushed["root"] / ".dvc/config.local").exists()


def test_push_lands_in_the_bucket(shared_services: Services, pushed: dict) -> None:
    keys = shared_services.store.keys(f"{pushed['prefix']}/")
    assert keys
    assert all(key.startswith(f"{pushed['prefix']}/files/md5/") for key in keys)
    # Every file of the split's output is an object of the remote.
    status = dvc(pushed["root"], "status", "--cloud", **shared_services.store.credentials()).stdout
    assert "Cache and remote 'team' are in sync." in status


def test_fresh_clone_pulls_and_is_up_to_date(shared_services: Services, pushed: dict, tmp_path: Path) -> None:
    copy = clone(pushed["root"], tmp_path / "clone")
    dvc(copy, "pull", "--with-deps", "split", **shared_services.store.credentials())
    membership = "data/split/membership.npz"
    assert (copy / membership).read_bytes() == (pushed["root"] / membership).read_bytes()
    assert dvc(copy, "status", "split").stdout.strip() == UP_TO_DATE
    output = dvc(copy, "repro", "split").stdout
    assert "Running stage" not in output
    assert UP_TO_DATE in output


def test_pull_with_a_wrong_secret_is_refused(shared_services: Services, pushed: dict, tmp_path: Path) -> None:
    copy = clone(pushed["root"], tmp_path / "clone")
    credentials = {**shared_services.store.credentials(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    result = dvc(copy, "pull", "--with-deps", "split", check=False, **credentials)
    assert result.returncode != 0
    assert not (copy / "data/split/membership.npz").exists()
