"""GEOM-DRUGS reader: the official ``rdkit_folder`` release and the GeoMol/torsional-diffusion splits.

Release layout (DESIGN §2)::

    <root>/rdkit_folder/summary_drugs.json     {SMILES: {"pickle_path": "drugs/<name>.pickle", …}}
    <root>/rdkit_folder/drugs/<name>.pickle    {"smiles": …, "conformers": [{"rd_mol": Mol,
                                                 "totalenergy": Eh, "relativeenergy": kcal/mol,
                                                 "boltzmannweight": w, …}, …], …}

Molecule ids
    A molecule's id is its position in a sorted list, so the published split files (``.npy``
    index arrays) index the data set directly. Two orderings are supported (``order``):

    ``"pickle_path"`` (default)
        Sorted names of the ``*.pickle`` files in ``rdkit_folder/drugs`` — exactly what
        GeoMol and torsional diffusion index their splits with
        (``sorted(glob(drugs_dir + "/*.pickle"))[split]``; the common folder prefix does not
        change the order). Python string order, i.e. by Unicode code point.
    ``"smiles"``
        Sorted keys of ``summary_drugs.json`` (Python string order). The two orders differ
        where a SMILES character sorts before ``"."`` (``#%()+-``) or a file name is not
        the SMILES verbatim, so split files made for one are wrong for the other.

Pickles are Python pickles: only read releases you trust (as with the GEOM release itself).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem

from molconf._rdkit import mol_from_smiles_quietly
from molconf.data.splits import SPLIT_PARTS
from molconf.errors import MoleculeError

SUMMARY_FILE = "summary_drugs.json"
DRUGS_DIR = "drugs"
GEOM_ORDERS = ("pickle_path", "smiles")
# Standard GeoMol / torsional-diffusion split sizes for GEOM-DRUGS (DESIGN §2).
GEOM_DRUGS_SPLIT_SIZES = {"train": 243_473, "val": 30_433, "test": 1_000}

HARTREE_KCAL = 627.509474  # kcal/mol per Hartree (GEOM: totalenergy in Eh, relativeenergy in kcal/mol)
GAS_CONSTANT_KCAL = 1.987204259e-3  # kcal/(mol·K)
GEOM_TEMPERATURE = 298.15  # K, the temperature of GEOM's Boltzmann weights


def rdkit_folder(root: str | Path) -> Path:
    """``<root>/rdkit_folder``, or ``root`` itself if it already is that folder."""
    root = Path(root)
    if (root / SUMMARY_FILE).is_file():
        return root
    folder = root / "rdkit_folder"
    if not (folder / SUMMARY_FILE).is_file():
        raise FileNotFoundError(
            f"{root} is not a GEOM release: expected {folder / SUMMARY_FILE} "
            "(download rdkit_folder.tar.gz from the GEOM data set and extract it there)"
        )
    return folder


# --- the index: which molecule has which id ---------------------------------------------
@dataclass(frozen=True)
class GeomEntry:
    """One molecule of the index: its id, pickle file and the summary's SMILES."""

    mol_id: int  # position in the chosen ordering (what split files index)
    smiles: str  # key of summary_drugs.json ("" if the pickle is not in the summary)
    path: Path | None  # the pickle; None if the summary names no existing file
    name: str  # path relative to the release root, for messages


def read_summary(root: str | Path) -> dict[str, dict]:
    """``summary_drugs.json`` as a dict (SMILES → fields)."""
    path = rdkit_folder(root) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected an object of SMILES → fields, got {type(summary).__name__}")
    return summary


def geom_index(root: str | Path, order: str = "pickle_path") -> list[GeomEntry]:
    """Every molecule of a release in id order (see the module docstring for ``order``).

    With ``order="pickle_path"`` the ids cover the pickle files present (a summary entry
    without a file has no id, as in torsional diffusion); with ``order="smiles"`` they cover
    the summary's keys, and entries whose pickle is missing keep their id and are reported
    when converted.
    """
    if order not in GEOM_ORDERS:
        raise ValueError(f"order must be one of {GEOM_ORDERS}, got {order!r}")
    folder = rdkit_folder(root)
    summary = read_summary(folder)
    if order == "smiles":
        entries = []
        for i, smiles in enumerate(sorted(summary)):
            rel = (summary[smiles] or {}).get("pickle_path")
            path = folder / rel if rel else None
            name = f"rdkit_folder/{rel}" if rel else f"summary entry {smiles}"
            entries.append(GeomEntry(i, smiles, path if path is not None and path.is_file() else None, name))
        return entries
    by_file = {Path(v["pickle_path"]).name: k for k, v in summary.items()
               if isinstance(v, dict) and v.get("pickle_path")}
    drugs = folder / DRUGS_DIR
    if not drugs.is_dir():
        raise FileNotFoundError(f"{drugs} not found (the release's pickle folder)")
    names = sorted(e.name for e in os.scandir(drugs) if e.name.endswith(".pickle") and e.is_file())
    return [GeomEntry(i, by_file.get(n, ""), drugs / n, f"rdkit_folder/{DRUGS_DIR}/{n}")
            for i, n in enumerate(names)]


# --- the GeoMol / torsional-diffusion split files ---------------------------------------
def load_geom_split(path: str | Path, num_molecules: int | None = None) -> dict[str, np.ndarray]:
    """Split index arrays (train/val/test → int64 molecule ids).

    Parameters
    ----------
    path : path
        Either a ``.npy`` file in the GeoMol / torsional-diffusion layout — ``split0.npy``
        (GeoMol's ``splits/``) or ``split.npy`` (torsional diffusion's ``data/DRUGS``): one
        array of three index arrays, train, val, test, saved with ``allow_pickle`` — or a
        folder holding such a file (``split.npy``, else ``split0.npy``) or the three files
        ``split_{train,val,test}.npy`` (the layout of ``datasets/qm9``).
    num_molecules : int, optional
        Length of the index the ids point into; out-of-range ids raise ``ValueError``.

    Indices point into the release's sorted pickle list (see :func:`geom_index`; the
    published files use ``order="pickle_path"``).
    """
    path = Path(path)
    if path.is_dir():
        per_part = [path / f"split_{p}.npy" for p in SPLIT_PARTS]
        if all(f.is_file() for f in per_part):
            parts = {p: np.load(f, allow_pickle=False) for p, f in zip(SPLIT_PARTS, per_part)}
            return _check_split(parts, path, num_molecules)
        found = [f for f in (path / "split.npy", path / "split0.npy") if f.is_file()]
        if not found:
            raise FileNotFoundError(f"no split.npy, split0.npy or split_{{train,val,test}}.npy in {path}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    # The published files are object arrays (three index arrays of different lengths), which
    # only load with allow_pickle; they are plain integer data.
    arr = np.load(path, allow_pickle=True)
    if len(arr) != 3:
        raise ValueError(f"{path}: expected three index arrays (train, val, test), found {len(arr)}")
    return _check_split({p: np.asarray(a) for p, a in zip(SPLIT_PARTS, arr)}, path, num_molecules)


def _check_split(parts: dict, where: Path, num_molecules: int | None) -> dict[str, np.ndarray]:
    out = {}
    for part, idx in parts.items():
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"{where}: {part} indices have dtype {idx.dtype}, expected integers")
        idx = idx.astype(np.int64).ravel()
        if len(idx) and (idx.min() < 0 or (num_molecules is not None and idx.max() >= num_molecules)):
            raise ValueError(f"{where}: {part} indices outside [0, {num_molecules}) "
                             "(a split for another release or ordering?)")
        out[part] = idx
    return out


def split_smiles(split: dict[str, np.ndarray], index: Sequence[GeomEntry]) -> dict[str, list[str]]:
    """The summary SMILES of every split molecule (``index`` from :func:`geom_index`)."""
    return {part: [index[int(i)].smiles for i in ids] for part, ids in split.items()}


# --- one molecule --------------------------------------------------------------------------
@dataclass
class GeomMolecule:
    """One GEOM molecule: its ground state and its conformer ensemble.

    All conformers share one atom order. ``weights`` are the release's Boltzmann weights of
    the kept conformers, renormalised to sum to 1 (recomputed from ``energies`` at
    298.15 K if the release's are missing or invalid).
    """

    smiles: str  # the pickle's own "smiles" (else the summary's)
    name: str  # pickle path, for messages
    ground_state: Chem.Mol  # sanitised, explicit H, one conformer, stereo from 3D
    conformers: list[Chem.Mol]  # kept conformers (one each), release order
    energies: np.ndarray  # (C,) totalenergy, Hartree
    relative_energies: np.ndarray  # (C,) relativeenergy as stored, kcal/mol (NaN if absent)
    weights: np.ndarray  # (C,) Boltzmann weights, sum 1
    ground_index: int  # position of the ground state in ``conformers``
    skipped_conformers: int = 0  # conformers whose bonds differ from the SMILES (reacted)
    fields: dict = field(default_factory=dict)  # other top-level fields of the pickle

    @property
    def positions(self) -> np.ndarray:
        """All conformers' coordinates, (C, N, 3) float64, Å."""
        return np.stack([m.GetConformer().GetPositions() for m in self.conformers])

    def ensemble_mol(self) -> Chem.Mol:
        """The ground-state ``Mol`` with every kept conformer (conformer id = ensemble index)."""
        out = Chem.Mol(self.ground_state)
        out.RemoveAllConformers()
        for i, m in enumerate(self.conformers):
            conf = Chem.Conformer(m.GetConformer())
            conf.SetId(i)
            out.AddConformer(conf, assignId=False)
        return out


def read_geom_pickle(path: str | Path, name: str | None = None) -> dict:
    """Unpickle one GEOM file; unreadable or non-GEOM content raises :class:`MoleculeError`."""
    path = Path(path)
    name = name or str(path)
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
    except FileNotFoundError:
        raise MoleculeError(name, "pickle file not found") from None
    except Exception as err:  # truncated/garbage files raise many different types
        raise MoleculeError(name, f"unreadable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or "conformers" not in data:
        raise MoleculeError(name, f"not a GEOM pickle (a {type(data).__name__} without 'conformers')")
    return data


def _bond_set(mol: Chem.Mol) -> frozenset:
    return frozenset((min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
                     for b in mol.GetBonds())


def _graph_key(mol: Chem.Mol) -> str:
    """Canonical SMILES of the bare connectivity (H as atoms; no bond orders, charges, stereo).

    Equal keys = same molecular graph whatever the atom numbering; it ignores what bond
    perception from geometry may assign differently (bond orders, charges).
    """
    rw = Chem.RWMol(mol)
    for atom in rw.GetAtoms():
        atom.SetFormalCharge(0)
        atom.SetIsAromatic(False)
        atom.SetNoImplicit(True)
        atom.SetNumExplicitHs(0)
        atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
        atom.SetIsotope(0)
    for bond in rw.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
        bond.SetStereo(Chem.BondStereo.STEREONONE)
    return Chem.MolToSmiles(rw, isomericSmiles=False, allHsExplicit=False, canonical=True)


def _smiles_graph_key(smiles: str) -> str | None:
    mol = mol_from_smiles_quietly(smiles) if smiles else None
    return None if mol is None else _graph_key(Chem.AddHs(mol))


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def boltzmann_weights(energies_hartree: np.ndarray, temperature: float = GEOM_TEMPERATURE) -> np.ndarray:
    """Normalised Boltzmann weights ``exp(-ΔE/RT)`` of energies in Hartree.

    >>> boltzmann_weights(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    rel = (np.asarray(energies_hartree, np.float64) - np.min(energies_hartree)) * HARTREE_KCAL
    w = np.exp(-rel / (GAS_CONSTANT_KCAL * temperature))
    return w / w.sum()


def read_geom_molecule(
    path: str | Path,
    name: str | None = None,
    smiles: str = "",
    skip_reacted: bool = True,
) -> GeomMolecule:
    """Read one GEOM pickle: ground state (lowest ``totalenergy``) and the ensemble.

    Parameters
    ----------
    path : path
        The ``.pickle`` file.
    name : str, optional
        How errors name the molecule (default: the path).
    smiles : str
        The summary's SMILES, used if the pickle has no ``"smiles"`` of its own.
    skip_reacted : bool
        GEOM ensembles contain conformers whose bonds changed during the CREST search
        (torsional diffusion drops them too). Skip such conformers (counted in
        ``skipped_conformers``) instead of rejecting the molecule.

    Raises
    ------
    MoleculeError
        Unreadable file; no conformers; a conformer without an RDKit ``Mol``, coordinates or
        a finite energy; non-finite coordinates; conformers with different atoms or atom
        numbering; no conformer with the SMILES's graph; sanitisation failure.
    """
    name = name or str(path)
    data = read_geom_pickle(path, name)
    confs = data["conformers"]
    if not isinstance(confs, (list, tuple)) or not confs:
        raise MoleculeError(name, "no conformers")
    smiles = data.get("smiles") or smiles
    mols, energies, rel_energies, weights = [], [], [], []
    for k, conf in enumerate(confs):
        mol = conf.get("rd_mol") if isinstance(conf, dict) else None
        if not isinstance(mol, Chem.Mol):
            raise MoleculeError(name, f"conformer {k}: no RDKit Mol under 'rd_mol'")
        if mol.GetNumConformers() != 1:
            raise MoleculeError(name, f"conformer {k}: rd_mol does not hold exactly one conformer "
                                      f"({mol.GetNumConformers()})")
        pos = mol.GetConformer().GetPositions()
        if not np.isfinite(pos).all():
            raise MoleculeError(name, f"conformer {k}: non-finite coordinates")
        energy = _finite(conf.get("totalenergy"))
        if energy is None:
            raise MoleculeError(name, f"conformer {k}: totalenergy missing or not finite")
        mols.append(mol)
        energies.append(energy)
        rel = _finite(conf.get("relativeenergy"))
        rel_energies.append(np.nan if rel is None else rel)
        weights.append(_finite(conf.get("boltzmannweight")))

    # Every conformer must list the same atoms in the same order: coordinates of an
    # ensemble are only comparable atom by atom.
    elements = [tuple(a.GetAtomicNum() for a in m.GetAtoms()) for m in mols]
    for k in range(1, len(mols)):
        if elements[k] != elements[0]:
            raise MoleculeError(
                name, f"conformer {k}: atoms differ from conformer 0 (another atom order or molecule: "
                f"{_formula(elements[k])} vs {_formula(elements[0])})")

    # Group conformers by bond set (cheap), and compare each distinct graph with the
    # SMILES once (canonicalisation is the expensive part).
    groups: dict[frozenset, list[int]] = {}
    for k, m in enumerate(mols):
        groups.setdefault(_bond_set(m), []).append(k)
    ref_key = _smiles_graph_key(smiles)
    keys = {bonds: _graph_key(mols[ks[0]]) for bonds, ks in groups.items()}
    if ref_key is None:  # no usable SMILES: the first conformer's graph is the reference
        ref_bonds = _bond_set(mols[0])
    else:
        matching = [b for b, key in keys.items() if key == ref_key]
        if not matching:
            raise MoleculeError(name, f"no conformer has the graph of its SMILES ({smiles})")
        if len(matching) > 1:  # the SMILES's graph, numbered differently: positions don't line up
            first, other = sorted(groups[b][0] for b in matching)[:2]
            raise MoleculeError(name, f"conformer {other}: same graph, different atom numbering "
                                      f"(than conformer {first})")
        ref_bonds = matching[0]
    keep, skipped = [], 0
    for bonds, ks in groups.items():
        if bonds == ref_bonds:
            keep.extend(ks)
        elif skip_reacted:
            skipped += len(ks)
        else:
            raise MoleculeError(name, f"conformer {ks[0]}: bonds differ from the molecule's graph (reacted)")
    keep.sort()

    mols = [mols[k] for k in keep]
    energies = np.asarray([energies[k] for k in keep], np.float64)
    rel_energies = np.asarray([rel_energies[k] for k in keep], np.float64)
    w = np.asarray([np.nan if weights[k] is None else weights[k] for k in keep], np.float64)
    if np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0:
        w = w / w.sum()
    else:  # missing or degenerate weights: recompute from the energies
        w = boltzmann_weights(energies)
    ground = int(np.argmin(energies))  # first of equal minima

    gs = Chem.Mol(mols[ground])
    try:
        Chem.SanitizeMol(gs)
    except Exception as err:
        raise MoleculeError(name, f"sanitisation failed ({str(err).strip() or type(err).__name__})") from None
    implicit = sum(a.GetNumImplicitHs() for a in gs.GetAtoms())
    if implicit:
        raise MoleculeError(name, f"rd_mol lacks hydrogen atoms ({implicit} implicit; GEOM stores explicit H)")
    # Chirality from the ground-state geometry, as for QM9 (the features carry it).
    Chem.AssignStereochemistryFrom3D(gs)
    gs.SetProp("_Name", smiles or name)
    fields = {k: v for k, v in data.items() if k != "conformers"}
    return GeomMolecule(smiles, name, gs, mols, energies, rel_energies, w, ground, skipped, fields)


def _formula(elements: tuple[int, ...]) -> str:
    table = Chem.GetPeriodicTable()
    counts: dict[str, int] = {}
    for z in elements:
        sym = table.GetElementSymbol(z)
        counts[sym] = counts.get(sym, 0) + 1
    return "".join(f"{s}{n if n > 1 else ''}" for s, n in sorted(counts.items()))
