"""The supervisor of a multi-process training on one machine, with real (small) child processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from image_classification import launch
from image_classification.config import parse_params
from tests.conftest import merged, raw_params


def fake_processes(script: str) -> list[str]:
    """A command that runs `script` with `index` set from the `--process-index` the supervisor appends."""
    prelude = "import os, signal, sys, time\nindex = int(sys.argv[sys.argv.index('--process-index') + 1])\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(script)]


def test_supervisor_relays_process_0_without_noise_and_waits_for_all(tmp_path: Path, capfd) -> None:
    script = """
        assert sys.argv[-2] == "--coordinator-address" and sys.argv[-1].startswith("127.0.0.1:")
        print("[Gloo] Rank %d is connected to 1 peer ranks." % index, flush=True)
        print(f"epoch 1 on process {index}", flush=True)
        print("I0000 00:00:1796138106.929219    8278 client.cc:80] chatter", file=sys.stderr)
        time.sleep(0.5 * index)
    """
    launch.run_local(fake_processes(script), 3, tmp_path / "logs")
    out, err = capfd.readouterr()
    assert out == "epoch 1 on process 0\n"
    assert err == ""
    assert "epoch 1 on process 2" in (tmp_path / "logs" / "process-2.log").read_text()
    assert "[Gloo]" in (tmp_path / "logs" / "process-0.log").read_text()


def test_a_killed_worker_stops_the_others_and_is_named(tmp_path: Path, capfd) -> None:
    script = """
        if index == 1:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
        print("train: error: a collective failed because its peer went away", file=sys.stderr, flush=True)
    """
    started = time.monotonic()
    with pytest.raises(ValueError, match="training process 1 of 2 was killed by SIGKILL, so the others were stopped"):
        launch.run_local(fake_processes(script), 2, tmp_path / "logs")
    assert time.monotonic() - started < 30  # process 0 was stopped, not waited for
    assert "error" not in capfd.readouterr().err
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert leftover.stdout == b""


def test_process_0_failing_first_keeps_its_own_line_and_status(tmp_path: Path, capfd) -> None:
    script = """
        if index == 0:
            print("train: error: MLFLOW_TRACKING_URI = 'x': not a tracking URI", file=sys.stderr, flush=True)
            sys.exit(2)
        time.sleep(1)  # a worker waiting on the coordinator fails in turn
        sys.exit(1)
    """
    with pytest.raises(SystemExit) as raised:
        launch.run_local(fake_processes(script), 2, tmp_path / "logs")
    assert raised.value.code == 2
    assert capfd.readouterr().err == "train: error: MLFLOW_TRACKING_URI = 'x': not a tracking URI\n"


def test_threads_are_shared_out_among_the_processes() -> None:
    assert launch.threads_per_process(2, cores=2) == 1
    assert launch.threads_per_process(3, cores=16) == 5
    assert launch.threads_per_process(4, cores=2) == 1


def test_killing_with_sigterm_is_reported_by_name() -> None:
    assert launch._how(-signal.SIGTERM) == "was killed by SIGTERM"
    assert launch._how(3) == "exited with status 3"


def test_supervise_runs_only_multi_process_without_a_coordinator(tmp_path: Path) -> None:
    command = fake_processes("print('trained', index)")
    for train in ({}, {"distribution": "multi_process", "backend": "jax", "coordinator_address": "10.1.2.3:1234"}):
        assert not launch.supervise(parse_params(merged(raw_params(), {"train": train})).train, command, tmp_path)
    settings = parse_params(merged(raw_params(), {"train": {"distribution": "multi_process", "backend": "jax"}})).train
    assert launch.supervise(settings, command, tmp_path)
    log = (tmp_path / "process-1.log").read_text()
    assert log == "trained 1\n"
