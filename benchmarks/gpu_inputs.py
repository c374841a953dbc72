"""Pre-featurised batches for the GPU check (``benchmarks/gpu_check.sh``), made where RDKit is.

The GPU machine has no RDKit, so the molecules it runs are featurised here: the shipped
reference samples of the QM9 and moses_xtb test splits (``datasets/reference/``, 200 each,
reference geometries included) as dense padded batches sorted by size, each with the CPU
float32 prediction of the shipped model for that data set (``qm9_rebind``,
``moses_xtb_gtmgc``) so the GPU's outputs can be compared with it. About 4 MB::

    .venv/bin/python benchmarks/gpu_inputs.py [--out runs/gpu_inputs/gpu_inputs.pt] [--n 200]

(``runs/`` is git-ignored; name ``runs/gpu_inputs`` in the device tool's ``carry``.)
:func:`load` reads the file back with torch alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / "runs" / "gpu_inputs" / "gpu_inputs.pt"
SETS = {  # name -> (reference sample, shipped model that predicts it)
    "qm9": ("datasets/reference/qm9_test_sample.sdf", "qm9_rebind"),
    "moses_xtb": ("datasets/reference/moses_xtb_test_sample.sdf", "moses_xtb_gtmgc"),
}
PRED_CPU = "pos_pred_cpu"  # batch key of the CPU float32 prediction
FORMAT = 1
# Stored narrow (every value fits), widened again by load(): the file stays small.
_NARROW = {"atom_features": torch.uint8, "atomic_numbers": torch.uint8, "num_atoms": torch.int16}


def reference_batches(name: str, n: int | None = None, batch_size: int = 100, pe_dim: int = 32) -> list[dict]:
    """The first ``n`` molecules of a reference sample as dense batches of similar sizes (needs RDKit)."""
    from rdkit import Chem

    from molconf.data.dataset import collate_graphs
    from molconf.data.features import featurize

    mols = [m for m in Chem.SDMolSupplier(str(REPO / SETS[name][0]), removeHs=False)][:n]
    if any(m is None for m in mols):
        raise ValueError(f"{SETS[name][0]}: a record did not parse")
    graphs = sorted((featurize(m) for m in mols), key=lambda g: g.num_atoms)  # as the size-aware sampler cuts
    return [collate_graphs(graphs[i : i + batch_size], pe_dim) for i in range(0, len(graphs), batch_size)]


def build(path: Path = DEFAULT_PATH, n: int | None = 200, batch_size: int = 100) -> Path:
    """Write the batches of both sets, with the shipped models' CPU float32 predictions."""
    from molconf import constants as K
    from molconf.models import load_model
    from molconf.models.io import WEIGHTS_DIR

    data = {"format": FORMAT, "torch": str(torch.__version__), "sets": {}}
    for name, (_, model_name) in SETS.items():
        model, _ = load_model(WEIGHTS_DIR / f"{model_name}.pt")
        batches = reference_batches(name, n, batch_size, model.pe_dim)
        with torch.inference_mode():
            for b in batches:
                b[PRED_CPU] = model(b)[K.POS_PRED].float()
        data["sets"][name] = {"model": model_name, "batches": [_narrow(b) for b in batches]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def _narrow(batch: dict) -> dict:
    return {k: v.to(_NARROW[k]) if k in _NARROW else v.clone() for k, v in batch.items()}


def load(path: Path = DEFAULT_PATH, device: str | torch.device = "cpu") -> dict:
    """``{set name: {"model": shipped model name, "batches": [batch dict, ...]}}`` on ``device``,
    in the dtypes the models take (integer fields int64)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT}: rebuild it "
                         "with benchmarks/gpu_inputs.py")
    out = {}
    for name, entry in data["sets"].items():
        batches = [{k: (v.long() if k in _NARROW else v).to(device) for k, v in b.items()} for b in entry["batches"]]
        out[name] = {"model": entry["model"], "batches": batches}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_PATH)
    p.add_argument("--n", type=int, default=200, help="molecules per set (the samples hold 200)")
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = build(args.out, args.n, args.batch_size)
    data = load(path)
    for name, entry in data.items():
        sizes = [int(b["mask"].shape[1]) for b in entry["batches"]]
        print(f"{name}: {sum(int(b['mask'].sum()) for b in entry['batches'])} atoms in "
              f"{len(sizes)} batches (padded to {sizes}), predictions of {entry['model']}")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
