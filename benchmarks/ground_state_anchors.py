"""Ground-state anchors on the moses_xtb scaffold test split (issue #24, item 1), side by side.

For a fixed seeded subset of test molecules, every row returns one conformer per molecule and
is scored against the GFN2-xTB reference ground state:

* ``ETKDG + MMFF, one conformer`` — ETKDGv3 (one embedding) then MMFF94;
* ``ETKDG×K + MMFF, lowest MMFF`` (K = 10, 30) — K embeddings, all MMFF94-minimised, the lowest
  MMFF94 energy returned (what a careful chemist runs);
* ``ETKDG×K + MMFF, lowest GFN2-xTB single point`` (K = 10, 30) — the same minima ranked by a
  GFN2-xTB single point each (tblite);
* ``molconf.predict`` (default settings);
* ``Auto3D 3.2.3, ANI-2xt`` — ``smiles2mols`` on the reference's stereo SMILES, one call per
  molecule: ``k=1``, ``optimizing_engine="ANI2xt"``, ``use_gpu=False``,
  ``enumerate_isomers=False``, ``isomer_threads=1``, its default conformer budget (needs the
  optional ``bench`` extra; skipped with a note without it);
* ``data-set protocol`` — the reference build itself (``build_ground_state``: ETKDG×10 → MMFF →
  GFN2-xTB relaxation of the three lowest, the lowest relaxed energy returned) with ETKDG seed 7
  instead of 42: "the answer by brute force".

Candidate ETKDG seed: 7 (the reference build drew its candidates with seed 42, 10 conformers:
a search with that seed would regenerate the reference's own candidates). One thread per
process. CPU time per molecule: the row's own work (embedding, MMFF, single points; for
``predict``, Auto3D and the data-set protocol the whole call, child processes included),
measured in the same process. Metrics: D-MAE (pooled, all atoms), C-RMSD (``GetBestRMS`` after
``RemoveHs``), stereo (CIP labels kept), failures, and the **energy gap**: GFN2-xTB energy of
the returned conformer after GFN2-xTB relaxation (the data protocol's optimiser, fmax 0.05
eV/Å; for the data-set protocol's already relaxed conformer a near no-op) minus the reference
minimum's stored energy, kcal/mol; "≤ ref" counts gaps ≤ +0.1 kcal/mol, "< ref" gaps < −0.1
(a lower minimum than the reference's). Rows built from SMILES get their conformer mapped back
onto the reference's atom order by graph match.

    python benchmarks/ground_state_anchors.py --n 300 --workers 2 --out benchmarks/results
    python benchmarks/ground_state_anchors.py --n 300 --rows "Auto3D 3.2.3, ANI-2xt" ...
    # the same rows against another reference set (a build-xtb data set), e.g. marketed drugs:
    python benchmarks/ground_state_anchors.py --references datasets/drugs_xtb --out benchmarks/results/drugs_xtb

Per-molecule results go to ``<out>/ground_state_anchors_per_molecule.jsonl`` as they finish, one
line per (molecule, row) computed (lines of one molecule are merged on read); a rerun computes
only the missing (molecule, row) pairs (resume after a kill, or add a row); ``--redo`` runs the
named rows' pairs again after a change to a method (the new lines replace the old on read).
A row is one entry of ``ROWS``: name → function(bare RDKit mol with H, no conformer) →
``(mol with one conformer in the same atom order, or None; CPU seconds)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SDF = ROOT / "datasets/moses_xtb/molecules.sdf.gz"
SPLIT = ROOT / "datasets/moses_xtb/split_test.npy"
CANDIDATE_SEED = 7  # not the build's 42 (no leak), not 0 (RDKit's identical-conformer trap)
EV_TO_KCAL = 23.060548
PER_MOLECULE = "ground_state_anchors_per_molecule.jsonl"


ANCHORS = (300, 0)  # (n, seed) of the anchors' own molecules: the defaults, and what --holdout leaves out


def test_references(n: int, seed: int, exclude: frozenset[int] = frozenset()) -> list[tuple[int, str]]:
    """``(data-set index, SDF record)`` of ``n`` test-split references drawn with ``seed`` (in file order),
    among those whose index is not in ``exclude``."""
    from molconf.data.moses_xtb import RELEASE_9999, split_records

    # drawn among the 9,999-molecule release's test molecules, the split's first 1,000 in every
    # grown release, so the same seed keeps drawing the same molecules
    refs = [(index, record) for index, record, _ in split_records(np.load(SPLIT)[:RELEASE_9999["test"]], SDF)
            if index not in exclude]
    pick = sorted(np.random.default_rng(seed).choice(len(refs), min(n, len(refs)), replace=False).tolist())
    return [refs[i] for i in pick]


def reference_sdf(path: Path) -> Path:
    """A ``build-xtb`` data set's molecules file, given it or the folder holding it (``--references``)."""
    from molconf.data.moses_xtb import SDF_NAME

    path = Path(path)
    path = path / SDF_NAME if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"--references {path}: no such file")
    return path


def file_references(path: Path) -> list[tuple[int, str]]:
    """``(index, SDF record)`` of every molecule of a ``build-xtb`` data set's ``molecules.sdf.gz`` (or the
    folder holding it), in file order: another reference set scored by the same rows."""
    from molconf import constants as K
    from molconf.data.moses_xtb import iter_sdf_records

    return [(int(_mol(r).GetProp(K.SDF_SOURCE_INDEX)), r) for r in iter_sdf_records(reference_sdf(path))]


def _mol(record: str):
    from molconf.data.moses_xtb import read_reference

    return read_reference(record)


def _cpu() -> float:
    """CPU seconds of this process and its waited-for child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _embed_minimise(mol, k: int):
    """K ETKDGv3 embeddings (seed CANDIDATE_SEED) minimised with MMFF94: (mol, energies, seconds)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = CANDIDATE_SEED
    params.numThreads = 1
    t = time.process_time()
    ids = list(AllChem.EmbedMultipleConfs(m, k, params))
    if not ids:
        return None, [], time.process_time() - t
    res = AllChem.MMFFOptimizeMoleculeConfs(m, numThreads=1, maxIters=2000)
    energies = [e if not_conv in (0, 1) else float("inf") for not_conv, e in res]
    return m, energies, time.process_time() - t


def _pick(m, conf_id: int):
    """A copy of ``m`` holding only conformer ``conf_id``."""
    from rdkit import Chem

    return Chem.Mol(m, confId=conf_id)


def _in_atom_order(pred, bare):
    """``pred``'s conformer on ``bare``'s atoms (explicit-H graph match), or None if the graphs differ."""
    from molconf.metrics import mol_with_coords

    match = pred.GetSubstructMatch(bare)  # match[i]: pred's atom for bare's atom i
    if pred.GetNumAtoms() != bare.GetNumAtoms() or len(match) != bare.GetNumAtoms():
        return None
    return mol_with_coords(bare, pred.GetConformer().GetPositions()[list(match)])


def _smiles(bare) -> str:
    """The input SMILES of SMILES-based rows: the reference's graph with its full stereo."""
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.RemoveHs(bare))


# --- rows: bare mol (explicit H, no conformer) -> (mol with one conformer or None, CPU seconds)
def etkdg_mmff(bare, k: int, rank: str = "mmff"):
    """K ETKDG + MMFF minima; the lowest MMFF energy, or (``rank="gfn2"``) GFN2-xTB single point."""
    from molconf.ground_state.search import gfn2_single_points

    m, energies, cpu = _embed_minimise(bare, k)
    if m is None:
        return None, cpu
    ids = [c.GetId() for c in m.GetConformers()]
    if rank == "mmff":
        return _pick(m, ids[int(np.argmin(energies))]), cpu
    t = time.process_time()
    sp = gfn2_single_points(m, ids)  # inf where the SCF failed, as the search ranks
    return _pick(m, ids[int(np.argmin(sp))]), cpu + time.process_time() - t


def predict_default(bare):
    import molconf

    t = time.process_time()
    [pred] = molconf.predict([bare], num_threads=1)
    return pred, time.process_time() - t


def predict_search(bare, relax_with=None, **settings):
    """``molconf.predict`` with a conformer search (:mod:`molconf.ground_state.search`, ETKDG seed 7),
    the pick optionally relaxed (``relax_with``)."""
    import molconf
    from molconf.ground_state.search import SearchSettings

    t = time.process_time()
    [pred] = molconf.predict([bare], num_threads=1, search=SearchSettings(**settings), relax_with=relax_with)
    return pred, time.process_time() - t


def auto3d_ani2xt(bare):
    """Auto3D's ``smiles2mols`` (one molecule per call, one conformer out, stereo as the input says)."""
    from Auto3D import Auto3DOptions, smiles2mols

    options = Auto3DOptions(k=1, optimizing_engine="ANI2xt", use_gpu=False, enumerate_isomers=False,
                            isomer_threads=1, use_parallel_embedding=False)
    t = _cpu()
    try:
        out = smiles2mols([_smiles(bare)], options)
    except Exception as err:  # e.g. an element ANI-2xt lacks (Br): a failure of this row, not of the run
        print(f"Auto3D: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr, flush=True)
        return None, _cpu() - t
    cpu = _cpu() - t
    return (_in_atom_order(out[0], bare) if out else None), cpu


def data_set_protocol(bare):
    """``build_ground_state`` with the default protocol except ETKDG seed CANDIDATE_SEED (not the build's 42)."""
    from molconf.ground_state.xtb import XtbError, XtbProtocol, build_ground_state

    protocol = dataclasses.replace(XtbProtocol(), embed_seed=CANDIDATE_SEED)
    t = _cpu()
    try:
        result = build_ground_state(_smiles(bare), protocol)
    except XtbError as err:
        print(f"data-set protocol: {err}", file=sys.stderr, flush=True)
        return None, _cpu() - t
    return _in_atom_order(result.mol, bare), _cpu() - t


ROWS = {
    "ETKDG + MMFF, one conformer": functools.partial(etkdg_mmff, k=1),
    "ETKDG×10 + MMFF, lowest MMFF": functools.partial(etkdg_mmff, k=10),
    "ETKDG×30 + MMFF, lowest MMFF": functools.partial(etkdg_mmff, k=30),
    "ETKDG×10 + MMFF, lowest GFN2-xTB single point": functools.partial(etkdg_mmff, k=10, rank="gfn2"),
    "ETKDG×30 + MMFF, lowest GFN2-xTB single point": functools.partial(etkdg_mmff, k=30, rank="gfn2"),
    "molconf.predict (default)": predict_default,
    "Auto3D 3.2.3, ANI-2xt, k=1": auto3d_ani2xt,
    "data-set protocol (ETKDG×10 → MMFF → GFN2-xTB of the lowest 3), seed 7": data_set_protocol,
    "molconf.predict(search=True): network + ETKDG×9, GFN2-xTB SP of the 2 lowest by the learned ranker":
        predict_search,
    "molconf.predict(search): network + ETKDG×9, GFN2-xTB SP of the 3 lowest MMFF":
        functools.partial(predict_search, screen="mmff", top=3),
    "molconf.predict(search): network + ETKDG×9, GFN2-xTB SP of the 3 lowest by the learned ranker":
        functools.partial(predict_search, screen="learned", top=3),
    "molconf.predict(search): network + ETKDG×4, learned ranker of the 3 lowest MMFF":
        functools.partial(predict_search, rank="learned", screen="mmff", top=3, candidates=5),
    "molconf.predict(search): network + ETKDG×9, learned ranker of the 3 lowest MMFF":
        functools.partial(predict_search, rank="learned", screen="mmff", top=3),
    "molconf.predict(search): network + ETKDG×19, learned ranker of the 3 lowest MMFF":
        functools.partial(predict_search, rank="learned", screen="mmff", top=3, candidates=20),
    "molconf.predict(search): network + ETKDG×29, GFN2-xTB SP of the 3 lowest MMFF":
        functools.partial(predict_search, screen="mmff", top=3, candidates=30),
    "molconf.predict(search): network + ETKDG×29, GFN2-xTB SP of the 3 lowest by the learned ranker":
        functools.partial(predict_search, screen="learned", top=3, candidates=30),
    "molconf.predict(search, relax_with=\"xtb\"): network + ETKDG×9, GFN2-xTB SP of the 3 lowest MMFF, relaxed with GFN2-xTB":
        functools.partial(predict_search, relax_with="xtb", screen="mmff", top=3),
}
NEEDS = {"Auto3D 3.2.3, ANI-2xt, k=1": ["Auto3D", "torchani"]}  # optional modules (the `bench` extra)


def available(name: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in NEEDS.get(name, []))


def _score(ref, pred, e_ref_ev: float, protocol) -> dict:
    from rdkit import Chem

    from molconf.ground_state.xtb import xtb_relax

    if pred is None:
        return {"failed": True}
    row = _geometry(ref, pred)
    relaxed = Chem.Mol(pred)
    try:
        r = xtb_relax(relaxed, protocol)
        gap = (r.energy_ev - e_ref_ev) * EV_TO_KCAL if not r.bond_changes else None
    except RuntimeError:
        gap = None
    return {"failed": False, **row, "gap_kcal": gap}


def _geometry(ref, pred) -> dict:
    """Geometry metrics of one returned conformer (no energies)."""
    from molconf.metrics import molecule_metrics

    row = molecule_metrics(ref, pred, mirror=True)
    return {"d_abs": row["abs_err_sum"], "d_sq": row["sq_err_sum"], "n_pairs": row["n_pairs"],
            "c_rmsd": row["c_rmsd"], "stereo": row["stereo_consistency"],
            "c_rmsd_mirror": row["c_rmsd_mirror"], "achiral": row["achiral"]}


def _bare(mol):
    from rdkit import Chem

    bare = Chem.Mol(mol)
    bare.RemoveAllConformers()
    return bare


def run_pair(item: tuple[str, str]) -> dict:
    """One (molecule, row): its per-molecule line ``{"index", "n_atoms", "rows": {row: {...}}}``."""
    import warnings

    from molconf.ground_state.xtb import XtbProtocol

    warnings.simplefilter("ignore")
    record, name = item
    ref = _mol(record)
    pred, cpu = ROWS[name](_bare(ref))
    scored = _score(ref, pred, float(ref.GetProp("gfn2_energy_eV")), XtbProtocol())
    return _line(ref, name, {**scored, "cpu_s": cpu})


def _line(ref, name: str, entry: dict) -> dict:
    """A per-molecule line of the results file: ``{"index", "n_atoms", "rows": {name: entry}}``."""
    from molconf import constants as K

    return {"index": int(ref.GetProp(K.SDF_SOURCE_INDEX)), "n_atoms": ref.GetNumAtoms(), "rows": {name: entry}}


def rescore_pair(item: tuple[str, str, dict]) -> dict:
    """Rerun one (molecule, row) computed before the mirror-aware C-RMSD existed and add it (and
    ``achiral``) to the stored entry; the stored energy gap and CPU time are kept, and
    ``rescore_c_rmsd_delta`` records how far the rerun's plain C-RMSD is from the stored one
    (0 for a deterministic row: the rerun returned the same conformer)."""
    import warnings

    warnings.simplefilter("ignore")
    record, name, stored = item
    ref = _mol(record)
    pred, _ = ROWS[name](_bare(ref))
    if pred is None:  # failed now, not before: nothing to add, and the difference is recorded
        return _line(ref, name, {**stored, "rescore_c_rmsd_delta": None})
    geometry = _geometry(ref, pred)
    return _line(ref, name, {**stored, "c_rmsd_mirror": geometry["c_rmsd_mirror"], "achiral": geometry["achiral"],
                             "rescore_c_rmsd_delta": geometry["c_rmsd"] - stored["c_rmsd"]})


def _init(names: list[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    import torch
    from rdkit import Chem
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for smiles in ("CCO", "c1ccccc1CCN"):  # imports, model loads: not per-molecule cost
            for name in names:
                ROWS[name](Chem.AddHs(Chem.MolFromSmiles(smiles)))


def read_results(path: Path) -> dict[int, dict]:
    """Per-molecule lines merged by index (later lines add rows to earlier ones)."""
    done: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.setdefault(r["index"], {**r, "rows": {}})["rows"].update(r["rows"])
    return done


def summarise(results: list[dict]) -> list[dict]:
    table = []
    for name in ROWS:
        rs = [r["rows"][name] for r in results if name in r["rows"]]
        if not rs:
            continue
        ok = [r for r in rs if not r["failed"]]
        gaps = np.array([r["gap_kcal"] for r in ok if r["gap_kcal"] is not None])
        mirror = [r["c_rmsd_mirror"] for r in ok if r.get("c_rmsd_mirror") is not None]
        moved = [abs(r["rescore_c_rmsd_delta"]) for r in ok if r.get("rescore_c_rmsd_delta") is not None]
        table.append({
            "method": name, "n": len(rs), "failed": len(rs) - len(ok),
            "d_mae": sum(r["d_abs"] for r in ok) / max(sum(r["n_pairs"] for r in ok), 1),
            "c_rmsd": float(np.mean([r["c_rmsd"] for r in ok])) if ok else float("nan"),
            "c_rmsd_mirror": float(np.mean(mirror)) if mirror else float("nan"), "n_mirror": len(mirror),
            "rescored_moved": int(sum(d > 1e-3 for d in moved)),
            "stereo": float(np.mean([r["stereo"] for r in ok])) if ok else float("nan"),
            "gap_median": float(np.median(gaps)) if len(gaps) else float("nan"),
            "at_or_below_ref": float(np.mean(gaps <= 0.1)) if len(gaps) else float("nan"),
            "below_ref": float(np.mean(gaps < -0.1)) if len(gaps) else float("nan"),
            "no_gap": len(ok) - len(gaps),
            "cpu_ms": 1000 * float(np.mean([r["cpu_s"] for r in rs])),
        })
    return table


def _table_lines(table: list[dict]) -> list[str]:
    lines = ["| method | n | C-RMSD (Å) | C-RMSD up to mirror (Å) | D-MAE (Å) | stereo | failed | median gap (kcal/mol) "
             "| ≤ ref | < ref | no gap | CPU ms/mol |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        ok = r["n"] - r["failed"]
        mirror = "–" if not r.get("n_mirror") else f"{r['c_rmsd_mirror']:.3f}" + (
            f" (n = {r['n_mirror']})" if r["n_mirror"] < ok else "")
        lines.append(f"| {r['method']} | {r['n']} | {r['c_rmsd']:.3f} | {mirror} | {r['d_mae']:.3f} | {r['stereo']:.3f} | "
                     f"{r['failed']} | {r['gap_median']:.2f} | {r['at_or_below_ref']:.0%} | {r['below_ref']:.0%} | "
                     f"{r['no_gap']} | {r['cpu_ms']:.0f} |")
    return lines


def markdown(table: list[dict], n: int, seed: int, command: str, common: list[dict] | None = None,
             holdout: bool = False, references: Path | None = None) -> str:
    """The table; ``common``: the same rows on the molecules every row ran on (when some row has fewer);
    ``references``: the reference file scored against, when not the moses_xtb test draw."""
    if references is None:
        title = "moses_xtb scaffold test"
        molecules = (f"a seeded subset (numpy seed {seed}) of the 1,000 test molecules"
                     + (f" outside the anchors' own {ANCHORS[0]} (seed {ANCHORS[1]}): a held-out check" if holdout else ""))
    else:
        title = f"`{references}`"
        molecules = f"every molecule of `{references}` (GFN2-xTB references, built as its README says)"
    lines = [f"# Ground-state anchors: {title}, {n} molecules ({time.strftime('%Y-%m-%d')})", "",
             f"Command (last run; rows accumulate per (molecule, row) across runs): `{command}`. Molecules: "
             f"{molecules}; n = molecules a row was run on. Candidate "
             f"ETKDGv3 seed {CANDIDATE_SEED} (the reference build used 42), also for the data-set protocol row "
             "(`build_ground_state` with `XtbProtocol(embed_seed=7)`). Auto3D 3.2.3: `smiles2mols` per molecule on the "
             "reference's stereo SMILES, `k=1, optimizing_engine=\"ANI2xt\", use_gpu=False, enumerate_isomers=False, "
             "isomer_threads=1`, default conformer budget; ANI-2xt has no Br, so molecules with Br fail. CPU time = "
             "CPU seconds of the row's own work, one thread (Auto3D and the data-set protocol: the whole call, child "
             "processes included). Energy gap = GFN2-xTB energy after GFN2-xTB relaxation of the returned "
             "conformer − the reference minimum's (kcal/mol; the data-set protocol's conformer is already relaxed, so "
             "this relaxation barely moves it); ≤ ref: gap ≤ +0.1; < ref: gap < −0.1 (a lower minimum than the "
             "reference's); shares are of the molecules with a gap; no gap: GFN2-xTB relaxation changed the bond "
             "graph (or its SCF failed), so no energy is compared. D-MAE pooled over all atoms, C-RMSD heavy atoms "
             "(DESIGN §3, no reflection). C-RMSD up to mirror: for an achiral molecule the returned conformer's "
             "mirror image, a conformer of the same molecule with the same energy, is scored too and the lower "
             "RMSD counts (`molconf.metrics.c_rmsd_up_to_mirror`); for chiral molecules it equals C-RMSD. Rows "
             "run before it existed were rerun for it (`--rescore`: same seeds, the stored gap and CPU time kept; "
             "n shown where it covers fewer molecules than the row).", "",
             *_table_lines(table)]
    if common is not None:
        lines += ["", f"The same rows on the {common[0]['n']} molecules every row was run on (rows with a smaller n "
                  "ran on the first molecules of the subset in file order):", "", *_table_lines(common)]
    return "\n".join(lines)


def row_names(wanted: list[str]) -> list[str]:
    """Registry names for ``--rows`` (a full name or an unambiguous prefix each)."""
    names = []
    for w in wanted:
        hits = [name for name in ROWS if name == w] or [name for name in ROWS if name.startswith(w)]
        if len(hits) != 1:
            raise SystemExit(f"--rows {w!r}: {'ambiguous' if hits else 'unknown'}; rows: {list(ROWS)}")
        names.append(hits[0])
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=ANCHORS[0])
    p.add_argument("--seed", type=int, default=ANCHORS[1])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", nargs="+", default=list(ROWS), help="row names or prefixes (default: all)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many molecules per row, the first in file order (timing probes, partial rows)")
    p.add_argument("--out", default="runs/ground_state_anchors")
    p.add_argument("--holdout", action="store_true",
                   help="draw only among the test molecules outside the anchors' own (--n 300 --seed 0): a check, on "
                        "molecules no choice was made on, of a choice made on the anchors (use another --out)")
    p.add_argument("--references", type=Path, metavar="SDF",
                   help="score against every molecule of this build-xtb data set (its molecules.sdf.gz or folder, "
                        "e.g. datasets/drugs_xtb) instead of a draw of the moses_xtb test split (--n, --seed, "
                        "--holdout unused; use another --out)")
    p.add_argument("--rescore", action="store_true",
                   help="rerun the rows' computed pairs that lack the mirror-aware C-RMSD, adding it (no new pairs)")
    p.add_argument("--redo", action="store_true",
                   help="run the rows' pairs again even where stored (after a change to a method: the new lines "
                        "replace the stored ones on read)")
    args = p.parse_args(argv)
    if args.redo and args.rescore:
        p.error("--redo and --rescore exclude each other")
    names = []
    for name in row_names(args.rows):
        if available(name):
            names.append(name)
        else:
            print(f"skipping {name!r}: needs {', '.join(NEEDS[name])} (pip install molconf[bench])", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_mol = out / PER_MOLECULE
    done = read_results(per_mol)
    if args.references is not None:
        records = file_references(args.references)
    else:
        exclude = frozenset(index for index, _ in test_references(*ANCHORS)) if args.holdout else frozenset()
        records = test_references(args.n, args.seed, exclude)
    if args.rescore:
        stored = {(index, name): done[index]["rows"][name] for name in names for index, _ in records[:args.limit]
                  if name in done.get(index, {}).get("rows", {})}
        todo = [(record, name, stored[index, name]) for name in names for index, record in records[:args.limit]
                if (index, name) in stored and not stored[index, name]["failed"]
                and "c_rmsd_mirror" not in stored[index, name]]
        job = rescore_pair
    else:
        todo = [(record, name) for name in names for index, record in records[:args.limit]
                if args.redo or name not in done.get(index, {}).get("rows", {})]
        job = run_pair
    print(f"{len(records)} molecules × {len(names)} rows, {len(todo)} pairs to {'rescore' if args.rescore else 'run'}",
          flush=True)
    if todo:
        with mp.get_context("fork").Pool(args.workers, initializer=_init, initargs=(names,)) as pool, \
                per_mol.open("a") as fh:
            for k, r in enumerate(pool.imap_unordered(job, todo)):
                done.setdefault(r["index"], {**r, "rows": {}})["rows"].update(r["rows"])
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                if (k + 1) % 10 == 0:
                    print(f"{k + 1} / {len(todo)}", flush=True)
    wanted = {index for index, _ in records}
    results = [r for i, r in done.items() if i in wanted]
    table = summarise(results)
    methods = [r["method"] for r in table]
    common = None
    if any(r["n"] < len(results) for r in table):
        common = summarise([r for r in results if all(m in r["rows"] for m in methods)]) or None
    command = "python benchmarks/ground_state_anchors.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(table, len(results), args.seed, command.strip(), common, args.holdout, args.references)
    (out / "ground_state_anchors.md").write_text(text + "\n")
    (out / "ground_state_anchors.json").write_text(
        json.dumps({"table": table, "n": len(results), "table_common_molecules": common}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
