"""Folders of numbered work units written atomically: the resumption rule of long jobs.

A long job (a GFN2-xTB data build, a library prediction) cuts its input into units and
writes each finished unit as a few files, the ``.json`` record last. A killed run loses only
the units in flight; a rerun skips every unit whose record exists. Files are written to a
temporary name, synced and renamed, so no reader sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter), streamed: the units.

    >>> list(chunks(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def claim_folder(folder: Path, name: str, settings: dict) -> list[str]:
    """Record a job's ``settings`` in ``folder/name`` (JSON), or compare them with those recorded
    there by an earlier run: the keys whose values differ (on either side), sorted; ``[]`` when the
    folder is new or holds the same settings. The caller refuses a rerun with other settings.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> claim_folder(folder, "meta.json", {"seed": 7, "sizes": (1, 2)}), claim_folder(folder, "meta.json", {"seed": 7, "sizes": [1, 2]})
    ([], [])
    >>> claim_folder(folder, "meta.json", {"seed": 8, "sizes": [1, 2], "n": 3})  # n: recorded nowhere before
    ['n', 'seed']
    """
    folder.mkdir(parents=True, exist_ok=True)
    want = json.loads(json.dumps(settings))  # tuples as lists: as the file will read back
    path = folder / name
    if not path.is_file():
        write_atomic(path, json.dumps(want, indent=1) + "\n")
        return []
    have = json.loads(path.read_text())
    return sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))


class ShardFiles:
    """The unit files of one folder: ``{prefix}_{i:06d}.{kind}`` for each data kind, then ``.json``.

    Examples
    --------
    >>> import tempfile
    >>> units = ShardFiles(Path(tempfile.mkdtemp()), "block", ("sdf",))
    >>> units.done(0) is None
    True
    >>> units.write_unit(0, {"sdf": "$$$$\\n"}, {"molecules": 1})
    >>> units.done(0), units.path(0, "sdf").name
    ({'molecules': 1}, 'block_000000.sdf')
    """

    def __init__(self, folder: Path, prefix: str, kinds: tuple[str, ...]):
        self.dir = Path(folder)
        self.prefix = prefix
        self.kinds = kinds
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.glob("*.tmp"):  # written when a run died
            leftover.unlink()

    def path(self, i: int, kind: str) -> Path:
        return self.dir / f"{self.prefix}_{i:06d}.{kind}"

    def write_unit(self, i: int, data: dict[str, bytes | str], record: dict) -> None:
        """One finished unit; the ``.json`` is the completion mark: written last, after the data files."""
        for kind in self.kinds:
            write_atomic(self.path(i, kind), data[kind])
        write_atomic(self.path(i, "json"), json.dumps(record, indent=1) + "\n")

    def done(self, i: int) -> dict | None:
        """The unit's record if it is complete (its ``.json`` is written last), else None."""
        try:
            record = json.loads(self.path(i, "json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not all(self.path(i, kind).is_file() for kind in self.kinds):
            return None
        return record
