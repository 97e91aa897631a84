"""TensorFlow's native start-up lines stay off the terminal; real errors and warnings do not."""

from __future__ import annotations

import os
import subprocess
import sys

from image_classification import native_logs
from tests.conftest import PROJECT_ROOT

NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796099270.555421   12462 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "E0000 00:00:1796099277.120505   12462 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796099270.555421   12462 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
]


def test_the_filter_drops_start_up_noise_and_keeps_everything_else() -> None:
    for line in NOISE_LINES:
        assert native_logs.NOISE.fullmatch(line), line
    for line in (
        "E0000 00:00:1796099277.120505   12462 op_kernel.cc:1830] OP_REQUIRES failed: OOM when allocating tensor",
        "W0000 00:00:17.1   1 loader.cc:42] could not read the SavedModel",
        "Traceback (most recent call last):",
    ):
        assert not native_logs.NOISE.fullmatch(line), line


def test_filtered_stderr_replays_what_is_not_noise() -> None:
    script = (
        "import os\n"
        "from image_classification import native_logs\n"
        "with native_logs.filtered_stderr():\n"
        f"    os.write(2, {NOISE_LINES[1]!r}.encode() + b'\\n')\n"
        "    os.write(2, b'a real problem\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.stderr == "a real problem\n"


def test_importing_tensorflow_through_the_library_is_quiet() -> None:
    script = (
        "import warnings, image_classification, keras, tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"  # still settable after the device probe
        "tf.constant(1.0) + 1\n"
        "warnings.warn('a real warning')\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "UserWarning: a real warning" in result.stderr
    assert not [line for line in result.stderr.splitlines() if native_logs.NOISE.fullmatch(line)], result.stderr
    assert "cuInit" not in result.stderr
