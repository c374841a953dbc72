"""Test-split benchmark of our models beside RDKit ETKDG (+MMFF) (and published numbers), per data set.

One script for every data set with trained models; a :class:`DatasetSpec` says what differs
(models and their weights, which one is shipped in the package, export metadata, published
rows, file names, model-card text):

- ``qm9``: the random QM9 test split; writes ``benchmarks/results/qm9.{md,csv}`` and the card
  of the default model ``molconf/weights/qm9_rebind.md``;
- ``moses_xtb``: the Bemis–Murcko scaffold test split of the GFN2-xTB MOSES data; writes
  ``benchmarks/results/moses_xtb.{md,csv}`` and the shipped drug-like model's card
  (``molconf/weights/moses_xtb_<model>.md``).

Reproduce a table from the committed weights (minutes on 2 cores)::

    python benchmarks/model_benchmark.py [--dataset qm9]
    molconf baselines --dataset moses_xtb --split test --out benchmarks/results   # RDKit rows first
    python benchmarks/model_benchmark.py --dataset moses_xtb

Retrain first (hours; resumable), then export the training runs' final checkpoints::

    bash benchmarks/train_cpu_models.sh && python benchmarks/model_benchmark.py --export
    MODELS="rebind_moses_xtb_cpu gtmgc_moses_xtb_cpu" bash benchmarks/train_cpu_models.sh
    python benchmarks/model_benchmark.py --dataset moses_xtb --export

Writes ``<stem>.{md,csv}``, per-atom-degree errors (``<stem>_degrees.json``) and an
error-vs-size plot (``<stem>_error_vs_size.png``). RDKit rows come from ``molconf baselines``
output (``<dataset>_test_rdkit*``), measured on the same molecules. The shipped model's card
is rewritten only by a full run (no ``--limit``). ``--weights KEY=PATH`` evaluates (or, with
``--export``, writes) other weights than the committed ones; ``--data-root`` / ``--cache-dir``
point at another copy of the data (tests, stand-ins).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

import molconf.prediction
from molconf import constants as K
from molconf.data import ConformerDataset, collate_dense
from molconf.data.load import load_dataset, load_dataset_split
from molconf.metrics import aggregate, mol_with_coords, molecule_metrics
from molconf.models import load_model, save_model
from molconf.models.io import with_sha256_line

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PACKAGE_WEIGHTS = Path(molconf.prediction.__file__).parent / "weights"
RDKIT_NAMES = {"etkdg": "RDKit ETKDG", "etkdg+mmff": "RDKit ETKDG + MMFF",
               "etkdg_retry": "RDKit ETKDG, retry", "etkdg_retry+mmff": "RDKit ETKDG, retry + MMFF"}
_PERIODIC = Chem.GetPeriodicTable()


@dataclass(frozen=True)
class ModelSpec:
    name: str  # row name in the table
    run: str  # training-run folder (under --runs); its config is configs/<run>.yaml
    weights: Path  # committed weights


@dataclass(frozen=True)
class DatasetSpec:
    """What the benchmark of one data set needs to know."""

    dataset: str  # molconf.data.load name
    title: str  # table heading (and plot title)
    stem: str  # results file stem: <stem>.md, <stem>.csv, ...
    rdkit_stem: str  # stem of the `molconf baselines` output in benchmarks/results
    models: dict[str, ModelSpec]  # key -> model, in table order
    shipped: str  # key of the model shipped in the package: its card is written, `predict` row uses it
    shipped_on_validation: bool  # shipped because its final val D-MAE is lowest (checked at export)
    shipped_role: str  # how the tables name the shipped model ("the default model")
    predict_label: str  # model named in the `molconf.predict` row
    train_command: str  # how the runs were trained (tables, error messages)
    trained_on: str  # export metadata
    card: Callable[..., str]  # the shipped model's card text
    # export metadata; None: computed from the training split (elements present, largest size
    # with H and in heavy atoms)
    elements: tuple[int, ...] | None = None
    max_atoms: int | None = None
    max_heavy_atoms: int | None = None
    published: tuple[tuple[str, float, float, float], ...] = ()  # (name, D-MAE, D-RMSE, C-RMSD), not ours
    time_column: bool = False  # also a "ms / mol" column
    notes: tuple[str, ...] = ()  # extra lines under the table's command line

    @property
    def baselines_command(self) -> str:
        dataset = "" if self.dataset == "qm9" else f" --dataset {self.dataset}"
        return f"molconf baselines{dataset} --split test"


def rel(path: Path) -> str:
    """``path`` relative to the repository if inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def element_list(elements) -> str:
    return ", ".join(_PERIODIC.GetElementSymbol(int(z)) for z in elements)


def architecture(cfg: dict) -> str:
    kind = {"rebind": "ReBind encoder-decoder graph transformer (LJ-force rewiring, degree-compensating K)",
            "gtmgc": "GTMGC encoder-decoder graph transformer (row-max-subtracted distance relation)"}
    return kind.get(cfg["relation"], f"{cfg['relation']} graph transformer")


# --- model cards ---------------------------------------------------------------------
def size_line(max_atoms: int | None, max_heavy_atoms: int | None) -> str:
    """The card's size sentence: the training data's largest molecule and predict's limits."""
    if max_atoms is None:
        return "not recorded in the weights' metadata."
    if max_heavy_atoms is None:
        return (f"trained on molecules of ≤ {max_atoms} atoms (with H); `predict` refuses molecules of "
                f"more than {2 * max_atoms} atoms.")
    return (f"trained on molecules of ≤ {max_atoms} atoms (with H) and ≤ {max_heavy_atoms} heavy atoms;\n"
            f"  `predict` prefers a model whose training data covers both counts and refuses molecules of "
            f"more than\n  {2 * max_atoms} atoms or {2 * max_heavy_atoms} heavy atoms.")


def qm9_card(*, row, via_predict, weights, n_test, meta, model, spec, run, data_root) -> str:
    cfg = model.config
    max_atoms = meta.get("max_atoms", spec.max_atoms)
    elements = element_list(meta.get("elements", spec.elements))
    size = size_line(max_atoms, meta.get("max_heavy_atoms", spec.max_heavy_atoms))
    return f"""# Model card: `{weights.stem}` (molconf's default model)

- **Task**: one ground-state conformer per molecule from its 2D graph (explicit H).
- **Architecture**: {architecture(cfg)},
  {cfg['n_encoder_layers']}+{cfg['n_decoder_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads,
  FFN {cfg['ffn_dim']}, Laplacian encoding width {cfg['pe_dim']}; {row['params']:,} parameters; weights stored as float16.
- **Data**: QM9 (B3LYP/6-31G(2df,p) geometries, from the `qm9pack` wheel), bonds perceived with RDKit;
  trained on the committed train split (`datasets/qm9/split_train.npy`, 110,000 ids), validated each
  epoch on the val split; the shipped weights are those at the end of the schedule (no selection).
- **Training**: `molconf fit --config configs/{run}.yaml` (via `bash benchmarks/train_cpu_models.sh`);
  checkpoint `{meta.get('checkpoint')}` after {meta.get('global_step')} optimiser steps
  (epoch {meta.get('epoch')}), {(meta.get('train_seconds') or 0) / 3600:.2f} h of wall time on 2 CPU cores.
- **Test metrics** (QM9 test split, {n_test} molecules; `python benchmarks/model_benchmark.py --dataset qm9`):
  D-MAE {row['d_mae']:.4f} Å, D-RMSE {row['d_rmse']:.4f} Å, C-RMSD {row['c_rmsd']:.4f} Å,
  stereo consistency {row['stereo_consistency']:.4f} (raw network output). Through `molconf.predict`
  (stereo check and repair): D-MAE {via_predict['d_mae']:.4f} Å, C-RMSD {via_predict['c_rmsd']:.4f} Å,
  stereo consistency {via_predict['stereo_consistency']:.4f}, {via_predict['mol_per_s']:.0f} molecules/s on 2 CPU threads
  (network in {via_predict['precision']}: `precision="auto"` uses bfloat16 matrix products where the CPU has them in
  hardware, float32 elsewhere; `benchmarks/results/predict_speed.md` compares both).
- **Supported elements**: {elements}. **Size**: {size}
- **Out of scope**: the network was trained on neutral molecules only; `predict` gives charged
  inputs their neutral form's geometry and salts their largest organic fragment (the report says so,
  `molconf.standardize`). Radicals are refused with a reason. Molecules much larger or chemically unlike QM9 (drug-sized) get low-quality geometries.
"""


def moses_build_report(data_root) -> tuple[Path, dict]:
    """``build_report.json`` beside the data set's SDF (``datasets/moses_xtb`` by default)."""
    from molconf.data.moses_xtb import BUILD_REPORT, default_moses_xtb_sdf

    path = Path(data_root or default_moses_xtb_sdf()).parent / BUILD_REPORT
    return path, (json.loads(path.read_text()) if path.is_file() else {})


def moses_xtb_card(*, row, via_predict, weights, n_test, meta, model, spec, run, data_root) -> str:
    cfg = model.config
    report_path, rep = moses_build_report(data_root)
    proto, src, split = rep.get("protocol", {}), rep.get("source", {}), rep.get("split", {})
    tblite = rep.get("versions", {}).get("tblite", "?")
    if "partial_build" in rep:
        pb = rep["partial_build"]
        build_note = (f"**partial build**: the build was stopped early and {len(pb['shards_merged'])} of its "
                      f"{pb['shards_total']} shards were merged, so the molecules are the lowest source rows "
                      "of the sample")
    else:
        build_note = "complete build (every shard merged)"
    if src.get("n"):
        sample = f"a seeded random sample of {src['n']:,} of its {src.get('total', 0):,} rows, seed {src.get('seed')}"
    else:
        sample = f"all {src.get('total', '?')} rows"
    num = lambda v: f"{v:,}" if isinstance(v, int) else "?"  # noqa: E731
    built = (f"{num(rep.get('succeeded'))} of {num(rep.get('molecules'))} attempted molecules built, "
             f"{num(rep.get('failed'))} failed, listed in `failures.csv`")
    ff = ", ".join(f"{k} for {v}" for k, v in rep.get("forcefield_used", {}).items()) or "?"
    protocol = (
        f"ETKDGv3 ({proto.get('num_conformers')} conformers)\n"
        f"  → {proto.get('forcefield', '?').upper()} ({ff}; ≤ {proto.get('ff_max_iters')} iterations)\n"
        f"  → GFN2-xTB (tblite {tblite}, gas phase, electronic temperature "
        f"{proto.get('electronic_temperature', 0):g} K)"
        f" {proto.get('optimizer')} optimisation\n  to fmax {proto.get('fmax')} eV/Å (≤ {proto.get('max_steps')} "
        f"steps) of the {proto.get('num_xtb')} lowest force-field conformers"
    )
    parts = " / ".join(str(split.get(k, "?")) for k in ("train", "val", "test"))
    kind = split.get("kind", "Bemis-Murcko scaffold").replace("-", "–")
    init_from = meta.get("init_from")
    start = f"fine-tuned from `{init_from}`" if init_from else "trained from random initialisation"
    # the wall time of this run alone (not its QM9 pre-training), on a 2-core machine that may
    # have been training the other architecture beside it (train_cpu_models.sh JOBS=2)
    hours = f"{(meta.get('train_seconds') or 0) / 3600:.2f} h of wall time on a 2-core machine" + (
        " (this run only; the README says what shared the cores)" if init_from else "")
    size = size_line(meta.get("max_atoms"), meta.get("max_heavy_atoms"))
    vp = via_predict
    return f"""# Model card: `{weights.stem}` (molconf's drug-like model)

- **Task**: one ground-state conformer per molecule from its 2D graph (explicit H), for drug-like molecules.
- **Architecture**: {architecture(cfg)},
  {cfg['n_encoder_layers']}+{cfg['n_decoder_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads,
  FFN {cfg['ffn_dim']}, Laplacian encoding width {cfg['pe_dim']}; {row['params']:,} parameters; weights stored
  as float16.
- **Data**: `moses_xtb` ({num(rep.get('merged', {}).get('molecules'))} molecules): drug-like molecules of the
  MOSES benchmark set ({src.get('name', 'MOSES')}, `moses/dataset/data/train.csv.gz` of the `molsets` wheel,
  MIT licence; {sample}),
  each with one GFN2-xTB ground state built by `molconf build-xtb` ({built};
  {build_note}).
  Protocol (`{rel(report_path)}`, key `{rep.get('protocol_key', '?')}`): {protocol}; kept: the lowest
  GFN2-xTB energy among candidates that converged and kept their bonds and stereo. A local conformer search,
  not a global one (no CREST): for flexible molecules the reference is a low GFN2-xTB minimum, not necessarily
  the lowest. Bond orders are the input SMILES'. {kind} split ({parts} molecules, seed {split.get('seed')};
  whole scaffold groups per part, so test scaffolds are not in training); trained on the train split,
  validated each epoch on the val split; the shipped weights are the last checkpoint the run wrote (no
  epoch selection); shipped instead of the other architecture trained at the same budget because its final
  validation D-MAE was lower.
- **Training**: `molconf fit --config configs/{run}.yaml` ({start});
  checkpoint `{meta.get('checkpoint')}` after {meta.get('global_step')} optimiser steps
  (epoch {meta.get('epoch')}), {hours}.
- **Test metrics** (scaffold test split, {n_test} molecules; `python benchmarks/model_benchmark.py --dataset
  moses_xtb`, table in `benchmarks/results/{spec.stem}.md` beside RDKit ETKDG and ETKDG + MMFF):
  D-MAE {row['d_mae']:.4f} Å, D-RMSE {row['d_rmse']:.4f} Å, C-RMSD {row['c_rmsd']:.4f} Å,
  stereo consistency {row['stereo_consistency']:.4f} (raw network output). Through `molconf.predict`
  (stereo check and repair): D-MAE {vp['d_mae']:.4f} Å, C-RMSD {vp['c_rmsd']:.4f} Å,
  stereo consistency {vp['stereo_consistency']:.4f}, {1000 / vp['mol_per_s']:.1f} ms per molecule
  ({vp['mol_per_s']:.0f} molecules/s) on 2 CPU threads (network in {vp['precision']}).
- **Supported elements**: {element_list(meta.get('elements') or [])} (those in the training molecules).
  **Size**: {size}
- **Out of scope**: the network was trained on neutral molecules only; `predict` gives charged
  inputs their neutral form's geometry and salts their largest organic fragment (the report says so,
  `molconf.standardize`). Radicals are refused with a reason, as are elements not listed above. MOSES keeps neutral lead-like molecules of
  250–350 Da with few rotatable bonds and no large rings (checked on the first 1,000 built molecules: all
  within 250–350 Da, ≤ 8 rotatable bonds by RDKit's count, rings of ≤ 7 atoms): larger, more flexible or
  macrocyclic molecules are outside the training data and get lower-quality geometries.
"""


# --- data sets -----------------------------------------------------------------------
# Which moses_xtb model is shipped in the package (molconf/weights/moses_xtb_<key>.pt); the
# other one's weights stay in benchmarks/results/weights (molconf.prediction.DEFAULT_MODELS names
# the shipped file too). Chosen on validation, not test: the lower val/d_mae at the end of the
# equal-budget schedule (30 epochs on the 9,999-molecule set: GTMGC 0.546 Å, ReBind 0.550 Å;
# metrics.csv of each run).
MOSES_XTB_SHIPPED = "gtmgc"


def _model(name: str, run: str, shipped_as: str | None) -> ModelSpec:
    """A trained model; its weights are ``molconf/weights/<shipped_as>.pt`` if it is the one
    shipped in the package, else ``benchmarks/results/weights/<run>.pt``."""
    weights = PACKAGE_WEIGHTS / f"{shipped_as}.pt" if shipped_as else RESULTS / "weights" / f"{run}.pt"
    return ModelSpec(name, run, weights)


def _moses_xtb_model(key: str, name: str) -> ModelSpec:
    return _model(name, f"{key}_moses_xtb_cpu", f"moses_xtb_{key}" if key == MOSES_XTB_SHIPPED else None)


# Which QM9 model is molconf's default (molconf/weights/qm9_rebind.pt); the others' weights
# stay in benchmarks/results/weights. The d_model-128 ReBind: on CPUs without bfloat16 the
# network is most of predict's time, and at a quarter of the d-256 model's matrix-product work
# it keeps D-MAE below ETKDG + MMFF (benchmarks/results/predict_speed.md, qm9.md).
QM9_SHIPPED = "rebind_small"


def _qm9_model(key: str, name: str, run: str) -> ModelSpec:
    return _model(name, run, "qm9_rebind" if key == QM9_SHIPPED else None)


SPECS: dict[str, DatasetSpec] = {
    "qm9": DatasetSpec(
        dataset="qm9", title="QM9 test split", stem="qm9", rdkit_stem="qm9_test_rdkit",
        models={
            "rebind": _qm9_model("rebind", "ReBind (CPU budget)", "rebind_qm9_cpu"),
            "gtmgc": _qm9_model("gtmgc", "GTMGC (CPU budget)", "gtmgc_qm9_cpu"),
            "rebind_small": _qm9_model("rebind_small", "ReBind d128 (CPU budget)", "rebind_qm9_small_cpu"),
        },
        shipped=QM9_SHIPPED, shipped_on_validation=False,  # chosen for speed (comment at QM9_SHIPPED)
        shipped_role="the default model", predict_label="default model",
        train_command="bash benchmarks/train_cpu_models.sh",
        trained_on="QM9 train split (datasets/qm9/split_train.npy)",
        card=qm9_card, elements=(1, 6, 7, 8, 9), max_atoms=29, max_heavy_atoms=9,
        published=(  # DESIGN §3: published QM9 test numbers (D-MAE, D-RMSE, C-RMSD), not ours
            ("GINE", 0.357, 0.669, 0.693), ("GATv2", 0.339, 0.659, 0.666), ("GPS", 0.326, 0.640, 0.666),
            ("GTMGC", 0.264, 0.470, 0.367), ("WGFormer", 0.227, 0.422, 0.206),
        ),
    ),
    "moses_xtb": DatasetSpec(
        dataset="moses_xtb", title="MOSES GFN2-xTB scaffold test split", stem="moses_xtb",
        rdkit_stem="moses_xtb_test_rdkit",
        models={"rebind": _moses_xtb_model("rebind", "ReBind (CPU budget)"),
                "gtmgc": _moses_xtb_model("gtmgc", "GTMGC (CPU budget)")},
        shipped=MOSES_XTB_SHIPPED, shipped_on_validation=True, shipped_role="the model shipped in the package",
        predict_label={"rebind": "ReBind", "gtmgc": "GTMGC"}[MOSES_XTB_SHIPPED],
        train_command="molconf fit --config configs/{rebind,gtmgc}_moses_xtb_cpu.yaml",
        trained_on="MOSES GFN2-xTB scaffold train split (datasets/moses_xtb/split_train.npy)",
        card=moses_xtb_card, time_column=True,
        notes=("Reference geometries: GFN2-xTB ground states of drug-like MOSES molecules (`datasets/moses_xtb`, "
               "protocol and counts in its `build_report.json`); Bemis–Murcko scaffold split, so no test "
               "scaffold occurs in training.",),
    ),
}


# --- evaluation ------------------------------------------------------------------------
def final_checkpoint(run: Path, train_command: str = "bash benchmarks/train_cpu_models.sh") -> Path:
    """The end-of-training weights (``last.ckpt``): equal budget means equal steps, so the
    models are compared where their schedules end, not at a validation-picked step."""
    last = Path(run) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"no {last}: train first ({train_command})")
    return last


def final_val_d_mae(run: Path) -> float:
    """The last validation D-MAE a training run logged (its CSV logger's ``metrics.csv``)."""
    files = sorted((Path(run) / "csv").glob("version_*/metrics.csv"))
    if not files:
        raise FileNotFoundError(f"no {Path(run) / 'csv'}/version_*/metrics.csv: was {run} trained with the CSV logger?")
    with open(files[-1], newline="") as fh:
        values = [float(r[f"val/{K.D_MAE}"]) for r in csv.DictReader(fh) if r.get(f"val/{K.D_MAE}")]
    if not values:
        raise ValueError(f"{files[-1]} has no val/{K.D_MAE} values")
    return values[-1]


def check_shipped_choice(spec: DatasetSpec, models: dict[str, ModelSpec], runs: Path) -> None:
    """Stop when validation no longer picks the shipped model: which model ships is chosen on
    the validation split at the end of equal schedules (never on test), and is written in code
    (``spec.shipped``, ``molconf.prediction.DEFAULT_MODELS``), so a retrained pair can disagree."""
    if not spec.shipped_on_validation or spec.shipped not in models or len(models) < 2:
        return
    val = {k: final_val_d_mae(runs / m.run) for k, m in models.items()}
    best = min(val, key=val.get)
    print("final val D-MAE: " + ", ".join(f"{models[k].name} {v:.4f} Å" for k, v in val.items()))
    if best != spec.shipped:
        raise SystemExit(
            f"validation now picks {models[best].name} (val D-MAE {val[best]:.4f} vs {val[spec.shipped]:.4f} Å) "
            f"but {spec.dataset} ships {models[spec.shipped].name}: switch the shipped model (this module's "
            f"{spec.dataset.upper()}_SHIPPED and molconf.prediction.DEFAULT_MODELS), or pass --keep-shipped to "
            "export anyway and say why")


def train_coverage(store, rows) -> tuple[list[int], int, int]:
    """Elements present in the given molecules, their largest atom count (with H) and largest
    heavy-atom count."""
    elements: set[int] = set()
    max_heavy = 0
    for r in rows.tolist():
        z = store.graph(r).atomic_numbers
        elements.update(np.unique(z).tolist())
        max_heavy = max(max_heavy, int(np.count_nonzero(z > 1)))
    return sorted(elements), int(store.num_atoms[rows].max(initial=0)), max_heavy


def init_from_of(ckpt: Path) -> str | None:
    """The ``init_from`` (fine-tuning start) a Lightning checkpoint was trained with, if any."""
    hp = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    return hp.get("init_from")


def predict_split(model, store, rows, pe_dim, batch_size=100):
    """Predicted coordinates per row, and the model's wall time (featurised batches in)."""
    ds = ConformerDataset(store, rows, pe_dim)
    order = np.argsort(ds.sizes, kind="stable")  # similar sizes together, as in training
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    preds, seconds = {}, 0.0
    with torch.no_grad():
        for b in batches:
            batch = collate_dense([ds[int(i)] for i in b])
            t = time.perf_counter()
            out = model(batch)[K.POS_PRED]
            seconds += time.perf_counter() - t
            for j, i in enumerate(b):
                n = int(batch[K.NUM_ATOMS][j])
                preds[int(rows[i])] = out[j, :n].double().numpy()
    return preds, seconds


def atom_degree_errors(ref_pos, pred_pos, degrees):
    """Per-atom mean |D_ij − D̂_ij| over j, grouped by atom degree (H counted)."""
    d_ref = np.linalg.norm(ref_pos[:, None] - ref_pos[None], axis=-1)
    d_pred = np.linalg.norm(pred_pos[:, None] - pred_pos[None], axis=-1)
    row = np.abs(d_ref - d_pred).mean(1)
    return {int(k): row[degrees == k].tolist() for k in np.unique(degrees)}


def evaluate_model(name, path, store, rows):
    model, meta = load_model(path)
    torch.set_num_threads(2)
    preds, seconds = predict_split(model, store, rows, model.pe_dim)
    per_mol, by_degree = [], defaultdict(list)
    for row in rows.tolist():
        ref = store.mol(row)
        r = molecule_metrics(ref, mol_with_coords(ref, preds[row]), index=int(store.mol_ids[row]))
        r["method"] = name
        per_mol.append(r)
        deg = np.array([a.GetDegree() for a in ref.GetAtoms()])
        for k, errs in atom_degree_errors(ref.GetConformer().GetPositions(), preds[row], deg).items():
            by_degree[k].extend(errs)
    summary = aggregate(per_mol)
    summary.update(method=name, params=sum(p.numel() for p in model.parameters()),
                   train_hours=(meta.get("train_seconds") or float("nan")) / 3600,
                   steps=meta.get("global_step"),
                   mol_per_s=len(rows) / seconds, weights=str(path))
    return summary, per_mol, {k: float(np.mean(v)) for k, v in sorted(by_degree.items())}


def evaluate_predict_api(path, store, rows, name="molconf.predict (default model + stereo repair)"):
    """End to end through :func:`molconf.prediction.predict` (graph in, Mol out), as a user runs it:
    featurisation, network, stereo check and repair included in the time. ``path`` names the
    model explicitly (a benchmark evaluates one model, not ``predict``'s automatic choice)."""
    refs = [store.mol(int(r)) for r in rows.tolist()]
    inputs = []
    for ref in refs:
        m = Chem.Mol(ref)
        m.RemoveAllConformers()
        inputs.append(m)
    t = time.perf_counter()
    preds, report = molconf.prediction.predict(inputs, model=path, batch_size=100, num_threads=2,
                                            return_report=True)
    seconds = time.perf_counter() - t
    per_mol = []
    for row, ref, pred in zip(rows.tolist(), refs, preds):
        r = molecule_metrics(ref, pred, index=int(store.mol_ids[row]))
        r["method"] = name
        per_mol.append(r)
    summary = aggregate(per_mol)
    repaired = sum(1 for st in report.stereo.values() if st.fixed_by)
    summary.update(method=f"{name[:-1]}, {report.precision})", mol_per_s=len(rows) / seconds,
                   stereo_repaired=repaired, stereo_checked=len(report.stereo), precision=report.precision)
    return summary, per_mol


def read_rdkit(stem: Path):
    table = json.loads(stem.with_suffix(".json").read_text())["table"]
    per_mol = []
    with gzip.open(f"{stem}_per_molecule.csv.gz", "rt") as fh:
        for r in csv.DictReader(fh):
            r["failed"] = r["failed"] == "True"
            for k in ("n_atoms", "index"):
                r[k] = int(r[k])
            for k in ("d_mae", "d_rmse", "c_rmsd", "stereo_consistency", "abs_err_sum", "sq_err_sum",
                      "n_pairs", "seconds"):
                r[k] = float(r[k])
            per_mol.append(r)
    rows = []
    for t in table:
        t = dict(t)
        t["mol_per_s"] = 1.0 / t["seconds_per_mol"]
        t["method"] = RDKIT_NAMES[t["method"]]
        rows.append(t)
    for r in per_mol:
        r["method"] = RDKIT_NAMES[r["method"]]
    return rows, per_mol


def size_plot(per_mol, out: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in per_mol})
    for m in methods:
        rs = [r for r in per_mol if r["method"] == m and not r["failed"]]
        sizes = np.array([r["n_atoms"] for r in rs])
        abs_sum = np.array([r["abs_err_sum"] for r in rs])
        n_pairs = np.array([r["n_pairs"] for r in rs])
        xs = np.unique(sizes)
        ys = [abs_sum[sizes == x].sum() / n_pairs[sizes == x].sum() for x in xs]
        keep = [np.sum(sizes == x) >= 10 for x in xs]  # skip sizes with too few molecules
        ax.plot(xs[keep], np.array(ys)[keep], marker="o", ms=3, label=m)
    ax.set_xlabel("atoms (with H)")
    ax.set_ylabel("D-MAE pooled per size (Å)")
    ax.set_title(f"{title}: error vs molecule size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def export(spec: DatasetSpec, models: dict[str, ModelSpec], runs: Path, store, train_rows) -> None:
    """Each training run's final checkpoint → its weights file (float16, with metadata)."""
    if spec.elements is None or spec.max_atoms is None or spec.max_heavy_atoms is None:
        elements, max_atoms, max_heavy_atoms = train_coverage(store, train_rows)
    else:
        elements, max_atoms, max_heavy_atoms = list(spec.elements), spec.max_atoms, spec.max_heavy_atoms
    for m in models.values():
        ckpt = final_checkpoint(runs / m.run, spec.train_command)
        model, meta = load_model(ckpt)
        meta.update(name=m.weights.stem, elements=elements, max_atoms=max_atoms, max_heavy_atoms=max_heavy_atoms,
                    trained_on=spec.trained_on, checkpoint=ckpt.name)
        if (init_from := init_from_of(ckpt)) is not None:
            meta["init_from"] = init_from
        save_model(model, m.weights, meta, half=True)
        print(f"exported {m.name} ({ckpt}) -> {m.weights} ({m.weights.stat().st_size / 1e6:.1f} MB); "
              f"elements {element_list(elements)}, max_atoms {max_atoms}, max_heavy_atoms {max_heavy_atoms}")


def parse_weights(items: list[str], known) -> dict[str, Path]:
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--weights {item!r}: expected KEY=PATH with KEY one of {sorted(known)}")
        out[key] = Path(path)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="qm9", choices=sorted(SPECS))
    p.add_argument("--export", action="store_true",
                   help="first export the final checkpoint of each training run to the committed weights")
    p.add_argument("--export-only", action="store_true", help="export, then stop (no evaluation)")
    p.add_argument("--keep-shipped", action="store_true",
                   help="export even if the runs' final validation D-MAE picks another model than the shipped one")
    p.add_argument("--runs", default="runs", help="folder holding the training runs (RUNS of train_cpu_models.sh)")
    p.add_argument("--limit", type=int, help="only the first N test molecules (quick look)")
    p.add_argument("--models", nargs="+", choices=sorted({k for s in SPECS.values() for k in s.models}), default=None,
                   help="which of our models to evaluate (default: all of the data set's)")
    p.add_argument("--weights", action="append", default=[], metavar="KEY=PATH",
                   help="use this weights file for model KEY instead of the committed one (repeatable)")
    p.add_argument("--data-root", default=None, help="the data set's source (as `molconf baselines --data-root`)")
    p.add_argument("--cache-dir", default=None, help="parent folder of data caches")
    p.add_argument("--split-dir", default=None, help="folder with split_*.npy (default: the data set's)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--rdkit", default=None,
                   help="stem of `molconf baselines` output (default: benchmarks/results/<dataset>_test_rdkit)")
    args = p.parse_args(argv)
    spec = SPECS[args.dataset]
    out = Path(args.out)
    overrides = parse_weights(args.weights, spec.models)
    all_models = {k: ModelSpec(m.name, m.run, overrides.get(k, m.weights)) for k, m in spec.models.items()}
    keys = args.models or list(all_models)
    if unknown := sorted(set(keys) - set(all_models)):
        p.error(f"--models {unknown}: {args.dataset} has {sorted(all_models)}")
    models = {k: all_models[k] for k in keys}

    store = None
    if args.export or args.export_only:
        if not args.keep_shipped:
            check_shipped_choice(spec, all_models, Path(args.runs))
        store = load_dataset(spec.dataset, root=args.data_root, cache_dir=args.cache_dir)
        train_rows, _ = store.positions_of(load_dataset_split(spec.dataset, "train", args.split_dir, args.data_root))
        export(spec, models, Path(args.runs), store, train_rows)
    if args.export_only:
        return
    rdkit_stem = Path(args.rdkit) if args.rdkit else RESULTS / spec.rdkit_stem
    if not rdkit_stem.with_suffix(".json").is_file():
        raise SystemExit(f"no {rdkit_stem}.json: run `{spec.baselines_command} --out {rel(rdkit_stem.parent)}` first "
                         "(or pass --rdkit STEM)")
    store = store or load_dataset(spec.dataset, root=args.data_root, cache_dir=args.cache_dir)
    rows, _ = store.positions_of(load_dataset_split(spec.dataset, "test", args.split_dir, args.data_root))
    if args.limit:
        rows = rows[: args.limit]
    table, per_mol, degrees = [], [], {}
    for m in models.values():
        s, pm, deg = evaluate_model(m.name, m.weights, store, rows)
        table.append(s)
        per_mol.extend(pm)
        degrees[m.name] = deg
    via_predict = None
    if spec.shipped in models:
        via_predict, pm = evaluate_predict_api(models[spec.shipped].weights, store, rows,
                                               f"molconf.predict ({spec.predict_label} + stereo repair)")
        table.append(via_predict)
        per_mol.extend(pm)
    rd_table, rd_per_mol = read_rdkit(rdkit_stem)
    wanted = {int(store.mol_ids[r]) for r in rows}
    rd_per_mol = [r for r in rd_per_mol if r["index"] in wanted]
    if {r["index"] for r in rd_per_mol} != wanted:
        warnings.warn(f"{rdkit_stem}: RDKit results cover {len({r['index'] for r in rd_per_mol})} of the "
                      f"{len(wanted)} evaluated molecules (rerun `{spec.baselines_command}`)", stacklevel=1)
    if args.limit:  # recompute the RDKit rows on the same subset
        rd_table = []
        for name in RDKIT_NAMES.values():
            rs = [r for r in rd_per_mol if r["method"] == name]
            s = aggregate(rs)
            s.update(method=name, mol_per_s=1.0 / np.mean([r["seconds"] for r in rs]))
            rd_table.append(s)
    table += rd_table
    per_mol += rd_per_mol
    command = "python benchmarks/model_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write(out, spec, all_models, table, per_mol, degrees, len(rows), command.strip(), rdkit_stem.name,
          committed=not overrides)
    if not args.limit and via_predict is not None:
        shipped = models[spec.shipped]
        row = next(r for r in table if r["method"] == shipped.name)
        write_model_card(spec, row, via_predict, shipped, len(rows), args.data_root)


def write_model_card(spec: DatasetSpec, row: dict, via_predict: dict, shipped: ModelSpec, n_test: int,
                     data_root=None) -> Path:
    """The shipped model's card (``<weights>.md``), with the test metrics just measured."""
    model, meta = load_model(shipped.weights)
    text = spec.card(row=row, via_predict=via_predict, weights=shipped.weights, n_test=n_test, meta=meta,
                     model=model, spec=spec, run=shipped.run, data_root=data_root)
    path = shipped.weights.with_suffix(".md")
    path.write_text(with_sha256_line(text, shipped.weights))  # the hash every load checks (molconf.models.io)
    return path


def write(out: Path, spec: DatasetSpec, all_models: dict[str, ModelSpec], table, per_mol, degrees, n, command,
          rdkit_name: str, committed: bool = True):
    out.mkdir(parents=True, exist_ok=True)
    stem = spec.stem
    for r in table:
        r["ms_per_mol"] = 1000.0 / r["mol_per_s"] if r.get("mol_per_s") else float("nan")
    cols = ["method", "d_mae", "d_rmse", "c_rmsd", "stereo_consistency", "n_failed", "n_molecules",
            "params", "steps", "train_hours", "mol_per_s"] + (["ms_per_mol"] if spec.time_column else [])
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    fmt = lambda v, f: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, f)  # noqa: E731
    weights = " and ".join(f"`{rel(m.weights)}`" + (f" = {spec.shipped_role}" if k == spec.shipped else "")
                           for k, m in all_models.items())
    time_head, time_rule = (" ms / mol |", "---|") if spec.time_column else ("", "")
    lines = [
        f"# {spec.title} ({n} molecules)", "",
        f"Command: `{command}` (models: {'committed ' if committed else ''}weights, {weights}, trained by "
        f"`{spec.train_command}`; RDKit rows: `{spec.baselines_command}`). "
        "Errors over successfully predicted molecules; failures counted.",
        "Speed: model rows = network forward on batches of 100 featurised molecules, 2 threads; the "
        "`molconf.predict` row = the whole API from RDKit Mol to Mol (featurisation, network, stereo "
        "check and repair), batches of 100, 2 threads; RDKit = one process, per molecule "
        f"(see {rdkit_name}.md). Model rows' stereo = raw network output; the predict row after repair.",
        *spec.notes, "",
        "| method | D-MAE (Å) | D-RMSE (Å) | C-RMSD (Å) | stereo | failed | params | steps | train (h) | mol/s |"
        + time_head,
        "|---|---|---|---|---|---|---|---|---|---|" + time_rule,
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['d_mae']:.4f} | {r['d_rmse']:.4f} | {r['c_rmsd']:.4f} | "
            f"{r['stereo_consistency']:.4f} | {r['n_failed']} | {fmt(r.get('params'), ',')} | "
            f"{fmt(r.get('steps'), ',')} | {fmt(r.get('train_hours'), '.2f')} | {fmt(r.get('mol_per_s'), '.0f')} |"
            + (f" {fmt(r['ms_per_mol'], '.1f')} |" if spec.time_column else ""))
    for name, dm, dr, cr in spec.published:
        lines.append(f"| {name} (published, not ours) | {dm:.3f} | {dr:.3f} | {cr:.3f} | – | – | – | – | – | – |"
                     + (" – |" if spec.time_column else ""))
    ks = sorted({k for d in degrees.values() for k in d})
    lines += ["", "## Error by atom degree (mean over atoms of the row-wise distance MAE, Å)", "",
              "| method | " + " | ".join(f"degree {k}" for k in ks) + " |"]
    lines.append("|---|" + "---|" * len(ks))
    for name, d in degrees.items():
        lines.append(f"| {name} | " + " | ".join(fmt(d.get(k), ".4f") for k in ks) + " |")
    lines += ["", f"![error vs size]({stem}_error_vs_size.png)", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    (out / f"{stem}_degrees.json").write_text(json.dumps(degrees, indent=1) + "\n")
    size_plot(per_mol, out / f"{stem}_error_vs_size.png", spec.title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
