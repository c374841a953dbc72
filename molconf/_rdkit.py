"""Fast atom and bond lists of an RDKit ``Mol``.

Iterating ``mol.GetAtoms()`` / ``mol.GetBonds()`` goes through a Python-level sequence
wrapper that costs about a microsecond per item, which dominates the per-molecule work of
featurisation and stereo checks on small molecules; ``Get*WithIdx`` in a range is about
twice as fast, and the lists can be reused.

>>> from rdkit import Chem
>>> m = Chem.MolFromSmiles("CCO")
>>> [a.GetSymbol() for a in atoms(m)], len(bonds(m))
(['C', 'C', 'O'], 2)
"""

from __future__ import annotations

from rdkit import Chem


def atoms(mol: Chem.Mol) -> list[Chem.Atom]:
    return [mol.GetAtomWithIdx(i) for i in range(mol.GetNumAtoms())]


def bonds(mol: Chem.Mol) -> list[Chem.Bond]:
    return [mol.GetBondWithIdx(i) for i in range(mol.GetNumBonds())]


def mol_from_smiles_quietly(smiles: str) -> Chem.Mol | None:
    """``Chem.MolFromSmiles`` without RDKit's log lines: callers report bad input themselves.

    >>> mol_from_smiles_quietly("C1CC") is None, mol_from_smiles_quietly("CCO").GetNumAtoms()
    (True, 3)
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        return Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")
