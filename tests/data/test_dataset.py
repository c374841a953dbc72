"""Dense batching and the size-aware batch sampler."""

import numpy as np
import pytest
import torch

from molconf import constants as K
from molconf.data import ConformerDataset, SizeAwareBatchSampler, collate_dense


def test_collate_dense_matches_molecules(qm9_small):
    ds = ConformerDataset(qm9_small, rows=np.arange(7), pe_dim=16)
    batch = collate_dense([ds[i] for i in range(7)])
    n_max = int(qm9_small.num_atoms[:7].max())
    assert batch[K.POS].shape == (7, n_max, 3) and batch[K.LAP_PE].shape == (7, n_max, 16)
    assert batch[K.BOND_ADJ].shape == (7, n_max, n_max)
    assert torch.equal(batch[K.BOND_ADJ], batch[K.BOND_ADJ].transpose(1, 2))
    for b in range(7):
        g = qm9_small.graph(b)
        n = g.num_atoms
        assert batch[K.MASK][b].sum() == n and not batch[K.MASK][b, n:].any()
        assert np.allclose(batch[K.POS][b, :n].numpy(), g.pos)
        assert (batch[K.POS][b, n:] == 0).all() and not batch[K.BOND_ADJ][b, n:].any()
        adj = np.zeros((n, n), bool)
        adj[g.bonds[:, 0], g.bonds[:, 1]] = adj[g.bonds[:, 1], g.bonds[:, 0]] = True
        assert np.array_equal(batch[K.BOND_ADJ][b, :n, :n].numpy(), adj)
        assert batch[K.MOL_INDEX][b] == qm9_small.mol_ids[b]



def _assert_same_batch(fast, slow):
    assert fast.keys() == slow.keys()
    for key in slow:
        assert fast[key].dtype == slow[key].dtype and fast[key].shape == slow[key].shape, key
        assert torch.equal(fast[key], slow[key]), key


@pytest.mark.parametrize("pe_dim", [4, 16, 32])
def test_collate_graphs_equals_the_pyg_route_on_qm9(qm9_small, pe_dim):
    """Prediction's direct padding gives collate_dense's tensors exactly (PE cut and zero-padded)."""
    from molconf.data.dataset import collate_graphs, graph_to_data

    graphs = [qm9_small.graph(r) for r in range(len(qm9_small))]
    _assert_same_batch(collate_graphs(graphs, pe_dim), collate_dense([graph_to_data(g, pe_dim) for g in graphs]))


def test_collate_graphs_equals_the_pyg_route_on_random_molecules():
    """Mixed sizes, no conformers (zeros), one atom with no bonds, and a mixed-size batch."""
    from rdkit import Chem

    from molconf.data.dataset import collate_graphs, graph_to_data
    from molconf.data.features import featurize

    smiles = ["C", "[HH]", "O=C=O", "CC(C)(C)c1ccc(O)cc1", "C1CC2CCC1C2", "N#CC(=O)N", "[Ne]"]
    rng = np.random.default_rng(0)
    graphs = [featurize(Chem.AddHs(Chem.MolFromSmiles(smiles[i]))) for i in rng.integers(0, len(smiles), 12)]
    assert any(g.pos is None for g in graphs)
    _assert_same_batch(collate_graphs(graphs, 8), collate_dense([graph_to_data(g, 8) for g in graphs]))


def _sizes(n=1000, seed=0):
    return np.random.default_rng(seed).integers(3, 30, size=n)


def test_every_molecule_once_per_epoch_and_less_padding():
    sizes = _sizes()
    s = SizeAwareBatchSampler(sizes, batch_size=32, seed=1)
    flat = sorted(i for b in s for i in b)
    assert flat == list(range(len(sizes)))
    s_random = SizeAwareBatchSampler(sizes, batch_size=32, seed=1, pool_batches=1)  # sorted within one batch only
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(sizes))
    random_pad = 1 - sizes.sum() / sum(len(b) * sizes[b].max() for b in np.array_split(perm, len(sizes) // 32))
    assert s.padding_fraction() < 0.05 < random_pad
    assert s.padding_fraction() <= s_random.padding_fraction()


def test_epochs_differ_and_are_reproducible():
    s = SizeAwareBatchSampler(_sizes(), batch_size=16, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 != e1


def test_atom_budget():
    sizes = _sizes()
    s = SizeAwareBatchSampler(sizes, batch_size=None, max_atoms=200)
    for b in s:
        assert len(b) * sizes[b].max() <= 200
    with pytest.raises(ValueError, match="smaller than the largest"):
        SizeAwareBatchSampler(sizes, batch_size=None, max_atoms=10)


def test_replicas_split_batches_evenly():
    sizes = _sizes(101)
    shards = [list(SizeAwareBatchSampler(sizes, batch_size=10, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    seen = {i for shard in shards for b in shard for i in b}
    assert seen == set(range(101))


def test_skip_next_resumes_mid_epoch():
    s = SizeAwareBatchSampler(_sizes(), batch_size=32, seed=5)
    full = list(s)
    s.skip_next = 4
    assert list(s) == full[4:]
    assert list(s) == full  # skipping applies once
