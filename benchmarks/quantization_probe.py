"""Would dynamic int8 quantisation of the linear layers speed up the default model enough?

The network's float32 forward vs the same network after
``torch.ao.quantization.quantize_dynamic`` (int8 weights, per-batch int8 activations, every
``nn.Linear``), timed side by side on featurised QM9 test batches of 100 (size-sorted, one
torch thread), and how far int8 moves the predicted interatomic distances (real atoms only)
compared with the model's own error against the DFT geometry.

    nice python benchmarks/quantization_probe.py --n 1000
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import numpy as np
import torch

import molconf.prediction
from molconf import constants as K
from molconf.data import load_qm9
from molconf.data.dataset import collate_dense, graph_to_data
from molconf.data.features import featurize
from molconf.data.splits import load_split

from _timing import time_interleaved


def distance_gaps(batches, first, second) -> np.ndarray:
    """|d_ij(first) − d_ij(second)| over real atom pairs i < j of every molecule."""
    gaps = []
    for batch, a, b in zip(batches, first, second):
        for m, n in enumerate(batch[K.NUM_ATOMS].tolist()):
            iu = np.triu_indices(n, 1)
            da = torch.cdist(a[m, :n].double(), a[m, :n].double()).numpy()[iu]
            db = torch.cdist(b[m, :n].double(), b[m, :n].double()).numpy()[iu]
            gaps.append(np.abs(da - db))
    return np.concatenate(gaps)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="seeded sample of the QM9 test split")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    store = load_qm9()
    rows, _ = store.positions_of(load_split("qm9", "test"))
    rows = np.sort(np.random.default_rng(42).choice(rows, size=min(args.n, len(rows)), replace=False))
    mols = sorted((store.mol(int(r)) for r in rows.tolist()), key=lambda m: m.GetNumAtoms())
    network = molconf.prediction.resolve_model("default").network.eval()
    batches = [collate_dense([graph_to_data(featurize(m), network.pe_dim) for m in mols[s : s + 100]])
               for s in range(0, len(mols), 100)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(network, {torch.nn.Linear}, dtype=torch.qint8)

    def forward(net):
        with torch.inference_mode():
            return [net(b)[K.POS_PRED] for b in batches]

    times = time_interleaved({"float32": lambda: forward(network), "int8": lambda: forward(int8)},
                             min_repeats=3, budget_s=0)
    fp32, q8 = forward(network), forward(int8)
    refs = [b[K.POS] for b in batches]  # the DFT geometry (the molecules keep their conformers)
    t32, t8 = statistics.median(times["float32"]), statistics.median(times["int8"])
    gap = distance_gaps(batches, fp32, q8)
    print(f"{len(mols)} QM9 test molecules, batches of 100, 1 thread; medians of {len(times['int8'])} rounds")
    print(f"network forward: float32 {t32:.2f} s, int8 {t8:.2f} s, speed-up {t32 / t8:.2f}x")
    print(f"int8 vs float32 predicted distances: mean |change| {gap.mean():.4f} Å, 95th percentile "
          f"{np.percentile(gap, 95):.4f} Å")
    err = distance_gaps(batches, fp32, refs)
    print(f"float32 model vs DFT distances (i < j, real atoms): mean |error| {err.mean():.4f} Å")


if __name__ == "__main__":
    main()
