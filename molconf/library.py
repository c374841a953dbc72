"""Screening libraries: 3D structures for 10⁶–10⁸ molecules, streamed, resumable, on Ray.

:func:`predict_library` reads a ``.smi`` / ``.csv`` / ``.parquet`` file (``.gz`` too) in
blocks of ``block_size`` records and writes one output block per input block into
``out_dir/blocks/``: ``block_NNNNNN.sdf`` plus ``block_NNNNNN.failures.csv``, or one
``block_NNNNNN.parquet`` (SMILES, molblock, model, note per record, failures included), and
then ``block_NNNNNN.json``, the completion mark. A killed run loses only the blocks in
flight; the same call resumes. Every input record is accounted for: predicted, or named in
the failures with its line and reason. ``engine="ray"`` runs the blocks as Ray tasks
(:mod:`molconf.cluster`), one model load per worker process.

Command line::

    molconf predict -i library.smi -o out/                 # blocks, in this process
    molconf predict -i library.smi -o out/ --ray           # a private Ray on this machine
    molconf predict -i library.parquet -o out/ --ray auto --out-format parquet   # a cluster

Examples
--------
>>> import tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> _ = (tmp / "lib.smi").write_text("CCO ethanol\\nnot-a-smiles bad\\nc1ccccc1O phenol\\n")
>>> summary = predict_library(tmp / "lib.smi", tmp / "out", block_size=2)
>>> summary["molecules"], summary["predicted"], summary["failed"], summary["blocks"]
(3, 2, 1, {'done': 2, 'total': 2})
>>> [(row["name"], row["molblock"] is None) for row in read_library_output(tmp / "out")]
[('ethanol', False), ('bad', True), ('phenol', False)]
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem

from molconf.data.cache import file_sha256
from molconf.data.smiles_source import read_named_smiles
from molconf.shards import ShardFiles, chunks, claim_folder, write_atomic

FORMATS = ("sdf", "parquet")
ENGINES = ("local", "ray")
BLOCKS_DIR = "blocks"
MANIFEST = "library.json"
SUMMARY = "summary.json"
FAILURES = "failures.csv"
_FAILURE_HEADER = ["position", "where", "name", "smiles", "reason"]
_COLUMNS = ["position", "where", "name", "smiles", "molblock", "model", "note"]

# (position, SMILES, name, where): position is the 0-based record number in the input
Record = tuple[int, str, str, str]


@dataclass(frozen=True)
class LibrarySettings:
    """What :func:`molconf.predict` is called with for every block (shipped to the workers)."""

    model: str = "default"
    relax_with: str | None = None
    search: bool | int = False
    precision: str = "auto"
    fix_stereo: bool = True
    repair_bonds: bool = True
    batch_size: int = 64
    threads: int | None = 1  # torch threads per worker (one core per Ray task)


# --- one block ---------------------------------------------------------------------------
def _predict_with(items: list[str], settings: LibrarySettings, workers: int = 1):
    from molconf.prediction import predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are in the report, and written per record
        return predict(items, model=settings.model, batch_size=settings.batch_size, relax_with=settings.relax_with,
                       num_threads=settings.threads, fix_stereo=settings.fix_stereo,
                       repair_bonds=settings.repair_bonds, precision=settings.precision, search=settings.search,
                       workers=workers, return_report=True)


def _model_loads() -> int:
    from molconf.prediction import _load_cached

    return _load_cached.cache_info().misses


def predict_block(records: list[Record], settings: LibrarySettings, predictor: Callable | None = None,
                  workers: int = 1) -> dict:
    """Predict one block: a row per record (``molblock`` None and ``note`` the reason where it failed).

    ``predictor(smiles_list, settings)`` returns ``(mols, report)`` like
    ``predict(..., return_report=True)`` (default: :func:`molconf.predict` with ``settings``).
    An exception that escapes it for the whole block is retried molecule by molecule, so
    one bad molecule costs only itself.
    """
    start = time.perf_counter()
    predictor = predictor or functools.partial(_predict_with, workers=workers)
    items = [smiles for _, smiles, _, _ in records]
    try:
        mols, report = predictor(items, settings)
        outcomes = [_outcome(k, mols, report) for k in range(len(items))]
    except Exception:  # noqa: BLE001 - one molecule at a time, each failure named
        outcomes = []
        for smiles in items:
            try:
                outcomes.append(_outcome(0, *predictor([smiles], settings)))
            except Exception as err:  # noqa: BLE001
                outcomes.append((None, "", f"unexpected error ({type(err).__name__}: {err})", True))
    rows = []
    for (position, smiles, name, where), (molblock, model, note, failed) in zip(records, outcomes):
        rows.append({"position": position, "where": where, "name": name, "smiles": smiles,
                     "molblock": molblock, "model": model, "note": note, "failed": failed})
    return {"rows": rows, "pid": os.getpid(), "model_loads": _model_loads(),
            "seconds": round(time.perf_counter() - start, 4)}


def _outcome(k: int, mols, report) -> tuple[str | None, str, str, bool]:
    mol = mols[k]
    if mol is None:
        reason = next((f.reason for f in report.failures if f.index == k), "not predicted")
        return None, "", reason, True
    return Chem.MolToMolBlock(mol), report.models.get(k, ""), "; ".join(report.notes.get(k, [])), False


def _failed_rows(records: list[Record], reason: str) -> dict:
    rows = [{"position": p, "where": w, "name": n, "smiles": s, "molblock": None, "model": "", "note": reason,
             "failed": True} for p, s, n, w in records]
    return {"rows": rows, "pid": None, "model_loads": 0, "seconds": 0.0}


# --- block files -------------------------------------------------------------------------
class _Blocks(ShardFiles):
    def __init__(self, out_dir: Path, fmt: str):
        super().__init__(out_dir / BLOCKS_DIR, "block", ("sdf", "failures.csv") if fmt == "sdf" else ("parquet",))
        self.fmt = fmt

    def write(self, i: int, records: list[Record], result: dict, engine: str) -> dict:
        rows = result["rows"]
        failed = [r for r in rows if r["failed"]]
        if self.fmt == "sdf":
            data = {"sdf": _sdf_text(rows), "failures.csv": _failures_csv(failed)}
        else:
            data = {"parquet": _parquet_bytes(rows)}
        record = {"block": i, "first_position": records[0][0], "molecules": len(records),
                  "predicted": len(rows) - len(failed), "failed": len(failed), "seconds": result["seconds"],
                  "engine": engine, "pid": result["pid"], "model_loads": result["model_loads"]}
        self.write_unit(i, data, record)
        return record


def _sdf_text(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if r["molblock"] is None:
            continue
        props = {"molconf_position": r["position"], "molconf_where": r["where"], "input_smiles": r["smiles"],
                 "molconf_model": r["model"]}
        if r["note"]:
            props["molconf_note"] = r["note"]
        title, rest = r["molblock"].split("\n", 1)
        block = (r["name"] or r["where"]) + "\n" + rest.rstrip("\n") + "\n"
        block += "".join(f">  <{k}>\n{v}\n\n" for k, v in props.items())
        out.append(block + "$$$$\n")
    return "".join(out)


def _failures_csv(failed: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(_FAILURE_HEADER)
    for r in failed:
        writer.writerow([r["position"], r["where"], r["name"], r["smiles"], r["note"]])
    return buf.getvalue()


def _parquet_bytes(rows: list[dict]) -> bytes:
    pa, pq = _pyarrow()
    table = pa.table({c: [r[c] for r in rows] for c in _COLUMNS},
                     schema=pa.schema([("position", pa.int64()), ("where", pa.string()), ("name", pa.string()),
                                       ("smiles", pa.string()), ("molblock", pa.string()), ("model", pa.string()),
                                       ("note", pa.string())]))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("Parquet output needs pyarrow: pip install pyarrow (or 'molconf[cluster]')") from err
    return pa, pq


def read_library_output(out_dir: str | Path) -> Iterator[dict]:
    """Every input record of a finished (or partial) run, in input order, as a dict with
    ``position, where, name, smiles, molblock`` (None for a failure), ``model`` and ``note``
    (the failure's reason, or the prediction's notes). Blocks not yet done are skipped."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    blocks = _Blocks(out_dir, manifest["format"])
    i = 0
    while (record := blocks.done(i)) is not None or blocks.path(i, "json").exists():
        if record is not None:
            yield from _read_block(blocks, i)
        i += 1


def _read_block(blocks: _Blocks, i: int) -> Iterator[dict]:
    if blocks.fmt == "parquet":
        _, pq = _pyarrow()
        yield from pq.read_table(blocks.path(i, "parquet")).to_pylist()
        return
    rows = []
    sdf = blocks.path(i, "sdf")
    for mol in Chem.SDMolSupplier(str(sdf), removeHs=False, sanitize=False) if sdf.stat().st_size else ():
        props = mol.GetPropsAsDict()
        name = mol.GetProp("_Name")
        rows.append({"position": int(props["molconf_position"]), "where": props["molconf_where"],
                     "name": "" if name == props["molconf_where"] else name, "smiles": props["input_smiles"],
                     "molblock": Chem.MolToMolBlock(mol), "model": props["molconf_model"],
                     "note": props.get("molconf_note", "")})
    with open(blocks.path(i, "failures.csv"), newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append({"position": int(r["position"]), "where": r["where"], "name": r["name"], "smiles": r["smiles"],
                         "molblock": None, "model": "", "note": r["reason"]})
    yield from sorted(rows, key=lambda r: r["position"])


# --- the run -----------------------------------------------------------------------------
def _blocks_of(path: Path, block_size: int) -> Iterator[tuple[int, list[Record]]]:
    records = ((position, smiles, name, where) for position, (smiles, name, where) in enumerate(read_named_smiles(path)))
    return enumerate(chunks(records, block_size))


def _manifest(path: Path, block_size: int, settings: LibrarySettings, fmt: str) -> dict:
    return {"input": {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)},
            "block_size": block_size, "format": fmt, "settings": dataclasses.asdict(settings)}


def _check_manifest(out_dir: Path, want: dict) -> None:
    diff = claim_folder(out_dir, MANIFEST, want)
    if diff:
        raise ValueError(f"{out_dir} holds another run (different {', '.join(diff)}): "
                         "resume with the same input and options, or write to a new folder")


def predict_library(
    input_path: str | Path,
    out_dir: str | Path,
    settings: LibrarySettings | None = None,
    *,
    block_size: int = 1000,
    fmt: str = "sdf",
    engine: str = "local",
    address: str | None = None,
    workers: int = 1,
    max_blocks: int | None = None,
    predictor: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Predict every molecule of a library file into resumable output blocks.

    Parameters
    ----------
    input_path : path
        ``.smi`` / ``.txt`` (``SMILES [name]`` per line), ``.csv`` (a ``smiles`` column, an
        optional ``name`` column), ``.parquet`` (the same columns); ``.gz`` for the text ones.
    out_dir : path
        Output folder: ``library.json`` (input checksum, options), ``blocks/``, and at the
        end ``summary.json`` and ``failures.csv`` (every failed record: position, line, name,
        SMILES, reason). A rerun with the same input and options resumes; other options are
        refused.
    settings : LibrarySettings
        What each block is predicted with.
    block_size : int
        Records per block (the unit of work, of output files and of resumption).
    fmt : {"sdf", "parquet"}
        Output blocks.
    engine : {"local", "ray"}
        ``"local"``: the blocks one after the other in this process (``workers`` processes
        per block, as :func:`molconf.predict`). ``"ray"``: each block a Ray task (one core),
        on the cluster at ``address`` or on a private local Ray of ``workers`` cores.
    max_blocks : int, optional
        Stop after this many new blocks (chunked runs; rerun to continue).
    predictor : callable, optional
        ``predictor(smiles_list, settings) -> (mols, report)`` instead of :func:`molconf.predict`.

    Returns
    -------
    dict
        The summary (also ``summary.json``): blocks done/total, molecules, predicted, failed,
        seconds, and the worker processes with their model loads.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    if fmt == "parquet":
        _pyarrow()
    path, out_dir = Path(input_path), Path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} not found")
    settings = settings or LibrarySettings()
    _check_manifest(out_dir, _manifest(path, block_size, settings, fmt))
    blocks = _Blocks(out_dir, fmt)
    start = time.perf_counter()
    bar = _bar(progress)

    total = 0
    waiting: dict[int, list[Record]] = {}  # blocks handed out, by index

    def todo() -> Iterator[tuple[int, list[Record]]]:
        nonlocal total
        new = 0
        for i, records in _blocks_of(path, block_size):  # read to the end: the total is counted
            total = i + 1
            if (done := blocks.done(i)) is not None:
                if done["first_position"] != records[0][0] or done["molecules"] != len(records):
                    raise ValueError(f"block {i} in {blocks.dir} does not match the input; write to a new folder")
                continue
            if max_blocks is not None and new >= max_blocks:
                continue
            new += 1
            waiting[i] = records
            yield i, records

    if engine == "local":
        for i, records in todo():
            blocks.write(i, records, predict_block(records, settings, predictor, workers), engine)
            bar.update(len(records))
    else:
        from molconf.cluster import ray_session, run_tasks

        with ray_session(address, num_cpus=workers):
            work = functools.partial(predict_block, settings=settings, predictor=predictor)
            for i, result in run_tasks(work, todo(), functools.partial(_one_by_one, work=work)):
                records = waiting.pop(i)
                blocks.write(i, records, result, engine)
                bar.update(len(records))
    bar.close()
    return _finish(out_dir, blocks, total, time.perf_counter() - start, engine, workers)


def _one_by_one(key, unit, reason: str, work) -> dict:
    """A block whose task died: its molecules as one task each, so a crash costs one molecule."""
    from molconf.cluster import run_tasks

    records = unit
    results = dict(run_tasks(work, ((k, [rec]) for k, rec in enumerate(records)),
                             lambda k, recs, why: _failed_rows(recs, why), max_retries=0))
    rows = [results[k]["rows"][0] for k in range(len(records))]
    return {"rows": rows, "pid": None, "model_loads": 0, "seconds": sum(r["seconds"] for r in results.values())}


def _bar(progress: bool):
    from tqdm import tqdm

    return tqdm(desc="predicting", unit="mol", mininterval=2.0, disable=not progress)


def _finish(out_dir: Path, blocks: _Blocks, total: int, seconds: float, engine: str, workers: int) -> dict:
    records, failures = [], io.StringIO()
    csv.writer(failures).writerow(_FAILURE_HEADER)
    for i in range(total):
        record = blocks.done(i)
        if record is None:
            continue
        records.append(record)
        if blocks.fmt == "sdf":
            block_csv = blocks.path(i, "failures.csv").read_text()
        else:
            block_csv = _failures_csv([r for r in _read_block(blocks, i) if r["molblock"] is None])
        failures.write(block_csv.split("\n", 1)[1])  # without its header
    loads: dict[str, int] = {}
    for r in records:
        if r.get("pid") is not None:
            loads[str(r["pid"])] = max(loads.get(str(r["pid"]), 0), r["model_loads"])
    summary = {"blocks": {"done": len(records), "total": total}, "complete": len(records) == total,
               "molecules": sum(r["molecules"] for r in records),
               "predicted": sum(r["predicted"] for r in records), "failed": sum(r["failed"] for r in records),
               "seconds_this_run": round(seconds, 2), "engine_this_run": engine, "workers_this_run": workers,
               "model_loads_by_process": loads}
    write_atomic(out_dir / FAILURES, failures.getvalue())
    write_atomic(out_dir / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary
