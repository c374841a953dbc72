"""Write the reference molecules `make run` scores against: fixed samples of two test splits.

- ``qm9_test_sample.sdf``: molecules of ``datasets/qm9/split_test.npy`` with their DFT
  (B3LYP/6-31G(2df,p)) ground-state coordinates, read from the ``qm9pack`` wheel and
  converted exactly as the QM9 cache converts them (:func:`molconf.data.convert.convert`:
  bonds perceived from the geometry, stereo from 3D);
- ``moses_xtb_test_sample.sdf``: molecules of ``datasets/moses_xtb/split_test.npy`` with
  their GFN2-xTB ground-state coordinates, each record copied verbatim from
  ``datasets/moses_xtb/molecules.sdf.gz`` once the cache's reader
  (:func:`molconf.data.moses_xtb.convert_record`) accepts it.

Which molecules: the test split's ids in a random order drawn with ``numpy``'s
``default_rng(SEED)``; the first ``N`` that convert (a QM9 molecule whose bonds cannot be
perceived is dropped from the cache, so it is skipped here too; the skipped ids are printed),
written sorted by id. Every record carries its data-set id in the property
``molconf_index`` (QM9: the data set's ``Index``; moses_xtb: the source row, as in the
split files). Rerunning gives byte-identical files::

    .venv/bin/python datasets/reference/make_samples.py [--n 200]
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np
from rdkit import Chem

from molconf import constants as K
from molconf.data.convert import convert_or_error
from molconf.data.moses_xtb import convert_record, default_moses_xtb_sdf, iter_sdf_records
from molconf.data.qm9 import QM9PACK_FILES, parse_qm9pack_row, qm9pack_data_dir
from molconf.data.splits import load_split
from molconf.errors import MoleculeError

HERE = Path(__file__).resolve().parent
SEED = 42
N_PER_SET = 200
SPARE = 50  # candidates drawn beyond N, standing in for molecules the conversion drops
FILES = {"qm9": HERE / "qm9_test_sample.sdf", "moses_xtb": HERE / "moses_xtb_test_sample.sdf"}
QM9_SMILES = "qm9_smiles"  # the data set's own SMILES, kept for reference
_INDEX_RE = re.compile(r">\s*<" + re.escape(K.SDF_SOURCE_INDEX) + r">[^\n]*\n\s*(-?\d+)")


def candidate_ids(dataset: str, n: int, seed: int = SEED) -> list[int]:
    """The test split's ids in the sample's seeded random order (the first ``n``)."""
    ids = np.sort(load_split(dataset, "test"))
    return [int(i) for i in np.random.default_rng(seed).permutation(ids)[:n]]


def qm9_rows(ids) -> dict[int, dict]:
    """The qm9pack CSV rows of the given QM9 ids (only those rows are parsed)."""
    wanted, rows = {str(int(i)) for i in ids}, {}
    csv.field_size_limit(1 << 30)
    folder = qm9pack_data_dir()
    for fname in QM9PACK_FILES:
        with open(folder / fname, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["Index"] in wanted:
                    rows[int(row["Index"])] = row
                    if len(rows) == len(wanted):
                        return rows
    return rows


def moses_records(ids, sdf: str | Path | None = None) -> dict[int, str]:
    """The record texts of the given moses_xtb ids (matched by their ``molconf_index``)."""
    wanted, out = {int(i) for i in ids}, {}
    for record in iter_sdf_records(sdf or default_moses_xtb_sdf()):
        match = _INDEX_RE.search(record)
        if match and int(match.group(1)) in wanted:
            out[int(match.group(1))] = record
            if len(out) == len(wanted):
                break
    return out


def _take(candidates: list[int], convert, n: int, dataset: str):
    """The first ``n`` candidates that convert, sorted by id; prints the skipped ones."""
    kept, skipped = {}, []
    for mol_id in candidates:
        if len(kept) == n:
            break
        result = convert(mol_id)
        if isinstance(result, MoleculeError):
            skipped.append(f"{mol_id} ({result.reason})")
        else:
            kept[mol_id] = result
    if len(kept) < n:
        raise SystemExit(f"{dataset}: only {len(kept)} of {len(candidates)} candidates convert; raise SPARE")
    if skipped:
        print(f"{dataset}: skipped {len(skipped)} that the cache drops too: " + "; ".join(skipped))
    return dict(sorted(kept.items()))


def make_qm9(n: int, path: Path = FILES["qm9"]) -> list[int]:
    candidates = candidate_ids("qm9", n + SPARE)
    rows = qm9_rows(candidates)

    def convert(mol_id):
        if mol_id not in rows:
            return MoleculeError(f"QM9 {mol_id}", "not in qm9pack")
        try:
            raw = parse_qm9pack_row(rows[mol_id])
        except (MoleculeError, KeyError, ValueError) as err:
            return err if isinstance(err, MoleculeError) else MoleculeError(f"QM9 {mol_id}", str(err))
        return convert_or_error(raw)

    kept = _take(candidates, convert, n, "qm9")
    with Chem.SDWriter(str(path)) as writer:
        for mol_id, converted in kept.items():
            mol = Chem.Mol(converted.mol_binary)
            mol.SetProp("_Name", f"qm9 {mol_id}")
            mol.SetIntProp(K.SDF_SOURCE_INDEX, mol_id)
            mol.SetProp(QM9_SMILES, rows[mol_id].get("SMILES", ""))
            writer.write(mol)
    return list(kept)


def make_moses_xtb(n: int, path: Path = FILES["moses_xtb"]) -> list[int]:
    candidates = candidate_ids("moses_xtb", n + SPARE)
    records = moses_records(candidates)

    def convert(mol_id):
        if mol_id not in records:
            return MoleculeError(f"molecule {mol_id}", "not in molecules.sdf.gz")
        result = convert_record((mol_id, records[mol_id]))
        return result if isinstance(result, MoleculeError) else records[mol_id]

    kept = _take(candidates, convert, n, "moses_xtb")
    path.write_text("".join(kept.values()))
    return list(kept)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=N_PER_SET, help=f"molecules per data set (default {N_PER_SET})")
    args = p.parse_args(argv)
    for name, make in (("qm9", make_qm9), ("moses_xtb", make_moses_xtb)):
        ids = make(args.n)
        print(f"{FILES[name].relative_to(HERE.parents[1])}: {len(ids)} molecules, ids {ids[0]} … {ids[-1]}")


if __name__ == "__main__":
    main()
