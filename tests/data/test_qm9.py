"""QM9 readers and conversion, on real molecules and on bad input."""

import csv
import tarfile

import numpy as np
import pytest
from rdkit import Chem

from molconf.data.convert import compare_with_smiles, convert, convert_or_error, mol_from_geometry
from molconf.data.qm9 import (
    QM9PACK_FILES,
    RawMolecule,
    iter_qm9_xyz_archive,
    iter_qm9pack,
    parse_qm9_xyz,
    qm9pack_data_dir,
)
from molconf.errors import MoleculeError

# Methanol written in the original archive's layout, with one Mathematica-style exponent.
METHANOL_XYZ = """6
gdb 8\t1.0\t2.0\t3.0
C\t-0.0467134624\t 0.6567850452\t 0.0000071098\t-0.1
O\t-0.0467134624\t-0.7672413306\t-0.0000071098\t-0.4
H\t-1.0863810734\t 0.9757566373\t 0.0000000000\t 0.1
H\t 0.4295010183\t 1.0754935883\t 0.8970938513\t 0.1
H\t 0.4295010183\t 1.0754935883\t-0.8970938513\t 0.1
H\t 0.8493213329\t-1.1013829098\t-1.2345*^-6\t 0.3
100.0\t200.0
CO\tCO
InChI=1S/CH4O/c1-2/h2H,1H3\tInChI=1S/CH4O/c1-2/h2H,1H3
"""


def test_parse_original_xyz_and_convert():
    raw = parse_qm9_xyz(METHANOL_XYZ, "dsgdb9nsd_000008.xyz")
    assert raw.index == 8 and raw.elements == ["C", "O", "H", "H", "H", "H"]
    assert raw.coords[5, 2] == pytest.approx(-1.2345e-6)
    conv = convert(raw)
    assert conv.graph.num_atoms == 6 and len(conv.graph.bonds) == 5
    assert conv.smiles_match and conv.connectivity_match


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty file"),
        ("   \n\n", "empty file"),
        ("abc\ngdb 1\n", "not an atom count"),
        ("3\ngdb 1\nC 0 0 0 0\nH 1 0 0 0\n", "expects 3 atom lines"),
        ("2\ngdb 1\nC 0 0 zero 0\nH 1 0 0 0\n", "cannot parse number"),
        ("2\ngdb 1\nC 0 0\nH 1 0 0 0\n", "fewer than 4 fields"),
        ("2\ngdb 1\nC 0 0 nan 0\nH 1 0 0 0\n", "non-finite"),
    ],
)
def test_malformed_xyz_names_file_and_reason(text, reason):
    with pytest.raises(MoleculeError) as err:
        parse_qm9_xyz(text, "bad.xyz")
    assert err.value.molecule == "bad.xyz" and reason in err.value.reason


def test_unknown_element_is_a_clear_error():
    raw = RawMolecule(1, ["C", "Xx"], np.array([[0.0, 0, 0], [1.5, 0, 0]]), "", "weird.xyz")
    result = convert_or_error(raw)
    assert isinstance(result, MoleculeError)
    assert result.molecule == "weird.xyz" and "unknown element 'Xx'" in result.reason


def test_impossible_geometry_fails_with_reason():
    # Two carbons 0.3 Å apart with nothing else: no valid bonding pattern.
    with pytest.raises(MoleculeError, match="bond perception failed"):
        mol_from_geometry(["N", "N", "N"], np.array([[0, 0, 0], [0.3, 0, 0], [0.6, 0, 0.0]]), "clash")


def test_archive_folder_and_tar_keep_good_files(tmp_path):
    folder = tmp_path / "qm9"
    folder.mkdir()
    (folder / "dsgdb9nsd_000008.xyz").write_text(METHANOL_XYZ)
    (folder / "dsgdb9nsd_000009.xyz").write_text("")  # empty file among good ones
    items = list(iter_qm9_xyz_archive(folder))
    assert isinstance(items[0], RawMolecule) and isinstance(items[1], MoleculeError)
    assert items[1].molecule == "dsgdb9nsd_000009.xyz"
    tar_path = tmp_path / "qm9.tar.bz2"
    with tarfile.open(tar_path, "w:bz2") as tar:
        tar.add(folder / "dsgdb9nsd_000008.xyz", arcname="dsgdb9nsd_000008.xyz")
    [raw] = list(iter_qm9_xyz_archive(tar_path))
    assert raw.index == 8
    with pytest.raises(FileNotFoundError):
        list(iter_qm9_xyz_archive(tmp_path / "nothing-here"))


def test_qm9pack_is_the_real_data_set():
    folder = qm9pack_data_dir()
    first = next(iter_qm9pack(folder))
    assert first.index == 1 and first.smiles == "C" and first.elements == ["C", "H", "H", "H", "H"]
    # The C–H bond lengths of methane in B3LYP/6-31G(2df,p) are 1.09 Å.
    d = np.linalg.norm(first.coords[1:] - first.coords[0], axis=1)
    assert np.allclose(d, 1.0919, atol=2e-3)
    with open(folder / QM9PACK_FILES[0]) as fh:
        assert "XYZ_Ang" in next(csv.reader(fh))


def test_first_300_real_molecules_through_the_pipeline(qm9_small):
    store = qm9_small
    info = store.manifest["info"]
    assert info["molecules_read"] == 300 and len(store) + info["dropped"] == 300
    assert info["converted_fraction"] >= 0.995
    assert info["smiles_agreement_connectivity"] >= 0.99
    raws = {r.index: r for r, _ in zip(iter_qm9pack(), range(300))}
    for row in range(0, len(store), 37):
        g, mol = store.graph(row), store.mol(row)
        raw = raws[int(store.mol_ids[row])]
        assert np.allclose(g.pos, raw.coords, atol=1e-5)  # coordinates are the DFT ones, in order
        assert g.atom_features.shape == (g.num_atoms, 9)
        assert [a.GetSymbol() for a in mol.GetAtoms()] == raw.elements
        assert np.allclose(g.lap_pe.T @ g.lap_pe, np.eye(g.num_atoms), atol=1e-4)
        assert mol.GetNumConformers() == 1
        assert compare_with_smiles(mol, raw.smiles)[1]
        # Every atom is bonded (QM9 molecules are connected) and H has exactly one bond.
        deg = np.bincount(g.bonds.ravel().astype(int), minlength=g.num_atoms)
        assert (deg[g.atomic_numbers == 1] == 1).all()


def test_zwitterion_perception_matches_connectivity():
    # qm9pack Index 1642 is written charged in the data set; we keep the DFT-derived graph.
    raw = next(r for r in iter_qm9pack() if r.index == 1642)
    conv = convert(raw)
    assert conv.connectivity_match
    assert Chem.MolFromSmiles(raw.smiles) is not None
