"""The GFN2-xTB ground states of MOSES molecules (``datasets/moses_xtb``) as a molconf cache.

``molecules.sdf.gz`` is written by :func:`molconf.ground_state.build.merge_dataset`; each record
holds a molecule with explicit H, its GFN2-xTB ground-state coordinates and the properties
of :mod:`molconf.constants` (``SDF_*``). The cache has the QM9 cache's format: bonds and bond
orders come from the SDF (the input SMILES' graph, not re-perceived), stereo from the 3D
coordinates, ``mol_ids`` are the molecules' source indices, so ``split_*.npy`` index it.

Command line (also ``molconf prepare moses_xtb …``)::

    python -m molconf.data.prepare moses_xtb [--sdf datasets/moses_xtb/molecules.sdf.gz]
        [--cache-dir DIR] [--limit N] [--workers N] [--report-dir DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from rdkit import Chem, RDLogger
from tqdm import tqdm

from molconf import constants as K
from molconf.data.cache import CacheWriter, GraphStore, default_cache_dir, file_sha256, fingerprint_key
from molconf.data.convert import compare_with_smiles
from molconf.data.features import GraphArrays, featurize
from molconf.data.splits import default_split_dir
from molconf.errors import CacheError, MoleculeError

DATASET = "moses_xtb"
# The split parts of the 9,999-molecule release (50 of the build's 100 shards). A grown data set
# lists each part's earlier molecules first (``build-xtb --merge --extend-split``), so a part's
# first ``RELEASE_9999[part]`` ids are this release's in every later one: work drawn from them
# (the ground-state anchors, the conformer pools and ensembles) is reproducible as the set grows.
RELEASE_9999 = {"train": 7_999, "val": 1_000, "test": 1_000}
SDF_NAME = "molecules.sdf.gz"
BUILD_REPORT = "build_report.json"


def default_moses_xtb_sdf() -> Path:
    """``datasets/moses_xtb/molecules.sdf.gz`` of this repository."""
    return default_split_dir(DATASET) / SDF_NAME




def moses_xtb_fingerprint(sdf: str | Path, limit: int | None = None) -> dict:
    """What a cache was built from: the SDF's bytes (hashed; tens of MB take well under a
    second), the limit and the code version."""
    import molconf

    path = Path(sdf).resolve()
    return {"dataset": DATASET, "molconf": molconf.__version__, "source": str(path),
            "bytes": path.stat().st_size, "sha256": file_sha256(path), "limit": limit}


def iter_sdf_records(path: str | Path) -> Iterator[str]:
    """SDF records (text up to and including ``$$$$``), streamed; ``.gz`` read on the fly."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    record: list[str] = []
    with opener(path, "rt") as fh:
        for line in fh:
            record.append(line)
            if line.startswith("$$$$"):
                yield "".join(record)
                record = []
    if any(line.strip() for line in record):  # last record without its terminator
        yield "".join(record)


def read_reference(record: str) -> Chem.Mol | None:
    """One SDF record as a reference molecule: explicit H, stereo from its 3D coordinates, the
    record's properties kept; None when RDKit cannot read it."""
    supplier = Chem.SDMolSupplier()
    supplier.SetData(record, removeHs=False)
    mol = supplier[0]
    if mol is not None:
        Chem.AssignStereochemistryFrom3D(mol)
    return mol


def split_records(ids, path: str | Path | None = None) -> Iterator[tuple[int, str, Chem.Mol]]:
    """``(source index, SDF record, Mol with explicit H and its stereo from 3D)`` of every record
    whose source index is in ``ids`` (e.g. ``np.load("datasets/moses_xtb/split_test.npy")``), in
    file order. The reference molecules as benchmarks score against them, with the record's
    properties (``gfn2_energy_eV``, ...) kept."""
    wanted = {int(i) for i in ids}
    for record in iter_sdf_records(path or default_moses_xtb_sdf()):
        supplier = Chem.SDMolSupplier()
        supplier.SetData(record, removeHs=False)
        mol = supplier[0]
        if mol is not None and int(mol.GetProp(K.SDF_SOURCE_INDEX)) in wanted:
            Chem.AssignStereochemistryFrom3D(mol)
            yield int(mol.GetProp(K.SDF_SOURCE_INDEX)), record, mol


@dataclass
class ConvertedRecord:
    """One SDF record as the cache stores it, with what the conversion report needs."""

    index: int  # source index (the molecule id)
    graph: GraphArrays
    mol_binary: bytes
    smiles_match: bool | None  # graph == input SMILES (bond orders and charges)
    connectivity_match: bool | None  # same, connectivity only


def convert_record(item: tuple[int, str]) -> ConvertedRecord | MoleculeError:
    """``(position, record text)`` → featurised molecule; failures come back as values."""
    position, record = item
    name = f"record {position}"
    try:
        supplier = Chem.SDMolSupplier()
        supplier.SetData(record, removeHs=False)
        RDLogger.DisableLog("rdApp.*")
        try:
            mol = supplier[0]
        finally:
            RDLogger.EnableLog("rdApp.*")
        if mol is None:
            raise MoleculeError(name, "RDKit cannot read the record")
        if not mol.HasProp(K.SDF_SOURCE_INDEX):
            raise MoleculeError(name, f"no {K.SDF_SOURCE_INDEX} property")
        index = int(mol.GetProp(K.SDF_SOURCE_INDEX))
        name = f"molecule {index}"
        if mol.GetNumConformers() != 1 or not mol.GetConformer().Is3D():
            raise MoleculeError(name, "no 3D conformer")
        if any(a.GetNumImplicitHs() for a in mol.GetAtoms()):
            raise MoleculeError(name, "implicit hydrogens (the data set stores every H explicitly)")
        smiles = mol.GetProp(K.SDF_SMILES) if mol.HasProp(K.SDF_SMILES) else ""
        exact, skeleton = compare_with_smiles(mol, smiles)
        graph = featurize(mol)
        binary = mol.ToBinary(Chem.PropertyPickleOptions.AllProps)
        return ConvertedRecord(index, graph, binary, exact, skeleton)
    except MoleculeError as err:
        return err
    except Exception as err:  # anything unexpected still names the molecule
        return MoleculeError(name, f"{type(err).__name__}: {err}")


def _convert_stream(records, workers: int) -> Iterator[ConvertedRecord | MoleculeError]:
    if workers <= 1:
        yield from map(convert_record, records)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(convert_record, records, chunksize=64)


def _build_info(sdf: Path) -> dict:
    """Protocol and versions of the GFN2-xTB build, from ``build_report.json`` beside the SDF."""
    path = sdf.parent / BUILD_REPORT
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    return {k: report[k] for k in ("protocol", "versions", "source", "split") if k in report}


def build_moses_xtb_cache(
    folder: str | Path,
    sdf: str | Path,
    limit: int | None = None,
    workers: int = 0,
    report_dir: str | Path | None = None,
) -> GraphStore:
    """Featurise the SDF into a cache folder (streamed) and write the conversion report."""
    from molconf.data.prepare import write_report

    start = time.time()
    sdf = Path(sdf)
    fingerprint = moses_xtb_fingerprint(sdf, limit)
    workers = workers or os.cpu_count() or 1
    records = enumerate(iter_sdf_records(sdf))
    if limit is not None:
        records = islice(records, limit)
    dropped: list[MoleculeError] = []
    exact = skeleton = compared = 0
    with CacheWriter(folder) as writer:
        bar = tqdm(_convert_stream(records, workers), total=limit, desc=DATASET, unit="mol", mininterval=2.0)
        for item in bar:
            if isinstance(item, MoleculeError):
                dropped.append(item)
                continue
            writer.add(item.index, item.graph, item.mol_binary)
            if item.smiles_match is not None:
                compared += 1
                exact += item.smiles_match
                skeleton += bool(item.connectivity_match)
        converted = writer.num_molecules
        n_total = converted + len(dropped)
        reasons = collections.Counter(e.reason.split("(")[0].strip() for e in dropped)
        report = {
            "dataset": DATASET,
            "source": fingerprint["source"],
            "molecules_read": n_total,
            "converted": converted,
            "dropped": len(dropped),
            "converted_fraction": converted / max(n_total, 1),
            "dropped_by_reason": dict(reasons.most_common()),
            "smiles_compared": compared,
            "smiles_agreement_exact": exact / max(compared, 1),
            "smiles_agreement_connectivity": skeleton / max(compared, 1),
            "max_atoms": writer.max_atoms,
            "mean_atoms": writer.num_atoms / max(converted, 1),
            "seconds": round(time.time() - start, 1),
            "workers": workers,
            "build": _build_info(sdf),
        }
        writer.finish(fingerprint, info=report)
    for out in {Path(folder), *([Path(report_dir)] if report_dir else [])}:
        write_report(out, report, dropped)
    return GraphStore(folder, fingerprint)


def load_moses_xtb(
    sdf: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    workers: int = 0,
    report_dir: str | Path | None = None,
    rebuild: bool = False,
) -> GraphStore:
    """The GFN2-xTB MOSES data as a :class:`GraphStore`, building the cache on first use.

    Parameters
    ----------
    sdf : path, optional
        ``molecules.sdf.gz`` (default: the committed ``datasets/moses_xtb/molecules.sdf.gz``).
    cache_dir : path, optional
        Parent folder of caches (default :func:`~molconf.data.cache.default_cache_dir`).
    limit : int, optional
        Only the first ``limit`` records (tests, quick looks); cached separately.
    rebuild : bool
        Rebuild even if a valid cache exists.

    A stale or corrupted cache is reported with a warning and rebuilt, never used.
    """
    sdf = Path(sdf) if sdf is not None else default_moses_xtb_sdf()
    if not sdf.is_file():
        raise FileNotFoundError(
            f"{sdf} not found: build it with `molconf build-xtb --moses train --n N --out DIR` "
            "then `molconf build-xtb --merge --out DIR` (datasets/moses_xtb/README.md)"
        )
    fingerprint = moses_xtb_fingerprint(sdf, limit)
    folder = Path(cache_dir or default_cache_dir()) / f"{DATASET}-{fingerprint_key(fingerprint)}"
    if folder.exists() and not rebuild:
        try:
            return GraphStore(folder, fingerprint)
        except CacheError as err:
            warnings.warn(f"rebuilding {DATASET} cache: {err}", stacklevel=2)
    return build_moses_xtb_cache(folder, sdf, limit, workers, report_dir)


def split_dir_for(sdf: str | Path | None) -> Path:
    """Where the split files of an SDF are: beside it if there, else ``datasets/moses_xtb``."""
    if sdf is not None and (Path(sdf).parent / "split_train.npy").is_file():
        return Path(sdf).parent
    return default_split_dir(DATASET)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m molconf.data.prepare moses_xtb", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sdf", help="molecules.sdf.gz (default: datasets/moses_xtb/molecules.sdf.gz)")
    p.add_argument("--cache-dir", help="parent folder of caches")
    p.add_argument("--limit", type=int, help="only the first N molecules")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--report-dir", help="also write the conversion report here")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache exists")
    args = p.parse_args(argv)
    t = time.time()
    store = load_moses_xtb(args.sdf, args.cache_dir, args.limit, args.workers, args.report_dir, args.rebuild)
    info = store.manifest["info"]
    print(f"{len(store)} molecules in {store.folder} ({time.time() - t:.1f} s); dropped {info.get('dropped')}, "
          f"SMILES agreement {info.get('smiles_agreement_exact', 0):.4f}, max atoms {store.max_atoms}")
