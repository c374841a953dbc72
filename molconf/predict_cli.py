"""``molconf predict``: SMILES / .smi / .csv / .sdf / stdin in, SDF or XYZ out.

Examples::

    molconf predict "CCO" "c1ccccc1O" -o out.sdf
    molconf predict -i molecules.smi -o out.xyz --relax mmff
    cat molecules.smi | molconf predict -i - > out.sdf
    molconf predict -i library.smi -o out/             # a library: resumable blocks in out/
    molconf predict -i library.smi -o out/ --ray auto  # ... as Ray tasks on a cluster

A summary (every failure with its input line and reason, every note) goes to stderr. Exit
codes: 0 when at least one molecule was predicted, 1 when none was, 2 for an unusable call
(missing or unreadable input file, unknown or damaged model, unknown output format), with one
line saying why.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rdkit import Chem

OUTPUT_FORMATS = {".sdf": "sdf", ".sd": "sdf", ".mol": "sdf", ".xyz": "xyz", ".extxyz": "xyz"}


class UsageError(Exception):
    """A call that cannot run (bad file, model or option): one line, exit code 2."""


@dataclass
class Inputs:
    """Molecules read from the command line and files, each with a name and where it came from."""

    items: list = field(default_factory=list)  # SMILES strings, Mols, or None (unreadable record)
    names: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "argument 2", "in.smi line 7", "in.sdf record 3"

    def add(self, item, name: str, where: str) -> None:
        self.items.append(item)
        self.names.append(name)
        self.where.append(where)


def read_inputs(path: str, into: Inputs | None = None) -> Inputs:
    """Read a .smi (``SMILES [name]`` per line), .csv (header with a ``smiles`` column, optional
    ``name``), .sdf file, or ``-`` (SMILES lines on stdin). Every molecule keeps its physical line
    (blank and ``#`` comment lines are skipped but counted) or record number.

    Raises :class:`UsageError` for a missing file, an unknown suffix or a CSV without a
    ``smiles`` column.
    """
    out = into if into is not None else Inputs()
    if path == "-":
        _read_smiles_lines(sys.stdin.read().splitlines(), "stdin", out)
        return out
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"input file {path} not found")
    suffix = p.suffix.lower()
    if suffix in (".sdf", ".sd"):
        for k, mol in enumerate(Chem.SDMolSupplier(str(p), removeHs=False)):
            where = f"{p.name} record {k + 1}"
            name = mol.GetProp("_Name") if mol is not None and mol.HasProp("_Name") else ""
            out.add(mol, name or where, where)
    elif suffix == ".csv":
        _read_csv(p, out)
    elif suffix in (".smi", ".smiles", ".txt", ""):
        _read_smiles_lines(p.read_text().splitlines(), p.name, out)
    else:
        raise UsageError(f"input file {path}: unknown format {suffix!r} (use .smi, .csv, .sdf or - for stdin)")
    return out


def _read_csv(p: Path, out: Inputs) -> None:
    reader = csv.reader(io.StringIO(p.read_text()))
    header = next(reader, None)
    if header is None:
        return
    columns = [h.strip().lower() for h in header]
    if "smiles" not in columns:
        raise UsageError(f"{p}: the first row must be a header with a 'smiles' column (found: {', '.join(header)})")
    col = columns.index("smiles")
    name_col = columns.index("name") if "name" in columns else None
    for row in reader:
        if not any(c.strip() for c in row):
            continue  # blank line (still counted by reader.line_num)
        where = f"{p.name} line {reader.line_num}"
        name = row[name_col].strip() if name_col is not None and len(row) > name_col else ""
        out.add(row[col] if len(row) > col else "", name or where, where)


def _read_smiles_lines(lines: list[str], source: str, out: Inputs) -> None:
    for k, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        where = f"{source} line {k + 1}"
        out.add(parts[0], parts[1].strip() if len(parts) > 1 else where, where)


def output_format(output: str, fmt: str | None) -> str:
    """``"sdf"`` or ``"xyz"``: ``fmt`` if given, else from the output file's suffix; an unknown
    suffix is a :class:`UsageError` (no SDF text in a file named .pdb)."""
    if fmt is not None or output == "-":
        return fmt or "sdf"
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"output {output}: unknown format {suffix or '(no suffix)'!r} "
                         f"(use {', '.join(OUTPUT_FORMATS)}, or --format sdf|xyz)")
    return OUTPUT_FORMATS[suffix]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="molconf predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("smiles", nargs="*", help="SMILES strings")
    p.add_argument("-i", "--input", help=".smi, .csv (header with a 'smiles' column), .sdf, or - for stdin")
    p.add_argument("-o", "--output", default="-", help="output .sdf or .xyz (default: SDF on stdout)")
    p.add_argument("--format", choices=["sdf", "xyz"], help="output format (default: from the file name)")
    p.add_argument("--model", default="default",
                   help="shipped model name or weights/checkpoint file (default: per molecule, the shipped "
                        "model covering its elements and size; the summary and SDF property molconf_model say which)")
    p.add_argument("--relax", choices=["mmff", "uff", "xtb"],
                   help="optimisation after prediction: a force field, or MMFF94 then GFN2-xTB (needs tblite)")
    p.add_argument("--search", nargs="?", type=int, const=-1, default=None, metavar="K",
                   help="conformer search: the prediction and K-1 ETKDG conformers, MMFF94-minimised, the two a "
                        "learned ranker scores lowest ranked by GFN2-xTB single points (needs tblite); --search alone: the default K")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (e.g. 2 on two cores: faster for long inputs; default 1)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="network arithmetic (auto: bfloat16 where the CPU has it in hardware)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-fix-stereo", action="store_true", help="do not repair stereochemistry")
    p.add_argument("--no-repair-bonds", action="store_true",
                   help="return the network's bond lengths even where they are physically impossible")
    lib = p.add_argument_group("libraries (-o DIR/: resumable output blocks; molconf.library)")
    lib.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="run the blocks as Ray tasks: on the cluster at ADDRESS ('auto': the one this machine "
                          "joined), or alone on a private local Ray of --workers cores (needs molconf[cluster])")
    lib.add_argument("--block-size", type=int, default=1000, help="molecules per output block (default 1000)")
    lib.add_argument("--out-format", choices=["sdf", "parquet"], default="sdf",
                     help="output blocks: SDF + failures.csv, or Parquet (smiles, molblock, model, note)")
    lib.add_argument("--max-blocks", type=int, help="stop after N new blocks (rerun to continue)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (UsageError, FileNotFoundError, ValueError, ImportError) as err:  # + model file, sha256, tblite
        print(f"molconf predict: error: {err}", file=sys.stderr)
        return 2


def _search_arg(value: int | None) -> bool | int:
    if value is None:
        return False
    if value == -1:
        return True
    if value < 1:
        raise UsageError(f"--search K needs K >= 1, got {value}")
    return value


def _library_mode(args) -> bool:
    return args.ray is not None or args.output.endswith(("/", "\\")) or Path(args.output).is_dir()


def _run_library(args) -> int:
    from molconf.library import LibrarySettings, predict_library

    if not args.input or args.input == "-" or args.smiles:
        raise UsageError("library mode (-o DIR/ or --ray) reads one input file: -i library.smi|.csv|.parquet")
    settings = LibrarySettings(model=args.model, relax_with=args.relax, search=_search_arg(args.search),
                               precision=args.precision, fix_stereo=not args.no_fix_stereo,
                               repair_bonds=not args.no_repair_bonds, batch_size=args.batch_size,
                               threads=args.threads or 1)
    summary = predict_library(args.input, args.output, settings, block_size=args.block_size, fmt=args.out_format,
                              engine="local" if args.ray is None else "ray", address=args.ray or None,
                              workers=args.workers, max_blocks=args.max_blocks, progress=True)
    state = "complete" if summary["complete"] else "unfinished: rerun the same command to continue"
    print(f"molconf predict: {summary['predicted']} of {summary['molecules']} molecules predicted, "
          f"{summary['failed']} failed (each in {Path(args.output) / 'failures.csv'}); blocks "
          f"{summary['blocks']['done']} of {summary['blocks']['total']} ({state})", file=sys.stderr)
    return 0 if summary["predicted"] else 1


def _run(args) -> int:
    if _library_mode(args):
        return _run_library(args)
    inputs = Inputs()
    for k, smi in enumerate(args.smiles):
        inputs.add(smi, smi, f"argument {k + 1}")
    if args.input:
        read_inputs(args.input, inputs)
    if not inputs.items:
        print("molconf predict: no input molecules (give SMILES, -i FILE, or -i - for stdin)", file=sys.stderr)
        return 2
    fmt = output_format(args.output, args.format)
    if fmt == "xyz" and args.output == "-":
        raise UsageError("XYZ output needs -o FILE.xyz")
    for item, name in zip(inputs.items, inputs.names):
        if isinstance(item, Chem.Mol) and not item.HasProp("_Name"):
            item.SetProp("_Name", name)

    from molconf.prediction import predict, write_sdf, write_xyz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are printed below, one per line
        mols, report = predict(inputs.items, model=args.model, batch_size=args.batch_size, relax_with=args.relax,
                               num_threads=args.threads, fix_stereo=not args.no_fix_stereo,
                               repair_bonds=not args.no_repair_bonds, return_report=True,
                               progress=len(inputs.items) > 100, precision=args.precision, workers=args.workers,
                               search=_search_arg(args.search))
    for mol, name in zip(mols, inputs.names):
        if mol is not None:
            mol.SetProp("_Name", name)
    if args.output == "-":
        buf = io.StringIO()
        with Chem.SDWriter(buf) as w:
            for m in mols:
                if m is not None:
                    w.write(m)
        sys.stdout.write(buf.getvalue())
    elif fmt == "sdf":
        write_sdf(mols, args.output)
    else:
        write_xyz(mols, args.output)

    def label(i: int) -> str:
        name = inputs.names[i]
        return inputs.where[i] if name == inputs.where[i] else f"{inputs.where[i]} ({name})"

    for f in report.failures:
        print(f"failed: {label(f.index)}: {f.reason}", file=sys.stderr)
    for i, notes in sorted(report.notes.items()):
        for note in notes:
            print(f"note: {label(i)}: {note}", file=sys.stderr)
    n_ok = sum(m is not None for m in mols)
    counts = Counter(report.models[i] for i, m in enumerate(mols) if m is not None)
    used = ", ".join(f"'{name}' ({n})" for name, n in counts.items()) if len(counts) > 1 else f"'{report.model}'"
    print(f"molconf predict: {n_ok} of {len(inputs.items)} molecules predicted with model {used} ({report.precision})"
          + ("" if args.output == "-" else f", written to {args.output}"), file=sys.stderr)
    return 0 if n_ok else 1
