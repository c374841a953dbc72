"""Where each ground-state row falls short, molecule size by size (issue #24, item 6).

Reads the per-molecule results of ``benchmarks/ground_state_anchors.py`` (every row, the search rows
included) and plots, per bin of heavy-atom count, the mean C-RMSD and the share of molecules at or
below the reference energy (gap ≤ +0.1 kcal/mol), with the goal lines of the issue (C-RMSD 0.70 Å,
≥ 60 %); writes ``ground_state_by_size.png`` and a table ``ground_state_by_size.md``.

    python benchmarks/ground_state_by_size.py --results benchmarks/results
    # results scored against another reference set (ground_state_anchors.py --references)
    python benchmarks/ground_state_by_size.py --results benchmarks/results/drugs_xtb \
        --references datasets/drugs_xtb --bins 15 21 27 34 42
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ground_state_anchors import PER_MOLECULE, read_results, reference_sdf

BINS = (0, 19, 22, 25, 28)  # heavy atoms (moses_xtb: at most 27)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--rows", nargs="*", help="rows to plot (default: every row with results)")
    p.add_argument("--references", type=Path,
                   help="the reference set the results were scored against (a build-xtb data set's molecules.sdf.gz "
                        "or its folder; default: moses_xtb)")
    p.add_argument("--bins", type=int, nargs="+", default=list(BINS), help="bin edges, heavy atoms (lower bounds)")
    args = p.parse_args(argv)
    from molconf.data.moses_xtb import default_moses_xtb_sdf, split_records

    results = args.results / PER_MOLECULE
    if not results.is_file():
        raise SystemExit(f"{results}: no such file (run benchmarks/ground_state_anchors.py first)")
    per_mol = read_results(results)
    sdf = reference_sdf(args.references) if args.references else default_moses_xtb_sdf()
    heavy = {i: m.GetNumHeavyAtoms() for i, _, m in split_records(list(per_mol), sdf)}
    if missing := sorted(set(per_mol) - set(heavy)):
        raise SystemExit(f"{sdf} lacks molecules {missing[:5]} of the results: pass the reference set they were "
                         "scored against (--references)")
    names = args.rows or sorted({n for r in per_mol.values() for n in r["rows"]})
    edges = list(args.bins)
    table = []
    for name in names:
        for lo, hi in zip(edges, edges[1:]):
            rs = [r["rows"][name] for i, r in per_mol.items() if name in r["rows"] and lo <= heavy[i] < hi]
            ok = [r for r in rs if not r["failed"]]
            gaps = np.array([r["gap_kcal"] for r in ok if r.get("gap_kcal") is not None])
            table.append({"row": name, "bin": f"{lo}–{hi - 1}", "n": len(rs),
                          "c_rmsd": float(np.mean([r["c_rmsd"] for r in ok])) if ok else float("nan"),
                          "at_or_below": float(np.mean(gaps <= 0.1)) if len(gaps) else float("nan")})
    lines = ["# Ground-state rows by molecule size (heavy atoms)", "",
             f"From `{results}`; command: "
             f"`python benchmarks/ground_state_by_size.py {' '.join(repr(a) if ' ' in a else a for a in sys.argv[1:])}`.", "",
             "| row | heavy atoms | n | C-RMSD (Å) | ≤ ref |", "|---|---|---|---|---|"]
    lines += [f"| {t['row']} | {t['bin']} | {t['n']} | {t['c_rmsd']:.3f} | {t['at_or_below']:.0%} |" for t in table]
    (args.results / "ground_state_by_size.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    centres = [f"{lo}–{hi - 1}" for lo, hi in zip(edges, edges[1:])]
    for name in names:
        rows = [t for t in table if t["row"] == name]
        axes[0].plot(centres, [t["c_rmsd"] for t in rows], marker="o", label=name)
        axes[1].plot(centres, [100 * t["at_or_below"] for t in rows], marker="o", label=name)
    axes[0].axhline(0.70, color="k", ls="--", lw=1)
    axes[1].axhline(60, color="k", ls="--", lw=1)
    axes[0].set(xlabel="heavy atoms", ylabel="C-RMSD to the reference (Å)", title="C-RMSD (goal ≤ 0.70)")
    axes[1].set(xlabel="heavy atoms", ylabel="% at or below the reference energy", title="energy (goal ≥ 60 %)")
    axes[1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.results / "ground_state_by_size.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
