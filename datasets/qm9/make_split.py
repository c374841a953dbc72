"""Write the fixed QM9 split (110,000 / 10,000 / rest, seed 42) over qm9pack's molecule ids.

The split is over the data set's own ``Index`` values, not over converted molecules, so it
does not move if bond perception changes; molecules that fail conversion are simply absent
from the cache (see ``dropped.csv``). Run from the repository root::

    python datasets/qm9/make_split.py
"""

import csv
from pathlib import Path

import numpy as np

from molconf.data.qm9 import QM9_NUM_MOLECULES, QM9PACK_FILES, qm9pack_data_dir

SEED, N_TRAIN, N_VAL = 42, 110_000, 10_000


def main() -> None:
    csv.field_size_limit(1 << 30)
    ids = []
    for fname in QM9PACK_FILES:
        with open(qm9pack_data_dir() / fname, newline="") as fh:
            ids.extend(int(row["Index"]) for row in csv.DictReader(fh))
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    assert len(ids) == QM9_NUM_MOLECULES, len(ids)
    perm = np.random.default_rng(SEED).permutation(ids)
    parts = {"train": perm[:N_TRAIN], "val": perm[N_TRAIN : N_TRAIN + N_VAL], "test": perm[N_TRAIN + N_VAL :]}
    out = Path(__file__).parent
    for name, part in parts.items():
        np.save(out / f"split_{name}.npy", np.sort(part).astype(np.int32))
        print(name, len(part))


if __name__ == "__main__":
    main()
