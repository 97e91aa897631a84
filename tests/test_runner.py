from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from image_classification import runner
from image_classification.config import ParamsError
from tests.conftest import PROJECT_ROOT


def test_success_returns_zero() -> None:
    assert runner.execute("demo", lambda argv: None) == 0


def test_params_error_is_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv):
        raise ParamsError("params.yaml: train.epochs = 0: too small\nparams.yaml: train.seed: missing")

    assert runner.execute("train", main) == runner.EXIT_BAD_PARAMS
    assert capsys.readouterr().err.splitlines() == [
        "train: error: params.yaml: train.epochs = 0: too small",
        "train: error: params.yaml: train.seed: missing",
    ]


def test_user_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv):
        raise ValueError("data/split/membership.npz: no split membership; run `dvc repro split`")

    assert runner.execute("evaluate", main) == runner.EXIT_ERROR
    assert (
        capsys.readouterr().err
        == "evaluate: error: data/split/membership.npz: no split membership; run `dvc repro split`\n"
    )


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGES_DEBUG", "1")

    def main(argv):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        runner.execute("evaluate", main)


def test_bugs_are_not_hidden() -> None:
    def main(argv):
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        runner.execute("train", main)


def test_sigterm_becomes_an_interrupt() -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from image_classification import runner

        def main(argv):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            finally:
                print("cleaned up", flush=True)

        sys.exit(runner.execute("train", main))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, env=os.environ
    )
    # The default SIGTERM action would end the process at once with -15 and skip the cleanup.
    assert result.returncode == runner.EXIT_INTERRUPTED
    assert result.stdout == "cleaned up\n"
    assert "train: interrupted" in result.stderr


@pytest.mark.parametrize(("failure", "code"), [("", 0), ("raise ValueError('data/raw: no images')", runner.EXIT_ERROR)])
def test_run_exits_with_the_code_after_threads_exit_handlers_and_buffered_output(
    tmp_path: Path, failure: str, code: int
) -> None:
    """`runner.run` skips only the freeing of objects: pools finish, `atexit` handlers run, output is flushed."""
    script = textwrap.dedent(
        f"""
        import atexit, concurrent.futures, pathlib, sys, threading, time
        from image_classification import runner

        folder = pathlib.Path(sys.argv[1])

        def late_write(name):
            time.sleep(0.3)
            (folder / name).write_text("done")

        def main(argv):
            atexit.register(lambda: (folder / "atexit").write_text("ran"))
            threading.Thread(target=late_write, args=("thread",)).start()
            concurrent.futures.ThreadPoolExecutor(1).submit(late_write, "pool")
            sys.stdout.write("summary line without a newline or a flush")
            {failure}

        runner.run("demo", main)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, env=os.environ,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert result.stdout == "summary line without a newline or a flush"
    assert result.stderr == ("demo: error: data/raw: no images\n" if code else "")
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == {
        "atexit": "ran", "thread": "done", "pool": "done",
    }  # fmt: skip


def test_running_out_of_memory_is_one_line_naming_the_params(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv):
        raise MemoryError("Unable to allocate 3.00 GiB for an array with shape (64, 4096, 4096, 3) and data type uint8")

    assert runner.execute("prepare", main) == runner.EXIT_ERROR
    assert capsys.readouterr().err == (
        "prepare: error: out of memory (Unable to allocate 3.00 GiB for an array with shape (64, 4096, 4096, 3) and "
        "data type uint8); lower data.image_height, data.image_width or data.channels, set data.max_images, or lower "
        "train.batch_size\n"
    )


def test_tensorflow_out_of_memory_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    class ResourceExhaustedError(Exception):  # TensorFlow's class, by name
        message = "OOM when allocating tensor with shape[8192,512,512,24]\n detail"

    def main(argv):
        raise ResourceExhaustedError("OOM")

    assert runner.execute("train", main) == runner.EXIT_ERROR
    error = capsys.readouterr().err
    assert error.startswith("train: error: out of memory in TensorFlow (OOM when allocating tensor with shape[8192")
    assert error.count("\n") == 1
