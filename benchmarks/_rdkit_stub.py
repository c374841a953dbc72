"""Import molconf's networks on a machine without RDKit (the GPU machine), for the GPU check.

``molconf.models`` imports ``molconf.data``, whose modules import RDKit at the top for
featurisation (the networks themselves need none of it: the GPU check feeds them graphs
featurised elsewhere). :func:`install` puts a stand-in ``rdkit`` package in front of the
import system: importing it works, every attribute is a placeholder, and *using* one (calling
it) raises :class:`ModuleNotFoundError` naming what needed RDKit. Nothing in the GPU check
calls RDKit, so a placeholder that is called is a bug that gets a clear message.

Only the benchmark scripts use this; the package never does.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

NOTE = "RDKit is not installed on this machine"


class _Missing:
    """Stands for any RDKit object: attributes chain, calling raises."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> _Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ModuleNotFoundError(f"{NOTE}: {self._name}() needs it")

    def __repr__(self) -> str:
        return f"<missing {self._name}>"


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str) -> _Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self.__name__}.{attr}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "rdkit" or name.startswith("rdkit."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so that ``rdkit.Chem.AllChem`` imports too
        module.__molconf_stub__ = True
        return module

    def exec_module(self, module):
        pass


def rdkit_importable() -> bool:
    """Whether the real RDKit can be imported here."""
    if is_stubbed():
        return False
    return importlib.util.find_spec("rdkit") is not None


def is_stubbed() -> bool:
    return getattr(sys.modules.get("rdkit"), "__molconf_stub__", False)


def install(force: bool = False) -> bool:
    """Put the stand-in in place where RDKit is missing (or always, with ``force``).

    Call it before anything imports molconf. Returns whether the stand-in is in use.

    Raises
    ------
    RuntimeError
        ``force`` after the real RDKit was already imported.
    """
    if is_stubbed():
        return True
    if not force and importlib.util.find_spec("rdkit") is not None:
        return False
    if any(m == "rdkit" or m.startswith("rdkit.") for m in sys.modules):
        raise RuntimeError("the real RDKit is already imported in this process")
    sys.meta_path.insert(0, _Finder())
    return True
