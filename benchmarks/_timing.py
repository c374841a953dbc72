"""Side-by-side timing shared by the benchmark scripts.

Calls are timed alternately, one after the other in every round, so that whatever else the
machine does at that moment slows all of them alike and their ratio stays meaningful.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable


def time_interleaved(calls: dict[str, Callable[[], object]], min_repeats: int = 5, max_repeats: int = 200,
                     budget_s: float = 3.0, warmup: int = 1,
                     sync: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each named call, measured in alternating rounds.

    Runs ``warmup`` untimed rounds, then rounds until every call has ``min_repeats`` timings
    and ``budget_s`` seconds have passed, or ``max_repeats`` rounds are done. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before each timer starts and before it stops, so that
    asynchronous device work is counted in the call that queued it.

    >>> t = time_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, min_repeats=3, budget_s=0)
    >>> sorted(t), len(t["a"]) == len(t["b"]) >= 3
    (['a', 'b'], True)
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_repeats and (rounds < min_repeats or time.perf_counter() - start < budget_s):
        for name, call in calls.items():
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            call()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def cpu_name() -> str:
    """The CPU model, for the header of a timing table ("unknown" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
