"""Does the network get handedness right by itself? Raw output vs ``predict`` on the QM9 test split (issue #25).

For each model (the shipped ``qm9_rebind`` and the final checkpoints of fine-tuning runs), on the
same QM9 test molecules:

* **raw**: the network's own output (``predict(fix_stereo=False, repair_bonds=False)``): stereo
  consistency with the reference (every specified centre and double bond, ``molconf.metrics``),
  C-RMSD (heavy atoms, ``GetBestRMS`` without reflection), D-MAE;
* **predict**: the default call (stereo repair, bond guard), the same metrics.

The fine-tuning runs are two extra epochs from the shipped weights, with and without
``configs/stereo.yaml`` (one seed each)::

    molconf fit --config configs/rebind_qm9_small_cpu.yaml --config configs/finetune_qm9_rebind.yaml \\
        --trainer.default_root_dir runs/ft_control
    molconf fit --config configs/rebind_qm9_small_cpu.yaml --config configs/finetune_qm9_rebind.yaml \\
        --config configs/stereo.yaml --trainer.default_root_dir runs/ft_stereo
    molconf fit ... --config configs/stereo.yaml --model.init_args.stereo_weight 0.2 \\
        --trainer.default_root_dir runs/ft_stereo02               # (the same first two configs)
    molconf fit ... --config configs/stereo.yaml --model.init_args.stereo_on decoder \\
        --trainer.default_root_dir runs/ft_stereo_dec
    python benchmarks/stereo_finetune.py --model shipped=qm9_rebind \\
        --model control=runs/ft_control/checkpoints/last.ckpt --model stereo=runs/ft_stereo/checkpoints/last.ckpt \\
        --model stereo-0.2=runs/ft_stereo02/checkpoints/last.ckpt \\
        --model stereo-decoder=runs/ft_stereo_dec/checkpoints/last.ckpt

Each run took ~20 min with one thread on this machine (OMP_NUM_THREADS=1, two runs side by side).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from rdkit import Chem

RESULTS = Path(__file__).parent / "results"


def evaluate(refs: list[Chem.Mol], preds: list[Chem.Mol | None]) -> dict:
    from molconf.metrics import aggregate, molecule_metrics

    rows = [molecule_metrics(r, p, i) for i, (r, p) in enumerate(zip(refs, preds))]
    summary = aggregate(rows)
    return {k: summary[k] for k in ("d_mae", "c_rmsd", "stereo_consistency", "n_molecules", "n_failed")}


def main(argv: list[str] | None = None) -> None:
    import torch

    import molconf
    from molconf.data.load import load_dataset, load_dataset_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=WEIGHTS",
                   help="a shipped model's name or a weights / checkpoint file, under a row name")
    p.add_argument("--limit", type=int, help="only the first N test molecules")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    store = load_dataset("qm9")
    rows, _ = store.positions_of(load_dataset_split("qm9", "test"))
    refs = [store.mol(int(r)) for r in rows[: args.limit].tolist()]
    bare = []
    for ref in refs:
        m = Chem.Mol(ref)
        m.RemoveAllConformers()
        bare.append(m)
    results = {}
    for spec in args.model:
        name, weights = spec.split("=", 1)
        for label, kwargs in (("raw network", dict(fix_stereo=False, repair_bonds=False)), ("predict", {})):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.process_time()
                preds = molconf.predict(bare, model=weights, num_threads=1, **kwargs)
                seconds = time.process_time() - t0
            results[f"{name}, {label}"] = {**evaluate(refs, preds), "cpu_ms": 1000 * seconds / len(bare),
                                           "weights": weights}
            print(f"{name}, {label}: {results[f'{name}, {label}']}", flush=True)
    lines = ["# Handedness from the network itself (QM9 test split)", "",
             f"`python benchmarks/stereo_finetune.py {' '.join(f'--model {m}' for m in args.model)}"
             + (f" --limit {args.limit}" if args.limit else "") + f"` — {len(refs):,} test molecules (file order), "
             "one seed per fine-tuning run; stereo: share of molecules whose every specified stereocentre and "
             "double bond matches the reference; C-RMSD: heavy atoms, no reflection; CPU ms per molecule, one thread.",
             "", "| model, output | stereo | C-RMSD (Å) | D-MAE (Å) | failed | CPU ms |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['stereo_consistency']:.4f} | {r['c_rmsd']:.4f} | {r['d_mae']:.4f} | "
                     f"{r['n_failed']} | {r['cpu_ms']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stereo_finetune.md").write_text("\n".join(lines) + "\n")
    (args.out / "stereo_finetune.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
