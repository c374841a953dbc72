"""Ray as molconf's engine beyond one machine: connect, run work units as tasks, survive crashes.

Two jobs outgrow one host: 3D structures for a screening library
(:func:`molconf.library.predict_library`) and GFN2-xTB data builds
(:func:`molconf.ground_state.build.build_dataset`). Both cut their input into units (blocks,
shards) that are written atomically and skipped when a run is resumed; here those units run
as Ray tasks, anywhere in a cluster, while the driver keeps writing the files. Ray is an
optional extra (``pip install 'molconf[cluster]'``); nothing else in molconf imports it.

Set-up, tested here on one machine (``docs/cluster.md`` has the numbers)::

    ray start --head --port 6379                    # on the head node
    ray start --address HEAD:6379                   # on each worker node
    molconf predict -i library.smi -o out/ --ray auto    # on any node of the cluster
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: what a unit's failed task is reported as when the worker process died (not a Python error)
WORKER_DIED = "worker process died (native crash or out of memory)"


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("running on Ray needs the cluster extra: pip install 'molconf[cluster]' (ray)") from err
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the duration of a block; shut down only what this call started.

    Parameters
    ----------
    address : str, optional
        ``"auto"`` (the cluster this machine is part of, after ``ray start``), ``"HOST:PORT"``
        or ``"ray://HOST:10001"``; ``None`` starts a private Ray on this machine (``num_cpus``
        of its cores, all by default), stopped on exit. Where Ray is already initialised (a
        notebook, a test fixture) it is used as it is and left running.
    num_cpus : int, optional
        Cores of a private local Ray (ignored when joining a cluster).
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
    if address is None:  # "local": a new instance even where `ray start` left one on this machine
        address, kwargs["num_cpus"] = "local", num_cpus
    ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus() -> int:
    """CPU slots of the connected Ray cluster (at least 1)."""
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(
    fn: Callable[[Any], Any],
    units: Iterable[tuple[Any, Any]],
    on_failure: Callable[[Any, Any, str], Any],
    in_flight: int | None = None,
    num_cpus: float = 1,
    max_retries: int = 1,
) -> Iterator[tuple[Any, Any]]:
    """``(key, fn(unit))`` for each ``(key, unit)``, run as Ray tasks, in completion order.

    At most ``in_flight`` tasks (default: twice the cluster's CPUs) are submitted at once,
    so a library of 10⁸ molecules is streamed, not held in memory. A task that raises, or
    whose worker dies (Ray retries it ``max_retries`` times first), yields
    ``(key, on_failure(key, unit, reason))`` instead, so the caller can split the unit and
    lose nothing.
    """
    ray = require_ray()
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(_call)
    fn_ref = ray.put(fn)  # shipped once, not with every task
    limit = in_flight or 2 * cluster_cpus()
    pending: dict[Any, tuple[Any, Any]] = {}
    todo = iter(units)
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit:
            try:
                key, unit = next(todo)
            except StopIteration:
                exhausted = True
                break
            pending[remote.remote(fn_ref, unit)] = (key, unit)
        if not pending:
            return
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        key, unit = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # fn raised: its own message
            result = on_failure(key, unit, f"{type(err.cause).__name__}: {err.cause}")
        except ray.exceptions.RayError as err:  # the worker died (retries spent)
            result = on_failure(key, unit, f"{WORKER_DIED}: {type(err).__name__}")
        yield key, result


def _call(fn: Callable[[Any], Any], unit: Any) -> Any:
    return fn(unit)
