"""The learned GFN2-xTB correction: pairs against a path-walking reference, forces against
finite differences, invariances, batching."""

import itertools
import random

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.ground_state.correction import Gfn2Correction, batch_pair_graphs, pair_graph

REAL = ["CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "C1CC1C(=O)O", "OCC(O)CO", "c1ccc2[nH]ccc2c1"]


def _embedded(smiles: str, seed: int = 0) -> Chem.Mol:
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(m, randomSeed=seed) == 0
    return m


def _random_smiles(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    frags = ["C", "CC", "O", "N", "C(=O)", "c1ccccc1", "C1CC1", "S", "F", "Cl", "C#N", "C=C"]
    out = []
    for _ in range(n):
        s = "".join(rng.choice(frags) for _ in range(rng.randint(1, 6)))
        if Chem.MolFromSmiles(s) is not None:
            out.append(s)
    return out


def _pairs_by_walking(mol: Chem.Mol, max_hops: int) -> dict[tuple[int, int], int]:
    """Slow reference: breadth-first search from every atom, bond by bond."""
    out = {}
    for start in range(mol.GetNumAtoms()):
        seen, frontier = {start}, [start]
        for hop in range(1, max_hops + 1):
            nxt = []
            for a in frontier:
                for nb in mol.GetAtomWithIdx(a).GetNeighbors():
                    b = nb.GetIdx()
                    if b not in seen:
                        seen.add(b)
                        nxt.append(b)
                        if start < b:
                            out[(start, b)] = hop
            frontier = nxt
    return out


@pytest.mark.parametrize("max_hops", [1, 3, 4])
def test_pairs_match_a_breadth_first_reference(max_hops):
    for smiles in REAL + _random_smiles(15, seed=max_hops):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        g = pair_graph(mol, max_hops)
        got = {(int(i), int(j)): int(h) for (i, j), h in zip(g.pairs, g.hops)}
        assert got == _pairs_by_walking(mol, max_hops), smiles


OPTIONS = [{}, {"dihedrals": True}]


def _model(seed=0, **kw) -> Gfn2Correction:
    torch.manual_seed(seed)
    model = Gfn2Correction(hidden=16, layers=2, **kw).double()
    heads = [model.pair_mlp] + ([model.torsion_mlp, model.improper_mlp] if model.dihedrals else [])
    for head in heads:  # the output layers start at zero: give them something to say
        for p in head[-1].parameters():
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def _detached(coefficients: dict) -> dict:
    return {k: v.detach() for k, v in coefficients.items()}


def test_zero_initialised_correction_changes_nothing():
    model = Gfn2Correction(hidden=16, layers=1).double()
    mol = _embedded("CCO")
    batch = batch_pair_graphs([pair_graph(mol)])
    pos = torch.tensor(mol.GetConformer().GetPositions())
    energy, forces = model.energy_and_forces(pos, model.coefficients(batch), batch)
    assert energy.abs().max() == 0 and forces.abs().max() == 0


@pytest.mark.parametrize("options", OPTIONS)
def test_forces_are_minus_the_finite_difference_gradient(options):
    model = _model(**options)
    for smiles in REAL[:3]:
        mol = _embedded(smiles)
        batch = batch_pair_graphs([model.graph(mol)])
        coef = _detached(model.coefficients(batch))
        pos = torch.tensor(mol.GetConformer().GetPositions())
        _, forces = model.energy_and_forces(pos, coef, batch)
        h = 1e-5
        for atom, axis in itertools.product(range(0, mol.GetNumAtoms(), 3), range(3)):
            plus, minus = pos.clone(), pos.clone()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            fd = (model.energy(plus, coef, batch) - model.energy(minus, coef, batch)).item() / (2 * h)
            assert forces[atom, axis].item() == pytest.approx(-fd, abs=1e-6)


@pytest.mark.parametrize("options", OPTIONS)
def test_energy_is_invariant_and_forces_rotate_with_the_molecule(options):
    model = _model(1, **options)
    mol = _embedded(REAL[0])
    batch = batch_pair_graphs([model.graph(mol)])
    coef = _detached(model.coefficients(batch))
    pos = torch.tensor(mol.GetConformer().GetPositions())
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    e1, f1 = model.energy_and_forces(pos, coef, batch)
    e2, f2 = model.energy_and_forces(pos @ q.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), coef, batch)
    assert torch.allclose(e1, e2, atol=1e-10)
    assert torch.allclose(f1 @ q.T, f2, atol=1e-9)
    # atom order does not matter either: the same molecule renumbered gives the same energy
    order = list(range(mol.GetNumAtoms()))[::-1]
    renumbered = Chem.RenumberAtoms(mol, order)
    b2 = batch_pair_graphs([model.graph(renumbered)])
    e3 = model.energy(torch.tensor(renumbered.GetConformer().GetPositions()), model.coefficients(b2), b2)
    assert torch.allclose(e1, e3, atol=1e-9)


@pytest.mark.parametrize("options", OPTIONS)
def test_a_batch_gives_each_molecule_what_it_gets_alone(options):
    model = _model(2, **options)
    mols = [_embedded(s) for s in REAL]
    batch = batch_pair_graphs([model.graph(m) for m in mols])
    pos = torch.tensor(np.concatenate([m.GetConformer().GetPositions() for m in mols]))
    energy, forces = model.energy_and_forces(pos, model.coefficients(batch), batch)
    start = 0
    for b, m in enumerate(mols):
        one = batch_pair_graphs([model.graph(m)])
        p = torch.tensor(m.GetConformer().GetPositions())
        e, f = model.energy_and_forces(p, model.coefficients(one), one)
        n = m.GetNumAtoms()
        assert torch.allclose(energy[b], e[0], atol=1e-9) and torch.allclose(forces[start:start + n], f, atol=1e-9)
        start += n


def test_bad_max_hops_is_refused():
    with pytest.raises(ValueError, match="max_hops"):
        Gfn2Correction(max_hops=0)


def test_torsion_cosines_and_sines_match_rdkit_on_real_and_random_molecules():
    from rdkit.Chem import rdMolTransforms

    from molconf.ground_state.correction import torsion_cos_sin, torsion_quadruples

    for seed, smiles in enumerate(REAL + _random_smiles(10, seed=11)):
        mol = _embedded(smiles, seed)
        quads = torsion_quadruples(mol)
        if not len(quads):
            continue
        conf = mol.GetConformer()
        phi = np.array([rdMolTransforms.GetDihedralRad(conf, *map(int, q)) for q in quads])
        cos, sin = torsion_cos_sin(torch.tensor(conf.GetPositions())[torch.from_numpy(quads)])
        np.testing.assert_allclose(cos.numpy(), np.cos(phi), atol=1e-5, err_msg=smiles)
        np.testing.assert_allclose(sin.numpy(), np.sin(phi), atol=1e-5, err_msg=smiles)


def test_out_of_plane_heights_match_an_svd_plane_normal():
    from molconf.ground_state.correction import improper_quadruples, out_of_plane_height

    for seed, smiles in enumerate(REAL + ["CN(C)C", "Nc1ccccc1", "CC(C)C"]):
        mol = _embedded(smiles, seed)
        pos = mol.GetConformer().GetPositions()
        quads = improper_quadruples(mol)
        got = out_of_plane_height(torch.tensor(pos)[torch.from_numpy(quads)]).abs().numpy()
        for q, h in zip(quads, got):
            a, b, c = pos[q[1:]]
            # the plane's normal: the direction orthogonal to both in-plane edges
            normal = np.linalg.svd(np.stack([b - a, c - a]))[2][-1]
            assert h == pytest.approx(abs(np.dot(pos[q[0]] - a, normal)), abs=1e-9), smiles


def test_dihedral_terms_change_the_energy_but_not_of_the_mirror_image():
    bonded, dihedral = _model(4), _model(4, dihedrals=True)
    mol = _embedded("CN(C)c1ccccc1")
    pos = torch.tensor(mol.GetConformer().GetPositions())
    for model in (bonded, dihedral):
        batch = batch_pair_graphs([model.graph(mol)])
        coef = _detached(model.coefficients(batch))
        mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
        assert torch.allclose(model.energy(pos, coef, batch), model.energy(pos @ mirror, coef, batch), atol=1e-10)
    assert len(dihedral.graph(mol).impropers) == 1 + 6  # the N and the six ring carbons
    # the extra terms are there: the same coefficients of the pair terms, a different energy
    dihedral.load_state_dict(bonded.state_dict(), strict=False)
    batch = batch_pair_graphs([dihedral.graph(mol)])
    assert not torch.allclose(dihedral.energy(pos, _detached(dihedral.coefficients(batch)), batch),
                              bonded.energy(pos, _detached(bonded.coefficients(batch)), batch))
