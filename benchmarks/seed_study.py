"""ReBind vs GTMGC with error bars: every seed's raw network on one test split (issue #25, item 2).

Trains come from ``benchmarks/seed_study.sh`` (runs ``<relation>_s<seed>`` under ``--runs``);
this script scores each run's final checkpoint on the test split, as the network itself
outputs it (``predict(fix_stereo=False, repair_bonds=False, precision="float32")``: no stereo
repair, no bond guard) and, for each run, through the default ``predict`` call too. Columns:

* D-MAE / D-RMSE (pooled over all atom pairs), C-RMSD (heavy atoms, ``GetBestRMS`` without
  reflection), stereo (share of molecules whose every specified centre and double bond matches);
* distance MAE by how many bonds apart the pair is: 1 (bond lengths), 2 (the 1-3 distances
  that set angles), and more than 4 (non-bonded contacts, where the ReBind paper says
  rewiring by Lennard-Jones forces matters);
* impossible bonds: share of molecules with a bond outside ``molconf.bond_guard``'s bounds.

Then mean ± sd over seeds per relation, and paired differences per seed (same seed = same
initialisation and batch order; ``PAIRS``), mean ± sd::

    python benchmarks/seed_study.py --runs runs/seed_study [--dataset qm9] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
from rdkit import Chem

RESULTS = Path(__file__).parent / "results"
RUN_NAME = re.compile(r"^(?P<relation>[a-z][a-z0-9]*)_s(?P<seed>\d+)$")
METRICS = ("d_mae", "d_rmse", "c_rmsd", "stereo_consistency", "mae_1", "mae_2", "mae_far", "bad_bonds", "n_failed")
LABELS = {"d_mae": "D-MAE", "d_rmse": "D-RMSE", "c_rmsd": "C-RMSD", "stereo_consistency": "stereo",
          "mae_1": "1-2 MAE", "mae_2": "1-3 MAE", "mae_far": ">4 bonds MAE", "bad_bonds": "impossible bond",
          "n_failed": "failed"}
FAR = 4
# paired differences reported (first − second, same seed): the relations, the GTMGC ablation, bf16
# training against float32, all 60 Laplacian eigenvectors against 32
PAIRS = (("rebind", "gtmgc"), ("gtmgc", "gtmgcdetached"), ("rebindbf16", "rebind"), ("rebindpe60", "rebind"))


def score(refs: list[Chem.Mol], preds: list[Chem.Mol | None]) -> dict:
    """The columns above for one set of predictions (failures counted, excluded from means)."""
    from molconf.bond_guard import impossible_bonds
    from molconf.metrics import aggregate, molecule_metrics, pooled_local_errors

    rows = [molecule_metrics(ref, pred, i) for i, (ref, pred) in enumerate(zip(refs, preds))]
    bad = [bool(impossible_bonds(pred)) for pred in preds if pred is not None]
    s = aggregate(rows)
    mae = {key: e / n if n else float("nan")
           for key, (e, n) in pooled_local_errors(zip(refs, preds), hops=(1, 2), beyond=FAR).items()}
    return {"d_mae": s["d_mae"], "d_rmse": s["d_rmse"], "c_rmsd": s["c_rmsd"],
            "stereo_consistency": s["stereo_consistency"], "mae_1": mae[1], "mae_2": mae[2],
            "mae_far": mae[f">{FAR}"], "bad_bonds": float(np.mean(bad)) if bad else float("nan"),
            "n_molecules": s["n_molecules"], "n_failed": s["n_failed"]}


def runs_in(folder: Path) -> dict[tuple[str, int], Path]:
    """``{(relation, seed): final checkpoint}`` of the finished runs in ``folder``."""
    out = {}
    for run in sorted(folder.iterdir()):
        m = RUN_NAME.match(run.name)
        if m and run.is_dir() and (run / "FINISHED").exists():
            out[(m["relation"], int(m["seed"]))] = run / "checkpoints" / "last.ckpt"
    return out


def mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def summarise(results: dict[str, dict]) -> list[str]:
    """Markdown tables: per run, mean ± sd per relation, paired ReBind − GTMGC."""
    lines = []
    for output in ("raw network", "predict"):
        rows = {k: r[output] for k, r in results.items()}
        lines += [f"### {output}", "", "| run | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for name, r in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |")
        by_relation: dict[str, dict[int, dict]] = {}
        for name, r in rows.items():
            m = RUN_NAME.match(name)
            by_relation.setdefault(m["relation"], {})[int(m["seed"])] = r
        for relation, seeds in sorted(by_relation.items()):
            lines.append(f"| **{relation}, mean ± sd of {len(seeds)} seeds** | "
                         + " | ".join(mean_sd([s[m] for s in seeds.values()]) for m in METRICS) + " |")
        for a, b in PAIRS:
            paired = sorted(by_relation.get(a, {}).keys() & by_relation.get(b, {}).keys())
            if paired:
                lines.append(f"| **{a} − {b}, paired by seed ({len(paired)})** | " + " | ".join(
                    mean_sd([by_relation[a][s][m] - by_relation[b][s][m] for s in paired])
                    for m in METRICS) + " |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    import torch

    import molconf
    from molconf.data.load import load_dataset, load_dataset_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs/seed_study"))
    p.add_argument("--dataset", default="qm9")
    p.add_argument("--limit", type=int, help="only the first N test molecules (file order)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default=None, help="output file stem (default seed_study_<dataset>)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = runs_in(args.runs)
    if not runs:
        raise SystemExit(f"no finished runs <relation>_s<seed> in {args.runs}")
    store = load_dataset(args.dataset)
    rows, _ = store.positions_of(load_dataset_split(args.dataset, "test"))
    refs = [store.mol(int(r)) for r in rows[: args.limit].tolist()]
    bare = [Chem.Mol(ref, True) for ref in refs]  # quick copy: graph and stereo tags, no conformer
    stem = args.stem or f"seed_study_{args.dataset}"
    cache = args.runs / f"{stem}_scores.json"  # per run, keyed by checkpoint and molecules: a rerun scores new runs only
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    results: dict[str, dict] = {}
    for (relation, seed), ckpt in sorted(runs.items()):
        name = f"{relation}_s{seed}"
        key = f"{ckpt.stat().st_mtime_ns}:{ckpt.stat().st_size}:{len(refs)}"
        if cached.get(name, {}).get("key") == key:
            results[name] = cached[name]["result"]
            print(name, "scored before", flush=True)
            continue
        results[name] = {"checkpoint": str(ckpt)}
        for output, kwargs in (("raw network", dict(fix_stereo=False, repair_bonds=False, precision="float32")),
                               ("predict", {})):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.process_time()
                preds = molconf.predict(bare, model=str(ckpt), num_threads=1, **kwargs)
                cpu = time.process_time() - t0
            results[name][output] = {**score(refs, preds), "cpu_ms": 1000 * cpu / len(bare)}
            print(name, output, {k: round(v, 4) for k, v in results[name][output].items()}, flush=True)
        cached[name] = {"key": key, "result": results[name]}
        cache.write_text(json.dumps(cached, indent=1) + "\n")
    command = (f"python benchmarks/seed_study.py --runs {args.runs} --dataset {args.dataset}"
               + (f" --limit {args.limit}" if args.limit else ""))
    lines = [f"# ReBind vs GTMGC over seeds: {args.dataset} test split ({len(refs):,} molecules)", "",
             f"Training: `bash benchmarks/seed_study.sh` (d_model 128, 4+4 layers, configs/seed_study_{args.dataset}.yaml's "
             "schedule; seeds as named, each seeding initialisation and batch order). Scoring: `" + command
             + "`. Raw network: float32, no stereo repair, no bond guard; predict: the default call. Distance MAE "
             f"by bonds apart: 1 (bonds), 2 (angles), more than {FAR} (non-bonded contacts); impossible bond: share "
             "of molecules with a bond outside molconf.bond_guard's bounds; failed: molecules predict could not "
             "return (a geometry its bond guard could not make physical), excluded from the means. sd: sample "
             "standard deviation over seeds.",
             "", *summarise(results)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
