"""Padding waste of size-aware batching vs random batching on the QM9 splits (batch 100).

    python benchmarks/qm9_padding.py
"""

import numpy as np

from molconf.lightning import ConformerDataModule


def random_batching_padding(sizes: np.ndarray, batch_size: int, seed: int = 0) -> float:
    perm = np.random.default_rng(seed).permutation(len(sizes))
    batches = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    return 1.0 - sizes.sum() / sum(len(b) * sizes[b].max() for b in batches)


def main() -> None:
    dm = ConformerDataModule(batch_size=100)
    size_aware = dm.padding_report()
    print("padded share of atom slots, batch 100 | size-aware | random")
    for part, value in size_aware.items():
        sizes = dm.store.num_atoms[dm.rows[part]]
        print(f"{part:5s} | {value:.4f} | {random_batching_padding(sizes, 100):.4f}")


if __name__ == "__main__":
    main()
