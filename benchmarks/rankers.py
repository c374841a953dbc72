"""Rankers of ETKDG+MMFF94 conformer pools, scored as rankers on held-out molecules (issue #24, item 3).

The pools come from ``molconf conformer-energies`` (:mod:`molconf.ground_state.energies`: ETKDGv3
× K, seed 7, MMFF94 minima, a GFN2-xTB single point each, C-RMSD of each to the reference
ground state). :func:`molconf.ground_state.ranking.score_rankers` scores every ranker: within-
molecule Spearman with the GFN2-xTB single points, top-1 hit rate, C-RMSD of the pick to the
reference, and GFN2-xTB single points spent per molecule.

    molconf conformer-energies --split test --out runs/pools/test
    python benchmarks/rankers.py --pools runs/pools/test --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    from molconf.data.moses_xtb import default_moses_xtb_sdf, split_records
    from molconf.ground_state.energies import load_pools
    from molconf.ground_state.ranking import RANKERS, score_rankers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", type=Path, default=Path("runs/pools/test"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--rankers", nargs="*", default=list(RANKERS), choices=list(RANKERS))
    args = p.parse_args(argv)
    pools, failures = load_pools(args.pools)
    meta = json.loads((args.pools / "meta.json").read_text())
    sdf = default_moses_xtb_sdf()
    ids = np.load(sdf.parent / f"split_{meta['split']}.npy")
    mols = {i: m for i, _, m in split_records(ids, sdf)}
    t0 = time.process_time()
    rows = score_rankers(pools, mols, {k: RANKERS[k] for k in args.rankers})
    command = "python benchmarks/rankers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Rankers of conformer pools: moses_xtb {meta['split']} split ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{command.strip()}` on pools from `molconf conformer-energies --split {meta['split']}` "
             f"({len(pools)} molecules, {len(failures)} failed; ETKDGv3 × {meta['conformers']}, seed {meta['seed']}, "
             "MMFF94 minima, a GFN2-xTB single point each). Spearman: within-molecule rank correlation with the "
             "GFN2-xTB single points (molecules with ≥ 3 stereo-correct conformers); top-1: the pick is GFN2-xTB's "
             "lowest (within 0.1 kcal/mol); C-RMSD of the pick to the reference ground state (heavy atoms, Å); "
             "< 0.5 Å: share of molecules; GFN2 SP/mol: single points the ranker needs per molecule.", "",
             "| ranker | molecules | Spearman | top-1 | C-RMSD (Å) | < 0.5 Å | GFN2 SP/mol |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ranker']} | {r['molecules']} | {r['spearman']:.3f} | {r['top1']:.1%} | {r['c_rmsd']:.3f} | "
                     f"{r['under_05']:.1%} | {r['gfn2_per_mol']:.1f} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rankers.md").write_text(text)
    (args.out / "rankers.json").write_text(json.dumps({"rows": rows, "pools": meta, "failures": failures,
                                                       "scoring_cpu_s": time.process_time() - t0}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
