"""Rankers of ETKDG+MMFF94 conformer pools, scored as rankers on held-out molecules (issue #24, item 3).

The pools come from ``molconf conformer-energies`` (:mod:`molconf.ground_state.energies`: ETKDGv3
× K, seed 7, MMFF94 minima, a GFN2-xTB single point each, C-RMSD of each to the reference
ground state). :func:`molconf.ground_state.ranking.score_rankers` scores every ranker: within-
molecule Spearman with the GFN2-xTB single points, top-1 hit rate, C-RMSD of the pick to the
reference, and GFN2-xTB single points spent per molecule.

With ``--train-pools`` (pools of the training split), learned rankers are fitted first
(:func:`molconf.ground_state.ranking.fit_ranker`, from the shipped GFN2-xTB correction, one per
``--targets``) and scored beside the others; ``--save-dir`` keeps their weights.

    molconf conformer-energies --split test --out runs/pools/test
    molconf conformer-energies --split train --limit 2000 --out runs/pools/train
    python benchmarks/rankers.py --pools runs/pools/test --train-pools runs/pools/train --out benchmarks/results
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
    import torch

    from molconf.ground_state.prerelax import DEFAULT_CORRECTION, read_correction, save_correction
    from molconf.ground_state.ranking import (RANKERS, TARGETS, among_lowest_by, among_lowest_mmff, fit_ranker, gfn2,
                                              learned, score_rankers)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", type=Path, default=Path("runs/pools/test"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--rankers", nargs="*", default=list(RANKERS), choices=list(RANKERS))
    p.add_argument("--train-pools", type=Path, help="pools of the training split: fit learned rankers first")
    p.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--save-dir", type=Path, help="write each learned ranker's weights here (ranker_<target>.pt)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pools, failures = load_pools(args.pools)
    meta = json.loads((args.pools / "meta.json").read_text())
    sdf = default_moses_xtb_sdf()

    def molecules(split: str) -> dict:
        return {i: m for i, _, m in split_records(np.load(sdf.parent / f"split_{split}.npy"), sdf)}

    mols = molecules(meta["split"])
    rankers = {k: RANKERS[k] for k in args.rankers}
    if "correction" in rankers:
        rankers["correction, 3 lowest MMFF"] = among_lowest_mmff(3, rankers["correction"])
    fitted = {}
    if args.train_pools:
        train, _ = load_pools(args.train_pools)
        train_meta = json.loads((args.train_pools / "meta.json").read_text())
        assert train_meta["split"] != meta["split"], "learned rankers are scored on held-out molecules"
        train_mols = molecules(train_meta["split"])
        for target in args.targets:
            t = time.process_time()
            model, history = fit_ranker(train, train_mols, read_correction(DEFAULT_CORRECTION), target=target,
                                        epochs=args.epochs, lr=args.lr)
            fitted[target] = {"history": history, "fit_cpu_s": time.process_time() - t,
                              "train_pools": len(train), "epochs": args.epochs, "lr": args.lr}
            rankers[f"learned ({target})"] = learned(model)
            rankers[f"learned ({target}), 3 lowest MMFF"] = among_lowest_mmff(3, learned(model))
            if target == "energy":  # the search's screen="learned": GFN2-xTB single points of the few it keeps
                for k in (2, 3):
                    rankers[f"gfn2 of the {k} lowest by learned ({target})"] = among_lowest_by(k, learned(model), gfn2)
            if args.save_dir:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                save_correction(model.float(), args.save_dir / f"ranker_{target}.pt",
                                {"elements": list(model.trained_elements), "target": target, **fitted[target],
                                 "train_pools_meta": train_meta})
                model.double()
    t0 = time.process_time()
    rows = score_rankers(pools, mols, rankers)
    command = "python benchmarks/rankers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Rankers of conformer pools: moses_xtb {meta['split']} split ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{command.strip()}` on pools from `molconf conformer-energies --split {meta['split']}` "
             f"({len(pools)} molecules, {len(failures)} failed; ETKDGv3 × {meta['conformers']}, seed {meta['seed']}, "
             "MMFF94 minima, a GFN2-xTB single point each). Spearman: within-molecule rank correlation with the "
             "GFN2-xTB single points (molecules with ≥ 3 stereo-correct conformers); top-1: the pick is GFN2-xTB's "
             "lowest (within 0.1 kcal/mol); C-RMSD of the pick to the reference ground state (heavy atoms, Å); "
             "< 0.5 Å: share of molecules; GFN2 SP/mol: single points the ranker needs per molecule."
             + (f" Learned rankers: the shipped GFN2-xTB correction fine-tuned on {len(train)} training-split pools "
                f"({args.epochs} epochs, lr {args.lr}; `energy`: within-molecule GFN2-xTB single-point differences, "
                "`ground_state`: softmax over the pool against nearness to the reference ground state)."
                if args.train_pools else ""), "",
             "| ranker | molecules | Spearman | top-1 | C-RMSD (Å) | < 0.5 Å | GFN2 SP/mol |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ranker']} | {r['molecules']} | {r['spearman']:.3f} | {r['top1']:.1%} | {r['c_rmsd']:.3f} | "
                     f"{r['under_05']:.1%} | {r['gfn2_per_mol']:.1f} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rankers.md").write_text(text)
    (args.out / "rankers.json").write_text(json.dumps({"rows": rows, "pools": meta, "failures": failures, "fitted": fitted,
                                                       "scoring_cpu_s": time.process_time() - t0}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
