from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_classification import artifacts
from image_classification.config import DataParams, parse_params
from image_classification.data import images
from image_classification.modeling import architecture, runtime
from image_classification.serving import predict, savedmodel
from tests.conftest import PROJECT_ROOT, make_images, merged, raw_params

SIZE = 12


def data_params(**overrides: object) -> DataParams:
    return parse_params(merged(raw_params(), {"data": {"image_height": SIZE, "image_width": SIZE, **overrides}})).data


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small trained-looking model in TF Serving's layout: models/tiny/1, and the images to try it on."""
    params = parse_params(merged(raw_params(), {"train": {"filters": 4, "dense_units": 8}}))
    dataset = make_images(classes=3, per_class=4, size=SIZE)
    runtime.seed_everything(0)
    classifier = architecture.build_model((SIZE, SIZE, 1), 3, params.train)
    base = tmp_path_factory.mktemp("models") / "tiny"
    savedmodel.export_savedmodel(classifier, dataset.class_names, base / "1")
    return base, dataset.images


@pytest.fixture
def folder(tmp_path: Path, exported: tuple[Path, np.ndarray]) -> Path:
    """Six PNG files, two of them in a subfolder, plus files a folder search must skip."""
    _, arrays = exported
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for index, array in enumerate(arrays[:6]):
        Image.fromarray(array[:, :, 0]).save(root / ("more" if index >= 4 else "") / f"{index}.png")
    (root / "notes.txt").write_text("not an image name: skipped in a folder")
    (root / ".hidden.png").write_bytes(b"hidden: skipped")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_to_csv_matches_the_savedmodel(folder: Path, exported: tuple, tmp_path: Path) -> None:
    base, arrays = exported
    output = tmp_path / "out" / "predictions.csv"
    summary = predict.run([str(folder)], base, data_params(), output, "csv", top_k=2, batch_size=4)
    assert (summary.files, summary.predicted, summary.failed) == (6, 6, 0)
    assert summary.model == base / "1"
    rows = read_csv(output)
    assert [Path(row["path"]).name for row in rows] == ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png"]
    expected = savedmodel.predict_savedmodel(base / "1", arrays[:6])
    assert [int(row["class_id"]) for row in rows] == expected["class_id"].tolist()
    assert [row["class_name"] for row in rows] == expected["class_name"].astype(str).tolist()
    for row, probabilities in zip(rows, expected["probabilities"], strict=True):
        assert float(row["probability"]) == pytest.approx(probabilities.max(), abs=1e-6)
        top_k = json.loads(row["top_k"])
        assert next(iter(top_k)) == row["class_name"]
        assert list(top_k.values()) == sorted(top_k.values(), reverse=True)
        assert len(top_k) == 2
        assert row["error"] == ""
    assert not list(output.parent.glob(".*.tmp"))


def test_jsonl_error_rows_and_batches(folder: Path, exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    text_file = folder / "notes.txt"
    output = tmp_path / "predictions.jsonl"
    summary = predict.run([str(folder), str(text_file)], base, data_params(), output, "jsonl", top_k=5, batch_size=2)
    assert (summary.files, summary.predicted, summary.failed) == (8, 6, 2)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert set(errors) == {"broken.png", "notes.txt"}
    assert errors["notes.txt"].startswith("not a readable image")
    assert all(row["class_name"] is None for row in rows if row["error"])
    assert all(len(row["top_k"]) == 3 for row in rows if not row["error"])  # only 3 classes exist
    one_batch = tmp_path / "one_batch.jsonl"
    predict.run([str(folder), str(text_file)], base, data_params(), one_batch, "jsonl", top_k=5, batch_size=256)
    assert one_batch.read_text() == output.read_text()


def test_glob_patterns_and_duplicates(folder: Path, exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    stream = io.StringIO()
    summary = predict.run(
        [str(folder / "**" / "*.png"), str(folder / "more")], base, data_params(), None, "csv", 1, 8, stream=stream
    )
    assert summary.files == 6  # the subfolder's two files are named twice, predicted once
    assert len(stream.getvalue().splitlines()) == 7


def test_rgb_and_other_sizes_are_converted_as_prepare_does(exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(rgb[:5, :5, 0]).save(tmp_path / "small.bmp")
    output = tmp_path / "out.jsonl"
    summary = predict.run([str(tmp_path / "photo.jpg"), str(tmp_path / "small.bmp")], base, data_params(), output,
                          "jsonl", 1, 8)  # fmt: skip
    assert summary.predicted == 2
    spec = images.ImageSpec(SIZE, SIZE, 1, "bilinear", "stretch")
    decoded = np.stack([images.decode_image(tmp_path / name, spec) for name in ("photo.jpg", "small.bmp")])
    expected = savedmodel.predict_savedmodel(base / "1", decoded)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["class_id"] for row in rows] == expected["class_id"].tolist()


def test_bad_inputs_are_clear_errors(folder: Path, exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    data = data_params()
    with pytest.raises(ValueError, match=r"missing\.png: no such file or folder"):
        predict.run([str(folder), str(tmp_path / "missing.png")], base, data, None, "csv", 1, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no image files in this folder"):
        predict.run([str(tmp_path / "empty")], base, data, None, "csv", 1, 8)
    with pytest.raises(ValueError, match=r"\*\.gif: no file matches this pattern"):
        predict.run([str(folder / "*.gif")], base, data, None, "csv", 1, 8)
    with pytest.raises(ValueError, match="not a SavedModel"):
        predict.run([str(folder)], folder, data, None, "csv", 1, 8)
    with pytest.raises(ValueError, match="no such model folder"):
        predict.run([str(folder)], tmp_path / "nowhere", data, None, "csv", 1, 8)
    with pytest.raises(ValueError, match=r"decodes images to 28x28x1, but the SavedModel .* takes 12x12x1"):
        predict.run([str(folder)], base, data_params(image_height=28, image_width=28), None, "csv", 1, 8)


def test_nothing_decodable_writes_nothing(exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"garbage")
    output = tmp_path / "out.csv"
    with pytest.raises(ValueError, match=r"none of the 2 file\(s\) could be decoded; first: .*a\.png: not a readable"):
        predict.run([str(tmp_path / "*.*")], base, data_params(), output, "csv", 1, 8)
    assert not output.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_highest_integer_version_is_used(exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    copy = tmp_path / "tiny"
    for name in ("2", "10"):
        shutil.copytree(base / "1", copy / name)
    (copy / "latest").mkdir()
    (copy / "11").mkdir()  # no saved_model.pb: not a version
    assert predict.find_version(copy) == copy / "10"
    assert predict.find_version(copy / "2") == copy / "2"


def test_model_card_rules_win_over_params(folder: Path, exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    copy = tmp_path / "tiny"
    shutil.copytree(base, copy)
    card = {"version": 1, "params": {"data": data_params(interpolation="nearest", aspect="pad").model_dump()}}
    artifacts.write_json(copy / "model_card.json", card)
    spec, rules = predict.decoding_rules(copy / "1", data_params())
    assert (spec.interpolation, spec.aspect) == ("nearest", "pad")
    assert rules == str(copy / "model_card.json")
    # A card that describes another version does not apply to this one.
    artifacts.write_json(copy / "model_card.json", {**card, "version": 2})
    assert predict.decoding_rules(copy / "1", data_params())[1] == "params.yaml's data section"


def test_progress_bar_for_big_inputs_only(folder: Path, exported: tuple, capsys: pytest.CaptureFixture) -> None:
    base, _ = exported
    predict.run([str(folder)], base, data_params(), None, "csv", 1, 8, stream=io.StringIO())
    assert "predicting" not in capsys.readouterr().err
    predict.run([str(folder)], base, data_params(), None, "csv", 1, 8, progress=True, stream=io.StringIO())
    assert "predicting: 100%" in capsys.readouterr().err


def test_output_format_from_the_suffix() -> None:
    assert predict.output_format(Path("a.jsonl"), None) == "jsonl"
    assert predict.output_format(None, None) == "csv"
    assert predict.output_format(Path("a.txt"), "jsonl") == "jsonl"
    with pytest.raises(ValueError, match=r"a\.txt: cannot tell the format"):
        predict.output_format(Path("a.txt"), None)


def cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "image_classification.serving.predict", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""})  # fmt: skip


def test_command_line_errors_are_one_line(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing.png"): f"predict: error: {tmp_path / 'missing.png'}: no such file or folder",
        str(tmp_path / "empty"): f"predict: error: {tmp_path / 'empty'}: no image files in this folder",
    }
    for argument, line in cases.items():
        result = cli(argument, "--model", str(folder))
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.splitlines()[-1].startswith(line)
        assert len(result.stderr.splitlines()) == 1
    result = cli(str(folder), "--model", str(folder))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"predict: error: {folder}: not a SavedModel (no saved_model.pb), nor a folder of integer versions holding one"
    ]


def test_command_line_writes_csv_to_stdout(folder: Path, exported: tuple, tmp_path: Path) -> None:
    base, _ = exported
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(merged(raw_params(), {"data": {"image_height": SIZE, "image_width": SIZE}})))
    result = cli(str(folder / "0.png"), str(folder / "notes.txt"), "--model", str(base), "--params", str(params),
                 "--top-k", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(Path(row["path"]).name, bool(row["error"])) for row in rows] == [("0.png", False), ("notes.txt", True)]
    assert result.stderr.splitlines()[-1] == (
        f"predict: 1 of 2 image(s) predicted with {base / '1'}, 1 could not be decoded (error rows)"
    )
    mismatch = cli(str(folder), "--model", str(base), "--params", str(PROJECT_ROOT / "params.yaml"))
    assert mismatch.returncode == 1
    assert mismatch.stderr.splitlines()[-1].startswith("predict: error: params.yaml's data section decodes images")
