"""Build (once) and load (fast) the processed QM9 cache, with a conversion report.

Command line::

    python -m molconf.data.prepare qm9 [--xyz PATH] [--report-dir datasets/qm9] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.metadata
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from molconf.data.cache import GraphStore, default_cache_dir, fingerprint_key, write_cache
from molconf.data.convert import Converted, convert_or_error
from molconf.data.qm9 import (
    QM9_NUM_MOLECULES,
    QM9PACK_FILES,
    RawMolecule,
    iter_qm9_xyz_archive,
    iter_qm9pack,
    qm9pack_data_dir,
)
from molconf.errors import CacheError, MoleculeError


def qm9_source_fingerprint(xyz: str | Path | None = None, limit: int | None = None) -> dict:
    """What a QM9 cache was built from: changes whenever the source or the code version does."""
    import molconf

    fp: dict = {"dataset": "qm9", "molconf": molconf.__version__, "limit": limit}
    if xyz is None:
        folder = qm9pack_data_dir()
        fp["source"] = "qm9pack " + importlib.metadata.version("qm9pack")
        fp["files"] = {f: (folder / f).stat().st_size for f in QM9PACK_FILES}
    else:
        path = Path(xyz).resolve()
        files = sorted(path.glob("*.xyz")) if path.is_dir() else [path]
        fp["source"] = str(path)
        fp["files"] = {"count": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return fp


def _quiet_worker():
    # RDKit's Hückel code prints distance warnings straight to stderr; failures are
    # returned as values and reported, so the noise only hides the progress bar.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


def convert_all(
    raws: Iterable[RawMolecule | MoleculeError], workers: int = 0, total: int | None = None
) -> Iterator[Converted | MoleculeError]:
    """Convert molecules in worker processes, in input order."""
    workers = workers or os.cpu_count() or 1
    bar = dict(total=total, desc="converting", unit="mol", mininterval=2.0)
    if workers == 1:
        yield from tqdm(map(convert_or_error, raws), **bar)
        return
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_quiet_worker) as pool:
        yield from tqdm(pool.imap(convert_or_error, raws, chunksize=256), **bar)


def build_qm9_cache(
    folder: Path,
    xyz: str | Path | None = None,
    limit: int | None = None,
    workers: int = 0,
    report_dir: str | Path | None = None,
) -> GraphStore:
    """Convert QM9 into a cache folder and write the conversion report beside it."""
    start = time.time()
    fingerprint = qm9_source_fingerprint(xyz, limit)
    raws = iter_qm9pack() if xyz is None else iter_qm9_xyz_archive(xyz)
    if limit is not None:
        raws = islice(raws, limit)
    total = limit or (QM9_NUM_MOLECULES if xyz is None else None)
    ids, graphs, binaries, dropped = [], [], [], []
    hueckel = exact = skeleton = compared = 0
    for item in convert_all(raws, workers, total):
        if isinstance(item, MoleculeError):
            dropped.append(item)
            continue
        ids.append(item.index)
        graphs.append(item.graph)
        binaries.append(item.mol_binary)
        hueckel += item.used_hueckel
        if item.smiles_match is not None:
            compared += 1
            exact += item.smiles_match
            skeleton += bool(item.connectivity_match)
    n_total = len(ids) + len(dropped)
    reasons = collections.Counter(_reason_kind(e.reason) for e in dropped)
    report = {
        "dataset": "qm9",
        "source": fingerprint["source"],
        "molecules_read": n_total,
        "converted": len(ids),
        "dropped": len(dropped),
        "converted_fraction": len(ids) / max(n_total, 1),
        "dropped_by_reason": dict(reasons.most_common()),
        "bond_orders_needed_hueckel": hueckel,
        "smiles_compared": compared,
        "smiles_agreement_exact": exact / max(compared, 1),
        "smiles_agreement_connectivity": skeleton / max(compared, 1),
        "seconds": round(time.time() - start, 1),
        "workers": workers or os.cpu_count(),
    }
    write_cache(folder, ids, graphs, binaries, fingerprint, info=report)
    for out in {Path(folder), *( [Path(report_dir)] if report_dir else [])}:
        write_report(out, report, dropped)
    return GraphStore(folder, fingerprint)


def _reason_kind(reason: str) -> str:
    return reason.split("(")[0].split(":")[0].strip()


def write_report(folder: Path, report: dict, dropped: list[MoleculeError]) -> None:
    """``conversion_report.json`` (summary) and ``dropped.csv`` (one row per molecule)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conversion_report.json").write_text(json.dumps(report, indent=1) + "\n")
    with open(folder / "dropped.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["molecule", "reason"])
        for err in dropped:
            w.writerow([err.molecule, err.reason])


def load_qm9(
    cache_dir: str | Path | None = None,
    xyz: str | Path | None = None,
    limit: int | None = None,
    workers: int = 0,
    report_dir: str | Path | None = None,
    rebuild: bool = False,
) -> GraphStore:
    """QM9 as a :class:`GraphStore`, building the cache on first use.

    Parameters
    ----------
    cache_dir : path, optional
        Parent folder of caches (default :func:`~molconf.data.cache.default_cache_dir`).
    xyz : path, optional
        Original QM9 archive (folder of ``.xyz`` or a tar); default: the ``qm9pack`` wheel.
    limit : int, optional
        Only the first ``limit`` molecules (tests, quick looks); cached separately.
    rebuild : bool
        Rebuild even if a valid cache exists.

    A stale or corrupted cache is reported with a warning and rebuilt, never used.
    """
    fingerprint = qm9_source_fingerprint(xyz, limit)
    folder = Path(cache_dir or default_cache_dir()) / f"qm9-{fingerprint_key(fingerprint)}"
    if folder.exists() and not rebuild:
        try:
            return GraphStore(folder, fingerprint)
        except CacheError as err:
            warnings.warn(f"rebuilding QM9 cache: {err}", stacklevel=2)
    return build_qm9_cache(folder, xyz, limit, workers, report_dir)


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["geom_drugs"]:  # its own options (python datasets/geom_drugs/prepare.py --help)
        from molconf.data.geom_prepare import main as geom_main

        geom_main(argv[1:])
        return
    if argv[:1] == ["moses_xtb"]:  # its own options (GFN2-xTB MOSES SDF, see datasets/moses_xtb)
        from molconf.data.moses_xtb import main as moses_xtb_main

        moses_xtb_main(argv[1:])
        return
    p = argparse.ArgumentParser(prog="python -m molconf.data.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="geom_drugs: molconf prepare geom_drugs --help; "
                                       "moses_xtb: molconf prepare moses_xtb --help")
    p.add_argument("dataset", choices=["qm9", "geom_drugs", "moses_xtb"])
    p.add_argument("--xyz", help="original QM9 archive (folder of .xyz or tar); default qm9pack")
    p.add_argument("--cache-dir", help="parent folder of caches")
    p.add_argument("--limit", type=int, help="only the first N molecules")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--report-dir", help="also write the conversion report here")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache exists")
    args = p.parse_args(argv)
    t = time.time()
    store = load_qm9(args.cache_dir, args.xyz, args.limit, args.workers, args.report_dir, args.rebuild)
    if args.report_dir and not (Path(args.report_dir) / "conversion_report.json").exists():
        write_report(Path(args.report_dir), store.manifest["info"], [])
    info = store.manifest["info"]
    print(f"{len(store)} molecules in {store.folder} ({time.time() - t:.1f} s); "
          f"dropped {info.get('dropped')}, SMILES agreement {info.get('smiles_agreement_exact'):.4f}")


if __name__ == "__main__":
    main()
