"""Torch datasets over a :class:`~molconf.data.cache.GraphStore` and dense padded batching.

Molecules travel as PyG ``Data`` objects (PyG does the ragged batching); models receive the
dense, padded dictionary made by :func:`collate_dense`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from molconf import constants as K
from molconf.data.cache import GraphStore
from molconf.data.features import GraphArrays, StereoTuples, stereo_tuples

if TYPE_CHECKING:
    from torch_geometric.data import Data
# PyG is imported inside the functions that use it: prediction batches with collate_graphs
# and never needs it (importing it costs seconds)


def graph_to_data(graph: GraphArrays, pe_dim: int, mol_index: int = -1) -> Data:
    """One molecule as a PyG ``Data``; Laplacian eigenvectors cut or zero-padded to ``pe_dim``.

    Molecules with more than ``pe_dim`` atoms keep their ``pe_dim`` lowest-frequency
    eigenvectors.
    """
    from torch_geometric.data import Data

    n = graph.num_atoms
    pe = np.zeros((n, pe_dim), dtype=np.float32)
    width = min(n, pe_dim)
    pe[:, :width] = graph.lap_pe[:, :width]
    bonds = torch.as_tensor(graph.bonds.astype(np.int64)).reshape(-1, 2).t()
    edge_index = torch.cat([bonds, bonds.flip(0)], dim=1)  # both directions  (2, 2E)
    pos = graph.pos if graph.pos is not None else np.zeros((n, 3), dtype=np.float32)
    stereo = {}
    if graph.stereo is not None:  # atom numbers stay local ("*index*" names would be offset by PyG)
        st = graph.stereo
        stereo = dict(stereo_centres=torch.as_tensor(st.centres), stereo_centre_signs=torch.as_tensor(st.centre_signs),
                      stereo_bonds=torch.as_tensor(st.double_bonds), stereo_bond_signs=torch.as_tensor(st.double_signs),
                      num_stereo=torch.tensor([[len(st.centres), len(st.double_bonds)]]))
    return Data(
        x=torch.as_tensor(graph.atom_features.astype(np.int64)),  # (n, 9)
        z=torch.as_tensor(graph.atomic_numbers.astype(np.int64)),  # (n,)
        pos=torch.as_tensor(pos, dtype=torch.float32),  # (n, 3)
        lap_pe=torch.as_tensor(pe),  # (n, pe_dim)
        edge_index=edge_index,
        mol_id=torch.tensor([mol_index], dtype=torch.long),  # not "*index*": PyG would offset it
        num_nodes=n,
        **stereo,
    )


def _flat_stereo(per_molecule: list[StereoTuples]) -> dict[str, torch.Tensor]:
    """The batch's stereo tuples, flat, each row prefixed with its molecule (constants.STEREO_*)."""
    centres = [np.column_stack([np.full(len(s.centres), i), s.centres]) for i, s in enumerate(per_molecule)]
    bonds = [np.column_stack([np.full(len(s.double_bonds), i), s.double_bonds]) for i, s in enumerate(per_molecule)]
    return {
        K.STEREO_CENTRES: torch.as_tensor(np.concatenate(centres).reshape(-1, 6), dtype=torch.long),
        K.STEREO_CENTRE_SIGNS: torch.as_tensor(np.concatenate([s.centre_signs for s in per_molecule]), dtype=torch.float32),
        K.STEREO_BONDS: torch.as_tensor(np.concatenate(bonds).reshape(-1, 5), dtype=torch.long),
        K.STEREO_BOND_SIGNS: torch.as_tensor(np.concatenate([s.double_signs for s in per_molecule]), dtype=torch.float32),
    }


def collate_dense(items: list[Data]) -> dict[str, torch.Tensor]:
    """Batch PyG ``Data`` items into dense padded tensors (keys in :mod:`molconf.constants`)."""
    from torch_geometric.data import Batch
    from torch_geometric.utils import to_dense_adj, to_dense_batch

    batch = Batch.from_data_list(items)
    x, mask = to_dense_batch(batch.x, batch.batch)  # (B, N, 9), (B, N)
    n = x.shape[1]
    z, _ = to_dense_batch(batch.z, batch.batch, max_num_nodes=n)  # (B, N)
    pos, _ = to_dense_batch(batch.pos, batch.batch, max_num_nodes=n)  # (B, N, 3)
    pe, _ = to_dense_batch(batch.lap_pe, batch.batch, max_num_nodes=n)  # (B, N, P)
    adj = to_dense_adj(batch.edge_index, batch.batch, max_num_nodes=n) > 0  # (B, N, N)
    out = {
        K.ATOM_FEATURES: x,
        K.ATOMIC_NUMBERS: z,
        K.POS: pos,
        K.LAP_PE: pe,
        K.BOND_ADJ: adj,
        K.MASK: mask,
        K.NUM_ATOMS: mask.sum(1),
        K.MOL_INDEX: batch.mol_id,
    }
    if "num_stereo" in batch:
        counts = batch.num_stereo  # (B, 2): centres, double bonds per molecule
        owner = [torch.repeat_interleave(torch.arange(len(counts)), counts[:, k]) for k in (0, 1)]
        out[K.STEREO_CENTRES] = torch.cat([owner[0][:, None], batch.stereo_centres.reshape(-1, 5)], 1)
        out[K.STEREO_CENTRE_SIGNS] = batch.stereo_centre_signs
        out[K.STEREO_BONDS] = torch.cat([owner[1][:, None], batch.stereo_bonds.reshape(-1, 4)], 1)
        out[K.STEREO_BOND_SIGNS] = batch.stereo_bond_signs
    return out


def collate_graphs(graphs: list[GraphArrays], pe_dim: int) -> dict[str, torch.Tensor]:
    """Featurised molecules straight into the dense padded batch of :func:`collate_dense`.

    The same tensors as ``collate_dense([graph_to_data(g, pe_dim) for g in graphs])``
    (``tests/data/test_dataset.py`` compares them), without building a PyG ``Data`` per
    molecule: prediction batches are made once and never move between devices or processes
    as ``Data``, and for small molecules that detour costs more than the padding itself.
    ``mol_index`` is -1 for every molecule, as :func:`graph_to_data`'s default.
    """
    sizes = [g.num_atoms for g in graphs]
    b, n = len(graphs), max(sizes, default=0)
    x = np.zeros((b, n, graphs[0].atom_features.shape[1] if graphs else 0), dtype=np.int64)
    z = np.zeros((b, n), dtype=np.int64)
    pos = np.zeros((b, n, 3), dtype=np.float32)
    pe = np.zeros((b, n, pe_dim), dtype=np.float32)
    adj = np.zeros((b, n, n), dtype=bool)
    mask = np.zeros((b, n), dtype=bool)
    for i, (g, k) in enumerate(zip(graphs, sizes)):
        x[i, :k] = g.atom_features
        z[i, :k] = g.atomic_numbers
        if g.pos is not None:
            pos[i, :k] = g.pos
        width = min(k, pe_dim)
        pe[i, :k, :width] = g.lap_pe[:, :width]
        bonds = g.bonds.astype(np.int64)
        adj[i, bonds[:, 0], bonds[:, 1]] = True
        adj[i, bonds[:, 1], bonds[:, 0]] = True
        mask[i, :k] = True
    mask_t = torch.from_numpy(mask)
    stereo = _flat_stereo([g.stereo for g in graphs]) if graphs and all(g.stereo is not None for g in graphs) else {}
    return {
        **stereo,
        K.ATOM_FEATURES: torch.from_numpy(x),  # (B, N, 9)
        K.ATOMIC_NUMBERS: torch.from_numpy(z),  # (B, N)
        K.POS: torch.from_numpy(pos),  # (B, N, 3)
        K.LAP_PE: torch.from_numpy(pe),  # (B, N, P)
        K.BOND_ADJ: torch.from_numpy(adj),  # (B, N, N)
        K.MASK: mask_t,  # (B, N)
        K.NUM_ATOMS: mask_t.sum(1),
        K.MOL_INDEX: torch.full((b,), -1, dtype=torch.long),
    }


class ConformerDataset(torch.utils.data.Dataset):
    """Molecules of a :class:`GraphStore` (all, or the given rows) as PyG ``Data``."""

    def __init__(self, store: GraphStore, rows: np.ndarray | None = None, pe_dim: int = 32, stereo: bool = False):
        self.store = store
        self.rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.pe_dim = pe_dim
        self.stereo = stereo  # also the specified stereo of each molecule (from its stored Mol)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def sizes(self) -> np.ndarray:
        """Atom count of every item, in item order."""
        return self.store.num_atoms[self.rows]

    def __getitem__(self, i: int) -> Data:
        row = int(self.rows[i])
        graph = self.store.graph(row)
        if self.stereo:
            graph.stereo = stereo_tuples(self.store.mol(row))
        return graph_to_data(graph, self.pe_dim, int(self.store.mol_ids[row]))


class SizeAwareBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of molecules of similar size, so padded batches waste little.

    Each epoch the items are shuffled, cut into pools of ``pool_batches`` batches, each pool
    sorted by size and cut into batches, and the batch order shuffled. A batch holds
    ``batch_size`` molecules, or, with ``max_atoms`` set, as many as fit in a padded budget
    of ``count × largest size ≤ max_atoms`` (drug-sized data).

    For data-parallel training each of ``num_replicas`` processes takes every
    ``num_replicas``-th batch (the batch list is padded by repetition so all ranks run the
    same number of steps).
    """

    def __init__(
        self,
        sizes: np.ndarray,
        batch_size: int | None = 32,
        max_atoms: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if (batch_size is None) == (max_atoms is None):
            raise ValueError("give exactly one of batch_size and max_atoms")
        if max_atoms is not None and len(sizes) and max_atoms < int(np.max(sizes)):
            raise ValueError(f"max_atoms={max_atoms} is smaller than the largest molecule ({int(np.max(sizes))})")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.batch_size, self.max_atoms = batch_size, max_atoms
        self.shuffle, self.seed, self.pool_batches = shuffle, seed, pool_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.skip_next = 0  # batches the next iteration skips (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        if self.batch_size is not None:
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        batches, current, largest = [], [], 0
        for idx in order.tolist():
            big = max(largest, int(self.sizes[idx]))
            if current and big * (len(current) + 1) > self.max_atoms:
                batches.append(current)
                current, big = [], int(self.sizes[idx])
            current.append(idx)
            largest = big
        if current:
            batches.append(current)
        return batches

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, before splitting across replicas."""
        rng = np.random.default_rng((self.seed, self.epoch))
        n = len(self.sizes)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        pool = (self.batch_size or max(1, self.max_atoms // max(int(self.sizes.mean()), 1) if n else 1))
        pool *= self.pool_batches
        out: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]
            out.extend(self._cut(chunk))
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def _my_batches(self) -> list[list[int]]:
        out = self.batches()
        if self.num_replicas > 1 and out:
            per_rank = -(-len(out) // self.num_replicas)
            out = (out * self.num_replicas)[: per_rank * self.num_replicas]
            out = out[self.rank :: self.num_replicas]
        return out

    def __iter__(self):
        skip, self.skip_next = self.skip_next, 0
        yield from self._my_batches()[skip:]

    def __len__(self) -> int:
        return len(self._my_batches())

    def padding_fraction(self) -> float:
        """Share of padded atom slots in this epoch's batches (0 = no waste)."""
        real = padded = 0
        for b in self.batches():
            s = self.sizes[b]
            real += int(s.sum())
            padded += len(b) * int(s.max())
        return 1.0 - real / max(padded, 1)
