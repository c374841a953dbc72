"""Build (once, resumably) and load the processed GEOM-DRUGS cache, with a conversion report.

Command line (also ``molconf prepare geom_drugs …``)::

    python datasets/geom_drugs/prepare.py --root <release> [--split-dir DIR] [--cache-dir DIR]
                                          [--workers N] [--limit N] [--shard-size 1000]

``<release>`` holds ``rdkit_folder/`` (default: the format fixture shipped in
``datasets/geom_drugs/sample``). The cache has the QM9 cache's format: one molecule per row,
its ground state (lowest ``totalenergy``) as the reference conformer, ``mol_ids`` = positions
in the sorted pickle list (:func:`molconf.data.geom.geom_index`), so split files index it.

Streaming and resumable
    Molecules are converted in shards of ``shard_size``; each shard is written to disk as a
    small cache of its own (``<cache>.partial/shard_NNNNNN``), then ``state.json`` records
    it as finished. Memory is bounded by one shard, not by the data set. A run that is
    killed restarts with the first unfinished shard (same source and settings; otherwise
    the partial work is discarded). When all shards are done they are concatenated into
    the final cache, the conversion report is written and the partial folder removed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import functools
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem
from tqdm import tqdm

from molconf.data.cache import CacheWriter, GraphStore, default_cache_dir, fingerprint_key
from molconf.data.features import GraphArrays, featurize
from molconf.data.geom import (
    DRUGS_DIR,
    GEOM_ORDERS,
    SUMMARY_FILE,
    GeomEntry,
    geom_index,
    load_geom_split,
    rdkit_folder,
    read_geom_molecule,
)
from molconf.errors import CacheError, MoleculeError

DEFAULT_SHARD_SIZE = 1000  # molecules per shard: ~10–30 MB of arrays for drug-sized molecules
STATE_FILE = "state.json"


def default_geom_root() -> Path:
    """The shipped format fixture, ``datasets/geom_drugs/sample`` (next to the package, else cwd)."""
    here = Path(__file__).resolve().parents[2] / "datasets" / "geom_drugs" / "sample"
    return here if here.is_dir() else Path("datasets") / "geom_drugs" / "sample"


def default_geom_split(root: str | Path) -> Path | None:
    """A split file shipped with the release folder (``split.npy`` etc.), if any."""
    root = Path(root)
    for f in ("split.npy", "split0.npy", "split_train.npy"):
        if (root / f).is_file():
            return root
    return None


def geom_source_fingerprint(
    root: str | Path, order: str = "pickle_path", limit: int | None = None, skip_reacted: bool = True
) -> dict:
    """What a GEOM cache was built from: changes whenever the release, settings or code do.

    Every pickle's name, size and modification time go into one hash (a ``stat`` per file,
    seconds for the full release), so a rewritten, added or removed pickle invalidates the
    cache without reading the pickles.
    """
    import molconf

    folder = rdkit_folder(root).resolve()
    summary = (folder / SUMMARY_FILE).stat()
    h = hashlib.sha256()
    count = size = 0
    drugs = folder / DRUGS_DIR
    entries = sorted((e for e in os.scandir(drugs) if e.name.endswith(".pickle")), key=lambda e: e.name) \
        if drugs.is_dir() else []
    for e in entries:
        st = e.stat()
        h.update(f"{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count, size = count + 1, size + st.st_size
    return {
        "dataset": "geom_drugs",
        "molconf": molconf.__version__,
        "source": str(folder),
        "order": order,
        "limit": limit,
        "skip_reacted": skip_reacted,
        "summary": {"bytes": summary.st_size, "mtime_ns": summary.st_mtime_ns},
        "pickles": {"count": count, "bytes": size, "sha256_names_sizes_mtimes": h.hexdigest()},
    }


# --- one molecule ---------------------------------------------------------------------------
@dataclass
class ConvertedGeom:
    """A converted molecule with what the conversion report needs."""

    index: int  # molecule id (position in the index)
    graph: GraphArrays  # ground state
    mol_binary: bytes  # RDKit Mol (explicit H, ground-state conformer, stereo from 3D)
    conformers: int  # conformers kept in the ensemble
    skipped_conformers: int  # reacted conformers left out
    elements: tuple[str, ...]  # element symbols present


def convert_geom_entry(entry: GeomEntry, skip_reacted: bool = True) -> ConvertedGeom | MoleculeError:
    """Read and featurise one molecule; failures come back as values (for worker pools)."""
    try:
        if entry.path is None:
            raise MoleculeError(entry.name, "pickle file not found")
        mol = read_geom_molecule(entry.path, entry.name, entry.smiles, skip_reacted)
        graph = featurize(mol.ground_state)
        binary = mol.ground_state.ToBinary(Chem.PropertyPickleOptions.AllProps)
        elements = tuple(sorted({a.GetSymbol() for a in mol.ground_state.GetAtoms()}))
        return ConvertedGeom(entry.mol_id, graph, binary, len(mol.conformers), mol.skipped_conformers, elements)
    except MoleculeError as err:
        return err
    except Exception as err:  # anything unexpected still names the molecule
        return MoleculeError(entry.name, f"{type(err).__name__}: {err}")


def reason_kind(reason: str) -> str:
    """Reason without per-molecule details, for counting ("conformer 3: x (y)" → "x")."""
    return re.sub(r"^conformer \d+: ", "", reason).split("(")[0].strip()


def _quiet_worker():
    # RDKit prints sanitisation warnings straight to stderr; failures are returned as values
    # and reported, so the noise only hides the progress bar.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


# --- shards -----------------------------------------------------------------------------------
def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class _ShardState:
    """``state.json`` of a partial build: which shards are finished, for which source."""

    def __init__(self, work: Path, fingerprint: dict, shard_size: int, num_shards: int):
        self.path = work / STATE_FILE
        self.work = work
        want = {"fingerprint": fingerprint, "shard_size": shard_size, "num_shards": num_shards}
        state = None
        if self.path.is_file():
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                state = json.loads(self.path.read_text())
        if state is None or any(state.get(k) != v for k, v in want.items()):
            if work.exists():  # other source or settings: start over
                shutil.rmtree(work)
            state = {**want, "finished": []}
        work.mkdir(parents=True, exist_ok=True)
        for leftover in work.glob("*.tmp*"):  # a shard being written when the run died
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        self.state = state
        self.finished = {i for i in state["finished"] if self._intact(i)}

    def folder(self, i: int) -> Path:
        return self.work / f"shard_{i:06d}"

    def report(self, i: int) -> Path:
        return self.work / f"shard_{i:06d}.json"

    def _intact(self, i: int) -> bool:
        try:
            GraphStore(self.folder(i))
            json.loads(self.report(i).read_text())
        except (CacheError, OSError, json.JSONDecodeError):
            return False
        return True

    def mark_finished(self, i: int) -> None:
        self.finished.add(i)
        self.state["finished"] = sorted(self.finished)
        _write_json_atomic(self.path, self.state)


def _convert_stream(entries: list[GeomEntry], pool, skip_reacted: bool) -> Iterator[ConvertedGeom | MoleculeError]:
    fn = functools.partial(convert_geom_entry, skip_reacted=skip_reacted)
    if pool is None:
        return map(fn, entries)
    return pool.imap(fn, entries, chunksize=max(1, min(64, len(entries) // 8)))


def _build_shard(i: int, entries: list[GeomEntry], state: _ShardState, pool, skip_reacted: bool, bar) -> None:
    dropped = []
    stats = collections.Counter()
    elements = collections.Counter()
    with CacheWriter(state.folder(i)) as writer:
        for item in _convert_stream(entries, pool, skip_reacted):
            bar.update(1)
            if isinstance(item, MoleculeError):
                dropped.append([item.molecule, item.reason])
                continue
            writer.add(item.index, item.graph, item.mol_binary)
            stats["conformers_kept"] += item.conformers
            stats["reacted_conformers_skipped"] += item.skipped_conformers
            elements.update(item.elements)
        writer.finish({"geom_drugs_shard": i, "of": state.state["fingerprint"]})
    report = {"molecules": len(entries), "dropped": dropped, "stats": dict(stats), "elements": dict(elements)}
    _write_json_atomic(state.report(i), report)
    state.mark_finished(i)


def build_geom_cache(
    folder: str | Path,
    root: str | Path,
    order: str = "pickle_path",
    limit: int | None = None,
    workers: int = 0,
    report_dir: str | Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    skip_reacted: bool = True,
    split: str | Path | None = None,
    max_shards: int | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> GraphStore | None:
    """Convert a GEOM release into a cache folder (resuming a partial build if there is one).

    Parameters
    ----------
    folder : path
        Final cache folder; partial work lives in ``<folder>.partial``.
    root : path
        The release (folder holding ``rdkit_folder``).
    order : str
        Molecule-id ordering, see :mod:`molconf.data.geom`.
    limit : int, optional
        Only the first ``limit`` molecules of the ordering.
    workers : int
        Conversion processes (0: all cores; 1: in this process).
    shard_size : int
        Molecules per shard (the unit of memory and of resumption).
    split : path, optional
        Split file/folder (:func:`~molconf.data.geom.load_geom_split`): checked against the
        index, and the report counts how many of each part were converted.
    max_shards : int, optional
        Convert at most this many (new) shards, then return ``None`` without finishing; a
        later call continues (chunked runs on a time-limited job, and tests).
    on_shard : callable, optional
        Called with the shard number after each shard is safely on disk.

    Returns
    -------
    GraphStore or None
        The finished cache, or ``None`` if stopped by ``max_shards``.
    """
    start = time.time()
    folder = Path(folder)
    fingerprint = geom_source_fingerprint(root, order, limit, skip_reacted)
    index = geom_index(root, order)
    splits = load_geom_split(split, len(index)) if split is not None else None
    if limit is not None:
        index = index[:limit]
    shards = [index[s : s + shard_size] for s in range(0, len(index), shard_size)]
    work = folder.with_name(folder.name + ".partial")
    state = _ShardState(work, fingerprint, shard_size, len(shards))
    todo = [i for i in range(len(shards)) if i not in state.finished]
    workers = workers or os.cpu_count() or 1
    done_before = sum(len(shards[i]) for i in state.finished)
    bar = tqdm(total=len(index), initial=done_before, desc="GEOM-DRUGS", unit="mol", mininterval=2.0)
    pool = mp.get_context("fork").Pool(workers, initializer=_quiet_worker) if workers > 1 and todo else None
    try:
        for n, i in enumerate(todo):
            if max_shards is not None and n >= max_shards:
                return None
            _build_shard(i, shards[i], state, pool, skip_reacted, bar)
            if on_shard is not None:
                on_shard(i)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    # Combine: shard arrays are appended one shard at a time (memory: one shard).
    dropped_by_reason: collections.Counter = collections.Counter()
    totals: collections.Counter = collections.Counter()
    elements: collections.Counter = collections.Counter()
    n_dropped = 0
    with CacheWriter(folder) as writer:
        for i in range(len(shards)):
            writer.add_store(GraphStore(state.folder(i)))
            rep = json.loads(state.report(i).read_text())
            n_dropped += len(rep["dropped"])
            dropped_by_reason.update(reason_kind(r) for _, r in rep["dropped"])
            totals.update(rep["stats"])
            elements.update(rep["elements"])
        converted = writer.num_molecules
        report = {
            "dataset": "geom_drugs",
            "source": fingerprint["source"],
            "order": order,
            "molecules_read": len(index),
            "converted": converted,
            "dropped": n_dropped,
            "converted_fraction": converted / max(len(index), 1),
            "dropped_by_reason": dict(dropped_by_reason.most_common()),
            "conformers_kept": totals["conformers_kept"],
            "mean_conformers": totals["conformers_kept"] / max(converted, 1),
            "reacted_conformers_skipped": totals["reacted_conformers_skipped"],
            "molecules_with_element": dict(sorted(elements.items())),
            "max_atoms": writer.max_atoms,
            "mean_atoms": writer.num_atoms / max(converted, 1),
            "shards": len(shards),
            "shard_size": shard_size,
            "seconds_this_run": round(time.time() - start, 1),
            "workers": workers,
        }
        if splits is not None:
            report["split"] = _split_coverage(splits, state, len(shards))
        writer.finish(fingerprint, info=report)
    for out in {folder, *([Path(report_dir)] if report_dir else [])}:
        _write_reports(out, report, state, len(shards))
    shutil.rmtree(work, ignore_errors=True)
    return GraphStore(folder, fingerprint)


def _split_coverage(splits: dict, state: _ShardState, n_shards: int) -> dict:
    converted = set()
    for i in range(n_shards):
        converted.update(int(m) for m in GraphStore(state.folder(i), verify=False).mol_ids)
    return {part: {"molecules": len(ids), "converted": sum(int(m) in converted for m in ids)}
            for part, ids in splits.items()}


def _write_reports(folder: Path, report: dict, state: _ShardState, n_shards: int) -> None:
    """``conversion_report.json`` and ``dropped.csv`` (streamed shard by shard)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conversion_report.json").write_text(json.dumps(report, indent=1) + "\n")
    with open(folder / "dropped.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["molecule", "reason"])
        for i in range(n_shards):
            w.writerows(json.loads(state.report(i).read_text())["dropped"])


def load_geom_drugs(
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    workers: int = 0,
    report_dir: str | Path | None = None,
    rebuild: bool = False,
    order: str = "pickle_path",
    skip_reacted: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
    split: str | Path | None = None,
) -> GraphStore:
    """GEOM-DRUGS as a :class:`GraphStore`, building (or resuming) the cache on first use.

    Parameters
    ----------
    root : path, optional
        The release (holding ``rdkit_folder``); default: the shipped format fixture.
    cache_dir : path, optional
        Parent folder of caches (default :func:`~molconf.data.cache.default_cache_dir`).
    limit : int, optional
        Only the first ``limit`` molecules (ids ``0 … limit-1``); cached separately.
    rebuild : bool
        Rebuild even if a valid cache exists (a partial build still resumes).

    A stale or corrupted cache is reported with a warning and rebuilt, never used.
    """
    if order not in GEOM_ORDERS:
        raise ValueError(f"order must be one of {GEOM_ORDERS}, got {order!r}")
    root = Path(root) if root is not None else default_geom_root()
    fingerprint = geom_source_fingerprint(root, order, limit, skip_reacted)
    folder = Path(cache_dir or default_cache_dir()) / f"geom_drugs-{fingerprint_key(fingerprint)}"
    if folder.exists() and not rebuild:
        try:
            return GraphStore(folder, fingerprint)
        except CacheError as err:
            warnings.warn(f"rebuilding GEOM-DRUGS cache: {err}", stacklevel=2)
    if split is None:
        split = default_geom_split(root)
    return build_geom_cache(folder, root, order, limit, workers, report_dir, shard_size, skip_reacted, split)


def _valid(folder: Path, fingerprint: dict) -> bool:
    try:
        GraphStore(folder, fingerprint)
    except CacheError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python datasets/geom_drugs/prepare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="GEOM release folder holding rdkit_folder/ (default: the shipped sample)")
    p.add_argument("--split-dir", help="split file or folder (split.npy / split0.npy / split_{train,val,test}.npy)")
    p.add_argument("--cache-dir", help="parent folder of caches")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--limit", type=int, help="only the first N molecules")
    p.add_argument("--order", choices=GEOM_ORDERS, default="pickle_path", help="molecule-id ordering")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="molecules per shard")
    p.add_argument("--max-shards", type=int, help="stop after N new shards (rerun to continue)")
    p.add_argument("--keep-reacted", action="store_true",
                   help="reject molecules with reacted conformers instead of skipping those conformers")
    p.add_argument("--report-dir", help="also write the conversion report here")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache exists")
    args = p.parse_args(argv)
    t = time.time()
    root = Path(args.root) if args.root else default_geom_root()
    skip_reacted = not args.keep_reacted
    split = args.split_dir or default_geom_split(root)
    fp = geom_source_fingerprint(root, args.order, args.limit, skip_reacted)
    folder = Path(args.cache_dir or default_cache_dir()) / f"geom_drugs-{fingerprint_key(fp)}"
    if args.max_shards is not None and (args.rebuild or not _valid(folder, fp)):
        store = build_geom_cache(folder, root, args.order, args.limit, args.workers, args.report_dir,
                                 args.shard_size, skip_reacted, split, max_shards=args.max_shards)
        if store is None:
            print(f"stopped after {args.max_shards} shards; rerun to continue ({folder}.partial)")
            return
    else:
        store = load_geom_drugs(root, args.cache_dir, args.limit, args.workers, args.report_dir, args.rebuild,
                                args.order, skip_reacted, args.shard_size, split)
    info = store.manifest["info"]
    if args.report_dir:  # a cache built earlier: its reports, copied
        Path(args.report_dir).mkdir(parents=True, exist_ok=True)
        for f in ("conversion_report.json", "dropped.csv"):
            if (store.folder / f).is_file() and not (Path(args.report_dir) / f).exists():
                shutil.copyfile(store.folder / f, Path(args.report_dir) / f)
    print(f"{len(store)} molecules in {store.folder} ({time.time() - t:.1f} s); dropped {info.get('dropped')}, "
          f"mean conformers {info.get('mean_conformers', 0):.1f}, max atoms {store.max_atoms}")


if __name__ == "__main__":
    main()
