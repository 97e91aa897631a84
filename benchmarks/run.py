"""Benchmark the pipeline against plain Keras and write BENCHMARKS.md.

    python -m benchmarks.run [--data images.npz] [--output BENCHMARKS.md] [--quick]

Five figures, each measured in this one invocation beside its baseline: training throughput of the
train stage's loop against plain `model.fit`, time to accuracy of the default recipe against the
keras.io "Simple MNIST convnet", the overhead of a full and a no-op `dvc repro`, peak memory per
stage at two dataset sizes, and FLOPs per image against this CPU's peak. `--data` takes any .npz
with `x` (uint8 N,H,W[,C]) and `y`; the default is the 5,000 embedded digits. `--quick` shrinks
every size so that the whole run takes about a minute (used by the tests); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
from importlib import metadata
from pathlib import Path

from benchmarks import hard_digits, pipeline, scale, training
from image_classification import artifacts
from image_classification.config import TrainParams, load_params
from image_classification.data import dataset as dataset_lib
from image_classification.data import sources, split

logger = logging.getLogger("benchmarks")

LARGE_IMAGES = 60_000
# The second time-to-accuracy race: a generated set the recipe was not tuned on (`hard_digits`).
RACE_IMAGES = 60_000
QUICK_RACE_IMAGES = 600
QUICK_TRAIN = {"epochs": 2, "warmup_epochs": 0, "filters": 8, "dense_units": 32, "batch_size": 32}
PACKAGES = ("tensorflow", "keras", "dvc", "mlflow", "numpy")
# How `training.cpu_peak` arrived at its FLOPs per cycle per core, from the CPU flags.
CYCLE_SOURCES = {
    64: "FMA on 16 float32 lanes, two units, from the AVX-512 flags",
    32: "FMA on 8 float32 lanes, two units, from the AVX2 and FMA flags",
}


def load_data(path: Path | None) -> dataset_lib.Dataset:
    """The embedded digits, or the arrays `x` and `y` (and optional `class_names`) of an .npz file.

    Raises:
        ValueError: the file lacks `x` or `y`, or they are not images and labels.
    """
    dataset = sources.load_embedded_digits() if path is None else sources.read_npz(path)
    dataset_lib.validate(dataset, str(path) if path else "")
    return dataset


def measure(data_path: Path | None, quick: bool) -> dict:
    """Run every benchmark and return the figures as plain data."""
    params = load_params(pipeline.PROJECT_ROOT / "params.yaml")
    overrides = {"train": QUICK_TRAIN} if quick else {}
    settings: TrainParams = params.train.model_copy(update=overrides.get("train", {}))
    dataset = load_data(data_path)
    indices = split.partition(
        dataset.labels, dataset_lib.content_hashes(dataset.images), dataset.class_names, params.split
    )
    parts = {name: dataset.subset(getattr(indices, name)) for name in split.SPLITS}
    results: dict = {"images": len(dataset), "data": str(data_path) if data_path else "embedded 5,000 digits"}

    logger.info("1/5 throughput")
    throughput_settings = settings.model_copy(update={"epochs": 2 if quick else 4, "warmup_epochs": 0})
    speed = training.throughput(throughput_settings, parts["train"], parts["validation"], repeats=1 if quick else 3)
    results["throughput"] = {
        "pipeline": speed.pipeline,
        "plain": speed.plain,
        "plain_same_compile": speed.plain_same_compile,
        "ratio": speed.ratio,
        "epochs": speed.epochs,
        "images": speed.images,
        "batch_size": settings.batch_size,
        "jit_compile": settings.jit_compile,
    }

    logger.info("2/5 time to accuracy at %d images", len(dataset))
    reference_epochs = 2 if quick else training.REFERENCE_EPOCHS
    results["time_to_accuracy"] = {
        "small": race_figures(
            training.time_to_accuracy(settings, parts["train"], parts["test"], reference_epochs),
            results["data"],
            len(dataset),
        )
    }
    large_race_size = QUICK_RACE_IMAGES if quick else RACE_IMAGES
    logger.info("2/5 time to accuracy at %d generated images (%s)", large_race_size, "distorted digits")
    hard, _ = hard_digits.build(large_race_size, params.split)
    results["time_to_accuracy"]["large"] = race_figures(
        training.time_to_accuracy(settings, hard["train"], hard["test"], reference_epochs),
        hard_digits.DESCRIPTION,
        sum(len(part) for part in hard.values()),
    )

    logger.info("3/5 and 4/5 dvc repro, twice")
    repro_overrides = {"train": QUICK_TRAIN} if quick else {}
    large_size = 4 * len(dataset) if quick else LARGE_IMAGES
    large_overrides = {"train": {**repro_overrides.get("train", {}), "epochs": 1, "warmup_epochs": 0}}
    with pipeline.workspace() as folder:
        small = pipeline.repro(dataset if data_path else None, repro_overrides, folder / "small", 1 if quick else 3)
    with pipeline.workspace() as folder:
        large = pipeline.repro(pipeline.enlarge(dataset, large_size), large_overrides, folder / "large", 0)
    results["repro"] = {"small": small.__dict__, "large": large.__dict__}

    logger.info("5/5 FLOPs and peak")
    flops = training.training_flops(settings, dataset.images.shape[1:], len(dataset.class_names))
    peak = training.cpu_peak(matrix_side=512 if quick else 2048)
    achieved = flops.per_image * statistics.median(speed.pipeline)
    results["ceiling"] = {
        "flops_per_image": flops.per_image,
        "flops_per_image_by_op": flops.per_image_by_op,
        "achieved_flops": achieved,
        "peak": peak.__dict__,
        "fraction_of_measured": achieved / peak.measured,
        "fraction_of_theoretical": achieved / peak.theoretical if peak.theoretical else None,
    }
    results["machine"] = machine()
    results["train_params"] = settings.model_dump()
    return results


def race_figures(race: training.TimeToAccuracy, data: str, images: int) -> dict:
    """One time-to-accuracy race as plain data, with both recipes' training throughput."""
    return {
        "data": data,
        "images": images,
        "train_images": race.train_images,
        "default": race.default,
        "reference": race.reference,
        "target": race.target,
        "budget": race.budget,
        "default_seconds_to_target": race.seconds_to_target(race.default),
        "reference_seconds_to_target": race.seconds_to_target(race.reference),
        "default_accuracy_within_budget": race.accuracy_within_budget(race.default),
        "reference_accuracy_within_budget": race.accuracy_within_budget(race.reference),
        "default_images_per_second": race.images_per_second(race.default),
        "reference_images_per_second": race.images_per_second(race.reference),
    }


def machine() -> dict:
    import tensorflow as tf

    info = training.cpuinfo()
    return {
        "cpu": info.get("model name", platform.processor() or "unknown"),
        "cores": len(os.sched_getaffinity(0)),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(),
        "packages": {name: metadata.version(name) for name in PACKAGES},
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_report(results: dict, output: Path, command: str) -> None:
    """Write the Markdown report, its figure (same name, .png) and the raw figures (same name, .json)."""
    figure = output.with_suffix(".png")
    _plot(results["time_to_accuracy"], figure)
    artifacts.write_json(output.with_suffix(".json"), results)
    text = render(results, command, figure.name)
    with artifacts.atomic_path(output) as staged:
        staged.write_text(text, encoding="utf-8")


def team_section(docs: Path) -> list[str]:
    """Section 6, from the figures `make bench-tracking` and `make bench-distributed` wrote beside their pages.

    They need the team's servers and the JAX backend, so they run as their own commands; this
    report repeats their headline figures and says when they were measured.
    """
    lines = ["", "## 6. Teams and clusters", ""]
    tracking, distributed = docs / "tracking-benchmark.json", docs / "distributed-benchmark.json"
    if tracking.is_file():
        figures = json.loads(tracking.read_text(encoding="utf-8"))
        seconds = {
            store: {stage: statistics.median(r[stage]["mlflow_seconds"] for r in rounds) for stage in rounds[0]}
            for store, rounds in figures["runs"].items()
        }
        sqlite, server = seconds["sqlite"], seconds["server"]
        lines += [
            f"**Tracking round trip** (`{figures['command']}`, {figures['date']}, "
            f"[docs/tracking-benchmark.md](docs/tracking-benchmark.md)): seconds the stages spend in MLflow calls, "
            f"median of {figures['repeats']} rounds of `dvc repro`, SQLite store against the shared server "
            f"({figures['server']}).",
            "",
            "| stage | SQLite store | shared server |",
            "|---|---|---|",
            *(f"| {stage} | {sqlite[stage]:.2f} | {server[stage]:.2f} |" for stage in sqlite if sqlite[stage] or
              server[stage]),
            f"| all stages | {sum(sqlite.values()):.2f} | {sum(server.values()):.2f} |",
            "",
        ]  # fmt: skip
    if distributed.is_file():
        figures = json.loads(distributed.read_text(encoding="utf-8"))
        one, two, half = (figures["runs"][name] for name in ("one", "two", "half"))
        overhead = two["step_ms"] - half["step_ms"]
        lines += [
            f"**Two workers against one** (`{figures['command']}`, {figures['date']}, "
            f"[docs/distributed-benchmark.md](docs/distributed-benchmark.md)): the train stage on JAX, "
            f"`distribution: multi_process`, {figures['epochs']} epochs of the embedded digits, global batch "
            f"{figures['batch_size']}.",
            "",
            f"- Two processes: **{two['images_per_second']:,.0f} images/s against {one['images_per_second']:,.0f}** "
            f"for one process on the same cores ({two['images_per_second'] / one['images_per_second']:.2f} times).",
            f"- Communication overhead: **{overhead:.0f} ms of each {two['step_ms']:.0f} ms step** "
            f"({overhead / two['step_ms']:.0%}), against {half['step_ms']:.0f} ms for one process computing its "
            "half of the batch alone: the collectives of every step over Gloo, dominated by their latency with a "
            "model this small.",
            "",
        ]
    if len(lines) == 3:
        lines += ["Not measured: run `make bench-tracking` and `make bench-distributed`.", ""]
    return lines[:-1]


def scale_section(docs: Path) -> list[str]:
    """Section 7, from the figures `make bench-scale` wrote beside docs/scale.md.

    Its sizes go to 600,000 images and take over an hour, so it runs as its own command; this
    report repeats its memory table and headline figures and says when they were measured.
    """
    lines = ["", "## 7. Data at scale", ""]
    figures_path = docs / "scale.json"
    if not figures_path.is_file():
        return [*lines, "Not measured: run `make bench-scale`."]
    figures = json.loads(figures_path.read_text(encoding="utf-8"))
    return [
        *lines,
        f"From `make bench-scale` ({figures['date']}, {figures['machine']}; [docs/scale.md](docs/scale.md) has "
        "every figure and how the data is generated): peak resident memory of each stage (MiB) through "
        "`dvc repro` on generated 28x28 PNG folders, 1 epoch.",
        "",
        *scale.memory_table(figures["sizes"]),
        "",
        *scale.headlines(figures),
    ]


def render(results: dict, command: str, figure_name: str) -> str:
    """The report as Markdown."""
    machine_info = results["machine"]
    speed = results["throughput"]
    small, large = results["repro"]["small"], results["repro"]["large"]
    ceiling = results["ceiling"]
    peak = ceiling["peak"]
    packages = ", ".join(f"{name} {version}" for name, version in machine_info["packages"].items())
    lines = [
        "# Benchmarks",
        "",
        f"Measured {machine_info['date']} on {machine_info['cpu']}, {machine_info['cores']} cores "
        f"({'GPUs: ' + ', '.join(machine_info['gpus']) if machine_info['gpus'] else 'no GPU'}); "
        f"Python {machine_info['python']}, {packages}. Data: {results['data']} "
        f"({results['images']:,} images).",
        "",
        f"Command: `{command}`. Every figure comes from this one invocation, beside its baseline.",
        "",
    ]
    if not machine_info["gpus"]:
        lines += [
            "No GPU was visible, so no GPU figures were measured and mixed precision "
            "(`train.mixed_precision`, rejected on CPUs) was not exercised.",
            "",
        ]
    lines += [
        "## 1. Training throughput",
        "",
        f"Images per second over epochs 2-{speed['epochs']} (the first, which traces the graph, is left out), "
        f"{speed['images']:,} training images, batch {speed['batch_size']}, validation after each epoch in "
        "both, the same model. Alternated, median of the repeats.",
        "",
        "| Training loop | images/s per repeat | median |",
        "|---|---|---|",
        _throughput_row("train stage (`training.fit`: tf.data, MLflow and checkpoint callbacks)", speed["pipeline"]),
        _throughput_row("plain `model.fit` on NumPy arrays, Keras's default compile", speed["plain"]),
    ]
    if speed["plain_same_compile"]:
        lines.append(_throughput_row("plain `model.fit`, compiled like the stage (XLA)", speed["plain_same_compile"]))
    lines += ["", f"**Ratio stage / plain: {speed['ratio']:.2f}** (target: at least 1.00).", ""]
    if speed["plain_same_compile"]:
        same = statistics.median(speed["pipeline"]) / statistics.median(speed["plain_same_compile"])
        lines += [
            f"Against plain `fit` compiled the same way: {same:.2f} (the input pipeline and callbacks alone).",
            "",
        ]
    races = results["time_to_accuracy"]
    lines += [
        "Recipe cost per image: the default recipe through the stage's loop against the keras.io reference "
        "model with plain `fit` (batch 128), each on its own recipe, from the time-to-accuracy runs below "
        "(median images/s over epochs 2 on, no validation in either).",
        "",
        "| Data | train images | default recipe images/s | reference images/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for race in races.values():
        default_speed, reference_speed = race["default_images_per_second"], race["reference_images_per_second"]
        ratio = f"**{default_speed / reference_speed:.2f}**" if default_speed and reference_speed else "n/a"
        lines.append(
            f"| {race['images']:,} images | {race['train_images']:,} | {_number(default_speed)} | "
            f"{_number(reference_speed)} | {ratio} |"
        )
    lines += [
        "",
        "Target: the default recipe trains at least 1.2 times as many images per second as the reference.",
        "",
        "## 2. Time to accuracy",
        "",
        f"Reference: {training.REFERENCE_RECIPE}, {len(races['small']['reference'])} epochs. Default recipe: "
        "params.yaml `train`, through the stage's loop. Each race trains both on the same train split; test "
        "accuracy after every epoch, cumulative training seconds without evaluation. The target is the "
        "reference's final accuracy, the budget its training time.",
        "",
        "Targets: the default recipe reaches the target in at most 0.4 of the budget at 5,000 images and 0.5 at "
        "60,000, and is more accurate than the reference within the budget at both sizes.",
        "",
        "| Data | recipe | seconds to target | share of budget | accuracy within budget | final accuracy | epochs "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for race in races.values():
        target = f"{race['images']:,} images (target {race['target']:.4f}, budget {race['budget']:.1f} s)"
        lines.append(_race_row(target, "default (params.yaml)", race["default"], race, "default"))
        lines.append(_race_row("", "keras.io reference", race["reference"], race, "reference"))
    lines += ["", f"![test accuracy against training seconds]({figure_name})", ""]
    for race in races.values():
        lines += [
            f"{race['images']:,} images: {race['data']}.",
            "",
            "| Epoch | default seconds | default accuracy | reference seconds | reference accuracy |",
            "|---|---|---|---|---|",
        ]
        for index in range(max(len(race["default"]), len(race["reference"]))):
            cells = [str(index + 1)]
            for rows in (race["default"], race["reference"]):
                row = rows[index] if index < len(rows) else None
                cells += [f"{row['seconds']:.1f}", f"{row['accuracy']:.4f}"] if row else ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## 3. Pipeline overhead",
        "",
        f"A full `dvc repro` of a fresh copy of the project ({small['images']:,} images, default params"
        f"{' with ' + json.dumps(small['overrides']) if small['overrides'] else ''}) took "
        f"**{small['wall_seconds']:.1f} s**, of which the train stage's `fit` took {small['train_seconds']:.1f} s "
        f"({small['train_seconds'] / small['wall_seconds']:.0%}). Target: under 45 s, with `fit` at least 45% of it.",
        "",
        "Per stage, from each stage's own profile (`STAGES_PROFILE`): start-up is process start to `main` "
        "(interpreter and imports), MLflow is the time inside MLflow calls (store set-up, logging, model "
        "logging and registration), work is the rest of `main`.",
        "",
        "| Stage | start-up s | MLflow s | work s | total s |",
        "|---|---|---|---|---|",
    ]
    accounted = 0.0
    for stage in pipeline.STAGES:
        record = small["stages"].get(stage)
        if record is None:
            continue
        total = record["startup_seconds"] + record["main_seconds"]
        accounted += total
        work = record["main_seconds"] - record["mlflow_seconds"]
        lines.append(
            f"| {stage} | {record['startup_seconds']:.1f} | {record['mlflow_seconds']:.1f} | {work:.1f} | {total:.1f} |"
        )
    lines += [
        f"| between stages: DVC (hashing, locking) and each process's exit | | | | "
        f"{small['wall_seconds'] - accounted:.1f} |",
        "",
    ]
    if small["noop_seconds"]:
        noop = pipeline.median(small["noop_seconds"])
        runs = ", ".join(f"{value:.2f}" for value in small["noop_seconds"])
        lines += [f"No-op `dvc repro` (nothing changed): **{noop:.2f} s** median of {runs} (target: under 1.5 s).", ""]
    lines += [
        "## 4. Memory",
        "",
        f"Peak resident memory of each stage process (MiB), at {small['images']:,} images and at "
        f"{large['images']:,} images (shifted and noised copies of the same data as an .npz file; "
        f"train runs {large['overrides']['train']['epochs']} epoch there).",
        "",
        f"| Stage | {small['images']:,} images | {large['images']:,} images |",
        "|---|---|---|",
    ]
    for stage in pipeline.STAGES:
        if stage in small["stages"] and stage in large["stages"]:
            small_mib, large_mib = small["stages"][stage]["peak_rss_mib"], large["stages"][stage]["peak_rss_mib"]
            lines.append(f"| {stage} | {small_mib:.0f} | {large_mib:.0f} |")
    by_op = ", ".join(f"{name} {value / 1e6:.2f}" for name, value in list(ceiling["flops_per_image_by_op"].items())[:6])
    lines += [
        "",
        "## 5. Hardware ceiling",
        "",
        f"Training FLOPs per image, counted from the graph of one training step (forward, backward and "
        f"optimizer update) with TensorFlow's registered op statistics: **{ceiling['flops_per_image'] / 1e6:.2f} "
        f"MFLOP** (largest, in MFLOP: {by_op}).",
        "",
        f"At the stage's median {statistics.median(speed['pipeline']):,.0f} images/s that is "
        f"**{ceiling['achieved_flops'] / 1e9:.2f} GFLOP/s**.",
        "",
        f"- Measured peak: the best float32 {peak['matrix_side']}-side matrix product "
        f"through TensorFlow: {peak['measured'] / 1e9:.1f} GFLOP/s; the training loop reaches "
        f"**{ceiling['fraction_of_measured']:.1%}** of it (the fraction this report uses).",
    ]
    if ceiling["fraction_of_theoretical"]:
        lines.append(
            f"- Theoretical peak: {peak['cores']} cores x {peak['megahertz']:.0f} MHz (nominal, /proc/cpuinfo) x "
            f"{peak['flops_per_cycle']} FLOP/cycle ({CYCLE_SOURCES.get(peak['flops_per_cycle'], 'no FMA flags')}) = "
            f"{peak['theoretical'] / 1e9:.1f} GFLOP/s; the loop reaches {ceiling['fraction_of_theoretical']:.1%}."
        )
    lines += team_section(Path("docs"))
    lines += scale_section(Path("docs"))
    levers = Path(__file__).with_name("levers.md")
    if levers.is_file():
        lines += ["", levers.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def _throughput_row(name: str, values: list[float]) -> str:
    return f"| {name} | {', '.join(f'{value:,.0f}' for value in values)} | {statistics.median(values):,.0f} |"


def _race_row(data: str, name: str, rows: list[dict], race: dict, key: str) -> str:
    seconds = race[f"{key}_seconds_to_target"]
    within = race[f"{key}_accuracy_within_budget"]
    share = f"{seconds / race['budget']:.2f}" if seconds is not None else "never"
    return (
        f"| {data} | {name} | {f'{seconds:.1f}' if seconds is not None else 'not reached'} | {share} | "
        f"{f'{within:.4f}' if within is not None else 'no epoch done'} | {rows[-1]['accuracy']:.4f} | "
        f"{len(rows)} | {rows[-1]['seconds']:.1f} |"
    )


def _number(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def _plot(races: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, panels = pyplot.subplots(1, len(races), figsize=(5.5 * len(races), 3.6), dpi=100, squeeze=False)
    for axes, race in zip(panels[0], races.values(), strict=True):
        for name, key in (("default recipe", "default"), ("keras.io reference", "reference")):
            rows = race[key]
            axes.plot([row["seconds"] for row in rows], [row["accuracy"] for row in rows], marker="o", label=name)
        axes.axhline(race["target"], color="grey", linestyle="--", linewidth=1, label="reference final accuracy")
        axes.axvline(race["budget"], color="grey", linestyle=":", linewidth=1, label="reference time")
        axes.set_title(f"{race['images']:,} images", fontsize=10)
        axes.set_xlabel("training seconds")
        axes.set_ylabel("test accuracy")
        lowest = min(row["accuracy"] for row in race["default"] + race["reference"])
        axes.set_ylim(max(0.0, min(race["target"] - 0.1, lowest)), 1.0)
        axes.legend(loc="lower right", fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    with artifacts.atomic_path(path) as staged:
        figure.savefig(staged, format="png")
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help=".npz with x (uint8 N,H,W[,C]) and y; default: the embedded digits")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="report to write")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for testing the benchmark itself")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    results = measure(args.data, args.quick)
    results["quick"] = args.quick
    command = "python -m benchmarks.run" + "".join(
        f" {flag}" for flag in ((f"--data {args.data}" if args.data else ""), ("--quick" if args.quick else "")) if flag
    )
    write_report(results, args.output, command)
    print(f"bench: wrote {args.output}, {args.output.with_suffix('.png')} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
