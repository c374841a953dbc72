"""Trustworthy files: loading a user-given file never runs code, and shipped weights are
checked against the sha256 their card records (molconf.models.io)."""

import builtins
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

import molconf.models.io as mio
from molconf.diffusion.io import load_denoiser
from molconf.ground_state.prerelax import DEFAULT_CORRECTION, load_correction, prerelax, save_correction
from molconf.models import load_model, save_model
from molconf.ground_state.correction import Gfn2Correction
from molconf.models.transformer import ConformerTransformer

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(mio.WEIGHTS_DIR.glob("*.pt"))


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle is run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.fixture
def hostile(tmp_path):
    """``(path, marker)``: a .pt file shaped like a weights file whose meta is a payload."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    torch.save({"config": {"max_hops": 3}, "state_dict": {}, "meta": Payload(marker)}, path)
    # the payload is live: an unsafe load does create the marker
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def _refused(call, path: Path, marker: Path):
    with pytest.raises(ValueError, match=rf"{path.name}: not a readable .*tensors and plain data") as err:
        call()
    assert str(path) in str(err.value)
    assert not marker.exists(), "the payload ran"


def _mol():
    m = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(m, randomSeed=0)
    return m


def test_model_loaders_refuse_a_pickle_payload(hostile):
    path, marker = hostile
    _refused(lambda: load_model(path), path, marker)
    _refused(lambda: load_denoiser(path), path, marker)
    _refused(lambda: load_correction(str(path)), path, marker)
    _refused(lambda: prerelax(_mol(), model=str(path)), path, marker)
    _refused(lambda: mio.read_model_file(path), path, marker)


def test_public_predict_refuses_a_pickle_payload(hostile):
    import molconf

    path, marker = hostile
    with pytest.raises(ValueError, match="model.pt"):
        molconf.predict([Chem.MolFromSmiles("CCO")], model=str(path))
    assert not marker.exists()


def test_correction_export_entry_point_refuses_a_pickle_payload(hostile, tmp_path):
    path, marker = hostile
    proc = subprocess.run([sys.executable, "-m", "molconf.ground_state.prerelax", str(path), "--data-dir",
                           str(tmp_path / "no_data"), "--out", str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert f"error: {path}: not a readable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_truncated_and_foreign_files_are_named(tmp_path):
    model = ConformerTransformer("rebind", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                                 n_decoder_layers=1, pe_dim=16)
    good = save_model(model, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.pt: not a readable model file"):
        load_model(cut)
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(ValueError, match="text.pt: not a readable"):
        load_correction(str(tmp_path / "text.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


# --- sha256 of shipped weights ----------------------------------------------------------

def test_every_shipped_weights_file_has_a_card_with_its_sha256():
    assert len(SHIPPED) >= 3
    for pt in SHIPPED:
        card = mio.card_path(pt)
        assert card.is_file(), f"{pt.name} has no card"
        lines = [ln for ln in card.read_text().splitlines() if ln.startswith("- **sha256**")]
        assert len(lines) == 1, f"{card.name}: expected one sha256 line, found {lines}"
        assert mio.card_sha256(pt) == mio.file_sha256(pt), f"{card.name} records another hash than {pt.name}'s"
        mio.verify_weights_file(pt)


def _copy_with_card(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / src.name)
    shutil.copy(mio.card_path(src), folder / mio.card_path(src).name)
    return folder / src.name


def _flip_1kb(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 1024] = bytes(b ^ 0xFF for b in data[mid:mid + 1024])
    st = path.stat()
    path.write_bytes(bytes(data))
    # a different modification time even on a file system with coarse timestamps (same size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.mark.parametrize("name, load", [
    ("qm9_rebind.pt", lambda p: load_model(p)),
    (DEFAULT_CORRECTION.name, lambda p: load_correction(str(p))),
])
def test_damaged_copy_of_shipped_weights_is_refused(tmp_path, name, load):
    copy = _copy_with_card(mio.WEIGHTS_DIR / name, tmp_path / "w")
    expected = mio.card_sha256(copy)
    load(copy)  # an intact copy loads (its card's hash checked)
    _flip_1kb(copy)
    actual = mio.file_sha256(copy)
    assert actual != expected
    with pytest.raises(ValueError) as err:
        load(copy)
    msg = str(err.value)
    assert str(copy) in msg and expected in msg and actual in msg and "damaged" in msg and "reinstall" in msg


def test_hash_computed_once_per_file_version(tmp_path, monkeypatch):
    copy = _copy_with_card(mio.WEIGHTS_DIR / "qm9_rebind.pt", tmp_path)
    calls = []
    import molconf.data.cache as cache  # the hashing mio uses

    real = cache.hashlib.sha256
    monkeypatch.setattr(cache.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        load_model(copy)
    assert len(calls) == 1
    _flip_1kb(copy)  # a changed file is hashed again
    with pytest.raises(ValueError, match="damaged"):
        load_model(copy)
    assert len(calls) == 2


def test_shipped_weights_without_sha256_line_are_refused(tmp_path, monkeypatch):
    copy = _copy_with_card(mio.WEIGHTS_DIR / "qm9_rebind.pt", tmp_path / "pkg_weights")
    card = mio.card_path(copy)
    card.write_text("\n".join(ln for ln in card.read_text().splitlines() if "**sha256**" not in ln) + "\n")
    load_model(copy)  # outside the package: a card without a hash line is not checked
    monkeypatch.setattr(mio, "WEIGHTS_DIR", copy.parent.resolve())  # as if this were the package's folder
    with pytest.raises(ValueError, match=r"qm9_rebind.pt: shipped weights whose card qm9_rebind.md records no sha256"):
        load_model(copy)
    card.unlink()
    with pytest.raises(ValueError, match="records no sha256"):
        load_model(copy)


def test_writers_record_the_new_hash_in_the_card(tmp_path, monkeypatch):
    # save_model over a copy of a shipped model: its card keeps its text and gets the new hash
    copy = _copy_with_card(mio.WEIGHTS_DIR / "qm9_rebind.pt", tmp_path / "a")
    before = mio.card_path(copy).read_text()
    model, meta = load_model(copy)
    torch.nn.init.zeros_(next(model.parameters()))
    save_model(model, copy, meta, half=True)
    after = mio.card_path(copy).read_text()
    assert mio.card_sha256(copy) == mio.file_sha256(copy) != mio.card_sha256(mio.WEIGHTS_DIR / "qm9_rebind.pt")
    strip = lambda t: [ln for ln in t.splitlines() if "**sha256**" not in ln]  # noqa: E731
    assert strip(after) == strip(before) and after.count("**sha256**") == 1
    load_model(copy)
    # a correction saved into the package's weights folder gets a card with its hash
    monkeypatch.setattr(mio, "WEIGHTS_DIR", (tmp_path / "b").resolve())
    (tmp_path / "b").mkdir()
    save_correction(Gfn2Correction(hidden=8, layers=1), tmp_path / "b" / "c.pt", {"elements": [1, 6]})
    assert mio.card_sha256(tmp_path / "b" / "c.pt") == mio.file_sha256(tmp_path / "b" / "c.pt")
    assert load_correction(str(tmp_path / "b" / "c.pt")).trained_elements == (1, 6)
    # the benchmark's card writer ends the card with the line
    text = mio.with_sha256_line("# Model card\n\n- **Task**: x\n", copy)
    assert text.endswith(mio.sha256_line(copy) + "\n") and mio.SHA256_LINE.search(text)
