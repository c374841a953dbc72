"""Handedness in the network: what it reads (stereo relation channels) and what it is taught
(signed-volume and cis/trans hinge losses) — issue #25, item 3.

A distance loss is blind to reflection: a molecule and its mirror image have the same distance
matrix, so a network trained on distances alone gets each stereocentre right by chance. Two
pieces, both off by default (the shipped models predate them):

* **input**: :func:`stereo_relations` turns the batch's
  :class:`~molconf.data.features.StereoTuples` into :data:`N_STEREO_RELATIONS` extra attention
  relations (``ConformerTransformer(stereo=True)``): channel ``k`` links each stereocentre with
  its ``k``-th neighbour by CIP rank, valued ±1 by the centre's handedness in that order; the last channel links the two
  reference atoms of a stereo double bond, +1 (Z) or −1 (E). Every value is a function of the
  graph, so the network can read handedness the way it reads bonds;
* **loss**: :func:`stereo_loss` penalises, at each specified stereocentre, a signed volume of the
  opposite sign to the reference's (hinge with a margin), and at each stereo double bond a
  cis/trans arrangement opposite to the reference's.
"""

from __future__ import annotations

import torch

from molconf import constants as K

N_STEREO_RELATIONS = 5  # neighbours 1-4 of a stereocentre by CIP rank, stereo double bond ends


def _require(batch: dict[str, torch.Tensor]) -> None:
    if K.STEREO_CENTRES not in batch:
        raise KeyError("this model reads stereo: batches need the stereo tuples (ConformerDataModule(stereo=True), "
                       "or featurize(mol, stereo=True) before collate_graphs)")


def stereo_relations(batch: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stereo relation channels ``(B, 5, N, N)`` of a batch (symmetric, 0 where nothing is specified).

    Examples
    --------
    >>> from molconf.data import batch_from_smiles
    >>> rel = stereo_relations(batch_from_smiles(["C[C@H](N)O"], pe_dim=4, stereo=True))
    >>> rel.shape, float(rel[0, :4].abs().sum())  # one centre, four neighbours, both directions
    (torch.Size([1, 5, 11, 11]), 8.0)
    """
    _require(batch)
    mask = batch[K.MASK]
    b, n = mask.shape
    rel = torch.zeros(b, N_STEREO_RELATIONS, n, n, dtype=dtype, device=mask.device)  # (B, 5, N, N)
    c, sign = batch[K.STEREO_CENTRES], batch[K.STEREO_CENTRE_SIGNS].to(dtype)  # (S, 6), (S,)
    for k in range(4):
        ok = c[:, 2 + k] >= 0
        mol, centre, nbr = c[ok, 0], c[ok, 1], c[ok, 2 + k]
        rel[mol, k, centre, nbr] = sign[ok]
        rel[mol, k, nbr, centre] = sign[ok]
    d, dsign = batch[K.STEREO_BONDS], batch[K.STEREO_BOND_SIGNS].to(dtype)  # (T, 5), (T,)
    rel[d[:, 0], 4, d[:, 1], d[:, 4]] = dsign
    rel[d[:, 0], 4, d[:, 4], d[:, 1]] = dsign
    return rel


def signed_volumes(pos: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``det[u1, u2, u3]`` at each stereocentre, ``u_k`` the unit vector from the centre to its
    ``k``-th neighbour by CIP rank: in [−1, 1], about ±0.8 for a tetrahedral centre. ``(S,)``"""
    p = pos[centres[:, 0]]  # (S, N, 3): each row's molecule
    rows = torch.arange(len(centres), device=pos.device)
    centre = p[rows, centres[:, 1]]  # (S, 3)
    u = [torch.nn.functional.normalize(p[rows, centres[:, 2 + k]] - centre, dim=-1, eps=1e-6) for k in range(3)]
    return torch.linalg.det(torch.stack(u, dim=-2))  # (S,)


def cis_trans(pos: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
    """Cosine of the dihedral ``a-b=c-d`` at each stereo double bond: +1 cis, −1 trans. ``(T,)``"""
    p = pos[bonds[:, 0]]  # (T, N, 3)
    rows = torch.arange(len(bonds), device=pos.device)
    a, b, c, d = (p[rows, bonds[:, 1 + k]] for k in range(4))
    axis = torch.nn.functional.normalize(c - b, dim=-1, eps=1e-6)
    u, v = a - b, d - c
    u = u - (u * axis).sum(-1, keepdim=True) * axis  # components across the double bond
    v = v - (v * axis).sum(-1, keepdim=True) * axis
    return torch.nn.functional.cosine_similarity(u, v, dim=-1, eps=1e-6)


def stereo_loss(pos: torch.Tensor, batch: dict[str, torch.Tensor], margin: float = 0.3) -> torch.Tensor:
    """Mean hinge ``max(0, margin − s_ref · s_pred)`` over the batch's specified stereocentres
    (signed volumes) and stereo double bonds (dihedral cosines), the reference signs taken from
    the batch's coordinates; 0 for a batch with neither. A scalar.

    Examples
    --------
    >>> from molconf.data import batch_from_mols
    >>> from rdkit import Chem
    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)O"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=1)
    >>> batch = batch_from_mols([m], pe_dim=4, stereo=True)
    >>> float(stereo_loss(batch["pos"], batch)), float(stereo_loss(-batch["pos"], batch)) > 0.9
    (0.0, True)
    """
    _require(batch)
    ref = batch[K.POS].to(pos.dtype)
    terms = []
    centres = batch[K.STEREO_CENTRES]
    centres = centres[centres[:, 4] >= 0]  # three neighbours at least (a lone pair is the fourth)
    if len(centres):
        want = torch.sign(signed_volumes(ref, centres))
        terms.append(torch.relu(margin - want * signed_volumes(pos, centres)))
    bonds = batch[K.STEREO_BONDS]
    if len(bonds):
        want = torch.sign(cis_trans(ref, bonds))
        terms.append(torch.relu(margin - want * cis_trans(pos, bonds)))
    if not terms:
        return pos.sum() * 0.0  # keeps the graph (and DDP's gradient buckets) intact
    return torch.cat(terms).mean()
