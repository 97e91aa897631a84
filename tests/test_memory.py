"""The memory check a stage makes before it allocates."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_classification import memory


def test_available_memory_is_positive_and_at_most_the_machine() -> None:
    import psutil

    available = memory.available_bytes()
    assert 0 < available <= psutil.virtual_memory().total


def test_a_cgroup_limit_below_the_machine_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(f"{2 * 2**30}\n")
    usage.write_text(f"{2**29}\n")
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((limit, usage),))
    assert memory.available_bytes() == 2 * 2**30 - 2**29
    limit.write_text("max\n")  # no limit: the machine's available memory counts
    import psutil

    assert abs(memory.available_bytes() - psutil.virtual_memory().available) < 2**28


def test_require_refuses_with_both_sizes_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 2**30)
    memory.require(2**30, "splitting data", memory.DATA_SIZE_FIX)
    with pytest.raises(ValueError, match=r"needs about 3\.00 GiB") as caught:
        memory.require(3 * 2**30, "splitting data/prepared/dataset.npz", memory.DATA_SIZE_FIX)
    assert str(caught.value) == (
        "splitting data/prepared/dataset.npz needs about 3.00 GiB of memory and 2.00 GiB is available; lower "
        "data.image_height, data.image_width or data.channels, or set data.max_images"
    )


def test_files_bytes_counts_what_exists(tmp_path: Path) -> None:
    (tmp_path / "a.npz").write_bytes(b"x" * 100)
    assert memory.files_bytes(tmp_path / "a.npz", tmp_path / "missing.npz") == 100
