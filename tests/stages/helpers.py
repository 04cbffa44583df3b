"""Helpers shared by the stage tests."""

from __future__ import annotations

import os
from pathlib import Path


def open_fds(path: Path) -> list[str]:
    """File descriptors of this process that point at ``path``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                found.append(fd)
        except OSError:
            continue
    return found
