"""GFN2-xTB energies of several conformers per molecule: the data a ranker learns and is scored on.

For every molecule of a moses_xtb split, the candidate pool of :mod:`~molconf.ground_state.search`
(ETKDGv3 × ``conformers``, seed ``seed``, each minimised with MMFF94) is stored with, per
conformer, its MMFF94 energy, a GFN2-xTB single point (tblite, the data protocol's settings),
whether it keeps the input's stereo, and its heavy-atom C-RMSD to the data set's reference ground
state (so a ranker's pick can be scored against the reference without relaxing anything). Per
molecule, the reference's own GFN2-xTB energy is kept beside them.

Shards of :data:`SHARD_SIZE` molecules are written atomically (``shard_00003.npz``) by worker
processes; a killed run resumes at the first missing shard; a molecule that fails is listed with
its reason in the shard (``failed_index`` / ``failed_reason``) and in ``summary.json``.

    molconf conformer-energies --split train --out ~/molconf-runs/conformer_energies/train --workers 2
    molconf conformer-energies --split test --conformers 10 --seed 7 --out runs/pools/test

The seed must differ from the moses_xtb build's ETKDG seed (42): with it, the pool would be the
reference's own candidates.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molconf.ground_state.build import _Workers
from molconf.shards import claim_folder, write_atomic
from molconf.ground_state.search import DEFAULT_SEED, EV_TO_KCAL, PoolError, gfn2_single_points, mmff_pool

SHARD_SIZE = 100
BUILD_SEED = 42  # the moses_xtb build's own ETKDG seed
_PER_MOL = ("index", "n_atoms", "n_conf", "e_ref")
_PER_CONF = ("e_mmff", "e_gfn2", "stereo_ok", "rmsd_ref")


@dataclass(frozen=True)
class PoolSettings:
    conformers: int = 10
    seed: int = DEFAULT_SEED
    mmff_iters: int = 500

    def __post_init__(self):
        if self.seed in (0, BUILD_SEED):
            raise ValueError(f"seed {self.seed}: 0 embeds identical conformers, {BUILD_SEED} regenerates the "
                             "reference build's own candidates; choose another")


def molecule_pool(index: int, record: str, settings: PoolSettings) -> tuple[int, dict | str]:
    """The pool of one reference molecule (SDF record) as arrays, or the reason it failed."""
    from molconf.metrics import c_rmsd
    from molconf.data.moses_xtb import read_reference

    ref = read_reference(record)
    if ref is None:
        return index, "record not readable"
    try:
        pool, ids, e_mmff, stereo_ok = mmff_pool(ref, settings.conformers, settings.seed, settings.mmff_iters)
        e_gfn2 = gfn2_single_points(pool, ids)
        rmsd = [c_rmsd(ref, pool, pred_conf_id=c) for c in ids]
    except PoolError as err:
        return index, str(err)
    except Exception as err:  # RDKit / tblite errors: the molecule is named with its reason
        return index, f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
    pos = np.stack([pool.GetConformer(c).GetPositions() for c in ids])  # (K, N, 3)
    return index, {"index": index, "n_atoms": ref.GetNumAtoms(), "n_conf": len(ids),
                   "e_ref": float(ref.GetProp("gfn2_energy_eV")) * EV_TO_KCAL,
                   "e_mmff": e_mmff, "e_gfn2": e_gfn2, "stereo_ok": stereo_ok, "rmsd_ref": rmsd,
                   "pos": pos.reshape(-1, 3)}


def _work(item: tuple[int, str, PoolSettings]) -> tuple[int, dict | str]:
    return molecule_pool(*item)


def _shard_arrays(parts: list[dict], failures: list[tuple[int, str]]) -> dict[str, np.ndarray]:
    out = {k: np.asarray([p[k] for p in parts]) for k in _PER_MOL}
    out.update({k: np.concatenate([np.asarray(p[k], np.float64) for p in parts]) if parts else np.zeros(0)
                for k in _PER_CONF})
    out["pos"] = np.concatenate([p["pos"] for p in parts]).astype(np.float32) if parts else np.zeros((0, 3), np.float32)
    out["failed_index"] = np.asarray([i for i, _ in failures], np.int64)
    out["failed_reason"] = np.asarray([r for _, r in failures], dtype=str)
    return out


def build_pools(split: str, out_dir: str | Path, settings: PoolSettings = PoolSettings(), workers: int = 1,
                limit: int | None = None, sdf: str | Path | None = None, split_file: str | Path | None = None,
                progress: bool = True) -> dict:
    """Write the pools of a moses_xtb split (resumable, see the module docstring); the summary."""
    from tqdm import tqdm

    from molconf.data.moses_xtb import default_moses_xtb_sdf, split_records

    sdf = Path(sdf or default_moses_xtb_sdf())
    split_file = Path(split_file or sdf.parent / f"split_{split}.npy")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the first `limit` ids as the split lists them (earlier releases first), then in file order
    records = [(i, rec) for i, rec, _ in split_records(np.load(split_file)[:limit], sdf)]
    meta = {"sdf": sdf.name, "split": split, "molecules": len(records), "shard_size": SHARD_SIZE,
            "conformers": settings.conformers, "seed": settings.seed, "mmff_iters": settings.mmff_iters,
            "units": "kcal/mol, Å", "energies": "MMFF94 at the MMFF94 minimum; GFN2-xTB single point there"}
    if claim_folder(out_dir, "meta.json", meta):
        raise ValueError(f"{out_dir} holds pools of other settings ({out_dir / 'meta.json'}); use another --out")
    pool = _Workers(workers)
    bar = tqdm(total=len(records), disable=not progress, desc="conformer energies", unit="mol")
    t0 = time.perf_counter()
    try:
        for s, start in enumerate(range(0, len(records), SHARD_SIZE)):
            path = out_dir / f"shard_{s:05d}.npz"
            chunk = records[start:start + SHARD_SIZE]
            if path.exists():
                bar.update(len(chunk))
                continue
            items = [(i, rec, settings) for i, rec in chunk]
            parts, failures = [], []
            for index, result in (pool.map_unordered(_work, items) if workers > 1 else map(_work, items)):
                (failures.append((index, result)) if isinstance(result, str) else parts.append(result))
                bar.update(1)
            parts.sort(key=lambda p: p["index"])
            buf = io.BytesIO()
            np.savez_compressed(buf, **_shard_arrays(parts, failures))
            write_atomic(path, buf.getvalue())
    finally:
        pool.close()
        bar.close()
    return summarise(out_dir, seconds=time.perf_counter() - t0)


@dataclass
class Pool:
    """One molecule's stored pool (energies in kcal/mol)."""

    index: int
    e_ref: float
    pos: np.ndarray  # (K, N, 3)
    e_mmff: np.ndarray  # (K,)
    e_gfn2: np.ndarray  # (K,)
    stereo_ok: np.ndarray  # (K,) bool
    rmsd_ref: np.ndarray  # (K,)


def load_pools(out_dir: str | Path) -> tuple[list[Pool], list[tuple[int, str]]]:
    """Every molecule's :class:`Pool` in ``out_dir``, and the ``(index, reason)`` failures."""
    pools, failures = [], []
    for path in sorted(Path(out_dir).glob("shard_*.npz")):
        with np.load(path) as z:
            failures += list(zip(z["failed_index"].tolist(), z["failed_reason"].tolist()))
            c = a = 0
            for index, n_atoms, n_conf, e_ref in zip(*(z[k] for k in _PER_MOL)):
                pos = z["pos"][a:a + n_conf * n_atoms].reshape(n_conf, n_atoms, 3).astype(np.float64)
                pools.append(Pool(int(index), float(e_ref), pos, *(z[k][c:c + n_conf] for k in _PER_CONF)))
                pools[-1].stereo_ok = pools[-1].stereo_ok.astype(bool)
                c, a = c + n_conf, a + n_conf * n_atoms
    if not pools and not failures:
        raise FileNotFoundError(f"no conformer pools in {out_dir}")
    return pools, failures


def summarise(out_dir: str | Path, seconds: float | None = None) -> dict:
    pools, failures = load_pools(out_dir)
    summary = {"molecules": len(pools), "conformers": int(sum(len(p.e_mmff) for p in pools)),
               "failures": [{"index": i, "reason": r} for i, r in failures],
               "stereo_kept": float(np.mean(np.concatenate([p.stereo_ok for p in pools]))) if pools else None}
    if seconds is not None:
        summary["seconds_this_run"] = round(seconds, 1)
    write_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=1))
    return summary


def export_energies(out_dir: str | Path, path: str | Path) -> int:
    """The pools' energies, without coordinates, as a gzipped CSV (one row per conformer:
    ``index, conformer, e_mmff, e_gfn2, stereo_ok, rmsd_ref, e_ref``; kcal/mol, Å); the geometries
    follow from ``meta.json``'s settings (ETKDG with one thread and MMFF94 are deterministic for an
    RDKit version). Returns the number of rows."""
    import csv
    import gzip

    pools, _ = load_pools(out_dir)
    rows = 0
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "conformer", "e_mmff", "e_gfn2", "stereo_ok", "rmsd_ref", "e_ref"])
        for p in pools:
            for k in range(len(p.e_mmff)):
                w.writerow([p.index, k, f"{p.e_mmff[k]:.4f}", f"{p.e_gfn2[k]:.4f}", int(p.stereo_ok[k]),
                            f"{p.rmsd_ref[k]:.4f}", f"{p.e_ref:.4f}"])
                rows += 1
    return rows


def split_job_parser(prog: str, doc: str, split: str, conformers: int, seed: int) -> argparse.ArgumentParser:
    """The arguments every per-molecule job over a moses_xtb split shares (``conformer-energies``,
    ``conformer-ensembles``): ``--split --out --conformers --seed --workers --sdf``."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default=split, choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--conformers", type=int, default=conformers, help="ETKDG starts per molecule")
    p.add_argument("--seed", type=int, default=seed, help=f"ETKDGv3 seed (not 0, not the build's {BUILD_SEED})")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sdf", type=Path, help="a moses_xtb-style molecules.sdf.gz (default: the shipped one)")
    return p


def run_split_job(p: argparse.ArgumentParser, build) -> None:
    """Run ``build()`` (it returns the job's summary) and print the summary, failures counted; a bad
    setting or a missing file ends the command with status 2 and its reason."""
    try:
        summary = build()
    except (ValueError, FileNotFoundError) as err:
        p.exit(2, f"{p.prog}: {err}\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"} | {"failures": len(summary["failures"])},
                     indent=1))


def main(argv: list[str] | None = None) -> None:
    import os

    p = split_job_parser("molconf conformer-energies", __doc__, "train", PoolSettings.conformers, PoolSettings.seed)
    p.add_argument("--limit", type=int, help="the split's first N molecules as its file lists them (earlier releases first, so "
                                                "the same N molecules in every grown release) only")
    p.add_argument("--export", type=Path, metavar="CSV_GZ",
                   help="only write the energies already in --out to this .csv.gz (no coordinates)")
    args = p.parse_args(argv)
    if args.export:
        print(f"{export_energies(args.out, args.export)} conformers written to {args.export}")
        return
    run_split_job(p, lambda: build_pools(args.split, args.out, PoolSettings(args.conformers, args.seed), args.workers,
                                         args.limit, args.sdf, progress=os.environ.get("MOLCONF_NO_PROGRESS") is None))


if __name__ == "__main__":
    main()
