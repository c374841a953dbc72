"""The conformer transformer written directly: the slow, obvious reference of the benchmarks.

The model of :class:`molconf.models.ConformerTransformer` (DESIGN §4–5; same sizes, relations,
heads and loss), written the way the published ReBind and GTMGC codes write it: separate Q,
K and V projections; one dense (B, H, N, N) product per relation, added in a Python loop;
padding masked in the padded score matrix; Lennard-Jones forces for every pair of the batch
and a full sort of every row to pick each atom's top-K_i edges. Nothing is fused, no compiled
op is used, and it imports nothing from molconf but the UFF table and the batch keys.

``benchmarks/bench_direct.py`` times it against ours, and ``tests/test_direct_baseline.py``
checks, with the weights copied across (:func:`from_ours`), that both compute the same
function. Two choices differ from the published codes, both so that the outputs can be
compared: padded keys get −inf (the ReBind code fills 0, which lets padding take attention
weight) and ties in |F| go to the lower index (a stable sort; the ReBind code's is unstable).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from molconf import constants as K
from molconf.ops.lj_params import UFF_VDW

LJ_R_MIN = K.LJ_R_MIN  # distances are clamped here before the LJ terms (as in molconf.ops)


class DirectAttention(nn.Module):
    """softmax((S + Σ_r S ⊙ β_r A_r) / √d_head) V per head, with S = Q Kᵀ and padded keys masked."""

    def __init__(self, d_model: int, n_heads: int, n_relations: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.o = nn.Linear(d_model, d_model)
        self.beta = nn.Parameter(torch.zeros(n_relations, n_heads))

    def forward(self, x: torch.Tensor, relations: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):  # (B, N, d) -> (B, H, N, d_head)
            return t.view(b, n, self.n_heads, self.d_head).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        score = q @ k.transpose(-1, -2)  # (B, H, N, N)
        bias = torch.zeros_like(score)
        for r, a in enumerate(relations):  # a: (B, N, N)
            bias = bias + score * (a.unsqueeze(1) * self.beta[r].view(1, -1, 1, 1))
        score = (score + bias) / math.sqrt(self.d_head)
        score = score.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = torch.softmax(score, dim=-1) @ v  # (B, H, N, d_head)
        return self.o(out.transpose(1, 2).reshape(b, n, d))


class DirectBlock(nn.Module):
    """Post-LN: LN(X + Attn(X)), then LN(X + FFN(X)), GELU FFN."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, n_relations: int):
        super().__init__()
        self.attn = DirectAttention(d_model, n_heads, n_relations)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn1, self.ffn2 = nn.Linear(d_model, ffn_dim), nn.Linear(ffn_dim, d_model)

    def forward(self, x, relations, mask):
        x = self.norm1(x + self.attn(x, relations, mask))
        return self.norm2(x + self.ffn2(torch.nn.functional.gelu(self.ffn1(x))))


def mlp_head(d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, 3 * d_model), nn.GELU(), nn.Linear(3 * d_model, 3))


# --------------------------------------------------------------------------- relations


def lj_sigma_epsilon(z: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-atom σ = x/2^(1/6) and ε = D from the UFF table (0 for padding)."""
    sigma = torch.zeros(119, dtype=torch.float64)
    eps = torch.zeros(119, dtype=torch.float64)
    for element, (x, depth) in UFF_VDW.items():
        sigma[element], eps[element] = x / 2.0 ** (1.0 / 6.0), depth
    return sigma.to(z.device)[z].to(dtype), eps.to(z.device)[z].to(dtype)


def force_edges(pos: torch.Tensor, z: torch.Tensor, bond: torch.Tensor, mask: torch.Tensor):
    """ReBind's rewiring: the attractive and repulsive (B, N, N) edge sets, as 0/1 floats.

    F_ij = 24 ε_ij / r (2 (σ_ij/r)^12 − (σ_ij/r)^6) for every pair; candidates are real,
    non-bonded, distinct pairs with a finite non-zero force; each row keeps its K_i strongest
    by |F| (K_i = the molecule's largest degree − deg_i).
    """
    pos = pos.detach().float() if pos.dtype in (torch.float16, torch.bfloat16) else pos.detach()  # as ours
    sigma, eps = lj_sigma_epsilon(z, pos.dtype)
    diff = pos.unsqueeze(2) - pos.unsqueeze(1)  # (B, N, N, 3)
    r = diff.square().sum(-1).sqrt().clamp_min(LJ_R_MIN)  # (B, N, N)
    sigma_ij = 0.5 * (sigma.unsqueeze(2) + sigma.unsqueeze(1))
    eps_ij = (eps.unsqueeze(2) * eps.unsqueeze(1)).sqrt()
    s = sigma_ij / r
    s6 = (s * s) * (s * s) * (s * s)  # (σ/r)^6 as molconf.ops computes it, so edges match bit for bit
    force = 24.0 * eps_ij / r * (2.0 * s6 * s6 - s6)

    n = pos.shape[1]
    pair = mask.unsqueeze(2) & mask.unsqueeze(1)
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    valid = pair & ~bond & ~eye & torch.isfinite(force) & (force != 0)
    score = torch.where(valid, force.abs(), torch.full_like(force, -1.0))
    deg = (bond & pair).sum(-1)  # (B, N)
    k = torch.where(mask, deg.max(-1, keepdim=True).values - deg, torch.zeros_like(deg))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices  # (B, N, N)
    in_top_k = torch.arange(n, device=pos.device).view(1, 1, n) < k.unsqueeze(-1)  # by sorted position
    keep = torch.zeros_like(valid).scatter(-1, order, in_top_k) & valid
    return (keep & (force < 0)).to(pos.dtype), (keep & (force > 0)).to(pos.dtype)


def row_max_distances(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GTMGC's D_rs[i, j] = max_k D[i, k] − D[i, j] over real atoms; 0 on the diagonal and padding."""
    pair = mask.unsqueeze(2) & mask.unsqueeze(1)
    d = torch.cdist(pos, pos) * pair
    d_rs = d.max(-1, keepdim=True).values - d
    eye = torch.eye(d.shape[-1], dtype=torch.bool, device=d.device)
    return d_rs * (pair & ~eye)


# --------------------------------------------------------------------------- the model


class DirectConformerModel(nn.Module):
    """Encoder (bond relation) → coordinate head → relations → decoder → coordinates.

    Parameters
    ----------
    relation : str
        ``"rebind"`` (decoder relations: bonds, attractive and repulsive LJ edges; gated
        decoder head) or ``"gtmgc"`` (bonds and D_rs of the cache conformer, which keeps its
        gradient; one shared head).
    d_model, n_heads, ffn_dim, n_encoder_layers, n_decoder_layers, pe_dim : int
        Sizes, as :class:`molconf.models.ConformerTransformer` takes them.
    feature_dims : sequence of int
        Size of each categorical atom-feature table.
    pe_sign_flip : bool
        In training, flip each Laplacian eigenvector's sign at random per molecule (as ours).
    """

    def __init__(self, relation: str, d_model: int, n_heads: int, ffn_dim: int, n_encoder_layers: int,
                 n_decoder_layers: int, pe_dim: int, feature_dims, pe_sign_flip: bool = True):
        super().__init__()
        if relation not in ("rebind", "gtmgc"):
            raise ValueError(f"relation must be 'rebind' or 'gtmgc', got {relation!r}")
        self.relation, self.pe_dim, self.pe_sign_flip = relation, pe_dim, pe_sign_flip
        self.embed = nn.ModuleList(nn.Embedding(n, d_model) for n in feature_dims)
        self.encoder = nn.ModuleList(DirectBlock(d_model, n_heads, ffn_dim, 1) for _ in range(n_encoder_layers))
        n_rel = 3 if relation == "rebind" else 2
        self.decoder = nn.ModuleList(DirectBlock(d_model, n_heads, ffn_dim, n_rel) for _ in range(n_decoder_layers))
        self.head = mlp_head(d_model)
        if relation == "rebind":
            self.gate_dec, self.gate_enc = nn.Linear(d_model, 1), nn.Linear(d_model, 1)
            self.final_head = mlp_head(d_model)

    def _with_pe(self, h, pe):
        h = h.clone()
        h[..., : pe.shape[-1]] = h[..., : pe.shape[-1]] + pe
        return h

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask, bond = batch[K.ATOM_FEATURES], batch[K.MASK], batch[K.BOND_ADJ]
        pe = batch[K.LAP_PE]
        if self.training and self.pe_sign_flip:
            pe = pe * (torch.randint(0, 2, (pe.shape[0], 1, pe.shape[2]), device=pe.device) * 2 - 1).to(pe.dtype)
        h = sum(table(x[..., i]) for i, table in enumerate(self.embed))
        h = self._with_pe(h, pe)
        a_bond = bond.to(h.dtype)
        for block in self.encoder:
            h = block(h, [a_bond], mask)
        h_enc = h
        pos_enc = self.head(h_enc)
        if self.relation == "rebind":
            attr, rep = force_edges(pos_enc, batch[K.ATOMIC_NUMBERS], bond, mask)
            relations = [a_bond, attr.to(h.dtype), rep.to(h.dtype)]
        else:
            relations = [a_bond, row_max_distances(pos_enc, mask).to(h.dtype)]
        h = self._with_pe(h_enc, pe)
        for block in self.decoder:
            h = block(h, relations, mask)
        if self.relation == "rebind":
            gate = torch.softmax(torch.cat([self.gate_dec(h), self.gate_enc(h_enc)], -1), -1)
            pos = self.final_head(gate[..., :1] * h + gate[..., 1:] * h_enc)
        else:
            pos = self.head(h)
        return {K.POS_ENC: pos_enc, K.POS_PRED: pos}


def distance_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(mean |D − D̂| of the encoder's conformer + that of the final one) / 2, over real pairs."""
    mask = batch[K.MASK]
    pair = (mask.unsqueeze(2) & mask.unsqueeze(1)).float()
    d_true = torch.cdist(batch[K.POS], batch[K.POS])
    losses = [((torch.cdist(p.float(), p.float()) - d_true).abs() * pair).sum() / pair.sum() for p in
              (out[K.POS_ENC], out[K.POS_PRED])]
    return 0.5 * (losses[0] + losses[1])


# --------------------------------------------------------------------------- from ours


def direct_state(ours_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors named as in our model's state dict (weights, or their gradients) under this
    module's names, the fused QKV weight split into Q, K and V."""
    out = {}
    for name, value in ours_state.items():
        new = (name.replace("atom_encoder.tables.", "embed.")
               .replace("attn.out.", "attn.o.")
               .replace("ffn.0.", "ffn1.").replace("ffn.3.", "ffn2.")
               .replace("encoder_head.mlp.", "head.")
               .replace("decoder_head.score_dec.", "gate_dec.").replace("decoder_head.score_enc.", "gate_enc.")
               .replace("decoder_head.head.mlp.", "final_head."))
        if ".attn.qkv." in new:
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):  # rows: [Q | K | V], each heads × d_head
                out[new.replace(".qkv.", f".{part}.")] = chunk.clone()
        else:
            out[new] = value.clone()
    return out


def from_ours(ours: nn.Module) -> DirectConformerModel:
    """A direct model computing the same function as ``ours`` (a ConformerTransformer).

    Raises
    ------
    ValueError
        For options the direct model does not implement (dropout, the ReBind code's σ_H, a
        fixed K, a detached GTMGC relation, a head other than the relation's own).
    """
    cfg = ours.config
    options = cfg.get("relation_options") or {}
    implemented = ({"k_rule": "degree", "h_sigma_convention": "uff"} if cfg["relation"] == "rebind"
                   else {"detach": False})  # ReBind's edges are always detached; `detach` changes nothing there
    problems = [f"{k}={v!r}" for k, v in options.items() if k in implemented and v != implemented[k]]
    problems += [f"{k}={v!r}" for k, v in options.items() if k not in implemented and k != "detach"]
    if cfg["dropout"]:
        problems.append(f"dropout={cfg['dropout']}")
    if cfg.get("head") not in (None, "gated" if cfg["relation"] == "rebind" else "shared"):
        problems.append(f"head={cfg['head']!r}")
    if problems:
        raise ValueError(f"the direct model does not implement {', '.join(problems)}")
    model = DirectConformerModel(
        cfg["relation"], cfg["d_model"], cfg["n_heads"], cfg["ffn_dim"], cfg["n_encoder_layers"],
        cfg["n_decoder_layers"], cfg["pe_dim"], [t.num_embeddings for t in ours.atom_encoder.tables],
        pe_sign_flip=cfg["pe_sign_flip"],
    )
    model.load_state_dict(direct_state(ours.state_dict()))  # strict: every weight has its place
    first = next(ours.parameters())
    return model.to(device=first.device, dtype=first.dtype).train(ours.training)
