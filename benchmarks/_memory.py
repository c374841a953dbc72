"""Peak extra resident memory of one call, for the benchmark scripts (Linux only).

PyTorch's CPU allocations are invisible to tracemalloc and torch keeps no CPU peak counter,
so a benchmark runs each measured call in a fresh subprocess that builds its inputs, warms
up, hands freed heap back to the OS (``malloc_trim``), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``) and reads ``VmHWM`` after one call. The result is that
high-water mark minus the resident size before the call: the extra memory the call needed,
outputs included.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

METHOD = ("fresh subprocess per cell; VmHWM after one call minus VmRSS before it, "
          "peak mark reset via /proc/self/clear_refs, malloc_trim first")


def available() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_extra_bytes(call: Callable[[], object], warmups: int = 2) -> int:
    """Run ``call`` (after warm-ups: lazy initialisation is not its memory) and return the
    peak resident memory it added, in bytes. Call this in a process of its own."""
    for _ in range(warmups):
        call()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # so re-used pages show up as growth
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    call()
    return max(0, _status_kb("VmHWM") - before) * 1024


def print_peak(call: Callable[[], object]) -> None:
    """Child side: measure and print the result as the last line of stdout."""
    print(json.dumps({"peak_bytes": peak_extra_bytes(call)}))


def peak_mb_in_child(argv: Sequence[str], timeout: float = 900) -> float | None:
    """Parent side: run ``python argv...`` (which ends with :func:`print_peak`); MB or None."""
    if not available():
        return None
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(f"  (memory measurement failed for {' '.join(argv[1:])}: {proc.stderr.strip()[-300:]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20
