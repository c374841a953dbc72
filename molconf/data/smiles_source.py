"""SMILES sources with stable molecule ids: files, in-memory lists, and the MOSES set.

A record's id is its position in the full source (0-based; blank lines, ``#`` comments and
a header are not records). For MOSES that is the row of ``train.csv.gz`` / ``test.csv.gz``
in the ``molsets`` wheel, which is located through the import system's metadata and never
imported (``import moses`` pulls in dependencies that do not build here).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from molconf.data.cache import file_sha256

MOSES_PARTS = ("train", "test")


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def read_smiles_file(path: str | Path) -> Iterator[str]:
    """SMILES records of a file, in order (streamed; ``.gz`` is decompressed on the fly).

    ``.csv``: the column named ``smiles`` (any case; the header row is skipped), else the
    first column of every row. ``.parquet``: the column named ``smiles`` (needs pyarrow).
    Other files (``.smi``, ``.txt``): the first token of each line; blank lines, ``#``
    comments and a first line reading ``smiles`` are skipped. Unreadable SMILES are still
    records (they fail at the "input" stage with their index).
    """
    return (smiles for smiles, _, _ in read_named_smiles(path))


def read_named_smiles(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """``(smiles, name, where)`` for each record of :func:`read_smiles_file`'s files, streamed.

    ``name`` is the rest of a ``.smi`` line, or the ``name`` column of a ``.csv`` / ``.parquet``
    (``""`` when there is none); ``where`` says where the record is (``"lib.smi line 7"``,
    ``"lib.parquet row 12"``; physical lines, counting blank and comment lines), for messages
    that name a molecule of a file with 10⁸ of them.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "lib.smi"
    >>> _ = f.write_text("SMILES name\\nCCO ethanol\\n\\n# a comment\\nc1ccccc1\\n")
    >>> list(read_named_smiles(f))
    [('CCO', 'ethanol', 'lib.smi line 2'), ('c1ccccc1', '', 'lib.smi line 5')]
    """
    path = Path(path)
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    if stem.lower().endswith(".parquet"):
        yield from _read_parquet(path)
        return
    with _open_text(path) as fh:
        if stem.lower().endswith(".csv"):
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            names = [h.strip().lower() for h in header]
            col = names.index("smiles") if "smiles" in names else 0
            name_col = names.index("name") if "name" in names else None
            if "smiles" not in names and header:  # no header: the first row is a record
                yield header[0].strip(), "", f"{path.name} line 1"
            for row in reader:
                if row:
                    name = row[name_col].strip() if name_col is not None and len(row) > name_col else ""
                    yield (row[col].strip() if len(row) > col else "", name, f"{path.name} line {reader.line_num}")
            return
        first = True
        for k, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(maxsplit=1)
            if first and parts[0].lower() == "smiles":
                first = False
                continue
            first = False
            yield parts[0], parts[1].strip() if len(parts) > 1 else "", f"{path.name} line {k}"


def _read_parquet(path: Path, batch_rows: int = 65_536) -> Iterator[tuple[str, str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow, "
                          "or pip install 'molconf[cluster]')") from err
    table = pq.ParquetFile(path)
    columns = {c.lower(): c for c in table.schema_arrow.names}
    if "smiles" not in columns:
        raise ValueError(f"{path}: no 'smiles' column (found: {', '.join(table.schema_arrow.names)})")
    wanted = [columns["smiles"]] + ([columns["name"]] if "name" in columns else [])
    row = 0
    for batch in table.iter_batches(batch_size=batch_rows, columns=wanted):
        smiles = batch.column(0).to_pylist()
        names = batch.column(1).to_pylist() if batch.num_columns > 1 else [""] * len(smiles)
        for smi, name in zip(smiles, names):
            row += 1
            yield ("" if smi is None else str(smi).strip(), "" if name is None else str(name), f"{path.name} row {row}")


def moses_data_file(part: str = "train") -> Path:
    """``train.csv.gz`` / ``test.csv.gz`` of the installed ``molsets`` wheel (not imported).

    ``import moses`` pulls in dependencies that do not build here; the data files are found
    through the import system's metadata only.
    """
    if part not in MOSES_PARTS:
        raise ValueError(f"MOSES part must be one of {MOSES_PARTS}, got {part!r}")
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MOSES data ships in the molsets wheel: pip install --no-deps molsets "
            "(or pass the csv.gz with --moses-file / SmilesSource.moses(path=...))"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "dataset" / "data" / f"{part}.csv.gz"
        if path.is_file():
            return path
    raise FileNotFoundError(f"molsets is installed but has no dataset/data/{part}.csv.gz")




class SmilesSource:
    """SMILES records with stable ids, optionally a seeded random subsample.

    A record's id is its position in the full source (0-based). The subsample of size ``n``
    is ``sorted(default_rng(seed).choice(total, n, replace=False))``: deterministic, in
    source order, and drawn without holding the source in memory (two streaming passes).

    Parameters
    ----------
    smiles : sequence of str, optional
        In-memory SMILES (ids = positions).
    path : path, optional
        A SMILES file (:func:`read_smiles_file`).
    n : int, optional
        Random subsample size (all records if ``None`` or ≥ the total).
    seed : int
        Subsample seed.
    name : str
        What the source is called in reports.
    """

    def __init__(self, smiles: Sequence[str] | None = None, path: str | Path | None = None,
                 n: int | None = None, seed: int = 0, name: str | None = None):
        if (smiles is None) == (path is None):
            raise ValueError("give exactly one of smiles and path")
        self._smiles = list(smiles) if smiles is not None else None
        self.path = Path(path).resolve() if path is not None else None
        if self.path is not None and not self.path.is_file():
            raise FileNotFoundError(f"SMILES file {self.path} not found")
        self.n = n
        self.seed = seed
        self.name = name or (self.path.name if self.path else "smiles list")
        self._total: int | None = None
        self._chosen: np.ndarray | None = None

    @classmethod
    def moses(cls, part: str = "train", n: int | None = None, seed: int = 0,
              path: str | Path | None = None) -> SmilesSource:
        """The MOSES ``part`` ("train" or "test") from the molsets wheel, or from ``path``."""
        return cls(path=path or moses_data_file(part), n=n, seed=seed, name=f"MOSES {part}")

    def _all(self) -> Iterator[str]:
        return iter(self._smiles) if self._smiles is not None else read_smiles_file(self.path)

    @property
    def total(self) -> int:
        """Records in the full source (one counting pass for files)."""
        if self._total is None:
            self._total = len(self._smiles) if self._smiles is not None else sum(1 for _ in self._all())
        return self._total

    def chosen(self) -> np.ndarray | None:
        """Sorted ids of the subsample, or ``None`` when every record is used."""
        if self.n is None or self.n >= self.total:
            return None
        if self._chosen is None:
            rng = np.random.default_rng(self.seed)
            self._chosen = np.sort(rng.choice(self.total, size=self.n, replace=False))
        return self._chosen

    def __len__(self) -> int:
        chosen = self.chosen()
        return self.total if chosen is None else len(chosen)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        """``(id, SMILES)`` in source order."""
        chosen = self.chosen()
        if chosen is None:
            yield from enumerate(self._all())
            return
        k = 0
        for i, smi in enumerate(self._all()):
            if i == chosen[k]:
                yield i, smi
                k += 1
                if k == len(chosen):
                    return

    def describe(self) -> dict:
        """What the records are: a build resumes only from the same description."""
        desc: dict = {"name": self.name, "n": self.n, "seed": self.seed, "total": self.total}
        if self.path is not None:
            desc.update(path=str(self.path), bytes=self.path.stat().st_size, sha256=file_sha256(self.path))
        else:
            desc["sha256"] = hashlib.sha256("\n".join(self._smiles).encode()).hexdigest()
        return desc


def as_source(source) -> SmilesSource:
    """A :class:`SmilesSource` from itself, a file path, or a sequence of SMILES."""
    if isinstance(source, SmilesSource):
        return source
    if isinstance(source, (str, Path)):
        return SmilesSource(path=source)
    return SmilesSource(smiles=list(source))
