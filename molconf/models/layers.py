"""Building blocks of the conformer transformer (DESIGN §4–5).

Shapes: B molecules, N atoms (padded), d model width, H heads, R relations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from molconf.data.features import ATOM_FEATURE_DIMS


class AtomEncoder(nn.Module):
    """Sum of one embedding per categorical atom feature, plus the Laplacian encoding.

    The Laplacian eigenvectors (width P ≤ d) are added to the first P embedding dimensions.

    Examples
    --------
    >>> enc = AtomEncoder(d_model=16)
    >>> x = torch.zeros(2, 5, 9, dtype=torch.long)
    >>> enc(x).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, d_model: int, feature_dims: tuple[int, ...] = ATOM_FEATURE_DIMS):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, d_model) for n in feature_dims)
        for t in self.tables:
            nn.init.xavier_uniform_(t.weight)

    def forward(self, atom_features: torch.Tensor) -> torch.Tensor:
        out = 0
        for i, table in enumerate(self.tables):
            out = out + table(atom_features[..., i])  # (B, N, d)
        return out


def add_positional_encoding(h: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Add ``pe`` (B, N, P) to the first P channels of ``h`` (B, N, d)."""
    p = pe.shape[-1]
    if p > h.shape[-1]:
        raise ValueError(f"positional encoding width {p} exceeds model width {h.shape[-1]}")
    return torch.cat([h[..., :p] + pe, h[..., p:]], dim=-1)


class RelationalAttention(nn.Module):
    """Multi-head attention whose scores are rescaled by relation matrices.

    Per head h: ``S = Q Kᵀ``, ``Ŝ = S + S ⊙ Σ_r β_{r,h} A_r``, ``softmax(Ŝ / √d_head)`` over
    real keys only (padded keys get −inf, unlike the ReBind reference, which fills 0 and
    so lets padding take attention weight).
    """

    def __init__(self, d_model: int, n_heads: int, n_relations: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.beta = nn.Parameter(torch.zeros(n_relations, n_heads))  # β_{r,h}
        nn.init.normal_(self.beta, std=0.1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, relations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, N, dh) each
        scores = q @ k.transpose(-1, -2)  # (B, H, N, N)
        scale = torch.einsum("rh,brij->bhij", self.beta, relations)  # (B, H, N, N)
        scores = (scores + scores * scale) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = self.dropout(torch.softmax(scores, dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)  # (B, N, d)
        return self.out(out)


class TransformerBlock(nn.Module):
    """Post-LN block: ``LN(X + Attn(X))``, then ``LN(X + FFN(X))`` with a GELU FFN."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, n_relations: int, dropout: float = 0.0):
        super().__init__()
        self.attn = RelationalAttention(d_model, n_heads, n_relations, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, relations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.dropout(self.attn(h, relations, mask)))
        return self.norm2(h + self.dropout(self.ffn(h)))


class CoordinateHead(nn.Module):
    """MLP d → 3d → GELU → 3 from atom embeddings to coordinates."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, 3 * d_model), nn.GELU(), nn.Linear(3 * d_model, 3))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp[:-1](h)  # (B, N, 3d)
        # The output layer runs in float32 even under bf16 autocast: bf16 keeps 8 mantissa
        # bits, which would round coordinates of a few Å to steps of ~0.03 Å.
        with torch.autocast(h.device.type, enabled=False):
            return self.mlp[-1](hidden.to(torch.promote_types(hidden.dtype, torch.float32)))  # (B, N, 3)


class GatedCoordinateHead(nn.Module):
    """ReBind's decoder head: a per-atom 2-way softmax gate mixes decoder and encoder
    embeddings, and an MLP maps the mixture to coordinates."""

    def __init__(self, d_model: int):
        super().__init__()
        self.score_dec = nn.Linear(d_model, 1)
        self.score_enc = nn.Linear(d_model, 1)
        self.head = CoordinateHead(d_model)

    def forward(self, h_dec: torch.Tensor, h_enc: torch.Tensor) -> torch.Tensor:
        gate = torch.softmax(torch.cat([self.score_dec(h_dec), self.score_enc(h_enc)], -1), -1)  # (B, N, 2)
        mixed = gate[..., :1] * h_dec + gate[..., 1:] * h_enc  # (B, N, d)
        return self.head(mixed)
