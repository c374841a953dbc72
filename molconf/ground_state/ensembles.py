"""GFN2-xTB conformer ensembles of moses_xtb molecules: the reference of the ensemble benchmark.

For each molecule of a moses_xtb split (its SDF record: graph, stereo and the data set's own
GFN2-xTB ground state), :func:`molecule_ensemble` does:

1. ``conformers`` ETKDGv3 starts (seed ``seed``; neither 0 — RDKit's identical-conformer trap — nor
   the build's 42), each minimised with MMFF94 (``mmff_iters``);
2. the MMFF94 minima that keep the input's stereo, made unique (heavy-atom RMSD ≥ ``rmsd_dedup``
   to every lower one) and taken lowest first up to ``max_relax``, each relaxed with GFN2-xTB
   (tblite, the data protocol's optimiser settings);
3. the relaxed minima whose bond graph and stereo survived, plus the data set's own ground state,
   made unique the same way (the lower energy kept), and kept within ``window_kcal`` of the lowest.

The ensemble is written as SDF, one record per conformer, lowest first, each with its GFN2-xTB
energy relative to the ensemble's lowest (``rel_kcal``), the absolute energy (``gfn2_energy_eV``),
the data-set index (``moses_xtb_index``) and where it came from (``origin``: ``etkdg`` or
``reference``). Units of ``shard_size`` molecules go to ``ensemble_NNNNNN.sdf`` with
``.failures.csv`` and a ``.json`` record written last (:class:`~molconf.shards.ShardFiles`): a killed
run resumes at the first missing unit; a failed molecule is named with its reason, never dropped::

    molconf conformer-ensembles --split test --n 200 --among-first 1000 --out runs/ensembles/test --workers 2
    molconf conformer-ensembles --out runs/ensembles/test \
        --export datasets/moses_xtb/conformer_ensembles/test.sdf.gz    # the committed form

The draw: ``n`` molecules of the split (of its first ``among_first`` listed: ``--among-first 1000``
draws from the 9,999-molecule release's test molecules in every grown release), a numpy
``default_rng(draw_seed)`` choice in file order;
:func:`read_ensembles` gives ``{index: Mol with every conformer}`` from a build folder or an export.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolAlign

from molconf.ground_state.search import EV_TO_KCAL, PoolError, mmff_pool
from molconf.shards import ShardFiles, chunks, claim_folder, write_atomic

BUILD_SEED = 42  # the moses_xtb build's own ETKDG seed
INDEX_PROP = "moses_xtb_index"


@dataclass(frozen=True)
class EnsembleSettings:
    """Every knob of :func:`molecule_ensemble` (see the module docstring)."""

    conformers: int = 30
    seed: int = 11
    mmff_iters: int = 2000
    max_relax: int = 30
    rmsd_dedup: float = 0.125  # Å, heavy atoms: closer minima are one (CREST's default threshold)
    window_kcal: float = 3.0

    def __post_init__(self):
        if self.seed in (0, BUILD_SEED):
            raise ValueError(f"seed {self.seed}: 0 embeds identical conformers, {BUILD_SEED} regenerates the "
                             "reference build's own candidates; choose another")
        if self.conformers < 1 or self.max_relax < 1 or self.rmsd_dedup <= 0 or self.window_kcal < 0:
            raise ValueError(f"invalid ensemble settings: {self}")


def heavy_rmsd(mol: Chem.Mol, i: int, j: int) -> float:
    """Heavy-atom, symmetry-aware, aligned RMSD between conformers ``i`` and ``j`` of ``mol`` (no H)."""
    probe = Chem.Mol(mol, confId=j)
    return rdMolAlign.GetBestRMS(probe, mol, -1, i, maxMatches=100_000)


def unique_by_rmsd(heavy: Chem.Mol, conf_ids: list[int], energies: list[float], threshold: float) -> list[int]:
    """Positions kept, lowest energy first: each at ≥ ``threshold`` Å heavy-atom RMSD from every
    kept lower one (non-finite energies dropped).

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("CCCC"))
    >>> ids = list(AllChem.EmbedMultipleConfs(m, 2, randomSeed=3))
    >>> _ = m.AddConformer(Chem.Conformer(m.GetConformer(ids[0])), assignId=True)  # a copy of the first
    >>> unique_by_rmsd(Chem.RemoveHs(m), [0, 1, 2], [0.0, 5.0, 0.1], 0.125)
    [0, 1]
    """
    order = [k for k in np.argsort(energies, kind="stable").tolist() if np.isfinite(energies[k])]
    kept: list[int] = []
    for k in order:
        if all(heavy_rmsd(heavy, conf_ids[q], conf_ids[k]) >= threshold for q in kept):
            kept.append(k)
    return kept


def molecule_ensemble(index: int, record: str, settings: EnsembleSettings) -> tuple[int, str]:
    """``(index, SDF text of the ensemble)``, or ``(index, reason)`` prefixed ``"failed: "``."""
    from molconf.ground_state.xtb import XtbProtocol, stereo_changes, xtb_relax

    from molconf.data.moses_xtb import read_reference

    ref = read_reference(record)
    if ref is None:
        return index, "failed: record not readable"
    try:
        pool, ids, e_mmff, stereo_ok = mmff_pool(ref, settings.conformers, settings.seed, settings.mmff_iters)
        e_mmff = [e if ok else float("inf") for e, ok in zip(e_mmff, stereo_ok)]
        starts = unique_by_rmsd(Chem.RemoveHs(pool), ids, e_mmff, settings.rmsd_dedup)[: settings.max_relax]
        protocol = XtbProtocol()
        minima = Chem.Mol(ref)  # conformer 0: the data set's ground state
        energies, origins = [float(ref.GetProp("gfn2_energy_eV"))], ["reference"]
        n_relaxed, dropped = 0, 0
        for k in starts:
            one = Chem.Mol(pool, confId=ids[k])
            try:
                r = xtb_relax(one, protocol)
            except RuntimeError:
                dropped += 1
                continue
            n_relaxed += 1
            if r.bond_changes or stereo_changes(ref, one.GetConformer().GetPositions()):
                dropped += 1
                continue
            minima.AddConformer(Chem.Conformer(one.GetConformer()), assignId=True)
            energies.append(r.energy_ev)
            origins.append("etkdg")
        conf_ids = [c.GetId() for c in minima.GetConformers()]
        keep = unique_by_rmsd(Chem.RemoveHs(minima), conf_ids, energies, settings.rmsd_dedup)
        lowest = energies[keep[0]]
        keep = [k for k in keep if (energies[k] - lowest) * EV_TO_KCAL <= settings.window_kcal]
    except PoolError as err:
        return index, f"failed: {err}"
    except Exception as err:  # RDKit / tblite errors: the molecule is named with its reason
        return index, f"failed: {type(err).__name__}: {' '.join(str(err).split())[:160]}"
    out = io.StringIO()
    writer = Chem.SDWriter(out)
    for rank, k in enumerate(keep):
        m = Chem.Mol(minima, confId=conf_ids[k])
        m.SetProp("_Name", f"{index}_{rank}")
        m.SetIntProp(INDEX_PROP, index)
        m.SetProp("origin", origins[k])
        m.SetDoubleProp("gfn2_energy_eV", energies[k])
        m.SetDoubleProp("rel_kcal", (energies[k] - lowest) * EV_TO_KCAL)
        m.SetIntProp("ensemble_size", len(keep))
        m.SetIntProp("relaxed", n_relaxed)
        m.SetIntProp("dropped", dropped)
        writer.write(m)
    writer.close()
    return index, out.getvalue()


def _work(item: tuple[int, str, EnsembleSettings]) -> tuple[int, str]:
    return molecule_ensemble(*item)


def draw(split: str, n: int | None, draw_seed: int, sdf: Path, split_file: Path | None = None,
         among_first: int | None = None) -> list[tuple[int, str]]:
    """``(data-set index, SDF record)`` of ``n`` molecules of the split (seeded choice, file order),
    drawn among the split's first ``among_first`` ids as the split file lists them (all: None).

    A grown data set lists each part's earlier molecules first, so ``among_first`` set to an earlier
    release's part size (:data:`molconf.data.moses_xtb.RELEASE_9999`) draws the same molecules from
    every later release; a draw over the whole split changes as the split grows.
    """
    from molconf.data.moses_xtb import split_records

    split_file = Path(split_file or sdf.parent / f"split_{split}.npy")
    ids = np.load(split_file)
    if among_first is not None:
        if among_first < 1 or among_first > len(ids):
            raise ValueError(f"among_first={among_first}: the {split} split lists {len(ids)} molecules")
        ids = ids[:among_first]
    records = [(i, rec) for i, rec, _ in split_records(ids, sdf)]
    if n is None or n >= len(records):
        return records
    pick = sorted(np.random.default_rng(draw_seed).choice(len(records), n, replace=False).tolist())
    return [records[i] for i in pick]


def build_ensembles(split: str, out_dir: str | Path, n: int | None = 200, settings: EnsembleSettings = EnsembleSettings(),
                    workers: int = 1, draw_seed: int = 0, shard_size: int = 10, sdf: str | Path | None = None,
                    split_file: str | Path | None = None, max_units: int | None = None, progress: bool = True,
                    among_first: int | None = None) -> dict:
    """Write the ensembles of ``n`` drawn molecules of a moses_xtb split (resumable; the draw:
    :func:`draw`); the summary."""
    from tqdm import tqdm

    from molconf.data.moses_xtb import default_moses_xtb_sdf
    from molconf.ground_state.build import _Workers

    sdf = Path(sdf or default_moses_xtb_sdf())
    if not sdf.is_file():
        raise FileNotFoundError(f"{sdf}: no such molecules file")
    out_dir = Path(out_dir)
    records = draw(split, n, draw_seed, sdf, split_file, among_first)
    meta = {"sdf": sdf.name, "split": split, "n": len(records), "draw_seed": draw_seed, "shard_size": shard_size,
            **({"among_first": among_first} if among_first is not None else {}),
            **asdict(settings), "units": "kcal/mol, Å",
            "protocol": "ETKDGv3 x conformers -> MMFF94 -> unique (heavy-atom RMSD) -> GFN2-xTB relaxation "
                        "(tblite, XtbProtocol) -> with the data set's ground state, unique, within window_kcal"}
    units = ShardFiles(out_dir, "ensemble", ("sdf", "failures.csv"))
    if claim_folder(out_dir, "meta.json", meta):
        raise ValueError(f"{out_dir} holds ensembles of other settings ({out_dir / 'meta.json'}); use another --out")
    pool = _Workers(workers) if workers > 1 else None
    bar = tqdm(total=len(records), disable=not progress, desc="GFN2-xTB ensembles", unit="mol")
    t0, written = time.perf_counter(), 0
    try:
        for u, chunk in enumerate(chunks(records, shard_size)):
            if units.done(u) is not None:
                bar.update(len(chunk))
                continue
            if max_units is not None and written >= max_units:
                break
            t_unit = time.perf_counter()
            items = [(i, rec, settings) for i, rec in chunk]
            results = dict(pool.map_unordered(_work, items) if pool else map(_work, items))
            ok = {i: t for i, t in results.items() if not t.startswith("failed: ")}
            failures = io.StringIO()
            w = csv.writer(failures)
            w.writerow(["index", "reason"])
            for i, _ in chunk:
                if i not in ok:
                    reason = results[i][len("failed: "):] if results[i].startswith("failed: ") else results[i]
                    w.writerow([i, reason])
            units.write_unit(u, {"sdf": "".join(ok[i] for i, _ in chunk if i in ok), "failures.csv": failures.getvalue()},
                             {"molecules": len(ok), "failed": len(chunk) - len(ok),
                              "seconds": round(time.perf_counter() - t_unit, 1), "workers": workers})
            written += 1
            bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    return summarise(out_dir, seconds=time.perf_counter() - t0)


def _records(source: Path):
    """(where, supplier, how to repair it) of every SDF holding ensemble records: a build folder's
    finished units, or one exported ``.sdf.gz``."""
    import gzip

    if source.is_file():
        with (gzip.open(source, "rb") if source.suffix == ".gz" else open(source, "rb")) as fh:
            yield source, Chem.ForwardSDMolSupplier(fh, removeHs=False), "a corrupted file: export it again"
        return
    for record in sorted(source.glob("ensemble_*.json")):
        sdf = record.with_suffix(".sdf")
        yield sdf, Chem.SDMolSupplier(str(sdf), removeHs=False), f"a corrupted unit: delete {record.name} and rerun"


def read_ensembles(source: str | Path) -> dict[int, Chem.Mol]:
    """``{data-set index: Mol holding its ensemble, lowest first}`` from every finished unit of a build
    folder, or from an exported ``.sdf.gz`` (:func:`export_ensembles`). Each Mol's ``rel_kcal`` and
    ``origin`` properties list its conformers' values, space-separated."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such ensembles folder or file")
    out: dict[int, Chem.Mol] = {}
    rel: dict[int, list[str]] = {}
    origin: dict[int, list[str]] = {}
    for where, supplier, fix in _records(source):
        for m in supplier:
            if m is None:
                raise ValueError(f"{where}: an unreadable record ({fix})")
            i = m.GetIntProp(INDEX_PROP)
            if i not in out:
                out[i] = Chem.Mol(m)
                out[i].GetConformer().SetId(0)
                rel[i], origin[i] = [], []
            else:
                out[i].AddConformer(Chem.Conformer(m.GetConformer()), assignId=True)
            rel[i].append(f"{m.GetDoubleProp('rel_kcal'):.4f}")
            origin[i].append(m.GetProp("origin"))
    for i, m in out.items():
        m.SetProp("rel_kcal", " ".join(rel[i]))
        m.SetProp("origin", " ".join(origin[i]))
    return out


def _meta_path(path: Path) -> Path:
    stem = path.name[: -len(".sdf.gz")] if path.name.endswith(".sdf.gz") else path.stem
    return path.with_name(f"{stem}.meta.json")


def ensemble_settings(source: str | Path) -> dict:
    """The build settings (``meta.json``) of a build folder or of an exported ``.sdf.gz``."""
    source = Path(source)
    if source.is_file():
        return json.loads(_meta_path(source).read_text())["settings"]
    return json.loads((source / "meta.json").read_text())


def export_ensembles(out_dir: str | Path, path: str | Path) -> dict:
    """Every finished unit's records as one gzipped SDF ``path`` (the data to commit), with
    ``<stem>.meta.json`` beside it: the build's settings, the failures with their reasons and the
    counts. Returns that record."""
    import gzip

    out_dir, path = Path(out_dir), Path(path)
    meta_file = out_dir / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{out_dir}: not an ensembles build folder (no meta.json)")
    units = sorted(out_dir.glob("ensemble_*.json"))
    text = "".join(u.with_suffix(".sdf").read_text() for u in units)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    summary = summarise(out_dir)
    record = {"settings": json.loads(meta_file.read_text()), "units": len(units),
              "molecules": summary["molecules"], "conformers": summary["conformers"],
              "failures": summary["failures"]}
    write_atomic(_meta_path(path), json.dumps(record, indent=1) + "\n")
    return record


def read_failures(out_dir: str | Path) -> list[tuple[int, str]]:
    out = []
    for record in sorted(Path(out_dir).glob("ensemble_*.json")):
        with open(record.with_name(record.name.replace(".json", ".failures.csv"))) as fh:
            out += [(int(r["index"]), r["reason"]) for r in csv.DictReader(fh)]
    return out


def summarise(out_dir: str | Path, seconds: float | None = None) -> dict:
    ens = read_ensembles(out_dir)
    sizes = [m.GetNumConformers() for m in ens.values()]
    from_ref = [m.GetProp("origin").split()[0] == "reference" for m in ens.values()]
    summary = {"molecules": len(ens), "conformers": int(sum(sizes)),
               "ensemble_size": {"mean": float(np.mean(sizes)) if sizes else None,
                                 "median": float(np.median(sizes)) if sizes else None,
                                 "max": int(max(sizes)) if sizes else None},
               "lowest_is_the_reference": float(np.mean(from_ref)) if from_ref else None,
               "failures": [{"index": i, "reason": r} for i, r in read_failures(out_dir)]}
    if seconds is not None:
        summary["seconds_this_run"] = round(seconds, 1)
    write_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    import os

    from molconf.ground_state.energies import run_split_job, split_job_parser

    d = EnsembleSettings()
    p = split_job_parser("molconf conformer-ensembles", __doc__, "test", d.conformers, d.seed)
    p.add_argument("--n", type=int, default=200, help="molecules drawn from the split (default 200; 0: all)")
    p.add_argument("--draw-seed", type=int, default=0)
    p.add_argument("--among-first", type=int, metavar="M",
                   help="draw among the split's first M molecules as its file lists them (earlier releases first; "
                        "1000: the 9,999-molecule release's test molecules, in every grown release)")
    p.add_argument("--max-relax", type=int, default=d.max_relax)
    p.add_argument("--window", type=float, default=d.window_kcal, help="kcal/mol above the lowest minimum")
    p.add_argument("--shard-size", type=int, default=10)
    p.add_argument("--max-units", type=int, help="stop after writing this many units (resume later)")
    p.add_argument("--export", type=Path, metavar="SDF_GZ",
                   help="only write the ensembles already in --out to this .sdf.gz (+ .meta.json beside it)")
    args = p.parse_args(argv)
    if args.export:
        try:
            record = export_ensembles(args.out, args.export)
        except FileNotFoundError as err:
            p.exit(2, f"{p.prog}: {err}\n")
        print(f"{record['molecules']} molecules, {record['conformers']} conformers, "
              f"{len(record['failures'])} failures written to {args.export}")
        return
    def build() -> dict:
        settings = EnsembleSettings(conformers=args.conformers, seed=args.seed, max_relax=args.max_relax,
                                    window_kcal=args.window)
        return build_ensembles(args.split, args.out, args.n or None, settings, args.workers, args.draw_seed,
                               args.shard_size, args.sdf, max_units=args.max_units,
                               progress=os.environ.get("MOLCONF_NO_PROGRESS") is None, among_first=args.among_first)

    run_split_job(p, build)


if __name__ == "__main__":
    main()
