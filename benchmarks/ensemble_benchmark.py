"""Conformer-ensemble benchmark on moses_xtb test molecules (issue #26, item 3).

Reference: the GFN2-xTB ensembles of ``molconf conformer-ensembles`` (minima within 3 kcal/mol of the
lowest, from ≥ 30 ETKDG+MMFF starts, duplicates removed by heavy-atom RMSD < 0.125 Å; mirror-image
conformers of a molecule count as two, since RMSD without reflection tells them apart). Each row
generates, per molecule, twice as many conformers as the reference ensemble holds (GEOM-DRUGS
practice) and is scored, as the GEOM-DRUGS papers do, by heavy-atom ``GetBestRMS`` (no reflection)
at δ = 0.75 Å:

* COV-R: share of reference conformers with a generated one within δ; AMR-R: mean over the
  reference conformers of the smallest RMSD to a generated one (recall);
* COV-P / AMR-P: the same with the roles swapped (precision);

mean and median over molecules, with the CPU time per generated conformer (one thread).
Rows: ETKDGv3 (seed 7: neither the ensemble's 11 nor the data build's 42) and ETKDGv3 + MMFF94;
``--generator WEIGHTS`` adds ``molconf.generate``'s samples (a model that starts from ETKDG
starts from the ETKDG row's own conformers)::

    molconf conformer-ensembles --split test --n 200 --among-first 1000 --out runs/ensembles/test --workers 2
    python benchmarks/ensemble_benchmark.py --ensembles runs/ensembles/test [--generator W.pt]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

RESULTS = Path(__file__).parent / "results"
ENSEMBLES = Path(__file__).parents[1] / "datasets" / "moses_xtb" / "conformer_ensembles" / "test.sdf.gz"
DELTA = 0.75
SEED = 7
METRICS = ("cov_r", "amr_r", "cov_p", "amr_p")


def _bare(mol: Chem.Mol) -> Chem.Mol:
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    return m


def etkdg(mol: Chem.Mol, n: int, mmff: bool = False) -> Chem.Mol:
    """``n`` ETKDGv3 conformers (seed SEED, one thread), MMFF94-minimised if ``mmff``."""
    m = _bare(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = SEED
    params.numThreads = 1
    AllChem.EmbedMultipleConfs(m, n, params)
    if mmff and m.GetNumConformers():
        AllChem.MMFFOptimizeMoleculeConfs(m, numThreads=1, maxIters=2000)
    return m


def generator_row(weights: str):
    """``molconf.generate`` with ``weights`` and the sampler settings they carry. A model that
    starts from ETKDG gets seed SEED - 1, so its starts are the ETKDG row's own conformers
    (``etkdg_starts`` embeds with ``seed + 1``): the two rows are paired."""
    def generate(mol: Chem.Mol, n: int) -> Chem.Mol:
        import molconf

        return molconf.generate(_bare(mol), n=n, model=weights, seed=SEED - 1)
    return generate


def score_row(ensembles: dict[int, Chem.Mol], make, limit: int | None = None) -> tuple[dict, list[dict]]:
    from molconf.diffusion.evaluate import coverage_metrics, rmsd_matrix

    per_mol = []
    for index, ref in list(ensembles.items())[:limit]:
        n = 2 * ref.GetNumConformers()
        t0 = time.process_time()
        try:
            gen = make(ref, n)
            error = None if gen.GetNumConformers() else "no conformer generated"
        except Exception as err:  # a failed molecule is named, not dropped
            gen, error = None, f"{type(err).__name__}: {err}"
        cpu = time.process_time() - t0
        if error:
            per_mol.append({"index": index, "failed": error})
            continue
        per_mol.append({"index": index, "n_ref": ref.GetNumConformers(), "n_gen": gen.GetNumConformers(),
                        "cpu_s": cpu, **coverage_metrics(rmsd_matrix(ref, gen), DELTA)})
    ok = [r for r in per_mol if "failed" not in r]
    summary = {"molecules": len(per_mol), "failed": len(per_mol) - len(ok),
               "ms_per_conformer": 1000 * sum(r["cpu_s"] for r in ok) / max(1, sum(r["n_gen"] for r in ok))}
    for k in METRICS:
        v = np.array([r[k] for r in ok])
        summary[f"{k}_mean"], summary[f"{k}_median"] = (float(v.mean()), float(np.median(v))) if len(v) else (None, None)
    return summary, per_mol


def main(argv: list[str] | None = None) -> None:
    from molconf.ground_state.ensembles import ensemble_settings, read_ensembles

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ensembles", type=Path, default=ENSEMBLES,
                   help="a `molconf conformer-ensembles` folder or its exported .sdf.gz (default: the committed one)")
    p.add_argument("--generator", help="diffusion weights: adds molconf.generate's row")
    p.add_argument("--limit", type=int)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    ensembles = read_ensembles(args.ensembles)
    if not ensembles:
        raise SystemExit(f"no finished ensembles in {args.ensembles}")
    meta = ensemble_settings(args.ensembles)
    rows = {f"ETKDGv3 (seed {SEED})": lambda m, n: etkdg(m, n),
            f"ETKDGv3 + MMFF94 (seed {SEED})": lambda m, n: etkdg(m, n, mmff=True)}
    if args.generator:
        rows[f"molconf.generate ({args.generator}, seed {SEED - 1})"] = generator_row(args.generator)
    table, per_molecule = {}, {}
    for name, make in rows.items():
        table[name], per_molecule[name] = score_row(ensembles, make, args.limit)
        print(name, json.dumps(table[name]), flush=True)
    sizes = [m.GetNumConformers() for m in list(ensembles.values())[: args.limit]]
    command = "python benchmarks/ensemble_benchmark.py" + (
        "" if args.ensembles == ENSEMBLES else f" --ensembles {args.ensembles}") + (
        f" --generator {args.generator}" if args.generator else "") + (f" --limit {args.limit}" if args.limit else "")
    lines = [f"# Conformer ensembles: moses_xtb {meta['split']} ({len(sizes)} molecules)", "",
             f"Command: `{command}`. Reference: `molconf conformer-ensembles` ({meta['conformers']} ETKDG starts, seed "
             f"{meta['seed']}, draw seed {meta['draw_seed']}; GFN2-xTB minima within {meta['window_kcal']} kcal/mol, "
             f"unique at heavy-atom RMSD {meta['rmsd_dedup']} Å, mirror images distinct), {sum(sizes)} conformers, "
             f"{np.mean(sizes):.1f} per molecule (median {np.median(sizes):.0f}). Each row generates 2× the reference "
             f"count; heavy-atom GetBestRMS, δ = {DELTA} Å; COV in %, AMR in Å; mean / median over molecules; CPU "
             "ms per generated conformer, one thread. The reference ensembles are GFN2-xTB relaxations of ETKDG + "
             "MMFF94 minima (another seed), so the ETKDG + MMFF94 row shares the reference's construction up to the "
             "final relaxation: it is the row a generator has to beat, not ETKDG alone.", "",
             "| method | COV-R | AMR-R | COV-P | AMR-P | failed | ms / conformer |", "|---|---|---|---|---|---|---|"]
    for name, s in table.items():
        cells = [f"{100 * s[f'{k}_mean']:.1f} / {100 * s[f'{k}_median']:.1f}" if k.startswith("cov")
                 else f"{s[f'{k}_mean']:.3f} / {s[f'{k}_median']:.3f}" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['failed']} | {s['ms_per_conformer']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ensemble_benchmark.md").write_text("\n".join(lines) + "\n")
    (args.out / "ensemble_benchmark.json").write_text(json.dumps({"table": table, "per_molecule": per_molecule},
                                                                 indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
