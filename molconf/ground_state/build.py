"""GFN2-xTB data sets: :func:`~molconf.ground_state.xtb.build_ground_state` over many SMILES, sharded and resumable.

    SMILES (a list, a file, or the MOSES set from the ``molsets`` wheel, optionally a seeded
    subsample) are cut into shards of ``shard_size`` in source order. Each shard is computed
    by a pool of worker processes and written atomically (temporary files, then rename) as
    ``shards/shard_NNNNNN.{sdf,failures.csv,json}``, the ``.json`` last: a killed run loses
    only the shard in flight, and a rerun skips every shard whose ``.json`` exists. Memory
    is bounded by one shard. ``failures.csv`` and ``summary.json`` are rewritten from the
    shard files at the end of every run; :func:`merge_dataset` writes the committed
    ``molecules.sdf.gz`` and the scaffold split.

Molecule ids are record positions in the source (0-based, blank and comment lines and the
header not counted): for MOSES, the row of ``train.csv.gz`` / ``test.csv.gz``.

Command line (``molconf build-xtb --help``)::

    molconf build-xtb --moses train --n 5000 --seed 0 --out build/moses_xtb --workers 2
    molconf build-xtb --smiles-file molecules.smi --out build/mine
    molconf build-xtb --merge --out build/moses_xtb --dest datasets/moses_xtb
    # a lost build folder: continue from the committed data set instead of from scratch
    molconf build-xtb --moses train --n 5000 --seed 0 --out build/new --restore-from datasets/moses_xtb
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import functools
import gzip
import heapq
import importlib.metadata
import io
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger

from molconf import constants as K
from molconf.ground_state.xtb import (FORCEFIELDS, OPTIMIZERS, STAGE_XTB, STAGES, XtbError, XtbProtocol,
                                     XtbResult, _label, build_ground_state, require_tblite)
from molconf.data.smiles_source import MOSES_PARTS, SmilesSource, as_source
from molconf.shards import ShardFiles, chunks, claim_folder, write_atomic

DEFAULT_SHARD_SIZE = 200  # molecules per shard: minutes of work, the unit of resumption
BUILD_FILE = "build.json"
SUMMARY_FILE = "summary.json"
FAILURES_FILE = "failures.csv"
MERGED_SDF = "molecules.sdf.gz"
SHARDS_DIR = "shards"
_FAILURE_HEADER = ["index", "smiles", "stage", "reason"]


# --- the sharded, parallel, resumable runner ------------------------------------------
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _init_worker() -> None:
    RDLogger.DisableLog("rdApp.*")  # failures are returned as values and reported
    with contextlib.suppress(ImportError):
        import torch  # molconf.data imported it; keep it from spinning extra threads

        torch.set_num_threads(1)


def _run_one(item: tuple[int, str], protocol: XtbProtocol) -> tuple[int, XtbResult | XtbError]:
    """One molecule for the pool: ``(id, result)``, failures as values."""
    index, smiles = item
    try:
        return index, build_ground_state(smiles, protocol, index)
    except XtbError as err:
        return index, err
    except Exception as err:  # anything unexpected still names the molecule
        return index, XtbError(_label(smiles, index), f"unexpected error ({type(err).__name__}: {err})", STAGE_XTB)


@contextlib.contextmanager
def _single_thread_env():
    """Spawned workers inherit this environment: OpenMP/BLAS one thread each."""
    old = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in _THREAD_VARS})
    try:
        yield
    finally:
        for v, value in old.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


class _Workers:
    """Spawned worker processes (one OpenMP thread each) that survive a crashing molecule.

    A ``multiprocessing.Pool`` waits forever for the result of a worker that died (a
    segfault in native code), which would stall a build of hours. Here a dead worker
    breaks the executor; the results already computed are kept, and the shard's remaining
    molecules run one at a time in a fresh single worker, so the molecule that kills its
    process is recorded as a failure and the next shard gets a full pool again.
    """

    def __init__(self, n: int, start_method: str = "spawn"):
        self.n = n
        # spawn: fresh interpreters, so no OpenMP runtime state is inherited from this process
        self.start_method = start_method
        self._executor: ProcessPoolExecutor | None = None

    def _start(self, n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=mp.get_context(self.start_method), initializer=_init_worker)

    def map_unordered(self, fn, items: list[tuple[int, str]]) -> Iterator:
        """``fn(item)`` for every item, in completion order; a crash yields an :class:`XtbError`."""
        if self._executor is None:
            self._executor = self._start(self.n)
        with _single_thread_env():  # worker processes are launched by submit(), not by the constructor
            futures = {self._executor.submit(fn, item): item for item in items}
        yielded = set()
        try:
            for fut in as_completed(futures):
                result = fut.result()
                yielded.add(fut)
                yield result
        except BrokenProcessPool:
            self.close()
            finished = [f for f in futures if f not in yielded and f.done() and not f.cancelled()
                        and f.exception() is None]
            yield from (f.result() for f in finished)
            left = [item for f, item in futures.items() if f not in yielded and f not in finished]
            yield from self._one_at_a_time(fn, left)

    def _one_at_a_time(self, fn, items: list[tuple[int, str]]) -> Iterator:
        executor = None
        for index, smiles in items:
            executor = executor or self._start(1)
            try:
                with _single_thread_env():
                    future = executor.submit(fn, (index, smiles))
                yield future.result()
            except BrokenProcessPool:
                executor.shutdown(wait=False, cancel_futures=True)
                executor = None
                yield index, XtbError(_label(smiles, index), "worker process crashed (native code aborted)",
                                      STAGE_XTB)
        if executor is not None:
            executor.shutdown()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _versions() -> dict:
    import ase
    import rdkit

    import molconf

    def dist(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"molconf": molconf.__version__, "rdkit": rdkit.__version__, "tblite": dist("tblite"),
            "ase": ase.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


class _Shards(ShardFiles):
    """The shard files of one build folder."""

    def __init__(self, out_dir: Path):
        super().__init__(out_dir / SHARDS_DIR, "shard", ("sdf", "failures.csv"))

    def write(self, i: int, sdf: str, failures_csv: str, record: dict) -> None:
        self.write_unit(i, {"sdf": sdf, "failures.csv": failures_csv}, record)


def _check_build_file(out_dir: Path, want: dict) -> None:
    diff = [k for k in want if k in claim_folder(out_dir, BUILD_FILE, want)]  # in want's order, as before
    if diff:
        raise ValueError(
            f"{out_dir} holds a build with another {', '.join(diff)} "
            f"(see {out_dir / BUILD_FILE}); use another --out folder or delete it to start over"
        )


def _size_bin(n_atoms: int) -> str:
    lo = min(n_atoms // 20 * 20, 80)
    return f"{lo}-{lo + 19}" if lo < 80 else "80+"


def _run_shard(i: int, chunk: list[tuple[int, str]], shards: _Shards, protocol: XtbProtocol,
               pool: _Workers | None, bar) -> dict:
    start = time.time()
    work = functools.partial(_run_one, protocol=protocol)
    # unordered: a slow molecule does not hold up the others; the shard is sorted below
    results = []
    for item in map(work, chunk) if pool is None else pool.map_unordered(work, chunk):
        bar.update(1)
        results.append(item)
    sdf, failures, record = _format_shard(i, chunk, results, round(time.time() - start, 2))
    shards.write(i, sdf, failures, record)
    return record


def _format_shard(i: int, chunk: list[tuple[int, str]], results: list, seconds_wall: float) -> tuple[str, str, dict]:
    """A shard's SDF text, failures CSV and record, from its ``(id, result)`` pairs (any order)."""
    results = sorted(results, key=lambda r: r[0])
    smiles_of = dict(chunk)
    sdf, failures = io.StringIO(), io.StringIO()
    fails = csv.writer(failures)
    fails.writerow(_FAILURE_HEADER)
    by_stage: collections.Counter = collections.Counter()
    by_reason: collections.Counter = collections.Counter()
    timing: dict[str, list[float]] = {}
    stats = collections.Counter()
    with Chem.SDWriter(sdf) as writer:
        for idx, item in results:
            if isinstance(item, XtbError):
                fails.writerow([idx, smiles_of[idx], item.stage, item.reason])
                by_stage[item.stage] += 1
                by_reason[reason_kind(item.reason)] += 1
                continue
            writer.write(item.to_sdf_mol())
            n = item.mol.GetNumAtoms()
            t = timing.setdefault(_size_bin(n), [0, 0.0, 0.0])  # molecules, seconds, atoms
            t[0], t[1], t[2] = t[0] + 1, t[1] + item.seconds, t[2] + n
            stats["succeeded"] += 1
            stats["steps"] += item.steps
            stats["atoms"] += n
            stats["max_atoms"] = max(stats["max_atoms"], n)
            stats[f"forcefield_{item.forcefield}"] += 1
            stats["seconds_molecules"] += item.seconds
    record = _shard_record(i, chunk, by_stage, by_reason, stats, timing, seconds_wall)
    return sdf.getvalue(), failures.getvalue(), record


def _ray_shard(unit: tuple[int, list[tuple[int, str]]], protocol: XtbProtocol) -> tuple[str, str, dict]:
    """One shard in one Ray task (one core): its molecules in turn, formatted for the driver to write."""
    _init_worker()
    i, chunk = unit
    start = time.time()
    results = [_run_one(item, protocol) for item in chunk]
    return _format_shard(i, chunk, results, round(time.time() - start, 2))


def _ray_shard_one_by_one(key: int, unit, reason: str, protocol: XtbProtocol) -> tuple[str, str, dict]:
    """A shard whose task died: one task per molecule, so the molecule that kills its worker
    is recorded as a failure and the others are kept."""
    from molconf.cluster import run_tasks

    i, chunk = unit
    start = time.time()

    def crashed(k, item, why):
        index, smiles = item
        return index, XtbError(_label(smiles, index), f"worker process crashed ({why})", STAGE_XTB)

    work = functools.partial(_run_one_initialised, protocol=protocol)
    results = [r for _, r in run_tasks(work, ((k, item) for k, item in enumerate(chunk)), crashed, max_retries=0)]
    return _format_shard(i, chunk, results, round(time.time() - start, 2))


def _run_one_initialised(item: tuple[int, str], protocol: XtbProtocol):
    _init_worker()
    return _run_one(item, protocol)


def _shard_record(i: int, chunk: list[tuple[int, str]], by_stage, by_reason, stats, timing: dict,
                  seconds_wall: float, **extra) -> dict:
    """A shard's ``.json``: its place in the source, failure counts, statistics and timings."""
    return {"shard": i, "first_index": chunk[0][0], "last_index": chunk[-1][0], "molecules": len(chunk),
            "failed": sum(by_stage.values()), "failed_by_stage": dict(by_stage), "failed_by_reason": dict(by_reason),
            "stats": dict(stats), "timing_by_atoms": timing, "seconds_wall": seconds_wall, **extra}


def reason_kind(reason: str) -> str:
    """A reason without its per-molecule details ("not converged (412 steps…)" → "not converged")."""
    return reason.split("(")[0].strip()


def build_dataset(
    source,
    out_dir: str | Path,
    protocol: XtbProtocol | None = None,
    workers: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_shards: int | None = None,
    progress: bool = True,
    restore_from: str | Path | None = None,
    ray_address: str | None | bool = False,
) -> dict:
    """Build GFN2-xTB ground states for a SMILES source, resuming a previous run.

    Parameters
    ----------
    source : SmilesSource, path, or sequence of str
        The SMILES (:func:`as_source`).
    out_dir : path
        Build folder: ``build.json`` (protocol, source, shard size), ``shards/``,
        ``failures.csv`` and ``summary.json``.
    protocol : XtbProtocol, optional
        Settings (default :class:`XtbProtocol()`); a rerun must use the same.
    workers : int
        Worker processes (spawned, one OpenMP thread each); 1 runs in this process.
    shard_size : int
        Molecules per shard (the unit of resumption).
    max_shards : int, optional
        Compute at most this many new shards, then stop (chunked runs, tests).
    progress : bool
        Show a tqdm progress bar.
    restore_from : path, optional
        A data set merged from an earlier build of the same source and protocol (e.g.
        ``datasets/moses_xtb``): its shards are written back into ``out_dir`` first
        (:func:`restore_shards`), so the build continues where that one stopped.
    ray_address : str, None or False
        ``False`` (default): worker processes of this machine. Otherwise each shard is one
        Ray task (one core, its molecules in turn; :mod:`molconf.cluster`) on the cluster at
        this address (``"auto"``, ``"HOST:PORT"``), or with ``None`` on a private local Ray of
        ``workers`` cores; this process writes the same shard files. A shard whose worker
        dies is rerun one task per molecule, so only the molecule that crashes is lost (as a
        failure).

    Returns
    -------
    dict
        The summary (also written to ``summary.json``); ``complete`` says whether every
        shard is done.
    """
    from tqdm import tqdm

    protocol = protocol or XtbProtocol()
    src = as_source(source)
    out_dir = Path(out_dir)
    start = time.time()
    desc = src.describe()
    # checked before the build folder is touched, written once it is known to be this build's
    plan = None if restore_from is None else _RestorePlan.read(restore_from, src, protocol, shard_size)
    _check_build_file(out_dir, {"protocol": protocol.to_dict(), "source": desc, "shard_size": shard_size})
    shards = _Shards(out_dir)
    total = len(src)
    num_shards = -(-total // shard_size)
    if plan is not None:
        _write_restored(plan, shards)
    bar = tqdm(total=total, desc="GFN2-xTB", unit="mol", mininterval=2.0, disable=not progress)
    waiting: dict[int, list[tuple[int, str]]] = {}

    def todo() -> Iterator[tuple[int, list[tuple[int, str]]]]:
        new = 0
        for i, chunk in enumerate(chunks(src, shard_size)):
            record = shards.done(i)
            if record is not None:
                if record["first_index"] != chunk[0][0] or record["molecules"] != len(chunk):
                    raise ValueError(f"shard {i} in {shards.dir} does not match the source; start a new build")
                bar.update(len(chunk))
                continue
            if max_shards is not None and new >= max_shards:
                return
            new += 1
            waiting[i] = chunk
            yield i, chunk

    pool = None
    try:
        if ray_address is False:
            for i, chunk in todo():
                if pool is None and workers > 1:
                    require_tblite()
                    pool = _Workers(workers)
                _run_shard(i, chunk, shards, protocol, pool, bar)
        else:
            from molconf.cluster import ray_session, run_tasks

            require_tblite()
            with ray_session(ray_address, num_cpus=workers):
                work = functools.partial(_ray_shard, protocol=protocol)
                fallback = functools.partial(_ray_shard_one_by_one, protocol=protocol)
                for i, (sdf, failures, record) in run_tasks(work, ((i, (i, c)) for i, c in todo()), fallback):
                    shards.write(i, sdf, failures, record)
                    bar.update(len(waiting.pop(i)))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    return write_summary(out_dir, protocol, desc, num_shards, shards, time.time() - start, workers)


def write_summary(out_dir: Path, protocol: XtbProtocol, source: dict, num_shards: int, shards: _Shards,
                  seconds_this_run: float, workers: int) -> dict:
    """Rewrite ``failures.csv`` and ``summary.json`` from the finished shards (streamed)."""
    by_stage: collections.Counter = collections.Counter()
    by_reason: collections.Counter = collections.Counter()
    stats: collections.Counter = collections.Counter()
    timing: dict[str, list[float]] = {}
    done = molecules = wall = 0
    tmp = out_dir / (FAILURES_FILE + ".tmp")
    with open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(_FAILURE_HEADER)
        for i in range(num_shards):
            record = shards.done(i)
            if record is None:
                continue
            done += 1
            molecules += record["molecules"]
            wall += record["seconds_wall"]
            by_stage.update(record["failed_by_stage"])
            by_reason.update(record["failed_by_reason"])
            max_atoms = max(stats["max_atoms"], record["stats"].get("max_atoms", 0))
            stats.update(record["stats"])
            stats["max_atoms"] = max_atoms
            for size, (n, secs, atoms) in record["timing_by_atoms"].items():
                t = timing.setdefault(size, [0, 0.0, 0.0])
                t[0], t[1], t[2] = t[0] + n, t[1] + secs, t[2] + atoms
            with open(shards.path(i, "failures.csv"), newline="") as fh:
                rows = csv.reader(fh)
                next(rows, None)
                writer.writerows(rows)
    os.replace(tmp, out_dir / FAILURES_FILE)
    ok = stats["succeeded"]
    summary = {
        "dataset": "GFN2-xTB ground states",
        "complete": done == num_shards,
        "source": source,
        "protocol": protocol.to_dict(),
        "protocol_key": protocol.key(),
        "versions": _versions(),
        "molecules": molecules,
        "succeeded": ok,
        "failed": sum(by_stage.values()),
        "failed_by_stage": {s: by_stage[s] for s in STAGES if by_stage[s]},
        "failed_by_reason": dict(by_reason.most_common()),
        "forcefield_used": {k.split("_", 1)[1]: v for k, v in stats.items() if k.startswith("forcefield_")},
        "mean_atoms": stats["atoms"] / max(ok, 1),
        "max_atoms": stats["max_atoms"],
        "mean_steps": stats["steps"] / max(ok, 1),
        # restored shards carry no per-molecule times: the mean is over the molecules timed here
        "seconds_per_molecule": (stats["seconds_molecules"] / (ok - stats["restored"])
                                 if ok > stats["restored"] else None),
        "seconds_per_molecule_by_atoms": {
            k: {"molecules": v[0], "seconds": v[1] / max(v[0], 1), "mean_atoms": v[2] / max(v[0], 1)}
            for k, v in sorted(timing.items(), key=lambda kv: int(kv[0].rstrip("+").split("-")[0]))
        },
        "shards": {"done": done, "total": num_shards},
        **({"restored_molecules": stats["restored"]} if stats["restored"] else {}),
        "seconds_wall_shards": round(wall, 1),
        "seconds_this_run": round(seconds_this_run, 1),
        "workers_this_run": workers,
    }
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


def _same_source(a: dict, b: dict) -> bool:
    """Same records: name, subsample and content (the file's path may differ between machines)."""
    return {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}


def _molfile_atoms(record: str) -> int:
    return Chem.MolFromMolBlock(record, sanitize=False, removeHs=False).GetNumAtoms()  # V2000 or V3000


def restore_shards(dataset_dir: str | Path, source, protocol: XtbProtocol, shard_size: int,
                   shards: _Shards) -> list[int]:
    """Write the shards of a merged data set back into a build folder; returns their numbers.

    A build folder is scratch space and may be lost (another machine, a cleaned disk), while
    the merged data set is committed. Its ``build_report.json`` names the source, protocol and
    shards it came from; each of those shards is rebuilt from ``molecules.sdf.gz`` (records
    copied verbatim) and ``failures.csv``, so :func:`build_dataset` skips them and computes
    only the rest. Refused with ``ValueError``, before anything is written, when the source,
    protocol or shard layout differs or a molecule of a shard is in neither file. Restored
    shards carry ``restored_from`` and no timings; shards already finished are left alone.
    """
    return _write_restored(_RestorePlan.read(dataset_dir, as_source(source), protocol, shard_size), shards)


@dataclass
class _RestorePlan:
    """A merged data set, checked against a build, shard by shard: what to write back."""

    dataset_dir: Path
    shard_size: int
    chunks: dict[int, list[tuple[int, str]]]  # shard number -> its (id, SMILES)
    records: dict[int, str]  # id -> SDF record
    failures: dict[int, list[str]]  # id -> failures.csv row
    forcefield: str

    @classmethod
    def read(cls, dataset_dir: str | Path, src: SmilesSource, protocol: XtbProtocol, shard_size: int) -> _RestorePlan:
        dataset_dir = Path(dataset_dir)
        report_path = dataset_dir / "build_report.json"
        if not report_path.is_file():
            raise FileNotFoundError(f"{report_path} not found: restore needs a data set written by --merge")
        report = json.loads(report_path.read_text())
        if not _same_source(report["source"], src.describe()):
            raise ValueError(f"{dataset_dir} was built from another source ({report['source'].get('name')}, "
                             f"n={report['source'].get('n')}, seed={report['source'].get('seed')})")
        if report["protocol"] != protocol.to_dict():
            raise ValueError(f"{dataset_dir} was built with another protocol (key {report['protocol_key']}, "
                             f"this build {protocol.key()})")
        num_shards = -(-len(src) // shard_size)
        if report["shards"]["total"] != num_shards:
            raise ValueError(f"{dataset_dir} was built in {report['shards']['total']} shards, this build has "
                             f"{num_shards} (another --shard-size?)")
        wanted = set(report.get("partial_build", {}).get("shards_merged", range(num_shards)))
        records: dict[int, str] = {}
        with gzip.open(dataset_dir / MERGED_SDF, "rt") as fh:
            for record in _sdf_records(fh.read()):
                props = _record_props(record)
                if props.get(K.SDF_PROTOCOL) != protocol.key():
                    raise ValueError(f"{dataset_dir}: molecule {props.get(K.SDF_SOURCE_INDEX)} has protocol "
                                     f"{props.get(K.SDF_PROTOCOL)}, not {protocol.key()}")
                records[int(props[K.SDF_SOURCE_INDEX])] = record
        with open(dataset_dir / FAILURES_FILE, newline="") as fh:
            rows = csv.reader(fh)
            next(rows, None)
            failures = {int(row[0]): row for row in rows}
        by_shard = {i: chunk for i, chunk in enumerate(chunks(src, shard_size)) if i in wanted}
        for i, chunk in by_shard.items():
            missing = [idx for idx, _ in chunk if idx not in records and idx not in failures]
            if missing:
                raise ValueError(f"{dataset_dir}: molecule(s) {missing[:5]} of shard {i} are in neither "
                                 f"{MERGED_SDF} nor {FAILURES_FILE}")
        # one force field for the whole data set is one for every shard; otherwise it is unknown
        fields = list(report.get("forcefield_used", {}))
        return cls(dataset_dir, shard_size, by_shard, records, failures, fields[0] if len(fields) == 1 else "unknown")


def _write_restored(plan: _RestorePlan, shards: _Shards) -> list[int]:
    restored = []
    for i, chunk in plan.chunks.items():
        if shards.done(i) is not None:
            continue
        fails = io.StringIO()
        writer = csv.writer(fails)
        writer.writerow(_FAILURE_HEADER)
        by_stage: collections.Counter = collections.Counter()
        by_reason: collections.Counter = collections.Counter()
        stats: collections.Counter = collections.Counter()
        sdf = []
        for idx, _ in chunk:
            if idx in plan.failures:
                row = plan.failures[idx]
                writer.writerow(row)
                by_stage[row[2]] += 1
                by_reason[reason_kind(row[3])] += 1
                continue
            record = plan.records[idx]
            sdf.append(record)
            n = _molfile_atoms(record)
            stats["succeeded"] += 1
            stats["restored"] += 1
            stats["steps"] += int(_record_props(record)[K.SDF_STEPS])
            stats["atoms"] += n
            stats["max_atoms"] = max(stats["max_atoms"], n)
            stats[f"forcefield_{plan.forcefield}"] += 1
        record = _shard_record(i, chunk, by_stage, by_reason, stats, {}, 0.0, restored_from=str(plan.dataset_dir))
        shards.write(i, "".join(sdf), fails.getvalue(), record)
        restored.append(i)
    return restored


# --- merging for the repository --------------------------------------------------------
def default_dataset_dir() -> Path:
    """``datasets/moses_xtb`` of this repository (next to the package, else in cwd)."""
    here = Path(__file__).resolve().parents[2] / "datasets"
    return (here if here.is_dir() else Path("datasets")) / "moses_xtb"


def _sdf_records(text: str) -> Iterator[str]:
    """Records of an SDF text, each ending with its ``$$$$`` line."""
    record: list[str] = []
    for line in text.splitlines(keepends=True):
        record.append(line)
        if line.startswith("$$$$"):
            yield "".join(record)
            record = []


def _record_props(record: str) -> dict[str, str]:
    """The ``> <name>`` data items of one SDF record."""
    props, lines = {}, record.splitlines()
    for k, line in enumerate(lines):
        if line.startswith(">") and "<" in line and k + 1 < len(lines):
            props[line[line.index("<") + 1 : line.rindex(">")]] = lines[k + 1]
    return props


def merge_dataset(
    build_dir: str | Path,
    dest: str | Path | None = None,
    split_seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    partial: bool = False,
    extend_split: str | Path | None = None,
    also: Sequence[str | Path] = (),
) -> dict:
    """Write the committed data set from a finished build (or, with ``partial``, from the
    shards finished so far).

    ``dest`` (default ``datasets/moses_xtb``) receives ``molecules.sdf.gz`` (every molecule,
    sorted by id, gzip level 9 with a fixed timestamp so identical builds give identical
    bytes), ``split_{train,val,test}.npy`` (Bemis–Murcko scaffold split of the ids,
    :func:`~molconf.data.scaffolds.scaffold_split`), ``build_report.json`` (the build summary
    plus the split sizes) and ``failures.csv``.

    ``partial=True`` merges an unfinished build's completed shards; the report's
    ``partial_build`` lists which went in. Without it an unfinished build is refused. Shards
    are consecutive stretches of the (seeded, random) sample sorted by source index, so a
    partial build holds the sample's lowest indices: unbiased only if the source file's order
    carries no chemistry (MOSES's does, a little: 21.3 heavy atoms on average in its first
    200,000 lines, 22.1 in its second half).

    ``extend_split`` (a folder with ``split_{train,val,test}.npy``, typically ``dest`` itself
    before a grown build is merged again) keeps an earlier split: its molecules stay in their
    parts and only the new ones are placed
    (:func:`~molconf.data.scaffolds.extend_scaffold_split`), so benchmarks drawn from the old
    test split keep their molecules. The files are read before anything is written.

    ``also``: further builds of the same source file (same records, so the same ids; another
    subsample size or seed) with the same protocol, merged beside ``build_dir`` — a top-up. A
    molecule in several builds counts once (the report's ``merged.duplicates``); the report keeps
    ``build_dir``'s summary and lists the others under ``also``.
    """
    from molconf.data.scaffolds import extend_scaffold_split, scaffold_split

    builds = [_finished_build(Path(d), partial) for d in (build_dir, *also)]
    main = builds[0]
    for other in builds[1:]:
        if other.summary["protocol"] != main.summary["protocol"]:
            raise ValueError(f"{other.folder} was built with another protocol than {main.folder}; "
                             "only builds of one protocol merge")
        if not _same_records(other.summary["source"], main.summary["source"]):
            raise ValueError(f"{other.folder} was built from other records than {main.folder} "
                             "(its ids would mean other molecules); only builds of one source file merge")
    previous = _read_split(Path(extend_split)) if extend_split is not None else None
    dest = Path(dest) if dest is not None else default_dataset_dir()
    dest.mkdir(parents=True, exist_ok=True)
    ids: list[int] = []
    smiles: list[str] = []
    duplicates = 0
    tmp = dest / (MERGED_SDF + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        for idx, smi, record, where in heapq.merge(*(b.records() for b in builds), key=lambda r: r[0]):
            if ids and idx == ids[-1]:
                duplicates += 1  # the same source record built twice with one protocol: kept once
                continue
            if ids and idx < ids[-1]:
                raise ValueError(f"{where}: molecule id {idx} out of order (after {ids[-1]})")
            ids.append(idx)
            smiles.append(smi)
            gz.write(record.encode())
    os.replace(tmp, dest / MERGED_SDF)
    if previous is None:
        parts = scaffold_split(ids, smiles, fractions, split_seed)
    else:
        parts = extend_scaffold_split(ids, smiles, previous, fractions, split_seed)
    for part, part_ids in parts.items():
        np.save(dest / f"split_{part}.npy", part_ids.astype(np.int32 if max(ids, default=0) < 2**31 else np.int64))
    report = {**main.summary, "merged": {"molecules": len(ids), "file": MERGED_SDF,
                                         "bytes": (dest / MERGED_SDF).stat().st_size},
              "split": {"kind": "Bemis-Murcko scaffold", "seed": split_seed, "fractions": list(fractions),
                        **{p: len(v) for p, v in parts.items()}}}
    if previous is not None:
        report["split"]["extends"] = {p: len(v) for p, v in previous.items()}
    if main.partial:
        report["partial_build"] = main.partial
    if also:
        report["merged"]["duplicates"] = duplicates
        report["also"] = [{"build": str(b.folder), "source": b.summary["source"], "molecules": b.summary["molecules"],
                           "succeeded": b.summary["succeeded"], "failed": b.summary["failed"],
                           "shards": b.summary["shards"], **({"partial_build": b.partial} if b.partial else {})}
                          for b in builds[1:]]
    write_atomic(dest / "build_report.json", json.dumps(report, indent=1) + "\n")
    _merge_failures([b.folder / FAILURES_FILE for b in builds], set(ids), dest / FAILURES_FILE)
    return report


@dataclass
class _FinishedBuild:
    """One build folder's finished shards, ready to merge."""

    folder: Path
    summary: dict
    shards: _Shards
    done: list[int]
    partial: dict | None  # what went in, when the build is unfinished

    def records(self) -> Iterator[tuple[int, str, str, str]]:
        """(id, SMILES, SDF record, where) of every molecule, in shard order (ids ascending)."""
        for i in self.done:
            for record in _sdf_records(self.shards.path(i, "sdf").read_text()):
                props = _record_props(record)
                yield int(props[K.SDF_SOURCE_INDEX]), props[K.SDF_SMILES], record, f"{self.folder} shard {i}"


def _finished_build(build_dir: Path, partial: bool) -> _FinishedBuild:
    """The finished shards of ``build_dir`` (its summary recounted: a killed run never wrote it);
    an unfinished build only with ``partial``."""
    build_path = build_dir / BUILD_FILE
    if not build_path.is_file():
        raise FileNotFoundError(f"{build_path} not found: run the build first")
    build = json.loads(build_path.read_text())
    shards = _Shards(build_dir)
    src = build["source"]
    selected = min(src["n"], src["total"]) if src.get("n") else src["total"]
    num_shards = -(-selected // build["shard_size"])
    summary_path = build_dir / SUMMARY_FILE
    old = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary = write_summary(build_dir, XtbProtocol.from_dict(build["protocol"]), src, num_shards, shards,
                            old.get("seconds_this_run", 0.0), old.get("workers_this_run", 0))
    done = [i for i in range(summary["shards"]["total"]) if shards.done(i) is not None]
    if len(done) < summary["shards"]["total"] and not partial:
        raise ValueError(f"the build in {build_dir} is not finished "
                         f"({len(done)} of {summary['shards']['total']} shards): rerun it first, "
                         "or merge the finished shards with partial=True (--partial)")
    if not done:
        raise ValueError(f"the build in {build_dir} has no finished shard")
    unfinished = len(done) < summary["shards"]["total"]
    return _FinishedBuild(build_dir, summary, shards, done,
                          {"shards_merged": done, "shards_total": summary["shards"]["total"],
                           "note": "the build was stopped early; only the finished shards are merged"} if unfinished else None)


def _same_records(a: dict, b: dict) -> bool:
    """Two sources over the same records (so the same ids), whatever their subsamples."""
    keys = ("name", "total", "sha256")
    return all(a.get(k) == b.get(k) for k in keys)


def _merge_failures(paths: Sequence[Path], built: set[int], out: Path) -> None:
    """The builds' failures: the first build's as they are, a later build's for molecules no earlier
    build listed, none that some build built."""
    earlier: set[str] = set()
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_FAILURE_HEADER)
        for path in paths:
            with open(path, newline="") as src:
                rows = [row for row in list(csv.reader(src))[1:] if row]
            writer.writerows(row for row in rows if row[0] not in earlier and int(row[0]) not in built)
            earlier |= {row[0] for row in rows}


def _read_split(folder: Path) -> dict[str, np.ndarray]:
    paths = {part: folder / f"split_{part}.npy" for part in ("train", "val", "test")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no earlier split to extend: {', '.join(missing)} not found")
    return {part: np.load(path) for part, path in paths.items()}


# --- command line ----------------------------------------------------------------------
def _protocol_from_args(args) -> XtbProtocol:
    return XtbProtocol(
        num_conformers=args.conformers, embed_seed=args.embed_seed, forcefield=args.forcefield,
        ff_max_iters=args.ff_max_iters, num_xtb=args.xtb_candidates, optimizer=args.optimizer,
        fmax=args.fmax, max_steps=args.max_steps, accuracy=args.accuracy,
        electronic_temperature=args.electronic_temperature, allow_charged=args.allow_charged,
    )


def build_parser() -> argparse.ArgumentParser:
    d = XtbProtocol()
    p = argparse.ArgumentParser(prog="molconf build-xtb", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source (one of)")
    src.add_argument("--moses", choices=MOSES_PARTS, help="MOSES part from the molsets wheel "
                                                          "(pip install --no-deps molsets)")
    src.add_argument("--moses-file", help="MOSES train/test .csv.gz given explicitly (with --moses)")
    src.add_argument("--smiles-file", help=".smi / .txt / .csv (column 'smiles'), optionally .gz")
    p.add_argument("--n", type=int, help="seeded random subsample of this many molecules")
    p.add_argument("--seed", type=int, default=0, help="subsample seed (default 0)")
    p.add_argument("--out", required=True, help="build folder (shards, summary.json, failures.csv)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2; 1: in-process)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="molecules per shard")
    p.add_argument("--max-shards", type=int, help="stop after N new shards (rerun to continue)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restore-from", metavar="DATASET",
                   help="a merged data set of this source and protocol (e.g. datasets/moses_xtb): "
                        "its shards are restored into --out and not recomputed")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the shards as Ray tasks: on the cluster at ADDRESS ('auto': the one this machine "
                        "joined), or on a private local Ray of --workers cores (needs molconf[cluster])")
    merge = p.add_argument_group("merge (after the build)")
    merge.add_argument("--merge", action="store_true", help="write molecules.sdf.gz + scaffold split to --dest")
    merge.add_argument("--dest", help="merge destination (default datasets/moses_xtb)")
    merge.add_argument("--split-seed", type=int, default=0, help="scaffold split seed (default 0)")
    merge.add_argument("--extend-split", metavar="DATASET",
                       help="keep the split of this data set (e.g. datasets/moses_xtb) for its molecules; "
                            "place only the new ones")
    merge.add_argument("--also", action="append", default=[], metavar="BUILD_DIR",
                       help="another build of the same source file and protocol (another --n / --seed) merged "
                            "beside --out, e.g. a top-up; a molecule in both counts once (repeatable)")
    merge.add_argument("--partial", action="store_true",
                       help="merge the finished shards of an unfinished build (recorded in the report)")
    prot = p.add_argument_group("protocol (stored with the data; a resumed build must keep it)")
    prot.add_argument("--conformers", type=int, default=d.num_conformers, help="ETKDG conformers")
    prot.add_argument("--embed-seed", type=int, default=d.embed_seed, help="ETKDG seed")
    prot.add_argument("--forcefield", choices=FORCEFIELDS, default=d.forcefield, help="pre-optimisation")
    prot.add_argument("--ff-max-iters", type=int, default=d.ff_max_iters, help="force-field iterations")
    prot.add_argument("--xtb-candidates", type=int, default=d.num_xtb, help="lowest conformers sent to xTB")
    prot.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="ASE optimiser")
    prot.add_argument("--fmax", type=float, default=d.fmax, help="force threshold, eV/Å")
    prot.add_argument("--max-steps", type=int, default=d.max_steps, help="optimiser steps per conformer")
    prot.add_argument("--accuracy", type=float, default=d.accuracy, help="tblite accuracy")
    prot.add_argument("--electronic-temperature", type=float, default=d.electronic_temperature, help="K")
    prot.add_argument("--allow-charged", action="store_true", help="build charged molecules (default: refuse)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.merge and bool(args.moses) == bool(args.smiles_file):
        print("molconf build-xtb: give --moses train|test or --smiles-file FILE (or --merge)", file=sys.stderr)
        return 2
    try:
        return _merge(args) if args.merge else _build(args)
    except (ValueError, FileNotFoundError, ImportError) as err:  # another build in --out, no data, no ray
        print(f"molconf build-xtb: {err}", file=sys.stderr)
        return 2


def _merge(args) -> int:
    report = merge_dataset(args.out, args.dest, args.split_seed, partial=args.partial,
                           extend_split=args.extend_split, also=args.also)
    dest = Path(args.dest) if args.dest else default_dataset_dir()
    split = report["split"]
    print(f"{report['merged']['molecules']} molecules -> {dest / MERGED_SDF} "
          f"({report['merged']['bytes'] / 1e6:.1f} MB); scaffold split "
          f"{split['train']} / {split['val']} / {split['test']}"
          + (" (extending {train} / {val} / {test})".format(**split["extends"]) if "extends" in split else ""))
    return 0


def _build(args) -> int:
    if args.moses:
        source = SmilesSource.moses(args.moses, args.n, args.seed, args.moses_file)
    else:
        source = SmilesSource(path=args.smiles_file, n=args.n, seed=args.seed)
    summary = build_dataset(source, args.out, _protocol_from_args(args), args.workers, args.shard_size,
                            args.max_shards, progress=not args.no_progress, restore_from=args.restore_from,
                            ray_address=False if args.ray is None else (args.ray or None))
    state = "complete" if summary["complete"] else (
        f"stopped after {summary['shards']['done']} of {summary['shards']['total']} shards; rerun to continue")
    print(f"{summary['succeeded']} of {summary['molecules']} molecules built, {summary['failed']} failed "
          f"{summary['failed_by_stage']} ({state}); {Path(args.out) / SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
