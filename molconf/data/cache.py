"""On-disk cache of featurised molecules: ragged NumPy arrays + a checksummed manifest.

Layout of a cache folder::

    manifest.json     format version, source fingerprint, counts, sha256 of every array
    <name>.npy        one file per array (loaded memory-mapped)

A cache whose manifest is missing, of another format version, built from another source, or
whose arrays do not match their checksums raises :class:`~molconf.errors.CacheError`; the
loaders then rebuild it rather than use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from molconf.constants import ENV_CACHE_DIR
from molconf.data.features import GraphArrays
from molconf.errors import CacheError

FORMAT_VERSION = 1
_ARRAY_NAMES = (
    "mol_ids", "atom_offsets", "atomic_numbers", "atom_features", "pos",
    "bond_offsets", "bonds", "bond_types", "pe_offsets", "lap_pe", "mol_offsets", "mol_bytes",
)  # fmt: skip


def default_cache_dir() -> Path:
    """``$MOLCONF_CACHE_DIR`` or ``~/.cache/molconf``."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "molconf")


def fingerprint_key(fingerprint: dict) -> str:
    """Short stable hash of a source fingerprint, used in cache folder names."""
    blob = json.dumps(fingerprint, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def write_cache(
    folder: str | Path,
    mol_ids: Sequence[int],
    graphs: Sequence[GraphArrays],
    mol_binaries: Sequence[bytes],
    fingerprint: dict,
    info: dict | None = None,
) -> Path:
    """Write a cache atomically (to a temporary sibling folder, then renamed into place)."""
    folder = Path(folder)
    if not (len(mol_ids) == len(graphs) == len(mol_binaries)):
        raise ValueError("mol_ids, graphs and mol_binaries must have the same length")
    if any(g.pos is None for g in graphs):
        raise ValueError("every cached molecule needs coordinates")
    n_atoms = [g.num_atoms for g in graphs]
    arrays = {
        "mol_ids": np.asarray(mol_ids, dtype=np.int64),
        "atom_offsets": _offsets(n_atoms),
        "atomic_numbers": np.concatenate([g.atomic_numbers for g in graphs] or [np.zeros(0, np.uint8)]),
        "atom_features": np.concatenate([g.atom_features for g in graphs] or [np.zeros((0, 9), np.uint8)]),
        "pos": np.concatenate([g.pos for g in graphs] or [np.zeros((0, 3), np.float32)]).astype(np.float32),
        "bond_offsets": _offsets([len(g.bonds) for g in graphs]),
        "bonds": np.concatenate([g.bonds for g in graphs] or [np.zeros((0, 2), np.int16)]),
        "bond_types": np.concatenate([g.bond_types for g in graphs] or [np.zeros(0, np.uint8)]),
        "pe_offsets": _offsets([n * n for n in n_atoms]),
        "lap_pe": np.concatenate([g.lap_pe.ravel() for g in graphs] or [np.zeros(0, np.float32)]),
        "mol_offsets": _offsets([len(b) for b in mol_binaries]),
        "mol_bytes": np.frombuffer(b"".join(mol_binaries), dtype=np.uint8),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        checksums = {}
        for name in _ARRAY_NAMES:
            np.save(tmp / f"{name}.npy", arrays[name])
            checksums[name] = _sha256(tmp / f"{name}.npy")
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "num_molecules": len(graphs),
            "num_atoms": int(sum(n_atoms)),
            "max_atoms": int(max(n_atoms, default=0)),
            "sha256": checksums,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "info": info or {},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


class GraphStore:
    """Read access to a cache folder: molecule ``i`` as arrays or as an RDKit ``Mol``.

    Parameters
    ----------
    folder : path
        Cache folder written by :func:`write_cache`.
    fingerprint : dict, optional
        If given, the cache must have been built from this source.
    verify : bool
        Check every array against its sha256 (about a second for all of QM9).
    """

    def __init__(self, folder: str | Path, fingerprint: dict | None = None, verify: bool = True):
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not manifest_path.is_file():
            raise CacheError(f"{self.folder}: no manifest.json (incomplete or not a cache)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheError(f"{self.folder}: manifest.json is corrupted ({err})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{self.folder}: format version {manifest.get('format_version')} "
                f"!= {FORMAT_VERSION} (stale cache)"
            )
        if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
            raise CacheError(f"{self.folder}: built from another source (stale cache)")
        self.manifest = manifest
        arrays = {}
        for name in _ARRAY_NAMES:
            path = self.folder / f"{name}.npy"
            if not path.is_file():
                raise CacheError(f"{self.folder}: missing {path.name}")
            if verify and _sha256(path) != manifest["sha256"].get(name):
                raise CacheError(f"{self.folder}: {path.name} does not match its checksum (corrupted)")
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise CacheError(f"{self.folder}: {path.name} unreadable ({err})") from None
        self._a = arrays
        self.mol_ids = np.asarray(arrays["mol_ids"])
        self.num_atoms = np.diff(np.asarray(arrays["atom_offsets"])).astype(np.int64)
        if len(self.mol_ids) != manifest["num_molecules"]:
            raise CacheError(f"{self.folder}: molecule count disagrees with the manifest")
        self._position = {int(m): i for i, m in enumerate(self.mol_ids)}

    def __len__(self) -> int:
        return len(self.mol_ids)

    @property
    def max_atoms(self) -> int:
        return int(self.manifest["max_atoms"])

    def positions_of(self, mol_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of the given data-set ids, and the ids not in the cache."""
        found, missing = [], []
        for m in mol_ids:
            p = self._position.get(int(m))
            (missing if p is None else found).append(int(m) if p is None else p)
        return np.asarray(found, dtype=np.int64), np.asarray(missing, dtype=np.int64)

    def graph(self, i: int) -> GraphArrays:
        """Molecule at row ``i`` as :class:`GraphArrays`."""
        a = self._a
        s, e = a["atom_offsets"][i], a["atom_offsets"][i + 1]
        bs, be = a["bond_offsets"][i], a["bond_offsets"][i + 1]
        ps, pe = a["pe_offsets"][i], a["pe_offsets"][i + 1]
        n = int(e - s)
        return GraphArrays(
            atomic_numbers=np.array(a["atomic_numbers"][s:e]),
            atom_features=np.array(a["atom_features"][s:e]),
            bonds=np.array(a["bonds"][bs:be]),
            bond_types=np.array(a["bond_types"][bs:be]),
            lap_pe=np.array(a["lap_pe"][ps:pe]).reshape(n, n),
            pos=np.array(a["pos"][s:e]),
        )

    def mol(self, i: int) -> Chem.Mol:
        """Molecule at row ``i`` as an RDKit ``Mol`` (explicit H, reference conformer)."""
        s, e = self._a["mol_offsets"][i], self._a["mol_offsets"][i + 1]
        return Chem.Mol(bytes(self._a["mol_bytes"][s:e]))
