"""GFN2-xTB and MMFF94 forces on geometries around MMFF94 and GFN2-xTB minima.

The training data of :class:`molconf.ground_state.correction.Gfn2Correction`, the learned
correction that moves an MMFF94 minimum towards the GFN2-xTB one (:mod:`molconf.ground_state.prerelax`).
GFN2-xTB's optimiser spends most of its steps from an MMFF94 start on bond lengths and angles
(``benchmarks/xtb_start_probe.py``), so the samples cover exactly that region, per molecule:

========  ===========================================================================
kind      geometry
========  ===========================================================================
0         the data set's GFN2-xTB minimum
1         that minimum after MMFF94 (what ``relax_with="mmff"`` would give)
2, 3      a random point on the line between 1 and 0, plus 0.02 Å Gaussian noise
4         one ETKDG conformer after MMFF94 (another conformer, other torsions)
5         kind 4 plus 0.02 Å Gaussian noise
========  ===========================================================================

Every sample stores both force fields' energies and forces (eV, eV/Å), so a model can be
fitted to the difference. Molecules are processed in parallel worker processes, in shards
of :data:`SHARD_SIZE` written atomically (``shard_00012.npz``): a killed run resumes at the
first missing shard. A molecule that fails (no MMFF94 parameters, SCF failure, no ETKDG
conformer) is listed with its reason in ``failures.csv``; its other samples are kept.

    molconf gfn2-forces --dataset moses_xtb --split train --out ~/molconf-runs/gfn2_forces --workers 2
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.ground_state.build import _Workers
from molconf.shards import claim_folder, write_atomic
from molconf.ground_state.xtb import XtbProtocol, _atoms

KCAL_TO_EV = 0.0433641043  # kcal/mol → eV
SHARD_SIZE = 250
NOISE = 0.02  # Å, Gaussian displacement of kinds 2, 3 and 5
KINDS = ("gfn2_minimum", "mmff_of_minimum", "between_1", "between_2", "etkdg_mmff", "etkdg_mmff_noisy")
_FIELDS = ("row", "kind", "num_atoms", "pos", "f_gfn2", "f_mmff", "e_gfn2", "e_mmff")


def mmff_forcefield(mol: Chem.Mol, conf_id: int = -1):
    """RDKit's MMFF94 force field for one conformer, or ``None`` without parameters."""
    props = AllChem.MMFFGetMoleculeProperties(mol)
    if props is None:
        return None
    return AllChem.MMFFGetMoleculeForceField(mol, props, confId=conf_id)


def mmff_energy_forces(ff, pos: np.ndarray) -> tuple[float, np.ndarray]:
    """MMFF94 energy (eV) and forces (N, 3; eV/Å) at ``pos`` (Å)."""
    flat = pos.reshape(-1).tolist()
    energy = ff.CalcEnergy(flat) * KCAL_TO_EV
    forces = -np.asarray(ff.CalcGrad(flat)).reshape(-1, 3) * KCAL_TO_EV
    return energy, forces


def gfn2_energy_forces(mol: Chem.Mol, pos: np.ndarray, protocol: XtbProtocol) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces (eV/Å) at ``pos``."""
    atoms = _atoms([a.GetAtomicNum() for a in mol.GetAtoms()], pos, protocol, Chem.GetFormalCharge(mol))
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise RuntimeError("non-finite GFN2-xTB energy or forces")
    return energy, forces


def sample_geometries(mol: Chem.Mol, seed: int) -> list[tuple[int, np.ndarray]]:
    """``(kind, positions)`` of the geometries of the module's table (kinds 4-5 dropped when
    ETKDG finds no conformer). ``mol`` carries the GFN2-xTB minimum as its conformer."""
    rng = np.random.default_rng(seed)
    g = mol.GetConformer().GetPositions()
    work = Chem.Mol(mol)
    AllChem.MMFFOptimizeMolecule(work, maxIters=2000)
    m = work.GetConformer().GetPositions()
    out = [(0, g), (1, m)]
    for kind in (2, 3):
        t = rng.uniform(-0.2, 1.2)
        out.append((kind, m + t * (g - m) + rng.normal(0.0, NOISE, g.shape)))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    embedded = Chem.Mol(mol)
    embedded.RemoveAllConformers()
    if AllChem.EmbedMolecule(embedded, params) == 0:
        AllChem.MMFFOptimizeMolecule(embedded, maxIters=2000)
        e = embedded.GetConformer().GetPositions()
        out += [(4, e), (5, e + rng.normal(0.0, NOISE, e.shape))]
    return out


def molecule_samples(row: int, molblock: str, protocol: XtbProtocol) -> tuple[int, dict | str]:
    """Every sample of one molecule as arrays, or the reason it failed."""
    mol = Chem.MolFromMolBlock(molblock, removeHs=False)
    if mol is None:
        return row, "molblock not readable"
    ff = mmff_forcefield(mol)
    if ff is None:
        return row, "no MMFF94 parameters"
    try:
        geometries = sample_geometries(mol, seed=row)
    except Exception as err:  # RDKit embedding/minimisation errors name nothing useful on their own
        return row, f"sampling failed ({type(err).__name__}: {err})"
    out = {k: [] for k in _FIELDS}
    for kind, pos in geometries:
        try:
            e_g, f_g = gfn2_energy_forces(mol, pos, protocol)
        except Exception as err:
            return row, f"GFN2-xTB failed on sample {KINDS[kind]} ({' '.join(str(err).split())[:160]})"
        e_m, f_m = mmff_energy_forces(ff, pos)
        for key, value in zip(_FIELDS, (row, kind, len(pos), pos, f_g, f_m, e_g, e_m)):
            out[key].append(value)
    return row, out


def _work(item: tuple[int, str]) -> tuple[int, dict | str]:
    return molecule_samples(item[0], item[1], XtbProtocol())


def _concat(parts: list[dict]) -> dict[str, np.ndarray]:
    flat = {k: [v for p in parts for v in p[k]] for k in _FIELDS}
    return {"row": np.asarray(flat["row"], np.int64), "kind": np.asarray(flat["kind"], np.int8),
            "num_atoms": np.asarray(flat["num_atoms"], np.int32),
            "pos": np.concatenate(flat["pos"]).astype(np.float32),
            "f_gfn2": np.concatenate(flat["f_gfn2"]).astype(np.float32),
            "f_mmff": np.concatenate(flat["f_mmff"]).astype(np.float32),
            "e_gfn2": np.asarray(flat["e_gfn2"], np.float64), "e_mmff": np.asarray(flat["e_mmff"], np.float64)}


def build_force_data(dataset: str, split: str, out_dir: str | Path, workers: int = 1,
                     limit: int | None = None, progress: bool = True) -> dict:
    """Write the force samples of a data set's split to ``out_dir`` (resumable); returns the summary."""
    from tqdm import tqdm

    from molconf.data.load import load_dataset, load_dataset_split

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = load_dataset(dataset)
    rows, _ = store.positions_of(load_dataset_split(dataset, split))
    rows = rows[:limit] if limit else rows
    meta = {"dataset": dataset, "split": split, "molecules": int(len(rows)), "shard_size": SHARD_SIZE,
            "kinds": KINDS, "noise_angstrom": NOISE, "protocol": XtbProtocol().to_dict(), "units": "eV, eV/Å, Å"}
    if claim_folder(out_dir, "meta.json", meta):
        raise ValueError(f"{out_dir} holds force data of other settings ({out_dir / 'meta.json'}); use another --out")
    pool = _Workers(workers)
    shards = range(0, len(rows), SHARD_SIZE)
    bar = tqdm(total=len(rows), disable=not progress, desc="GFN2-xTB forces", unit="mol")
    t0 = time.perf_counter()
    try:
        for s, start in enumerate(shards):
            path = out_dir / f"shard_{s:05d}.npz"
            chunk = rows[start:start + SHARD_SIZE].tolist()
            if path.exists():
                bar.update(len(chunk))
                continue
            items = [(int(r), Chem.MolToMolBlock(store.mol(int(r)))) for r in chunk]
            parts, failures = [], []
            for row, result in (pool.map_unordered(_work, items) if workers > 1 else map(_work, items)):
                if isinstance(result, str):
                    failures.append((row, result))
                else:
                    parts.append(result)
                bar.update(1)
            parts.sort(key=lambda p: p["row"][0])
            buf = io.BytesIO()
            np.savez_compressed(buf, **_concat(parts) if parts else {},
                                failed_rows=np.asarray([r for r, _ in failures], np.int64),
                                failed_reasons=np.asarray([why for _, why in failures], dtype=str))
            write_atomic(path, buf.getvalue())
    finally:
        pool.close()
        bar.close()
    return summarise(out_dir, seconds=time.perf_counter() - t0)


def load_force_data(out_dir: str | Path) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """All shards of ``out_dir`` concatenated, and the ``(row, reason)`` failures."""
    parts, failures = [], []
    for path in sorted(Path(out_dir).glob("shard_*.npz")):
        with np.load(path) as z:
            failures += list(zip(z["failed_rows"].tolist(), z["failed_reasons"].tolist()))
            if "row" in z:
                parts.append({k: z[k] for k in _FIELDS})
    if not parts:
        raise FileNotFoundError(f"no force samples in {out_dir}")
    return {k: np.concatenate([p[k] for p in parts]) for k in _FIELDS}, failures


class ForceSampleDataset(torch.utils.data.Dataset):
    """Force samples as training items: ``(PairGraph, positions, ΔF = F(GFN2) − F(MMFF94))``.

    ``rows`` restricts the samples to those molecules (data-set rows), e.g. a held-out part.
    """

    def __init__(self, data: dict[str, np.ndarray], graphs: dict, rows: np.ndarray | None = None):
        starts = np.concatenate([[0], np.cumsum(data["num_atoms"])])
        keep = np.ones(len(data["row"]), bool) if rows is None else np.isin(data["row"], rows)
        self.index = np.flatnonzero(keep)
        self.starts, self.data, self.graphs = starts, data, graphs

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int):
        s = self.index[k]
        a, b = self.starts[s], self.starts[s + 1]
        delta = self.data["f_gfn2"][a:b] - self.data["f_mmff"][a:b]
        return self.graphs[int(self.data["row"][s])], self.data["pos"][a:b], delta


def collate_force_samples(items) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(flat graph batch, positions (N, 3), target ΔF (N, 3))."""
    from molconf.ground_state.correction import batch_pair_graphs

    graphs, pos, delta = zip(*items)
    return (batch_pair_graphs(list(graphs)), torch.from_numpy(np.concatenate(pos)),
            torch.from_numpy(np.concatenate(delta)))


def summarise(out_dir: str | Path, seconds: float | None = None) -> dict:
    data, failures = load_force_data(out_dir)
    out_dir = Path(out_dir)
    with (out_dir / "failures.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "reason"])
        w.writerows(failures)
    summary = {"molecules": int(len(np.unique(data["row"]))), "samples": int(len(data["row"])),
               "failures": len(failures),
               "samples_per_kind": {KINDS[k]: int((data["kind"] == k).sum()) for k in range(len(KINDS))},
               "mean_abs_force_difference_ev_per_a": float(np.abs(data["f_gfn2"] - data["f_mmff"]).mean())}
    if seconds is not None:
        summary["seconds_this_run"] = round(seconds, 1)
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="molconf gfn2-forces", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="moses_xtb")
    p.add_argument("--split", default="train")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--limit", type=int, help="first N molecules of the split only")
    args = p.parse_args(argv)
    summary = build_force_data(args.dataset, args.split, args.out, args.workers, args.limit,
                               progress=os.environ.get("MOLCONF_NO_PROGRESS") is None)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
