"""QM9 readers: the ``qm9pack`` wheel (offline) and the original one-XYZ-per-molecule archive.

Both yield :class:`RawMolecule` records (elements + DFT coordinates + the data set's SMILES);
:mod:`molconf.data.convert` turns them into graphs.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molconf.errors import MoleculeError

QM9_NUM_MOLECULES = 130_831  # molecules in qm9pack (QM9 minus its 3,054 failed-consistency ones)
QM9PACK_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


@dataclass
class RawMolecule:
    """One molecule as the data set stores it."""

    index: int  # the data set's own id (QM9 "Index", 1-based)
    elements: list[str]
    coords: np.ndarray  # (N, 3) float64, Å
    smiles: str  # the data set's SMILES ("" if absent)
    name: str  # human-readable origin, used in error messages

    def __post_init__(self):
        if len(self.elements) == 0:
            raise MoleculeError(self.name, "no atoms")
        if self.coords.shape != (len(self.elements), 3):
            raise MoleculeError(
                self.name,
                f"{len(self.elements)} elements but coordinates of shape {self.coords.shape}",
            )
        if not np.isfinite(self.coords).all():
            raise MoleculeError(self.name, "non-finite coordinates")


def _float(token: str, name: str) -> float:
    # The original archive writes some numbers in Mathematica notation, e.g. "1.2*^-6".
    try:
        return float(token.replace("*^", "e"))
    except ValueError:
        raise MoleculeError(name, f"cannot parse number {token!r}") from None


def qm9pack_data_dir() -> Path:
    """Folder of QM9 CSVs inside the installed ``qm9pack`` wheel.

    Found without importing ``qm9pack`` (its ``__init__`` needs ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "QM9 needs the 'qm9pack' package (pip install 'molconf[data]' or pip install "
            "qm9pack), or a path to the original QM9 XYZ archive"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [f for f in QM9PACK_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack at {folder} lacks {missing}")
    return folder


def _parse_list(text: str) -> list[str]:
    return [t.strip().strip("'\"") for t in text.strip().strip("[]").split(",") if t.strip()]


def parse_qm9pack_row(row: dict[str, str]) -> RawMolecule:
    """One CSV row of qm9pack → :class:`RawMolecule`."""
    name = f"QM9 {row.get('XYZ_file') or row.get('Index')}"
    elements = _parse_list(row["Elements"])
    values = [_float(t, name) for t in row["XYZ_Ang"].replace("[", "").replace("]", "").split(",")]
    if len(values) % 3:
        raise MoleculeError(name, f"{len(values)} coordinate values is not a multiple of 3")
    coords = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    return RawMolecule(int(row["Index"]), elements, coords, row.get("SMILES", ""), name)


def iter_qm9pack(data_dir: Path | None = None) -> Iterator[RawMolecule | MoleculeError]:
    """All molecules of qm9pack in file order; unreadable rows are yielded as errors."""
    data_dir = data_dir or qm9pack_data_dir()
    csv.field_size_limit(1 << 30)
    for fname in QM9PACK_FILES:
        with open(data_dir / fname, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    yield parse_qm9pack_row(row)
                except (MoleculeError, KeyError, ValueError) as err:
                    yield err if isinstance(err, MoleculeError) else MoleculeError(
                        f"QM9 row {row.get('Index')}", f"malformed row: {err}"
                    )


def parse_qm9_xyz(text: str, name: str) -> RawMolecule:
    """Parse one file of the original QM9 archive (``dsgdb9nsd_NNNNNN.xyz``).

    Layout: atom count; ``gdb <index> <properties…>``; one line per atom (element, x, y, z,
    Mulliken charge); frequencies; ``<GDB SMILES> <relaxed SMILES>``; InChIs.

    Examples
    --------
    >>> text = '''2
    ... gdb 7 1.0 2.0
    ... H 0.0 0.0 0.0 0.1
    ... H 0.74*^0 0.0 0.0 -0.1
    ... 4400.0
    ... [H][H]\t[H][H]
    ... InChI=1S/H2/h1H\tInChI=1S/H2/h1H'''
    >>> m = parse_qm9_xyz(text, "h2.xyz")
    >>> m.index, m.elements, m.coords[1].tolist(), m.smiles
    (7, ['H', 'H'], [0.74, 0.0, 0.0], '[H][H]')
    """
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise MoleculeError(name, "empty file")
    try:
        n = int(lines[0].split()[0])
    except ValueError:
        raise MoleculeError(name, f"first line {lines[0]!r} is not an atom count") from None
    if n <= 0:
        raise MoleculeError(name, f"atom count {n} must be positive")
    if len(lines) < n + 2:
        raise MoleculeError(name, f"expects {n} atom lines, file has {max(len(lines) - 2, 0)}")
    header = lines[1].split()
    try:
        index = int(header[1]) if len(header) > 1 and header[0] == "gdb" else -1
    except ValueError:
        index = -1
    elements, coords = [], []
    for line in lines[2 : 2 + n]:
        parts = line.split()
        if len(parts) < 4:
            raise MoleculeError(name, f"atom line {line!r} has fewer than 4 fields")
        elements.append(parts[0])
        coords.append([_float(t, name) for t in parts[1:4]])
    smiles_line = lines[n + 3].split() if len(lines) > n + 3 else []
    # The second SMILES is the one of the relaxed (B3LYP) geometry, which the coordinates match.
    smiles = smiles_line[-1] if smiles_line else ""
    return RawMolecule(index, elements, np.asarray(coords, dtype=np.float64), smiles, name)


def iter_qm9_xyz_archive(path: str | Path) -> Iterator[RawMolecule | MoleculeError]:
    """Molecules from a folder of QM9 ``.xyz`` files or a ``.tar``/``.tar.bz2`` of them.

    Files are read in name order; each unreadable file is yielded as a
    :class:`~molconf.errors.MoleculeError` naming it.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.xyz"))
        if not files:
            raise FileNotFoundError(f"no .xyz files in {path}")
        for f in files:
            try:
                yield parse_qm9_xyz(f.read_text(errors="replace"), f.name)
            except MoleculeError as err:
                yield err
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = sorted((m for m in tar if m.isfile() and m.name.endswith(".xyz")),
                             key=lambda m: m.name)
            if not members:
                raise FileNotFoundError(f"no .xyz files in archive {path}")
            for m in members:
                text = io.TextIOWrapper(tar.extractfile(m), errors="replace").read()
                try:
                    yield parse_qm9_xyz(text, Path(m.name).name)
                except MoleculeError as err:
                    yield err
    else:
        raise FileNotFoundError(f"{path} is neither a folder of .xyz files nor a tar archive")
