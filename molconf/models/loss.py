"""Distance-matrix loss: rotation- and translation-invariant by construction.

DESIGN §4–5: ``(L_enc + L_dec) / 2``, each the distance MAE. Two optional terms (issue #25),
off by default so the published objective stays the default:

* ``local_weight``: the MAE over bonded (1-2) and angle (1-3) pairs only, added with this weight —
  those few pairs are a small share of all N² pairs, so the plain loss barely sees them;
* ``stereo_weight``: :func:`molconf.models.stereo.stereo_loss` (handedness at specified
  stereocentres and stereo double bonds), which no distance loss can teach.
"""

from __future__ import annotations

import torch

from molconf import constants as K
from molconf.models.stereo import stereo_loss


def distance_mae(pos_pred: torch.Tensor, pos_true: torch.Tensor, mask: torch.Tensor,
                 pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |D − D̂| over all real atom pairs of the batch (diagonal included), a scalar;
    over ``pairs`` (a (B, N, N) bool) only, if given."""
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)  # (B, N, N)
    if pairs is not None:
        pair = pair & pairs
    pair = pair.to(pos_pred.dtype)
    err = (torch.cdist(pos_pred, pos_pred) - torch.cdist(pos_true, pos_true)).abs()
    return (err * pair).sum() / pair.sum().clamp_min(1)


def local_pairs(bond_adj: torch.Tensor) -> torch.Tensor:
    """Atom pairs one or two bonds apart (B, N, N), bool.

    >>> adj = torch.tensor([[[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]], dtype=torch.bool)
    >>> local_pairs(adj)[0].int().tolist()  # a chain of four atoms
    [[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]]
    """
    a = bond_adj.float()
    two = (a @ a) > 0  # (B, N, N)
    eye = torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    return (bond_adj | two) & ~eye


def conformer_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], local_weight: float = 0.0,
                   stereo_weight: float = 0.0, stereo_on: str = "both") -> dict[str, torch.Tensor]:
    """(L_enc + L_dec) / 2 with each term the distance MAE (DESIGN §4, §5), plus the optional
    local term on both conformers and the stereo term on both (``stereo_on="both"``) or on the
    final one only (``"decoder"``: the encoder's conformer only feeds the decoder's relations)."""
    if stereo_on not in ("both", "decoder"):
        raise ValueError(f"stereo_on must be 'both' or 'decoder', got {stereo_on!r}")
    pos, mask = batch[K.POS], batch[K.MASK]
    terms = {"enc": out[K.POS_ENC], "dec": out[K.POS_PRED]}
    losses = {f"loss_{k}": distance_mae(p, pos, mask) for k, p in terms.items()}
    total = 0.5 * (losses["loss_enc"] + losses["loss_dec"])
    if local_weight:
        local = local_pairs(batch[K.BOND_ADJ])
        losses["loss_local"] = 0.5 * sum(distance_mae(p, pos, mask, local) for p in terms.values())
        total = total + local_weight * losses["loss_local"]
    if stereo_weight:
        on = terms.values() if stereo_on == "both" else [terms["dec"]]
        losses["loss_stereo"] = sum(stereo_loss(p, batch) for p in on) / len(on)
        total = total + stereo_weight * losses["loss_stereo"]
    return {"loss": total, **losses}
