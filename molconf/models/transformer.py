"""The encoder-decoder conformer transformer behind ReBind and GTMGC (DESIGN §4–5)."""

from __future__ import annotations

import torch
from torch import nn

from molconf import constants as K
from molconf.models.layers import (
    AtomEncoder,
    CoordinateHead,
    GatedCoordinateHead,
    TransformerBlock,
    add_positional_encoding,
)
from molconf.models.relations import build_relations
from molconf.models.stereo import N_STEREO_RELATIONS, stereo_relations


class ConformerTransformer(nn.Module):
    """Graph transformer predicting 3D coordinates; the decoder's relations are pluggable.

    The encoder attends with the bond adjacency and its head gives an intermediate
    conformation; a relation builder turns that conformation into decoder relations
    (``"rebind"``: LJ-force rewiring; ``"gtmgc"``: row-max-subtracted distances); the
    decoder's head gives the final coordinates.

    Parameters
    ----------
    relation : str
        ``"rebind"`` or ``"gtmgc"``.
    d_model, n_heads, ffn_dim, n_encoder_layers, n_decoder_layers, dropout
        Sizes (paper: ReBind 512/8/1024/8/8, GTMGC 256/8/1024/6/6, dropout 0).
    pe_dim : int
        Width of the Laplacian encoding the batches carry (≤ d_model).
    head : str
        ``"gated"`` (ReBind: separate encoder head, gated decoder head) or ``"shared"``
        (GTMGC: one head for cache and final conformer).
    pe_sign_flip : bool
        Flip the sign of each eigenvector at random while training (eigenvector signs are
        arbitrary, so the model should not depend on them).
    relation_options : dict
        Passed to the relation builder (``k_rule``, ``h_sigma_convention``, ``detach``).
    stereo : bool
        Read the specified stereo (:mod:`molconf.models.stereo`): encoder and decoder attend
        with :data:`~molconf.models.stereo.N_STEREO_RELATIONS` more relations, so batches must
        carry the stereo tuples. ``False`` (default, and every model trained before it): the
        network cannot tell a stereocentre's R from its S.

    Examples
    --------
    >>> from molconf.data import batch_from_smiles
    >>> model = ConformerTransformer("rebind", d_model=32, n_heads=4, ffn_dim=64,
    ...                              n_encoder_layers=1, n_decoder_layers=1, pe_dim=16)
    >>> out = model(batch_from_smiles(["CCO", "c1ccccc1"], pe_dim=16))
    >>> out["pos_pred"].shape
    torch.Size([2, 12, 3])
    """

    def __init__(
        self,
        relation: str = "rebind",
        d_model: int = 256,
        n_heads: int = 8,
        ffn_dim: int = 1024,
        n_encoder_layers: int = 6,
        n_decoder_layers: int = 6,
        dropout: float = 0.0,
        pe_dim: int = 32,
        head: str | None = None,
        pe_sign_flip: bool = True,
        relation_options: dict | None = None,
        stereo: bool = False,
    ):
        super().__init__()
        # Everything needed to rebuild this model; saved beside its weights.
        self.config = dict(
            relation=relation, d_model=d_model, n_heads=n_heads, ffn_dim=ffn_dim,
            n_encoder_layers=n_encoder_layers, n_decoder_layers=n_decoder_layers, dropout=dropout,
            pe_dim=pe_dim, head=head, pe_sign_flip=pe_sign_flip, relation_options=dict(relation_options or {}),
        )
        if stereo:  # only when set: the configuration of older models stays as it was saved
            self.config["stereo"] = True
        self.stereo = stereo
        extra = N_STEREO_RELATIONS if stereo else 0
        if pe_dim > d_model:
            raise ValueError(f"pe_dim={pe_dim} must not exceed d_model={d_model}")
        head = head or ("gated" if relation == "rebind" else "shared")
        if head not in ("gated", "shared"):
            raise ValueError(f"head must be 'gated' or 'shared', got {head!r}")
        self.relation, self.head_kind, self.pe_dim, self.pe_sign_flip = relation, head, pe_dim, pe_sign_flip
        self.atom_encoder = AtomEncoder(d_model)
        self.encoder = nn.ModuleList(
            TransformerBlock(d_model, n_heads, ffn_dim, 1 + extra, dropout) for _ in range(n_encoder_layers)
        )
        self.relations = build_relations(relation, **(relation_options or {}))
        self.decoder = nn.ModuleList(
            TransformerBlock(d_model, n_heads, ffn_dim, self.relations.n_relations + extra, dropout)
            for _ in range(n_decoder_layers)
        )
        self.encoder_head = CoordinateHead(d_model)
        self.decoder_head = GatedCoordinateHead(d_model) if head == "gated" else None

    def _positional_encoding(self, pe: torch.Tensor) -> torch.Tensor:
        if self.training and self.pe_sign_flip:
            signs = torch.randint(0, 2, (pe.shape[0], 1, pe.shape[2]), device=pe.device) * 2 - 1
            pe = pe * signs.to(pe.dtype)  # (B, N, P), one sign per molecule and eigenvector
        return pe

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask, bond_adj = batch[K.MASK], batch[K.BOND_ADJ]
        pe = self._positional_encoding(batch[K.LAP_PE])
        h = add_positional_encoding(self.atom_encoder(batch[K.ATOM_FEATURES]), pe)  # (B, N, d)
        bond_rel = bond_adj.unsqueeze(1).to(h.dtype)  # (B, 1, N, N)
        stereo = stereo_relations(batch, h.dtype) if self.stereo else None  # (B, 5, N, N)
        if stereo is not None:
            bond_rel = torch.cat([bond_rel, stereo], dim=1)  # (B, 6, N, N)
        for block in self.encoder:
            h = block(h, bond_rel, mask)
        h_enc = h
        pos_enc = self.encoder_head(h_enc)  # (B, N, 3)
        rel = self.relations(pos_enc, batch[K.ATOMIC_NUMBERS], bond_adj, mask).to(h.dtype)  # (B, R, N, N)
        if stereo is not None:
            rel = torch.cat([rel, stereo], dim=1)  # (B, R + 5, N, N)
        h = add_positional_encoding(h_enc, pe)
        for block in self.decoder:
            h = block(h, rel, mask)
        if self.decoder_head is None:
            pos_pred = self.encoder_head(h)
        else:
            pos_pred = self.decoder_head(h, h_enc)
        return {K.POS_ENC: pos_enc, K.POS_PRED: pos_pred}


def rebind(**kwargs) -> ConformerTransformer:
    """ReBind at paper size (8+8 layers, d 512, 8 heads, FFN 1024); override any size."""
    cfg = dict(d_model=512, n_heads=8, ffn_dim=1024, n_encoder_layers=8, n_decoder_layers=8)
    return ConformerTransformer("rebind", **{**cfg, **kwargs})


def gtmgc(**kwargs) -> ConformerTransformer:
    """GTMGC at paper size (6+6 layers, d 256, 8 heads, FFN 1024); override any size."""
    cfg = dict(d_model=256, n_heads=8, ffn_dim=1024, n_encoder_layers=6, n_decoder_layers=6)
    return ConformerTransformer("gtmgc", **{**cfg, **kwargs})
