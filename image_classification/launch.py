"""Start every process of a multi-process training run on this machine, and supervise them.

`train.distribution: multi_process` with `train.coordinator_address: null` runs all
`train.num_processes` processes here: the stage's own process becomes this supervisor, which starts
them as `python -m stages.train ... --process-index K --coordinator-address 127.0.0.1:PORT` on a free
port, relays process 0's output and keeps the others' in log files. When one process fails or is
killed, the supervisor stops the others at once (a process left waiting in a collective would hang
until JAX's heartbeat timeout) and the stage fails; the chief's checkpoint of the last completed
epoch stays, so the next `dvc repro` resumes from it.

This module imports neither Keras nor a backend: the supervisor only watches.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from image_classification.config import TrainParams

# What `jax.distributed` and Gloo print on every start, and absl's INFO and WARNING lines from native code.
NOISE = re.compile(r"\[Gloo\] .*|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*")
ERROR_LINE = re.compile(r"\w+: error: ")
POLL_SECONDS = 0.2
# After the first failure, how long to wait for the other processes to fail in turn before naming the cause.
CAUSE_SECONDS = 2
# How long a process may take to leave after SIGTERM, and the others to finish once the chief has.
STOP_GRACE_SECONDS = 10
FINISH_SECONDS = 120


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (this module stays free of the services' code)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def threads_per_process(num_processes: int, cores: int | None = None) -> int:
    """The cores of this machine shared out among `num_processes` processes (at least 1 each)."""
    return max(1, (cores or os.cpu_count() or 1) // num_processes)


def supervise(settings: TrainParams, command: Sequence[str], log_dir: Path) -> bool:
    """Run every process of the training here when `settings` ask for that; say whether it did.

    That is `distribution: multi_process` with `coordinator_address: null`. Each process gets
    `--intra-op-threads`: `train.intra_op_threads`, or this machine's cores shared out among them.
    With a coordinator address this process is the chief and trains itself (False).

    Raises:
        SystemExit, ValueError: as `run_local`.
    """
    if settings.distribution != "multi_process" or settings.coordinator_address is not None:
        return False
    threads = settings.intra_op_threads or threads_per_process(settings.num_processes)
    run_local([*command, "--intra-op-threads", str(threads)], settings.num_processes, log_dir)
    return True


def run_local(command: Sequence[str], num_processes: int, log_dir: Path) -> None:
    """Run `command` as processes 0 .. `num_processes` - 1 of one training run on this machine; wait for all.

    Each process gets `--process-index K --coordinator-address 127.0.0.1:PORT` appended. Process 0's
    standard output and error are relayed to ours without `NOISE`; every process writes everything
    to `log_dir/process-K.log`.

    Raises:
        SystemExit: process 0 failed and has already said why (its exit code is passed on).
        ValueError: another process failed or was killed; names it, how, and its log file.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []
    chief_log = None
    held: list[str] = []  # process 0's error lines, shown only if it failed first
    try:
        for index in range(num_processes):
            log_path = log_dir / f"process-{index}.log"
            log = log_path.open("w", encoding="utf-8")
            child = [*command, "--process-index", str(index), "--coordinator-address", address]
            if index == 0:
                process = subprocess.Popen(
                    child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
                )
                chief_log, lock = log, threading.Lock()
                for stream, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
                    relay = threading.Thread(target=_relay, args=(stream, target, log, lock, held), daemon=True)
                    relay.start()
                    relays.append(relay)
            else:
                process = subprocess.Popen(child, stdout=log, stderr=subprocess.STDOUT)
                log.close()
            processes.append(process)
        _wait(processes, log_dir, held)
    finally:
        _stop(processes)
        for relay in relays:
            relay.join(timeout=STOP_GRACE_SECONDS)
        if chief_log is not None:
            chief_log.close()


def _wait(processes: list[subprocess.Popen], log_dir: Path, held: list[str]) -> None:
    """Return when every process has exited 0; raise at the first failure, blaming its cause.

    When one process dies the others fail too, in their next collective, within moments; the
    cause is a process killed by a signal, else process 0 if it failed (it has said why), else the
    lowest index that failed.
    """
    finished_at = None
    while True:
        codes = [process.poll() for process in processes]
        if any(code not in (None, 0) for code in codes):
            time.sleep(CAUSE_SECONDS)  # let the consequences of the first failure settle
            codes = [process.poll() for process in processes]
            _stop(processes)
            failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
            killed = [index for index in failed if codes[index] < 0]
            index = (killed or ([0] if 0 in failed else failed))[0]
            if index == 0 and codes[0] > 0:
                for line in held:  # process 0's own error line
                    sys.stderr.write(line)
                raise SystemExit(codes[0])
            log_path = log_dir / f"process-{index}.log"
            raise ValueError(
                f"training process {index} of {len(processes)} {_how(codes[index])}, so the others were stopped "
                f"({_last_line(log_path)}); `dvc repro` resumes from the last completed epoch"
            )
        if all(code == 0 for code in codes):
            return
        if codes[0] == 0:
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > FINISH_SECONDS:
                raise ValueError(
                    f"training process 0 finished but the others did not exit within {FINISH_SECONDS} s; "
                    f"see their logs in {log_dir}"
                )
        time.sleep(POLL_SECONDS)


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM every process still running, then SIGKILL what is left after the grace period."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _relay(stream, target, log, lock: threading.Lock, held: list[str]) -> None:
    """Copy one of process 0's output streams to its log, and all but `NOISE` to `target`.

    Its error lines go to `held` instead: when another process died first they are only consequences.
    """
    for line in stream:
        with lock:
            if not log.closed:
                log.write(line)
                log.flush()
        if ERROR_LINE.match(line):
            held.append(line)
        elif not NOISE.fullmatch(line.rstrip("\n")):
            target.write(line)
            target.flush()


def _how(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _last_line(path: Path) -> str:
    """The log's last line that is not `NOISE`, as a hint of what went wrong."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line and not NOISE.fullmatch(line)]
    except OSError:
        return f"no log at {path}"
    return f"the last line of {path}: {lines[-1].strip()[:200]}" if lines else f"nothing in {path}"
