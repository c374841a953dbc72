"""``molconf baselines`` (RDKit ETKDG / MMFF) on a data set other than QM9: a tiny stand-in moses_xtb."""

import gzip
import json

import pytest

from molconf import baselines
from molconf.ground_state import build as xb

SMILES = ["CCO", "C=CC", "CC(C)O", "c1ccccc1"]


@pytest.fixture(scope="module")
def moses_xtb_standin(tmp_path_factory):
    """A merged GFN2-xTB data set of four small molecules (a cheap protocol: it is a stand-in)."""
    pytest.importorskip("tblite")
    root = tmp_path_factory.mktemp("moses_xtb")
    protocol = xb.XtbProtocol(num_conformers=2, num_xtb=1)
    xb.build_dataset(SMILES, root / "build", protocol, workers=1, shard_size=2, progress=False)
    xb.merge_dataset(root / "build", root / "moses_xtb")
    return root / "moses_xtb" / "molecules.sdf.gz"


def test_baselines_on_moses_xtb(moses_xtb_standin, tmp_path):
    out = tmp_path / "out"
    baselines.main(["--dataset", "moses_xtb", "--data-root", str(moses_xtb_standin), "--split", "train",
                    "--cache-dir", str(tmp_path / "cache"), "--limit", "3", "--workers", "1", "--out", str(out)])
    stem = "moses_xtb_train_rdkit"  # default name: <dataset>_<split>_rdkit
    result = json.loads((out / f"{stem}.json").read_text())
    assert result["meta"]["dataset"] == "moses_xtb" and result["meta"]["n_molecules"] == 3
    assert [r["method"] for r in result["table"]] == list(baselines.METHODS)
    for r in result["table"]:
        assert r["n_molecules"] == 3 and r["n_failed"] == 0 and 0 <= r["d_mae"] < 1.0
    assert "# RDKit baselines: moses_xtb train split" in (out / f"{stem}.md").read_text()
    with gzip.open(out / f"{stem}_per_molecule.csv.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 1 + 3 * len(baselines.METHODS)


def test_baselines_dataset_choices():
    with pytest.raises(SystemExit):
        baselines.main(["--dataset", "nope"])
