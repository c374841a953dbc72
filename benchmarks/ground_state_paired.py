"""Paired differences between rows of the ground-state anchors, with bootstrap intervals (issue #24).

Rows of ``benchmarks/ground_state_anchors.py`` run on the same molecules, so two rows are compared
molecule by molecule: per metric, the mean of (row B − row A) over the molecules both returned a
conformer for, with a 95 % percentile-bootstrap interval over molecules (``--resamples``, numpy
seed ``--seed``). An interval that excludes 0 says the difference is not one draw of molecules.

Metrics: C-RMSD and C-RMSD up to mirror (Å), D-MAE per molecule (Å; the anchors table pools it
over atom pairs instead), the energy gap after GFN2-xTB relaxation (kcal/mol; lower: a lower
minimum), "≤ ref" (share of molecules within +0.1 kcal/mol of the reference's energy or below,
as a difference of shares) and CPU time per molecule (ms).

    python benchmarks/ground_state_paired.py --results benchmarks/results
    python benchmarks/ground_state_paired.py --results benchmarks/results/drugs_xtb   # the marketed drugs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ground_state_anchors import PER_MOLECULE, read_results

SEARCH = "molconf.predict(search{}): network + ETKDG×{}, GFN2-xTB SP of the {} lowest {}"
# (A, B): B − A is reported
PAIRS = [
    (SEARCH.format("", 9, 3, "MMFF"), SEARCH.format("=True", 9, 2, "by the learned ranker")),
    (SEARCH.format("", 9, 3, "MMFF"), SEARCH.format("", 9, 3, "by the learned ranker")),
    (SEARCH.format("", 29, 3, "MMFF"), SEARCH.format("", 29, 3, "by the learned ranker")),
    ("ETKDG×30 + MMFF, lowest GFN2-xTB single point", SEARCH.format("", 29, 3, "by the learned ranker")),
    ("ETKDG×10 + MMFF, lowest GFN2-xTB single point", SEARCH.format("=True", 9, 2, "by the learned ranker")),
    ("ETKDG + MMFF, one conformer", SEARCH.format("=True", 9, 2, "by the learned ranker")),
]
METRICS = {  # name -> per-molecule value from a stored row entry (None: not available)
    "C-RMSD (Å)": lambda r: r["c_rmsd"],
    "up to mirror (Å)": lambda r: r.get("c_rmsd_mirror"),
    "D-MAE (Å)": lambda r: r["d_abs"] / r["n_pairs"],
    "gap (kcal/mol)": lambda r: r["gap_kcal"],
    "≤ ref": lambda r: None if r["gap_kcal"] is None else float(r["gap_kcal"] <= 0.1),
    "CPU (ms)": lambda r: 1000 * r["cpu_s"],
}


def paired(results: dict[int, dict], a: str, b: str, resamples: int = 2000, seed: int = 0,
           metrics: dict = METRICS) -> dict:
    """``{metric: (mean of B − A, CI low, CI high, molecules)}`` over molecules where both rows have
    the metric.

    >>> res = {i: {"rows": {"a": {"failed": False, "x": 1.0}, "b": {"failed": False, "x": 1.5 + i % 2}}}
    ...        for i in range(6)}
    >>> mean, low, high, n = paired(res, "a", "b", resamples=200, metrics={"x": lambda r: r["x"]})["x"]
    >>> mean, n, 0.5 <= low < mean < high <= 1.5
    (1.0, 6, True)
    """
    rng = np.random.default_rng(seed)
    out = {}
    for metric, value in metrics.items():
        diffs = []
        for r in results.values():
            ra, rb = r["rows"].get(a), r["rows"].get(b)
            if not ra or not rb or ra["failed"] or rb["failed"]:
                continue
            va, vb = value(ra), value(rb)
            if va is not None and vb is not None:
                diffs.append(vb - va)
        d = np.asarray(diffs, dtype=float)
        if not len(d):
            continue
        boot = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
        out[metric] = (float(d.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), len(d))
    return out


def _cell(stat: tuple | None, digits: int) -> str:
    return "–" if stat is None else f"{stat[0]:+.{digits}f} [{stat[1]:+.{digits}f}, {stat[2]:+.{digits}f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    results = read_results(args.results / PER_MOLECULE)
    lines = [f"# Ground-state anchors: paired differences ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/ground_state_paired.py --results {args.results}`. From `{PER_MOLECULE}`: "
             f"mean of (B − A) per molecule, [95 % percentile-bootstrap interval over molecules, {args.resamples} "
             f"resamples, seed {args.seed}], molecules both rows returned a conformer for. D-MAE per molecule (the "
             "anchors table pools it); gap: GFN2-xTB energy after relaxation minus the reference's (lower: a lower "
             "minimum); ≤ ref as a difference of shares.", ""]
    metrics = list(METRICS)
    for a, b in PAIRS:
        stats = paired(results, a, b, args.resamples, args.seed)
        if not stats:
            continue
        n = max(s[3] for s in stats.values())
        lines += [f"**B** {b}  \n**A** {a}  \n({n} molecules)", "",
                  "| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
                  "| " + " | ".join(_cell(stats.get(m), 0 if m.startswith("CPU") else 3) for m in metrics) + " |", ""]
    text = "\n".join(lines)
    (args.results / "ground_state_paired.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
