"""molconf: ground-state conformation prediction from 2D molecular graphs.

The public API is two functions, imported lazily (torch and RDKit load on first use):

- :func:`predict` — one predicted ground-state conformer per molecule
  (implemented in :mod:`molconf.prediction`);
- :func:`generate` — an ensemble of conformers per molecule from a diffusion denoiser
  (implemented in :mod:`molconf.diffusion.api`).

No submodule is named like a public function, so importing any submodule (``import
molconf.prediction``, ``import molconf.diffusion``, ...) never replaces ``molconf.predict``
or ``molconf.generate``: the import system binds a submodule to its parent package under
the submodule's own name, and these names are functions for the life of the interpreter.

>>> import molconf
>>> callable(molconf.predict) and callable(molconf.generate)
True
>>> sorted(molconf.__all__)[:3]
['MoleculeError', 'PredictionReport', 'available_models']
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (resolved on first attribute access, PEP 562)
_LAZY = {
    "available_models": "molconf.prediction",
    "PredictionReport": "molconf.prediction",
    "write_sdf": "molconf.prediction",
    "write_xyz": "molconf.prediction",
    "to_ase": "molconf.prediction",
    "MoleculeError": "molconf.errors",
}

__all__ = ["predict", "generate", *_LAZY]


def predict(mols, model="default", **kwargs):
    """Predict one ground-state conformer per molecule.

    ``molconf.predict(mols, model="default", **kwargs)`` is :func:`molconf.prediction.predict`
    (see it for every keyword: ``relax_with``, ``return_report``, ``precision``, ``workers``, …).

    Parameters
    ----------
    mols : str, rdkit.Chem.Mol, or a sequence of them
        SMILES strings and/or RDKit molecules.
    model : str, path or network
        ``"default"`` (shipped models chosen per molecule), a shipped name, or a weights file.

    Returns
    -------
    list of rdkit.Chem.Mol or None
        One ``Mol`` with explicit H and one conformer per input, ``None`` where it failed.
    """
    from molconf.prediction import predict as _predict

    return _predict(mols, model=model, **kwargs)


def generate(mols, n: int = 10, model=None, **kwargs):
    """Sample ``n`` conformers per molecule with a diffusion denoiser.

    ``molconf.generate(mols, n=10, model=None, **kwargs)`` is
    :func:`molconf.diffusion.api.generate` (see it for every keyword). ``model`` is a denoiser
    weights file or checkpoint (train one with ``molconf fit --config configs/diffusion_qm9.yaml``);
    no default denoiser ships yet, and ``model=None`` says so in its error.
    """
    from molconf.diffusion.api import generate as _generate

    return _generate(mols, n=n, model=model, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cached: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'molconf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
