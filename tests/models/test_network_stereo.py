"""Handedness in the network (molconf.models.stereo): tuples, relation channels, losses, wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf import constants as K
from molconf.data import batch_from_mols, batch_from_smiles
from molconf.data.dataset import collate_dense, collate_graphs, graph_to_data
from molconf.data.features import featurize, stereo_tuples
from molconf.models import ConformerTransformer, conformer_loss
from molconf.models.stereo import cis_trans, signed_volumes, stereo_loss, stereo_relations


def _mol(smiles: str, seed: int = 1) -> Chem.Mol:
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(m, randomSeed=seed) == 0
    return m


def test_tuples_name_the_same_atoms_for_enantiomers_with_opposite_signs():
    r, s = (stereo_tuples(Chem.AddHs(Chem.MolFromSmiles(x))) for x in ("N[C@@H](C)C(=O)O", "N[C@H](C)C(=O)O"))
    assert r.centres.tolist() == s.centres.tolist() and len(r.centres) == 1
    assert r.centre_signs.tolist() == [-s.centre_signs[0]]
    centre = r.centres[0]
    assert centre[1:].tolist().count(-1) == 0 and sorted(centre[1:]) == sorted(
        n.GetIdx() for n in Chem.AddHs(Chem.MolFromSmiles("N[C@@H](C)C(=O)O")).GetAtomWithIdx(int(centre[0])).GetNeighbors())
    e, z = (stereo_tuples(Chem.AddHs(Chem.MolFromSmiles(x))) for x in ("F/C=C/Cl", "F/C=C\\Cl"))
    assert e.double_bonds.tolist() == z.double_bonds.tolist() and (e.double_signs[0], z.double_signs[0]) == (-1, 1)
    none = stereo_tuples(Chem.AddHs(Chem.MolFromSmiles("CC(C)O")))  # no stereocentre
    assert none.centres.shape == (0, 5) and none.double_bonds.shape == (0, 4)
    sulfoxide = stereo_tuples(Chem.AddHs(Chem.MolFromSmiles("C[S@](=O)c1ccccc1")))
    assert len(sulfoxide.centres) == 1 and sulfoxide.centres[0, 4] == -1  # three neighbours and a lone pair


def test_the_specified_sign_agrees_with_the_geometry_across_molecules():
    """The sign is one geometric rule for every centre, lone pairs included: the signed volume of an
    embedded conformer (ETKDG keeps the specified stereo) has the sign the tuples give."""
    products = []
    for smi in ("N[C@@H](C)C(=O)O", "N[C@H](C)C(=O)O", "C[C@H](O)CC", "O[C@@H]1CCCC[C@H]1N", "C[S@](=O)c1ccccc1",
                "F[C@](Cl)(Br)I", "C[S@@](=O)CC", "CC[S@](=O)c1ccccc1", "C[S@@](=O)c1ccccc1"):
        m = _mol(smi)
        batch = batch_from_mols([m], pe_dim=4, stereo=True)
        c = batch[K.STEREO_CENTRES]
        vol = signed_volumes(batch[K.POS], c)
        products += (torch.sign(vol) * batch[K.STEREO_CENTRE_SIGNS]).tolist()
    assert len(products) == 10 and set(products) == {1.0}  # +1: counter-clockwise = positive volume


def test_both_collate_paths_carry_the_same_stereo_and_channels_follow_the_tuples():
    mols = [_mol("N[C@@H](C)C(=O)O"), _mol("CCO"), _mol("F/C=C/C[C@H](O)C")]
    graphs = [featurize(m, stereo=True) for m in mols]
    dense = collate_graphs(graphs, 8)
    pyg = collate_dense([graph_to_data(g, 8) for g in graphs])
    for key in (K.STEREO_CENTRES, K.STEREO_CENTRE_SIGNS, K.STEREO_BONDS, K.STEREO_BOND_SIGNS):
        assert torch.equal(dense[key], pyg[key]), key
    assert dense[K.STEREO_CENTRES][:, 0].tolist() == [0, 2] and dense[K.STEREO_BONDS][:, 0].tolist() == [2]
    rel = stereo_relations(dense)
    for row, sign in zip(dense[K.STEREO_CENTRES].tolist(), dense[K.STEREO_CENTRE_SIGNS].tolist()):
        mol, centre, *nbrs = row
        for k, nbr in enumerate(nbrs):
            assert rel[mol, k, centre, nbr] == rel[mol, k, nbr, centre] == sign
    assert torch.count_nonzero(rel[:, :4]) == 2 * 2 * 4 and torch.count_nonzero(rel[:, 4]) == 2
    assert "stereo_centres" not in collate_graphs([featurize(m) for m in mols], 8)  # off unless asked


def test_losses_are_zero_on_the_reference_and_teach_the_mirror_image_back():
    m = _mol("F/C=C/C[C@H](O)C")
    batch = batch_from_mols([m], pe_dim=4, stereo=True)
    ref = batch[K.POS]
    assert float(stereo_loss(ref, batch)) == 0.0
    assert cis_trans(ref, batch[K.STEREO_BONDS]).item() < -0.9  # E: the reference atoms trans
    mirror = (-ref).clone().requires_grad_(True)  # every distance the same: a distance loss sees nothing
    assert float(conformer_loss({K.POS_ENC: mirror, K.POS_PRED: mirror}, batch)["loss"]) < 1e-6
    loss = stereo_loss(mirror, batch)
    assert float(loss) > 0.5
    loss.backward()
    stepped = (mirror - 0.05 * mirror.grad / mirror.grad.norm()).detach()
    assert float(stereo_loss(stepped, batch)) < float(loss)
    full = conformer_loss({K.POS_ENC: mirror, K.POS_PRED: mirror}, batch, local_weight=1.0, stereo_weight=2.0)
    assert set(full) == {"loss", "loss_enc", "loss_dec", "loss_local", "loss_stereo"}
    assert torch.isclose(full["loss"], full["loss_enc"] * 0 + full["loss"]) and float(full["loss_local"]) < 1e-6
    assert float(full["loss"]) == pytest.approx(2.0 * float(full["loss_stereo"]), abs=1e-5)
    dec_only = conformer_loss({K.POS_ENC: ref, K.POS_PRED: mirror}, batch, stereo_weight=1.0, stereo_on="decoder")
    assert float(dec_only["loss_stereo"]) == pytest.approx(float(loss))  # the encoder's (correct) conformer left out
    with pytest.raises(ValueError, match="stereo_on"):
        conformer_loss({K.POS_ENC: ref, K.POS_PRED: ref}, batch, stereo_weight=1.0, stereo_on="encoder")
    empty = batch_from_smiles(["CCO"], pe_dim=4, stereo=True)
    assert float(stereo_loss(empty[K.POS], empty)) == 0.0


def test_a_stereo_model_reads_handedness_and_starts_from_a_plain_one_exactly(tmp_path):
    from molconf.lightning import load_initial_weights
    from molconf.models import save_model

    kw = dict(d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1, n_decoder_layers=1, pe_dim=8)
    torch.manual_seed(0)
    plain = ConformerTransformer("rebind", **kw).eval()
    save_model(plain, tmp_path / "plain.pt")
    stereo = ConformerTransformer("rebind", stereo=True, **kw).eval()
    load_initial_weights(stereo, tmp_path / "plain.pt")
    r, s = (batch_from_smiles([x], pe_dim=8, stereo=True) for x in ("N[C@@H](C)C(=O)O", "N[C@H](C)C(=O)O"))
    with torch.no_grad():
        assert torch.allclose(stereo(r)[K.POS_PRED], plain(r)[K.POS_PRED], atol=1e-6)  # β of the new channels = 0
        for block in [*stereo.encoder, *stereo.decoder]:
            block.attn.beta[-5:].fill_(0.5)
        assert not torch.allclose(stereo(r)[K.POS_PRED], stereo(s)[K.POS_PRED], atol=1e-4)  # R and S now differ
    with pytest.raises(KeyError, match="stereo tuples"):
        stereo(batch_from_smiles(["CCO"], pe_dim=8))
    with pytest.raises(ValueError, match="differs"):  # the other way round is refused
        save_model(stereo, tmp_path / "stereo.pt")
        load_initial_weights(ConformerTransformer("gtmgc", **kw), tmp_path / "stereo.pt")


def test_training_a_stereo_model_under_lightning(tmp_path, qm9_small):
    import lightning as L

    from molconf.lightning import ConformerDataModule, ConformerModule

    model = ConformerTransformer("rebind", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                                 n_decoder_layers=1, pe_dim=16, stereo=True)
    module = ConformerModule(model, lr=1e-3, local_weight=1.0, stereo_weight=1.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=1,
                        default_root_dir=tmp_path)
    trainer.fit(module, ConformerDataModule(batch_size=32, pe_dim=16, source_limit=300, stereo=True))
    logged = trainer.callback_metrics
    assert {"train/loss_stereo", "train/loss_local"} <= set(logged) and torch.isfinite(logged["train/loss"])
    plain_data = ConformerDataModule(batch_size=32, pe_dim=16, source_limit=300)
    with pytest.raises(ValueError, match="data.stereo"):
        L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False).fit(ConformerModule(model, stereo_weight=1.0), plain_data)
