"""The package-level API as the README shows it, in fresh interpreters.

``import molconf; molconf.predict(...)`` must work on every call, whatever submodules the
program (or molconf itself) imports in between: a submodule named like a public function
would replace it on the package at its first import.
"""

import json
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import molconf


def _run(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONWARNINGS": "ignore", **_env()})


def _env() -> dict:
    import os

    return dict(os.environ)


def test_no_submodule_is_named_like_a_public_name():
    submodules = {m.name for m in pkgutil.iter_modules(molconf.__path__)}
    assert not submodules & set(molconf.__all__), submodules & set(molconf.__all__)
    for name in molconf.__all__:
        assert hasattr(molconf, name), name
    assert callable(molconf.predict) and callable(molconf.generate)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'predikt'"):
        molconf.predikt  # noqa: B018


def test_fresh_interpreter_predict_twice_generate_and_every_submodule(tmp_path):
    """The README's calls, twice, with bad input beside good; then every submodule imported and
    the calls again; molconf.generate with a (tiny, untrained) denoiser file."""
    denoiser = tmp_path / "denoiser.pt"
    code = f"""
    import importlib, json, pkgutil, time, warnings
    warnings.simplefilter("ignore")
    import molconf
    out = {{}}

    def calls(tag):
        t = time.perf_counter()
        mols = molconf.predict(["CCO", "C[C@H](N)C(=O)O", "not a smiles"])
        out[tag + "_predict"] = [None if m is None else m.GetNumAtoms() for m in mols]
        [m], report = molconf.predict("c1ccccc1O", return_report=True)
        out[tag + "_single"] = [m.GetNumConformers(), report.model]
        out[tag + "_seconds"] = time.perf_counter() - t
        mols = molconf.generate(["CCO", "xx"], n=2, model={str(denoiser)!r}, steps=3)
        out[tag + "_generate"] = [None if m is None else m.GetNumConformers() for m in mols]

    from molconf.diffusion.model import EquivariantDenoiser
    from molconf.diffusion.io import save_denoiser
    save_denoiser(EquivariantDenoiser(ns=8, nv=2, n_layers=1, radial_hidden=8), {str(denoiser)!r})
    calls("first")
    calls("second")
    failed = []
    for info in pkgutil.walk_packages(molconf.__path__, "molconf."):
        try:
            importlib.import_module(info.name)
        except ImportError as err:  # an optional extra (tblite, ...) not installed
            failed.append(f"{{info.name}}: {{err}}")
    out["imported"] = sorted(m for m in __import__("sys").modules if m.startswith("molconf."))
    out["not_imported"] = failed
    calls("after_imports")
    out["types"] = [type(molconf.predict).__name__, type(molconf.generate).__name__]
    print(json.dumps(out))
    """
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for tag in ("first", "second", "after_imports"):
        assert out[tag + "_predict"] == [9, 13, None], out
        assert out[tag + "_single"] == [1, "qm9_rebind"], out
        assert out[tag + "_generate"] == [2, None], out
    assert out["types"] == ["function", "function"]
    assert "molconf.prediction" in out["imported"] and "molconf.diffusion.api" in out["imported"]
    assert len(out["imported"]) > 40, out["imported"]  # every submodule really was imported


def test_prediction_path_imports_neither_pyg_nor_torchmetrics():
    r = _run("""
    import sys, warnings
    warnings.simplefilter("ignore")
    import molconf
    molconf.predict(["CCO", "c1ccccc1"])
    heavy = [m for m in ("torch_geometric", "torchmetrics", "lightning", "scipy.signal") if m in sys.modules]
    print(heavy)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_models_are_read_once_per_process(monkeypatch):
    import molconf.prediction as P

    P.clear_model_cache()
    reads = []
    real = P.load_model
    monkeypatch.setattr(P, "load_model", lambda *a, **k: reads.append(a) or real(*a, **k))
    first = P.resolve_model("qm9_rebind")
    second = P.resolve_model("default")  # the same file by another name
    assert first is second and len(reads) == 1
    molconf.predict(["CCO"])
    molconf.predict(["CCN"])
    assert len(reads) == 2  # + the drug-like default model, once
    P.clear_model_cache()
    assert P.resolve_model("qm9_rebind") is not first and len(reads) == 3


def test_failure_warning_points_at_the_callers_line():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mols = molconf.predict(["not a smiles", "CCO"])
    assert mols[0] is None and mols[1] is not None
    [w] = [w for w in caught if "not predicted" in str(w.message)]
    assert w.filename == __file__ and "input #0 ('not a smiles'): invalid SMILES" in str(w.message)
