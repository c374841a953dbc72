"""On-disk cache of featurised molecules: ragged NumPy arrays + a checksummed manifest.

Layout of a cache folder::

    manifest.json     format version, source fingerprint, counts, sha256 of every array
    <name>.npy        one file per array (loaded memory-mapped)

Caches are written one molecule at a time by :class:`CacheWriter` (memory does not grow
with the molecule count); :func:`write_cache` is its in-memory convenience wrapper.

A cache whose manifest is missing, of another format version, built from another source, or
whose arrays do not match their checksums raises :class:`~molconf.errors.CacheError`; the
loaders then rebuild it rather than use it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
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
from molconf.data.features import NUM_ATOM_FEATURES, GraphArrays
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


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# Per-array dtype and trailing shape. Offset arrays (``*_offsets``) have one entry more than
# there are molecules (a leading 0); every other per-atom/bond/byte array is ragged.
_ARRAY_LAYOUT: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "mol_ids": (np.dtype(np.int64), ()),
    "atom_offsets": (np.dtype(np.int64), ()),
    "atomic_numbers": (np.dtype(np.uint8), ()),
    "atom_features": (np.dtype(np.uint8), (NUM_ATOM_FEATURES,)),
    "pos": (np.dtype(np.float32), (3,)),
    "bond_offsets": (np.dtype(np.int64), ()),
    "bonds": (np.dtype(np.int16), (2,)),
    "bond_types": (np.dtype(np.uint8), ()),
    "pe_offsets": (np.dtype(np.int64), ()),
    "lap_pe": (np.dtype(np.float32), ()),
    "mol_offsets": (np.dtype(np.int64), ()),
    "mol_bytes": (np.dtype(np.uint8), ()),
}
# Which ragged array each offset array indexes.
_OFFSETS_OF = {
    "atom_offsets": "atomic_numbers", "bond_offsets": "bonds",
    "pe_offsets": "lap_pe", "mol_offsets": "mol_bytes",
}  # fmt: skip
_COPY_CHUNK = 1 << 22  # bytes per read/write when assembling .npy files


class CacheWriter:
    """Write a cache one molecule at a time, in memory independent of the molecule count.

    Every array is appended to a raw file in a temporary sibling folder; :meth:`finish`
    turns the raw files into ``.npy`` files (header + the same bytes, streamed), writes the
    manifest and renames the folder into place, so readers never see a half-written cache.
    The result is byte-for-byte what :func:`write_cache` wrote before it became a wrapper.

    Parameters
    ----------
    folder : path
        Final cache folder (replaced if it exists, only when :meth:`finish` succeeds).

    Examples
    --------
    >>> with CacheWriter(folder) as w:               # doctest: +SKIP
    ...     for mol_id, graph, binary in molecules:
    ...         w.add(mol_id, graph, binary)
    ...     store_folder = w.finish(fingerprint, info)

    Leaving the ``with`` block without :meth:`finish` (or by an exception) deletes the
    temporary folder and leaves any existing cache untouched.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=self.folder.name + ".tmp-", dir=self.folder.parent))
        self._files = {name: open(self._tmp / f"{name}.raw", "wb") for name in _ARRAY_NAMES}
        self._rows = {name: 0 for name in _ARRAY_NAMES}  # rows written to each raw file
        self.num_molecules = 0
        self.num_atoms = 0
        self.max_atoms = 0
        self._done = False

    # --- appending ----------------------------------------------------------------------
    def _append(self, name: str, values) -> None:
        dtype, trailing = _ARRAY_LAYOUT[name]
        arr = np.ascontiguousarray(np.asarray(values).astype(dtype, copy=False))
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.shape[1:] != trailing:
            raise ValueError(f"{name}: rows of shape {arr.shape[1:]}, expected {trailing}")
        self._files[name].write(arr.tobytes())
        self._rows[name] += arr.shape[0]

    def _append_offset(self, name: str) -> None:
        # Offsets are stored as running ends; finish() prepends the leading 0.
        self._append(name, np.int64(self._rows[_OFFSETS_OF[name]]))

    def add(self, mol_id: int, graph: GraphArrays, mol_binary: bytes) -> None:
        """Append one molecule (it needs coordinates: ``graph.pos`` is not ``None``)."""
        if self._done:
            raise RuntimeError("CacheWriter.add after finish()")
        if graph.pos is None:
            raise ValueError("every cached molecule needs coordinates")
        n = graph.num_atoms
        if graph.pos.shape != (n, 3) or graph.lap_pe.shape != (n, n) or len(graph.atom_features) != n:
            raise ValueError(f"molecule {mol_id}: arrays disagree on the atom count {n}")
        self._append("mol_ids", np.int64(mol_id))
        self._append("atomic_numbers", graph.atomic_numbers)
        self._append("atom_features", graph.atom_features)
        self._append("pos", graph.pos)
        self._append("bonds", np.asarray(graph.bonds).reshape(-1, 2))
        self._append("bond_types", graph.bond_types)
        self._append("lap_pe", np.asarray(graph.lap_pe).ravel())
        self._append("mol_bytes", np.frombuffer(mol_binary, dtype=np.uint8))
        for name in _OFFSETS_OF:
            self._append_offset(name)
        self.num_molecules += 1
        self.num_atoms += n
        self.max_atoms = max(self.max_atoms, n)

    def add_store(self, store: GraphStore) -> None:
        """Append every molecule of another cache, array by array (no re-featurisation).

        Used to combine shards; memory is bounded by the size of ``store``, not of the
        cache being written.
        """
        if self._done:
            raise RuntimeError("CacheWriter.add_store after finish()")
        a = store._a
        base = {off: self._rows[target] for off, target in _OFFSETS_OF.items()}
        for name in _ARRAY_NAMES:
            if name not in _OFFSETS_OF:
                self._append(name, a[name])
        for off in _OFFSETS_OF:  # the store's running ends, shifted past what was there
            self._append(off, np.asarray(a[off][1:], dtype=np.int64) + base[off])
        self.num_molecules += len(store)
        self.num_atoms += int(store.num_atoms.sum())
        self.max_atoms = max(self.max_atoms, int(store.num_atoms.max(initial=0)))

    # --- finishing ----------------------------------------------------------------------
    def _write_npy(self, name: str) -> str:
        """Raw file -> ``<name>.npy`` (header, then the raw bytes); returns its sha256."""
        dtype, trailing = _ARRAY_LAYOUT[name]
        leading = b""
        rows = self._rows[name]
        if name in _OFFSETS_OF:
            leading, rows = np.zeros(1, np.int64).tobytes(), rows + 1
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": (rows, *trailing)}
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, header)
        h = hashlib.sha256()
        raw = self._tmp / f"{name}.raw"
        with open(self._tmp / f"{name}.npy", "wb") as out, open(raw, "rb") as src:
            # Hash while copying: the file is not read a second time.
            for chunk in itertools.chain((head.getvalue(), leading), iter(lambda: src.read(_COPY_CHUNK), b"")):
                h.update(chunk)
                out.write(chunk)
        raw.unlink()
        return h.hexdigest()

    def finish(self, fingerprint: dict, info: dict | None = None) -> Path:
        """Build the ``.npy`` files and the manifest, then move the cache into place."""
        if self._done:
            raise RuntimeError("CacheWriter.finish called twice")
        try:
            for fh in self._files.values():
                fh.close()
            checksums = {name: self._write_npy(name) for name in _ARRAY_NAMES}
            manifest = {
                "format_version": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "num_molecules": self.num_molecules,
                "num_atoms": self.num_atoms,
                "max_atoms": self.max_atoms,
                "sha256": checksums,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "info": info or {},
            }
            (self._tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self._tmp.rename(self.folder)
        finally:
            self._done = True
            self.abort()
        return self.folder

    def abort(self) -> None:
        """Discard everything written (a no-op after a successful :meth:`finish`)."""
        for fh in self._files.values():
            fh.close()
        if self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


def write_cache(
    folder: str | Path,
    mol_ids: Sequence[int],
    graphs: Sequence[GraphArrays],
    mol_binaries: Sequence[bytes],
    fingerprint: dict,
    info: dict | None = None,
) -> Path:
    """Write a cache atomically from in-memory lists (a wrapper on :class:`CacheWriter`)."""
    if not (len(mol_ids) == len(graphs) == len(mol_binaries)):
        raise ValueError("mol_ids, graphs and mol_binaries must have the same length")
    if any(g.pos is None for g in graphs):
        raise ValueError("every cached molecule needs coordinates")
    with CacheWriter(folder) as writer:
        for mol_id, graph, binary in zip(mol_ids, graphs, mol_binaries):
            writer.add(mol_id, graph, binary)
        return writer.finish(fingerprint, info)


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
            if verify and file_sha256(path) != manifest["sha256"].get(name):
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
