from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from benchmarks import backends, compile_options, distributed, hard_digits, pipeline, run, scale, tracking, training
from image_classification.config import BACKENDS, Params
from image_classification.data import sources
from image_classification.services.stack import Services
from tests.conftest import make_images

SECTIONS = (
    "## 1. Training throughput",
    "## 2. Time to accuracy",
    "## 3. Pipeline overhead",
    "## 4. Memory",
    "## 5. Hardware ceiling",
    "## 6. Teams and clusters",
    "## 7. Data at scale",
)


def conv_flops(side: int, kernel: int, inputs: int, filters: int) -> int:
    """2 x multiply-adds of a 'same'-padded, stride-1 convolution over one image."""
    return 2 * side * side * kernel * kernel * inputs * filters


def test_training_flops_match_a_count_by_hand(params: Params) -> None:
    settings = params.train.model_copy(
        update={"conv_blocks": 2, "filters": 4, "kernel_size": 3, "dense_units": 0, "batch_size": 8}
    )
    flops = training.training_flops(settings, (12, 12, 1), 3).per_image_by_op
    first, second = conv_flops(12, 3, 1, 4), conv_flops(6, 3, 4, 8)
    assert flops["Conv2D"] == first + second
    assert flops["Conv2DBackpropFilter"] == first + second
    # The first convolution's input is the image itself, which needs no gradient.
    assert flops["Conv2DBackpropInput"] == second
    assert flops["MatMul"] >= 2 * (3 * 3 * 8) * 3  # the head's forward product at least


def test_enlarge_is_deterministic_and_makes_distinct_images() -> None:
    dataset = make_images(per_class=10)
    large = pipeline.enlarge(dataset, 120)
    again = pipeline.enlarge(dataset, 120)
    assert large.images.shape == (120, *dataset.images.shape[1:])
    assert np.array_equal(large.images, again.images)
    assert len({image.tobytes() for image in large.images}) == 120
    assert set(large.labels.tolist()) == set(dataset.labels.tolist())


def test_time_to_accuracy_reads_target_and_budget() -> None:
    race = training.TimeToAccuracy(
        default=[
            {"seconds": 1.0, "accuracy": 0.9},
            {"seconds": 2.0, "accuracy": 0.97},
            {"seconds": 9.0, "accuracy": 0.99},
        ],
        reference=[{"seconds": 3.0, "accuracy": 0.93}, {"seconds": 6.0, "accuracy": 0.96}],
        train_images=100,
    )
    assert race.target == 0.96
    assert race.budget == 6.0
    assert race.seconds_to_target(race.default) == 2.0
    assert race.accuracy_within_budget(race.default) == 0.97
    assert race.seconds_to_target([{"seconds": 1.0, "accuracy": 0.5}]) is None


def test_race_throughput_leaves_out_the_first_epoch() -> None:
    race = training.TimeToAccuracy(
        default=[
            {"seconds": 5.0, "accuracy": 0.5},
            {"seconds": 6.0, "accuracy": 0.6},
            {"seconds": 8.0, "accuracy": 0.7},
        ],
        reference=[{"seconds": 2.0, "accuracy": 0.5}],
        train_images=300,
    )
    assert race.images_per_second(race.default) == 300 / 1.5  # the median of 1 s and 2 s
    assert race.images_per_second(race.reference) is None


def test_distorted_digits_keep_test_sources_apart_from_training(params: Params) -> None:
    parts, origins = hard_digits.build(200, params.split, seed=3)
    assert {name: len(part) for name, part in parts.items()} == {"train": 140, "validation": 30, "test": 30}
    assert not set(origins["test"].tolist()) & set(origins["train"].tolist())
    assert not set(origins["validation"].tolist()) & set(origins["train"].tolist())
    digits = sources.load_embedded_digits()
    for name, part in parts.items():
        assert np.array_equal(part.labels, digits.labels[origins[name]])
        assert part.images.dtype == np.uint8
        assert part.images.shape[1:] == (28, 28, 1)
        # Distorted, not copied: no image equals the digit it came from.
        pairs = zip(part.images, digits.images[origins[name]], strict=True)
        assert not any(np.array_equal(image, source) for image, source in pairs)
    again, _ = hard_digits.build(200, params.split, seed=3)
    assert all(np.array_equal(parts[name].images, again[name].images) for name in parts)


def test_data_file_needs_images_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"expected arrays x \(images\) and y \(labels\)"):
        run.load_data(path)


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    dataset = make_images(classes=3, per_class=40, size=12)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=dataset.images[..., 0], y=dataset.labels)
    output = tmp_path / "out" / "BENCHMARKS.md"
    output.parent.mkdir()

    run.main(["--data", str(data), "--output", str(output), "--quick"])

    text = output.read_text()
    for section in SECTIONS:
        assert section in text
    assert "python -m benchmarks.run --data" in text
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    results = json.loads(output.with_suffix(".json").read_text())
    speed = results["throughput"]
    assert speed["ratio"] > 0
    assert all(value > 0 for value in speed["pipeline"] + speed["plain"])
    races = results["time_to_accuracy"]
    assert races["small"]["images"] == 120
    assert races["large"]["images"] == run.QUICK_RACE_IMAGES
    assert races["large"]["train_images"] == round(0.7 * run.QUICK_RACE_IMAGES)
    for race in races.values():
        for row in race["default"] + race["reference"]:
            assert 0.0 <= row["accuracy"] <= 1.0
            assert row["seconds"] > 0
        assert len(race["reference"]) == 2
        assert race["default_images_per_second"] > 0
        assert race["reference_images_per_second"] > 0
    small, large = results["repro"]["small"], results["repro"]["large"]
    assert small["images"] == 120
    assert large["images"] == 480
    assert set(small["stages"]) == set(pipeline.STAGES) == set(large["stages"])
    for record in [*small["stages"].values(), *large["stages"].values()]:
        assert record["peak_rss_mib"] > 0
        assert record["startup_seconds"] > 0
    assert small["stages"]["train"]["mlflow_seconds"] > 0
    assert small["stages"]["split"]["mlflow_seconds"] == 0  # the data stages do not touch MLflow
    assert len(small["noop_seconds"]) == 1
    assert results["ceiling"]["flops_per_image"] > 0
    assert results["ceiling"]["fraction_of_measured"] > 0


@pytest.mark.slow
def test_scale_benchmark_measures_every_stage_and_the_incremental_prepare(tmp_path: Path) -> None:
    output = tmp_path / "scale.md"
    scale.main(["--quick", "--sizes", "400", "--rgb-sizes", "200", "--photos", "100", "--output", str(output)])
    results = json.loads(output.with_suffix(".json").read_text())
    (row,) = results["sizes"]
    assert row["images"] == 400
    assert set(row["stages"]) == set(pipeline.STAGES)
    assert all(0 < stage["peak_rss_mib"] < 4096 for stage in row["stages"].values())
    assert row["incremental"]["new_files"] == 4
    assert 0 < row["incremental"]["shards_written"] <= row["incremental"]["shards"]
    # One incremental prepare per repeat, each after 4 more new files; the figure reported is their median.
    runs = row["incremental"]["runs"]
    assert len(runs) == scale.INCREMENTAL_REPEATS
    assert row["incremental"]["prepare_seconds"] in [run["seconds"] for run in runs]
    assert all(0 < run["shards_written"] <= run["shards"] for run in runs)
    # The shards hold every file's 28x28x1 pixels.
    assert row["prepared_bytes"] > 400 * 28 * 28
    assert "| 400 |" in output.read_text()
    (rgb,) = results["rgb"]
    assert rgb["images"] == 200
    assert set(rgb["stages"]) == set(pipeline.STAGES)
    assert "## 64x64 RGB folders" in output.read_text()
    photos = results["photos"]
    assert photos["images"] == 100
    assert set(photos["stages"]) == set(pipeline.STAGES)
    # 100 photos at 160x160x3, raw in the shards.
    assert photos["prepared_bytes"] > 100 * 160 * 160 * 3
    assert 0 <= photos["test_accuracy"] <= 1


def test_generated_photos_have_ten_classes_of_varied_size(tmp_path: Path) -> None:
    scale.write_photos(20, tmp_path)
    folders = sorted(path.name for path in tmp_path.iterdir())
    assert len(folders) == 10
    assert folders[0] == "cool_cross"
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 20
    sizes = set()
    for path in files:
        with Image.open(path) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
            sizes.add(image.size)
    assert len(sizes) > 10


@pytest.mark.slow
# 16 steps a call are more than an epoch of 140 images has: Keras ends such an epoch early, with this warning.
@pytest.mark.filterwarnings("ignore:Your input ran out of data:UserWarning")
def test_compile_options_benchmark_trains_each_variant_as_compiled(capsys: pytest.CaptureFixture[str]) -> None:
    compile_options.main(["--images", "200", "--epochs", "2", "--digits-epochs", "2", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "`" in line]
    # policy, steps_per_execution and the dtype the convolutions computed in, for each data set
    assert [row.split(" | ")[1:4] for row in rows] == [
        ["`float32`", "1", "float32"],
        ["`mixed_bfloat16`", "1", "bfloat16"],
        ["`float32`", "4", "float32"],
        ["`float32`", "16", "float32"],
    ] * 2
    for row in rows:
        speed, accuracy = row.split(" | ")[4:6]
        assert float(speed.split()[0].replace(",", "")) > 0
        assert 0 <= float(accuracy.split()[0]) <= 1
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_backend_comparison_trains_each_backend_in_its_own_process(tmp_path: Path) -> None:
    output = tmp_path / "backend-comparison.md"
    backends.main(["--quick", "--max-images", "300", "--output", str(output)])
    results = json.loads(output.with_suffix(".json").read_text())
    assert [measured["backend"] for measured in results["runs"]] == list(BACKENDS)
    for measured in results["runs"]:
        assert measured["version"] == importlib.metadata.version(measured["backend"])
        assert [row["epoch"] for row in measured["test_accuracy"]] == [1, 2]
        assert 0 < measured["startup_seconds"] < 120
        assert measured["images_per_second"] > 0
        assert 0 < measured["peak_mib"] < 8192
    page = output.read_text()
    assert all(f"| {name} | {importlib.metadata.version(name)} |" in page for name in BACKENDS)


@pytest.mark.slow
def test_tracking_benchmark_profiles_each_store(shared_services: Services, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(shared_services.tracking_uri)
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    output = tmp_path / "tracking.md"
    tracking.main(["--quick", "--tracking-uri", shared_services.tracking_uri, "--output", str(output)])
    results = json.loads(output.with_suffix(".json").read_text())
    assert results["repeats"] == 1
    for store in tracking.STORES:
        (stages,) = results["runs"][store]
        assert set(stages) == {"prepare", "split", "train"}
        assert stages["train"]["mlflow_seconds"] > 0
        assert stages["split"]["mlflow_seconds"] == 0  # the data stages do not touch MLflow
    # The server's round went to the server, the SQLite round to the copy's own store.
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs_before + 1
    page = output.read_text()
    assert "| train |" in page
    assert "| all stages |" in page


def distributed_figures() -> dict:
    run_figures = {"train_seconds": 30.0, "final_val_accuracy": 0.96, "param_count": 34402}
    return {
        "date": "2026-12-01", "machine": "a CPU", "command": "make bench-distributed", "keras": "3", "jax": "0",
        "epochs": 4, "batch_size": 64, "gradient_mib": 0.13,
        "runs": {
            "one": {"label": "one", "step_ms": 90.0, "images_per_second": 711.1, **run_figures},
            "two": {"label": "two", "step_ms": 120.0, "images_per_second": 533.3, **run_figures},
            "half": {"label": "half", "step_ms": 30.0, "images_per_second": 1066.7, **run_figures},
        },
    }  # fmt: skip


def test_distributed_benchmark_reads_keras_step_times_and_derives_the_overhead() -> None:
    line = "55/55 - 7s - 127ms/step - accuracy: 0.9 - loss: 0.3 - val_accuracy: 0.9"
    assert distributed.STEP.match(line).groups() == ("127", "ms")
    assert distributed.STEP.match("55/55 - 70s - 1s/step - accuracy: 0.9").groups() == ("1", "s")
    page = distributed.render(distributed_figures())
    assert "0.75 times the images per second" in page
    assert "90.0 ms of every 120.0 ms step (75%)" in page


def test_report_repeats_the_team_figures_or_says_they_are_missing(tmp_path: Path) -> None:
    assert run.team_section(tmp_path)[-1] == "Not measured: run `make bench-tracking` and `make bench-distributed`."
    (tmp_path / "distributed-benchmark.json").write_text(json.dumps(distributed_figures()))
    rounds = [{stage: {"mlflow_seconds": seconds} for stage, seconds in (("split", 0.0), ("train", value))}
              for value in (1.0, 3.0, 2.0)]  # fmt: skip
    (tmp_path / "tracking-benchmark.json").write_text(json.dumps({
        "command": "make bench-tracking", "date": "2026-12-01", "repeats": 3, "server": "PostgreSQL",
        "runs": {"sqlite": rounds, "server": [{**r, "train": {"mlflow_seconds": 1.5}} for r in rounds]},
    }))  # fmt: skip
    section = "\n".join(run.team_section(tmp_path))
    assert "| train | 2.00 | 1.50 |" in section
    assert "| split |" not in section  # no MLflow call on either store
    assert "**533 images/s against 711** for one process on the same cores (0.75 times)" in section
    assert "**90 ms of each 120 ms step** (75%)" in section


def test_report_repeats_the_scale_figures_or_says_they_are_missing(tmp_path: Path) -> None:
    assert run.scale_section(tmp_path)[-1] == "Not measured: run `make bench-scale`."

    def stages(peak: float) -> dict:
        return {name: {"peak_rss_mib": peak + index} for index, name in enumerate(pipeline.STAGES)}

    def size(images: int, peak: float, fraction: float) -> dict:
        incremental = {"fraction_of_full": fraction, "shards": 40, "shards_written": 4}
        return {"images": images, "stages": stages(peak), "train_images_per_second": 2000.0, "incremental": incremental}

    (tmp_path / "scale.json").write_text(json.dumps({
        "date": "2026-12-02", "machine": "AMD EPYC, 2 cores",
        "sizes": [size(60_000, 100.0, 0.104), size(600_000, 150.0, 0.074)],
        "rgb": [{"images": 5_000, "stages": stages(1000.0)}, {"images": 50_000, "stages": stages(1100.0)}],
        "photos": {"images": 20_000, "stages": stages(2000.0), "seconds_per_epoch": 432.1, "test_accuracy": 0.9547},
    }))  # fmt: skip
    section = "\n".join(run.scale_section(tmp_path))
    assert "| 600,000 | 150 | 151 | 152 | 153 | 154 |" in section
    assert "| ratio 600,000 / 60,000 | 1.50 | 1.50 | 1.49 | 1.49 | 1.48 |" in section
    assert "10.4% at 60,000 (4 of 40 shards written again), 7.4% at 600,000" in section
    assert "peaks at 1,104 MiB with 50,000 images, 1.10 times its 1,004 MiB with 5,000" in section
    assert "largest stage export at 2,004 MiB, 432 s per epoch, test accuracy 0.9547" in section


def test_process_age_is_within_the_time_its_parent_saw_it_live() -> None:
    # The age comes from boot-relative clocks: one taken from the whole-second boot time of /proc/stat
    # (psutil's create_time) is up to a second longer than the process has lived.
    started = time.time()
    child = subprocess.run(
        [sys.executable, "-c", "from benchmarks import profile; print(profile.seconds_since_start())"],
        capture_output=True, text=True, check=True, cwd=pipeline.PROJECT_ROOT,
    )  # fmt: skip
    lived = time.time() - started
    assert 0 < float(child.stdout) <= lived


def test_photo_figures_carried_from_an_earlier_run_keep_their_date(tmp_path: Path) -> None:
    stages = {name: {"peak_rss_mib": 2000.0} for name in pipeline.STAGES}
    photos = {"images": 20_000, "stages": stages, "seconds_per_epoch": 432.1, "test_accuracy": 0.9547,
              "repro_seconds": 2063.0, "raw_bytes": 882e6, "prepared_bytes": 1537e6}  # fmt: skip
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"date": "2026-11-30", "photos": photos}))
    carried = scale.carried_photos(earlier)
    assert carried == {"date": "2026-11-30", **photos}
    page = scale.render({"date": "2026-12-02", "machine": "AMD EPYC, 2 cores", "sizes": [], "photos": carried})
    assert "Measured 2026-11-30. 20,000 generated JPEG photos" in page
    assert "Measured 2026-12-02 on AMD EPYC, 2 cores" in page
    # Measured in the same run, the photos carry that run's date.
    assert "Measured 2026-12-02. 20,000" in scale.render({"date": "2026-12-02", "machine": "x", "sizes": [],
                                                          "photos": {**photos, "date": "2026-12-02"}})  # fmt: skip
    (tmp_path / "none.json").write_text(json.dumps({"date": "2026-11-30", "sizes": []}))
    with pytest.raises(ValueError, match=r"none\.json holds no photo-recipe figures$"):
        scale.carried_photos(tmp_path / "none.json")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx2 avx512f", "AMD EPYC (AVX-512)"), ("fpu avx avx2", "AMD EPYC (AVX2)"), ("fpu sse4_2", "AMD EPYC")],
)
def test_the_machine_names_its_widest_vector_instructions(
    flags: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    real_path = scale.Path
    monkeypatch.setattr(scale, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo" else real_path(name))
    assert scale.cpu_model() == expected
