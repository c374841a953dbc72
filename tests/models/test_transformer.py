"""ReBind / GTMGC transformer: relations, equivariance, invariance, and that it can learn."""

import math

import numpy as np
import pytest
import torch

from molconf import constants as K
from molconf.data import ConformerDataset, batch_from_smiles, collate_dense
from molconf.models import ConformerTransformer, conformer_loss, distance_mae, gtmgc, rebind
from molconf.models.relations import RowMaxDistanceRelations


def tiny(relation, **kw):
    cfg = dict(d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=2, n_decoder_layers=2, pe_dim=16)
    return ConformerTransformer(relation, **{**cfg, **kw})


@pytest.fixture(scope="module")
def real_batch(qm9_small):
    ds = ConformerDataset(qm9_small, np.arange(200, 212), pe_dim=16)
    return collate_dense([ds[i] for i in range(len(ds))])


def test_paper_sizes():
    # DESIGN: ReBind ~35M parameters, GTMGC ~10M.
    n_rebind = sum(p.numel() for p in rebind().parameters())
    n_gtmgc = sum(p.numel() for p in gtmgc().parameters())
    assert 33e6 < n_rebind < 37e6 and 9e6 < n_gtmgc < 11e6


def test_row_max_distance_relation_against_loops():
    torch.manual_seed(0)
    pos = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    bonds = torch.zeros(2, 5, 5, dtype=torch.bool)
    rel = RowMaxDistanceRelations()(pos, torch.ones(2, 5, dtype=torch.long), bonds, mask)
    assert rel.shape == (2, 2, 5, 5)
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(5):
            for j in range(5):
                if i < n and j < n and i != j:
                    d = [float(torch.dist(pos[b, i], pos[b, k])) for k in range(n)]
                    assert rel[b, 1, i, j].item() == pytest.approx(max(d) - d[j], abs=1e-5)
                else:
                    assert rel[b, 1, i, j] == 0


@pytest.mark.parametrize("relation", ["rebind", "gtmgc"])
def test_permutation_equivariance(relation, real_batch):
    torch.manual_seed(1)
    # float64: top-K edge selection is discontinuous, and float32 summation-order noise
    # between permuted inputs can flip a near-tie between two candidates.
    model = tiny(relation).double().eval()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in real_batch.items()}
    n = b[K.MASK].shape[1]
    # permute only real atoms of each molecule among themselves, padding stays at the end
    permuted = {k: v.clone() for k, v in b.items()}
    perms = []
    for i in range(b[K.MASK].shape[0]):
        m = int(b[K.MASK][i].sum())
        p = torch.cat([torch.randperm(m), torch.arange(m, n)])
        perms.append(p)
        for key in (K.ATOM_FEATURES, K.ATOMIC_NUMBERS, K.POS, K.LAP_PE, K.MASK):
            permuted[key][i] = b[key][i][p]
        permuted[K.BOND_ADJ][i] = b[K.BOND_ADJ][i][p][:, p]
    with torch.no_grad():
        out, out_p = model(b)[K.POS_PRED], model(permuted)[K.POS_PRED]
    for i, p in enumerate(perms):
        m = int(b[K.MASK][i].sum())
        # permuted atom j is original atom p[j]; equal up to a rigid motion: compare distances
        d = torch.cdist(out[i, p[:m]], out[i, p[:m]])
        d_p = torch.cdist(out_p[i, :m], out_p[i, :m])
        assert torch.allclose(d, d_p, atol=1e-8)


def test_loss_is_rigid_motion_invariant(real_batch):
    torch.manual_seed(2)
    out = {K.POS_PRED: torch.randn_like(real_batch[K.POS]), K.POS_ENC: torch.randn_like(real_batch[K.POS])}
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    moved = dict(real_batch)
    moved[K.POS] = real_batch[K.POS] @ q.T + torch.tensor([1.0, -2.0, 3.0])
    a, b = conformer_loss(out, real_batch)["loss"], conformer_loss(out, moved)["loss"]
    assert torch.allclose(a, b, atol=1e-5)


def test_padding_does_not_change_predictions():
    model = tiny("rebind").eval()
    alone = batch_from_smiles(["CCO"], pe_dim=16)
    padded = batch_from_smiles(["CCO", "CCCCCCCC"], pe_dim=16)  # CCO gets padded to 26 atoms
    with torch.no_grad():
        a = model(alone)[K.POS_PRED][0]
        b = model(padded)[K.POS_PRED][0, : a.shape[0]]
    assert torch.allclose(a, b, atol=1e-5)


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown decoder relation"):
        ConformerTransformer("nope")
    with pytest.raises(ValueError, match="pe_dim"):
        ConformerTransformer("rebind", d_model=16, n_heads=4, pe_dim=32)
    with pytest.raises(ValueError, match="k_rule"):
        ConformerTransformer("rebind", relation_options={"k_rule": "max"})


@pytest.mark.parametrize("relation", ["rebind", "gtmgc"])
def test_tiny_model_overfits_16_molecules(relation, qm9_small):
    torch.manual_seed(0)
    ds = ConformerDataset(qm9_small, np.arange(100, 116), pe_dim=16)
    batch = collate_dense([ds[i] for i in range(16)])
    model = ConformerTransformer(relation, d_model=64, n_heads=4, ffn_dim=128, n_encoder_layers=2,
                                 n_decoder_layers=2, pe_dim=16, pe_sign_flip=False)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    best = math.inf
    for step in range(1500):
        loss = conformer_loss(model(batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            with torch.no_grad():
                model.eval()
                best = min(best, distance_mae(model(batch)[K.POS_PRED], batch[K.POS], batch[K.MASK]).item())
                model.train()
            if best < 0.05:
                break
    assert best < 0.05


def test_coordinates_come_out_in_float32_under_bf16_autocast():
    from molconf.data.dataset import collate_dense, graph_to_data
    from molconf.data.features import featurize
    from rdkit import Chem

    torch.manual_seed(0)
    for relation in ("rebind", "gtmgc"):
        net = ConformerTransformer(relation, d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                                   n_decoder_layers=1, pe_dim=8).eval()
        batch = collate_dense([graph_to_data(featurize(Chem.AddHs(Chem.MolFromSmiles("CCO"))), 8)])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(batch)
        assert out[K.POS_PRED].dtype == torch.float32 and out[K.POS_ENC].dtype == torch.float32


def test_gtmgc_relation_passes_gradient_to_the_cache_conformer_unless_detached():
    """GTMGC's reference differentiates through the cache conformer's distances (issue #25);
    ``detach=True`` is the ablation."""
    mask = torch.ones(1, 4, dtype=torch.bool)
    bonds = torch.zeros(1, 4, 4, dtype=torch.bool)
    for detach, expect_grad in ((False, True), (True, False)):
        pos = torch.randn(1, 4, 3, requires_grad=True)
        rel = RowMaxDistanceRelations(detach=detach)(pos, torch.ones(1, 4, dtype=torch.long), bonds, mask)
        assert rel.requires_grad == expect_grad
        if expect_grad:
            (grad,) = torch.autograd.grad(rel[:, 1].sum(), pos)
            assert grad.abs().sum() > 0
    assert RowMaxDistanceRelations().detach is False


def _loop_rewire(pos, mask, bond_adj, z):
    """Slow reference of ReBind's rewiring for one molecule: UFF LJ forces on every non-bonded
    pair, per atom the top-K_i by |F| (K_i = max degree − degree), split by the sign of F."""
    from molconf.ops.lj_params import UFF_VDW

    n = int(mask.sum())
    deg = bond_adj[:n, :n].sum(1)
    attr = torch.zeros_like(bond_adj, dtype=torch.bool)
    rep = torch.zeros_like(attr)
    sig = {k: x / 2 ** (1 / 6) for k, (x, _) in UFF_VDW.items()}
    for i in range(n):
        forces = []
        for j in range(n):
            if j == i or bond_adj[i, j]:
                continue
            r = float(torch.dist(pos[i], pos[j]))
            s, e = (sig[int(z[i])] + sig[int(z[j])]) / 2, (UFF_VDW[int(z[i])][1] * UFF_VDW[int(z[j])][1]) ** 0.5
            forces.append((24 * e / r * (2 * (s / r) ** 12 - (s / r) ** 6), j))
        forces.sort(key=lambda fj: -abs(fj[0]))
        for f, j in forces[: int(deg.max() - deg[i])]:
            if f < 0:
                attr[i, j] = True
            elif f > 0:
                rep[i, j] = True
    return attr, rep


def test_rebind_decoder_sees_the_rewiring_of_its_encoders_conformer_and_attends_as_written():
    """The decoder's relations are bonds + the LJ rewiring of the encoder's own conformer
    (checked against loops), and each block's attention is softmax((S + S ⊙ Σ_r β_r A_r)/√d_h) V
    with padded keys masked, recomputed here by hand (issue #25)."""
    from molconf.data import batch_from_smiles
    from molconf import constants as K

    torch.manual_seed(0)
    model = ConformerTransformer("rebind", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=2,
                                 n_decoder_layers=2, pe_dim=8).double().eval()
    batch = batch_from_smiles(["CC(=O)Nc1ccc(O)cc1", "OCC(N)C"], pe_dim=8)
    batch = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    seen = {}
    model.decoder[0].attn.register_forward_hook(lambda mod, args, out: seen.update(args=args, out=out))
    with torch.no_grad():
        out = model(batch)
    h, rel, mask = seen["args"]
    pos_enc = out[K.POS_ENC]
    for b in range(2):
        n = int(mask[b].sum())
        attr, rep = _loop_rewire(pos_enc[b], mask[b], batch[K.BOND_ADJ][b], batch[K.ATOMIC_NUMBERS][b])
        assert torch.equal(rel[b, 0, :n, :n].bool(), batch[K.BOND_ADJ][b, :n, :n].bool())
        assert torch.equal(rel[b, 1, :n, :n].bool(), attr[:n, :n])
        assert torch.equal(rel[b, 2, :n, :n].bool(), rep[:n, :n])
    attn = model.decoder[0].attn
    dh = attn.d_head
    q, k, v = attn.qkv(h).split(h.shape[-1], -1)
    by_hand = torch.zeros_like(h)
    for b in range(2):
        n = int(mask[b].sum())
        heads = []
        for hd in range(attn.n_heads):
            sl = slice(hd * dh, (hd + 1) * dh)
            s = q[b, :n, sl] @ k[b, :n, sl].T  # real keys only: padding masked
            a = sum(attn.beta[r, hd] * rel[b, r, :n, :n] for r in range(rel.shape[1]))
            heads.append(torch.softmax((s + s * a) / dh**0.5, -1) @ v[b, :n, sl])
        by_hand[b, :n] = attn.out(torch.cat(heads, -1))
        assert torch.allclose(seen["out"][b, :n], by_hand[b, :n], atol=1e-10)
