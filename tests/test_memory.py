"""The memory check a stage makes before it allocates."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_classification import memory

FIX = "convert it to an image folder, or split it into a smaller .npz"  # sources.NPZ_TOO_LARGE_FIX


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
    memory.require(2**30, "reading data", FIX)
    with pytest.raises(ValueError, match=r"needs about 3\.00 GiB") as caught:
        memory.require(3 * 2**30, "reading data/raw/digits.npz", FIX)
    assert str(caught.value) == (
        "reading data/raw/digits.npz needs about 3.00 GiB of memory and 2.00 GiB is available; convert it to an "
        "image folder, or split it into a smaller .npz"
    )
