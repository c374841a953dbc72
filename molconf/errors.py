"""Exceptions that name the molecule they are about."""

from __future__ import annotations


class MoleculeError(ValueError):
    """A molecule could not be read, converted or predicted.

    ``molecule`` names it (file name, data-set index, SMILES or input position) and
    ``reason`` says why, so batch reports can list failures one per line.
    """

    def __init__(self, molecule: str, reason: str):
        super().__init__(f"{molecule}: {reason}")
        self.molecule = molecule
        self.reason = reason

    def __reduce__(self):  # picklable, so worker processes can return it
        return (type(self), (self.molecule, self.reason))


class CacheError(RuntimeError):
    """An on-disk cache is missing, stale or corrupted (and should be rebuilt)."""
