"""Distance-matrix loss: rotation- and translation-invariant by construction."""

from __future__ import annotations

import torch

from molconf import constants as K


def distance_mae(pos_pred: torch.Tensor, pos_true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |D − D̂| over all real atom pairs of the batch (diagonal included), a scalar."""
    pair = (mask.unsqueeze(1) & mask.unsqueeze(2)).to(pos_pred.dtype)  # (B, N, N)
    err = (torch.cdist(pos_pred, pos_pred) - torch.cdist(pos_true, pos_true)).abs()
    return (err * pair).sum() / pair.sum().clamp_min(1)


def conformer_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(L_enc + L_dec) / 2 with each term the distance MAE (DESIGN §4, §5)."""
    l_enc = distance_mae(out[K.POS_ENC], batch[K.POS], batch[K.MASK])
    l_dec = distance_mae(out[K.POS_PRED], batch[K.POS], batch[K.MASK])
    return {"loss": 0.5 * (l_enc + l_dec), "loss_enc": l_enc, "loss_dec": l_dec}
