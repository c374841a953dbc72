"""Pooled D-MAE / D-RMSE as a ``torchmetrics.Metric`` (Lightning validation and test).

Kept apart from :mod:`molconf.metrics` so that predicting never imports torchmetrics.
"""

from __future__ import annotations

import torch
import torchmetrics

from molconf.metrics import _SUM_KEYS, _finalize, distance_errors


class PooledDistanceMetrics(torchmetrics.Metric):
    """torchmetrics version of :class:`DistanceMetricAccumulator` (DDP-synced by summing).

    ``compute()`` returns a dict of scalar tensors keyed like the accumulator's.

    >>> m = PooledDistanceMetrics()
    >>> true = torch.tensor([[[0., 0, 0], [1, 0, 0]]])
    >>> m.update(torch.zeros(1, 2, 3), true, torch.ones(1, 2, dtype=torch.bool))
    >>> {k: round(float(v), 4) for k, v in m.compute().items()}  # doctest: +NORMALIZE_WHITESPACE
    {'d_mae': 0.5, 'd_rmse': 0.7071, 'd_mae_per_mol': 0.5, 'd_rmse_per_mol': 0.7071,
     'n_molecules': 1.0}
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for k in _SUM_KEYS:
            self.add_state(k, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pos_pred: torch.Tensor, pos_true: torch.Tensor, mask: torch.Tensor) -> None:
        abs_sum, sq_sum, n_pairs = (t.detach().double() for t in distance_errors(
            pos_pred.detach().double(), pos_true.detach().double(), mask))
        self.abs_err_sum += abs_sum.sum()
        self.sq_err_sum += sq_sum.sum()
        self.n_pairs += n_pairs.sum()
        self.mae_mol_sum += (abs_sum / n_pairs).sum()
        self.rmse_mol_sum += (sq_sum / n_pairs).sqrt().sum()
        self.n_mol += n_pairs.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        out = _finalize({k: getattr(self, k) for k in _SUM_KEYS})
        return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in out.items()}
