"""What the benchmarks record of the machine they ran on (imported by the bench scripts, which run
with bench/ on sys.path)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it ("model name"), else what `platform` knows, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
