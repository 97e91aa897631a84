"""Memory a stage may use: measured before it allocates, so that a dataset too large fails with one line.

Without this check a too-large dataset ends in NumPy's allocation traceback or, worse, in the kernel's
OOM killer with no message at all.
"""

from __future__ import annotations

from pathlib import Path

import psutil

# cgroup v2, then v1: the limit a container or a job scheduler sets, below the machine's memory.
_CGROUP_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)
# Interpreter, libraries and buffers beside the arrays a stage holds.
HEADROOM_BYTES = 256 * 2**20


def available_bytes() -> int:
    """Bytes this process can still allocate: the machine's available memory, or less under a cgroup limit."""
    available = psutil.virtual_memory().available
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit_text = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text.isdigit() and int(limit_text) < 2**60:
            available = min(available, int(limit_text) - usage)
        break
    return max(available, 0)


def require(needed: int, what: str, fix: str) -> None:
    """Stop before allocating `needed` bytes that this machine does not have.

    Args:
        needed: the bytes the work will hold at its peak.
        what: the work, for the message ("decoding 64 images of 4096x4096x3").
        fix: the params that drive the size and how to change them.

    Raises:
        ValueError: one line with both sizes, in GiB, and `fix`.
    """
    available = available_bytes()
    if needed + HEADROOM_BYTES > available:
        raise ValueError(f"{what} needs about {gib(needed)} of memory and {gib(available)} is available; {fix}")


def gib(size: int) -> str:
    """A byte count as GiB with two decimals, `3.07 GiB`."""
    return f"{size / 2**30:.2f} GiB"
