"""Time and peak memory vs molecule size, ReBind beside GTMGC, and a drug-sized latency check.

Molecules: a homologous series of capped alanine peptides Ac-(Ala)_k-NHMe with explicit H
(N = 12 + 10 k atoms, N from 12 to 182), with ETKDG coordinates as training targets, so
size is the only thing that changes along a curve. Models: the CPU-budget ReBind and GTMGC
(``configs/*_qm9_cpu.yaml`` sizes, same trunk; the shipped / exported weights when present,
else a seeded initialisation: cost does not depend on the weights).

For each N, side by side in one run (the two models alternate repeat by repeat, medians):

* training step (forward, loss, backward, AdamW) on a batch of ``budget // N`` copies of the
  molecule: the token budget of molconf's size-aware batching (default 4,096 atoms);
* prediction: the network forward on the same budget batch (throughput), and the whole
  ``molconf.predict`` call on one molecule (latency: featurisation, network, stereo check);
* peak extra resident memory of one training step and of one single-molecule prediction,
  each in a fresh subprocess (see ``_memory.py``).

A least-squares fit of log(cost per molecule) on log N gives the scaling exponent (fitted on
N ≥ 40, where fixed overheads no longer dominate). Finally one 51-heavy-atom drug
(erythromycin, 118 atoms with H, 18 stereocentres) is predicted by the shipped ReBind network
and embedded by RDKit ETKDG and ETKDG + MMFF on the same machine in the same run.

    nice python benchmarks/scaling.py --out benchmarks/results         # ~15 min on 2 cores
    python benchmarks/scaling.py --quick                                # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from rdkit import Chem
from rdkit.Chem import AllChem

import _memory  # noqa: E402  (benchmarks/_memory.py, beside this script)
from _timing import time_interleaved  # noqa: E402  (benchmarks/_timing.py)
import molconf.prediction
from molconf.data.dataset import collate_dense, graph_to_data
from molconf.data.features import featurize
from molconf.models import ConformerTransformer, conformer_loss, load_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ReBind": ROOT / "configs/rebind_qm9_cpu.yaml", "GTMGC": ROOT / "configs/gtmgc_qm9_cpu.yaml"}
WEIGHTS = {"ReBind": ROOT / "benchmarks/results/weights/rebind_qm9_cpu.pt",
           "GTMGC": ROOT / "benchmarks/results/weights/gtmgc_qm9_cpu.pt"}
RESIDUES = (0, 1, 2, 3, 5, 7, 10, 13, 17)  # k -> N = 12 + 10 k: 12 ... 182 atoms
QUICK_RESIDUES = (0, 3, 7)
FIT_MIN_ATOMS = 40
DRUG = ("erythromycin", "CC[C@@H]1[C@@]([C@@H]([C@H](C(=O)[C@@H](C[C@@]([C@@H]([C@H]([C@@H]([C@H](C(=O)O1)C)"
        "O[C@H]2C[C@@]([C@H]([C@@H](O2)C)O)(C)OC)C)O[C@H]3[C@@H]([C@H](C[C@H](O3)C)N(C)C)O)(C)O)C)C)O)(C)O")
DRUG_TARGET_MS = 50.0


# --------------------------------------------------------------------------- inputs
def peptide(k: int) -> Chem.Mol:
    """Ac-(Ala)_k-NHMe with explicit H and one ETKDG conformer (N = 12 + 10 k atoms)."""
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)" + "N[C@@H](C)C(=O)" * k + "NC"))
    if AllChem.EmbedMolecule(mol, randomSeed=0xF00D) != 0:
        AllChem.EmbedMolecule(mol, randomSeed=0xF00D, useRandomCoords=True)
    return mol


def build_model(name: str) -> tuple[ConformerTransformer, str]:
    """The CPU-budget network of ``name``, and where its weights came from."""
    if WEIGHTS[name].is_file():
        return load_model(WEIGHTS[name])[0], f"weights {WEIGHTS[name].relative_to(ROOT)}"
    cfg = yaml.safe_load(CONFIGS[name].read_text())["model"]["init_args"]["model"]["init_args"]
    torch.manual_seed(0)
    return ConformerTransformer(**cfg), f"seeded initialisation ({CONFIGS[name].relative_to(ROOT)})"


def budget_batch(mol: Chem.Mol, pe_dim: int, budget: int) -> tuple[dict, int]:
    copies = max(1, budget // mol.GetNumAtoms())
    item = graph_to_data(featurize(mol), pe_dim)
    return collate_dense([item] * copies), copies


# --------------------------------------------------------------------------- the calls
def train_step_call(model: ConformerTransformer, batch: dict):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)  # tiny lr: weights barely move between repeats

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        conformer_loss(model(batch), batch)["loss"].backward()
        opt.step()

    return step


def forward_call(model: ConformerTransformer, batch: dict):
    def forward():
        model.eval()
        with torch.inference_mode():
            model(batch)

    return forward


def predict_call(model: ConformerTransformer, mol: Chem.Mol, threads: int):
    bare = Chem.Mol(mol)
    bare.RemoveAllConformers()
    # the network object itself: the QM9 models' size limit (2x their largest training
    # molecule) would refuse the larger peptides, and this measures cost, not accuracy
    return lambda: molconf.prediction.predict(bare, model=model, num_threads=threads)


# --------------------------------------------------------------------------- memory child
def memory_child(model_name: str, mode: str, k: int, budget: int, threads: int) -> None:
    torch.set_num_threads(threads)
    model, _ = build_model(model_name)
    mol = peptide(k)
    if mode == "train":
        call = train_step_call(model, budget_batch(mol, model.pe_dim, budget)[0])
    else:
        call = predict_call(model, mol, threads)
    _memory.print_peak(call)


# --------------------------------------------------------------------------- analysis
def fit_exponent(n: list[int], cost: list[float], n_min: int = FIT_MIN_ATOMS) -> float | None:
    """Slope of log(cost) vs log(N) over N ≥ n_min (least squares)."""
    pts = [(a, c) for a, c in zip(n, cost) if a >= n_min and c and c > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def drug_check(models: dict, threads: int, budget_s: float) -> dict:
    name, smiles = DRUG
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    heavy = mol.GetNumHeavyAtoms()
    net = models["ReBind"]

    def etkdg(seed=[0]):
        m = Chem.Mol(mol)
        seed[0] += 1
        params = AllChem.ETKDGv3()
        params.randomSeed = seed[0]
        return m, AllChem.EmbedMolecule(m, params)

    def etkdg_mmff():
        m, ok = etkdg()
        if ok == 0:
            AllChem.MMFFOptimizeMolecule(m, maxIters=2000)

    network_only = forward_call(net, collate_dense([graph_to_data(featurize(mol), net.pe_dim)]))
    calls = {"molconf.predict (ReBind, whole API)": predict_call(net, mol, threads),
             "ReBind network forward only": network_only,
             "RDKit ETKDG": lambda: etkdg(), "RDKit ETKDG + MMFF": etkdg_mmff}
    times = time_interleaved(calls, min_repeats=5, budget_s=budget_s)
    return {"molecule": name, "smiles": smiles, "heavy_atoms": heavy, "atoms": mol.GetNumAtoms(),
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "repeats": {k: len(v) for k, v in times.items()}}


# --------------------------------------------------------------------------- main
def measure(residues, budget: int, threads: int, budget_s: float, memory: bool) -> dict:
    torch.set_num_threads(threads)
    models, sources = {}, {}
    for name in CONFIGS:
        models[name], sources[name] = build_model(name)
    rows = []
    for k in residues:
        mol = peptide(k)
        n = mol.GetNumAtoms()
        for mode in ("train", "forward", "predict"):
            calls, copies = {}, 1
            for name, model in models.items():
                if mode == "predict":
                    calls[name] = predict_call(model, mol, threads)
                else:
                    batch, copies = budget_batch(mol, model.pe_dim, budget)
                    make = train_step_call if mode == "train" else forward_call
                    calls[name] = make(model, batch)
            times = time_interleaved(calls, min_repeats=3 if mode == "train" else 5, budget_s=budget_s)
            for name in models:
                med = statistics.median(times[name])
                row = {"model": name, "mode": mode, "N": n, "residues": k, "batch": copies,
                       "repeats": len(times[name]), "ms_per_call": 1e3 * med,
                       "ms_per_molecule": 1e3 * med / copies}
                if memory and mode in ("train", "predict"):
                    row["peak_mb"] = _memory.peak_mb_in_child(
                        [__file__, "--memory-child", name, mode, str(k), str(budget), str(threads)])
                rows.append(row)
                print(f"{name:7s} {mode:8s} N={n:4d} B={copies:4d} {row['ms_per_call']:9.2f} ms/call "
                      f"{row['ms_per_molecule']:8.3f} ms/mol"
                      + (f" peak {row['peak_mb']:.1f} MB" if row.get("peak_mb") is not None else ""), flush=True)
    fits = {}
    for name in models:
        for mode in ("train", "forward", "predict"):
            sel = [r for r in rows if r["model"] == name and r["mode"] == mode]
            fits[f"{name} {mode} time/molecule"] = fit_exponent([r["N"] for r in sel],
                                                                 [r["ms_per_molecule"] for r in sel])
            if any(r.get("peak_mb") for r in sel):
                fits[f"{name} {mode} peak memory"] = fit_exponent([r["N"] for r in sel],
                                                                  [r.get("peak_mb") for r in sel])
    drug = drug_check(models, threads, budget_s)
    return {"meta": {"torch": torch.__version__, "threads": threads, "token_budget": budget,
                     "weights": sources, "load_average_after": os.getloadavg(),
                     "memory_method": _memory.METHOD if memory else None,
                     "fit": f"least squares of log(cost) on log(N), N >= {FIT_MIN_ATOMS}"},
            "rows": rows, "exponents": fits, "drug": drug}


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    lines = ["# Scaling with molecule size: ReBind vs GTMGC (CPU-budget sizes)", "",
             "Command: `nice python benchmarks/scaling.py --out benchmarks/results`. "
             f"torch {meta['torch']}, {meta['threads']} threads, token budget {meta['token_budget']} atoms per "
             f"batch; load average after the run {meta['load_average_after'][0]:.2f} (2 cores). "
             "Molecules: Ac-(Ala)_k-NHMe with explicit H. Weights: "
             + "; ".join(f"{k}: {v}" for k, v in meta["weights"].items()) + ".", "",
             "Training step = forward + loss + backward + AdamW on `budget // N` copies; forward = the "
             "network on the same batch (no gradients); predict = `molconf.predict` of one molecule "
             "(featurisation, network, stereo check). Peak MB = extra resident memory of one call, "
             "measured in a fresh process.", "",
             "| N | model | train ms/step (B) | train ms/mol | train peak MB | forward ms/mol | "
             "predict latency ms | predict peak MB |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["mode"], r["N"]): r for r in rows}
    for n in sorted({r["N"] for r in rows}):
        for name in meta["weights"]:
            t, f, p = by[(name, "train", n)], by[(name, "forward", n)], by[(name, "predict", n)]
            mb = lambda r: "n/a" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"  # noqa: E731
            lines.append(f"| {n} | {name} | {t['ms_per_call']:.0f} ({t['batch']}) | {t['ms_per_molecule']:.2f} | "
                         f"{mb(t)} | {f['ms_per_molecule']:.3f} | {p['ms_per_call']:.1f} | {mb(p)} |")
    lines += ["", f"Fitted exponents p in cost ∝ N^p ({meta['fit']}):", "", "| quantity | p |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else f'{v:.2f}'} |" for k, v in result["exponents"].items()]
    d = result["drug"]
    lines += ["", f"## A drug-sized molecule: {d['molecule']} ({d['heavy_atoms']} heavy atoms, "
                  f"{d['atoms']} with H)", "", "| method | median ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in d["median_ms"].items()]
    ours = d["median_ms"]["molconf.predict (ReBind, whole API)"]
    mmff = d["median_ms"]["RDKit ETKDG + MMFF"]
    lines += ["", f"Goal: ReBind prediction under {DRUG_TARGET_MS:.0f} ms and faster than ETKDG + MMFF: "
                  f"{ours:.1f} ms, {mmff / ours:.1f}× faster than ETKDG + MMFF — "
                  + ("met." if ours < DRUG_TARGET_MS and ours < mmff else "not met.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write scaling.{md,json,png} here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=int, default=4096, help="atoms per training / forward batch")
    p.add_argument("--seconds", type=float, default=4.0, help="timing budget per cell")
    p.add_argument("--quick", action="store_true", help="three sizes, short timing, no memory")
    p.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        name, mode, k, budget, threads = args.memory_child
        memory_child(name, mode, int(k), int(budget), int(threads))
        return
    result = measure(QUICK_RESIDUES if args.quick else RESIDUES, args.budget, args.threads,
                     0.5 if args.quick else args.seconds, memory=not args.quick and _memory.available())
    md = markdown(result)
    print("\n" + md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaling.md").write_text(md)
        (args.out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, args.out / "scaling.png")
        print(f"wrote {args.out}/scaling.{{md,json,png}}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("train", "ms_per_molecule", "training ms / molecule"),
              ("predict", "ms_per_call", "predict latency ms (1 molecule)"),
              ("train", "peak_mb", "training step peak MB"))
    for ax, (mode, key, label) in zip(axes, panels):
        for name in result["meta"]["weights"]:
            sel = [r for r in result["rows"] if r["model"] == name and r["mode"] == mode and r.get(key) is not None]
            ax.loglog([r["N"] for r in sel], [r[key] for r in sel], "o-", label=name)
        ax.set_xlabel("atoms N (with H)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
