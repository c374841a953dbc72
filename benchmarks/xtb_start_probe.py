"""Where do the GFN2-xTB steps from an MMFF94 minimum go, and can a cheap correction save them?

``benchmarks/xtb_relax.py`` found that any start that goes through MMFF94 needs ~24 LBFGS steps
of GFN2-xTB, even the data set's own GFN2-xTB minimum once MMFF94 has optimised it (its
control row). This probe splits those steps: starting from that control geometry, it sets
the interatomic distances of chosen atom pairs to a target by least squares and counts the
GFN2-xTB steps again (same protocol as the data):

- ``control``: the data set's minimum after MMFF94 (``xtb_relax.py``'s control start);
- ``oracle 1-2/1-3``: bond lengths and angle (1-3) distances set to the GFN2-xTB minimum's own
  values, torsions left where MMFF94 put them: what a perfect local-geometry correction
  could save;
- ``oracle 1-2/1-3 × λ``: the same targets only λ of the way from MMFF94's distances (λ = 0.75,
  0.5): how the steps grow with an error that points the right way everywhere;
- ``oracle 1-2/1-3/1-4``: torsion (1-4) distances too (nearly the minimum itself);
- ``lookup 1-2/1-3``: the 1-2 and 1-3 distances shifted by the mean GFN2-xTB − MMFF94
  difference of their chemical type (elements, hybridisation, aromaticity, degree, charge,
  bond types, ring), learned on ``--train`` molecules of the training split: the simplest
  learned correction; and the same with every 1-4 distance held where MMFF94 put it (so the
  fit cannot twist torsions or bend rings out of plane);
- ``learned: <weights>`` (per ``--correction`` file): MMFF94 + that learned GFN2-xTB
  correction minimised from the control start (:func:`molconf.ground_state.prerelax.prerelax`, its
  torsions held near the start), and the same with the torsions free (``hold_torsions=0``).

    nice python benchmarks/xtb_start_probe.py --n 40 --train 2000 --out benchmarks/results \
        --correction benchmarks/results/weights/moses_xtb_gfn2_correction.pt \
        molconf/weights/moses_xtb_gfn2_correction_dihedral.pt
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from molconf.data.load import load_dataset, load_dataset_split
from molconf.ground_state.xtb import XtbProtocol, xtb_relax
from molconf.ground_state.prerelax import load_correction, prerelax
from molconf.metrics import mol_with_coords
from molconf.ground_state.correction import pairs_within_hops
from xtb_relax import mmff_start

STARTS = ("control", "oracle 1-2/1-3", "oracle 1-2/1-3 × 0.75", "oracle 1-2/1-3 × 0.5", "oracle 1-2/1-3/1-4",
          "lookup 1-2/1-3", "lookup 1-2/1-3, 1-4 kept")


FREE = ", torsions free"


def learned_rows(path: str) -> tuple[str, str]:
    return f"learned: {Path(path).stem}", f"learned: {Path(path).stem}{FREE}"


def atom_type(atom: Chem.Atom) -> tuple:
    return (atom.GetSymbol(), str(atom.GetHybridization()), atom.GetIsAromatic(), atom.GetDegree(),
            atom.GetFormalCharge())


def local_pairs(mol: Chem.Mol) -> list[tuple[int, int, tuple]]:
    """(i, j, chemical type) of every bonded (1-2) and angle (1-3) pair."""
    out = []
    for b in mol.GetBonds():
        ends = sorted([atom_type(b.GetBeginAtom()), atom_type(b.GetEndAtom())])
        out.append((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), ("1-2", *ends, str(b.GetBondType()), b.IsInRing())))
    for centre in mol.GetAtoms():
        c = centre.GetIdx()
        nbs = [n.GetIdx() for n in centre.GetNeighbors()]
        for x, i in enumerate(nbs):
            for j in nbs[x + 1:]:
                bi, bj = mol.GetBondBetweenAtoms(c, i), mol.GetBondBetweenAtoms(c, j)
                ends = sorted([(atom_type(mol.GetAtomWithIdx(i)), str(bi.GetBondType())),
                               (atom_type(mol.GetAtomWithIdx(j)), str(bj.GetBondType()))])
                out.append((i, j, ("1-3", atom_type(centre), *ends, bi.IsInRing() and bj.IsInRing())))
    return out


def pairs_within(mol: Chem.Mol, hops: int) -> tuple[np.ndarray, np.ndarray]:
    pairs, _ = pairs_within_hops(mol, hops)
    return pairs[:, 0], pairs[:, 1]


def fit_distances(start: np.ndarray, i: np.ndarray, j: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Move ``start`` (n, 3) so the (i, j) distances approach ``target`` (least squares, LBFGS)."""
    x = torch.tensor(start, requires_grad=True)
    t = torch.tensor(target)
    opt = torch.optim.LBFGS([x], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (((x[i] - x[j]).norm(dim=1) - t) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return x.detach().numpy()


def distances(pos: np.ndarray, i, j) -> np.ndarray:
    return np.linalg.norm(pos[i] - pos[j], axis=1)


def learn_lookup(store, rows) -> dict[tuple, float]:
    """Mean GFN2-xTB − MMFF94 distance per chemical pair type (types seen at least 3 times)."""
    seen = defaultdict(list)
    for r in rows.tolist():
        ref = store.mol(int(r))
        mmff, _ = mmff_start(ref)
        if mmff is None:
            continue
        g, x = ref.GetConformer().GetPositions(), mmff.GetConformer().GetPositions()
        for i, j, kind in local_pairs(ref):
            seen[kind].append(np.linalg.norm(g[i] - g[j]) - np.linalg.norm(x[i] - x[j]))
    return {k: float(np.mean(v)) for k, v in seen.items() if len(v) >= 3}


def probe_molecule(ref: Chem.Mol, lookup: dict, protocol: XtbProtocol, corrections: dict) -> dict | None:
    """Steps from each start of the module's list for one test molecule; ``corrections``:
    row name → learned correction."""
    control, _ = mmff_start(ref)
    if control is None:
        return None
    g, x = ref.GetConformer().GetPositions(), control.GetConformer().GetPositions()
    starts = {"control": x}
    for name, hops in (("oracle 1-2/1-3", 2), ("oracle 1-2/1-3/1-4", 3)):
        i, j = pairs_within(ref, hops)
        starts[name] = fit_distances(x, i, j, distances(g, i, j))
    i, j = pairs_within(ref, 2)
    for lam in (0.75, 0.5):
        starts[f"oracle 1-2/1-3 × {lam}"] = fit_distances(x, i, j, distances(x, i, j) + lam * (distances(g, i, j) - distances(x, i, j)))
    for name, correction in corrections.items():
        corrected = Chem.Mol(control)
        prerelax(corrected, correction, **({"hold_torsions": 0.0} if name.endswith(FREE) else {}))  # held: the default
        starts[name] = corrected.GetConformer().GetPositions()
    local = local_pairs(ref)
    i, j = np.array([p[0] for p in local]), np.array([p[1] for p in local])
    shift = np.array([lookup.get(p[2], 0.0) for p in local])
    starts["lookup 1-2/1-3"] = fit_distances(x, i, j, distances(x, i, j) + shift)
    # the same targets, with every 1-4 distance held where MMFF94 put it (torsions, ring planarity)
    pairs, hops = pairs_within_hops(ref, 3)
    i4, j4 = pairs[hops == 3, 0], pairs[hops == 3, 1]
    starts["lookup 1-2/1-3, 1-4 kept"] = fit_distances(
        x, np.concatenate([i, i4]), np.concatenate([j, j4]),
        np.concatenate([distances(x, i, j) + shift, distances(x, i4, j4)]))
    row = {"local_error_mmff": float(np.abs(distances(g, i, j) - distances(x, i, j)).mean()),
           "local_error_lookup": float(np.abs(distances(g, i, j) - distances(x, i, j) - shift).mean())}
    for name in corrections:
        row[f"local_error {name}"] = float(np.abs(distances(g, i, j) - distances(starts[name], i, j)).mean())
    for name, pos in starts.items():
        relaxed = xtb_relax(mol_with_coords(control, pos), protocol)
        row[name] = relaxed.steps if not relaxed.bond_changes and relaxed.converged else None
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="moses_xtb")
    p.add_argument("--n", type=int, default=40, help="test molecules")
    p.add_argument("--train", type=int, default=2000, help="training molecules the lookup is learned on")
    p.add_argument("--correction", nargs="*", default=[], help="learned GFN2-xTB corrections (weights files): a row each")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    corrections = {name: load_correction(path) for path in args.correction for name in learned_rows(path)}
    starts = STARTS + tuple(corrections)
    torch.set_num_threads(1)
    store = load_dataset(args.dataset)
    train, _ = store.positions_of(load_dataset_split(args.dataset, "train"))
    test, _ = store.positions_of(load_dataset_split(args.dataset, "test"))
    lookup = learn_lookup(store, train[: args.train])
    protocol = XtbProtocol()
    rows = []
    for r in test[: args.n].tolist():
        row = probe_molecule(store.mol(int(r)), lookup, protocol, corrections)
        if row is not None:
            rows.append(row)
            print(r, *(row.get(s) for s in starts), flush=True)
    command = "python benchmarks/xtb_start_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"$ nice {command}",
             f"{len(rows)} {args.dataset} test molecules (of {args.n}); lookup learned on {args.train} training "
             f"molecules ({len(lookup)} pair types); GFN2-xTB LBFGS fmax {protocol.fmax} eV/Å; "
             f"load average after: {os.getloadavg()[0]:.2f}",
             f"mean |GFN2-xTB - MMFF94| of 1-2/1-3 distances: {statistics.fmean(r['local_error_mmff'] for r in rows):.4f} Å, "
             f"after the lookup {statistics.fmean(r['local_error_lookup'] for r in rows):.4f} Å"
             + "".join(f", after {name} {statistics.fmean(r[f'local_error {name}'] for r in rows):.4f} Å"
                       for name in corrections)]
    width = max(map(len, starts))
    for s in [s for s in starts if any(s in r for r in rows)]:
        ok = [r[s] for r in rows if r[s] is not None]
        both = [r for r in rows if r[s] is not None and r["control"] is not None]
        lines.append(f"{s:>{width}}: converged {len(ok)}, median steps {statistics.median(ok):.1f}, mean {statistics.fmean(ok):.1f}; "
                     f"fewer than control {sum(r[s] < r['control'] for r in both)}, more {sum(r[s] > r['control'] for r in both)}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "xtb_start_probe.txt").write_text(text)


if __name__ == "__main__":
    main()
