"""``molconf predict``: SMILES / .smi / .csv / .sdf / stdin in, SDF or XYZ out.

Examples::

    molconf predict "CCO" "c1ccccc1O" -o out.sdf
    molconf predict -i molecules.smi -o out.xyz --relax mmff
    cat molecules.smi | molconf predict -i - > out.sdf

A summary (and every failure with its reason) goes to stderr; the exit code is non-zero
only when no molecule was predicted.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from collections import Counter
from pathlib import Path

from rdkit import Chem


def read_inputs(path: str) -> tuple[list, list[str]]:
    """Molecules (SMILES strings, Mols, or None for unreadable records) and their names."""
    if path == "-":
        return _read_smiles_lines(sys.stdin.read().splitlines())
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file {path} not found")
    suffix = p.suffix.lower()
    if suffix == ".sdf":
        items, names = [], []
        for k, mol in enumerate(Chem.SDMolSupplier(str(p), removeHs=False)):
            items.append(mol)
            names.append(mol.GetProp("_Name") if mol is not None and mol.HasProp("_Name") and mol.GetProp("_Name")
                         else f"{p.name} record {k + 1}")
        return items, names
    text = p.read_text()
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return [], []
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("smiles") if "smiles" in header else 0
        name_col = header.index("name") if "name" in header else None
        body = rows[1:] if "smiles" in header else rows
        items = [r[col] if len(r) > col else "" for r in body]
        names = [r[name_col] if name_col is not None and len(r) > name_col else f"line {k + 2}"
                 for k, r in enumerate(body)]
        return items, names
    return _read_smiles_lines(text.splitlines())


def _read_smiles_lines(lines: list[str]) -> tuple[list, list[str]]:
    items, names = [], []
    for k, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        items.append(parts[0])
        names.append(parts[1].strip() if len(parts) > 1 else f"line {k + 1}")
    return items, names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="molconf predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("smiles", nargs="*", help="SMILES strings")
    p.add_argument("-i", "--input", help=".smi, .csv (column 'smiles'), .sdf, or - for stdin")
    p.add_argument("-o", "--output", default="-", help="output .sdf or .xyz (default: SDF on stdout)")
    p.add_argument("--format", choices=["sdf", "xyz"], help="output format (default: from the file name)")
    p.add_argument("--model", default="default",
                   help="shipped model name or weights/checkpoint file (default: per molecule, the shipped "
                        "model covering its elements and size; the summary and SDF property molconf_model say which)")
    p.add_argument("--relax", choices=["mmff", "uff", "xtb"],
                   help="optimisation after prediction: a force field, or MMFF94 then GFN2-xTB (needs tblite)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (e.g. 2 on two cores: faster for long inputs; default 1)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="network arithmetic (auto: bfloat16 where the CPU has it in hardware)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-fix-stereo", action="store_true", help="do not repair stereochemistry")
    args = p.parse_args(argv)

    items, names = list(args.smiles), list(args.smiles)
    if args.input:
        more, more_names = read_inputs(args.input)
        items += more
        names += more_names
    if not items:
        print("molconf predict: no input molecules (give SMILES, -i FILE, or -i - for stdin)", file=sys.stderr)
        return 2
    for item, name in zip(items, names):
        if isinstance(item, Chem.Mol) and not item.HasProp("_Name"):
            item.SetProp("_Name", name)
    fmt = args.format or ("xyz" if args.output.lower().endswith((".xyz", ".extxyz")) else "sdf")

    from molconf.prediction import predict, write_sdf, write_xyz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are printed below, one per line
        mols, report = predict(items, model=args.model, batch_size=args.batch_size, relax_with=args.relax,
                               num_threads=args.threads, fix_stereo=not args.no_fix_stereo,
                               return_report=True, progress=len(items) > 100,
                               precision=args.precision, workers=args.workers)
    for mol, name in zip(mols, names):
        if mol is not None:
            mol.SetProp("_Name", name)
    out = sys.stdout if args.output == "-" else args.output
    if fmt == "sdf":
        if out is sys.stdout:
            buf = io.StringIO()
            with Chem.SDWriter(buf) as w:
                for m in mols:
                    if m is not None:
                        w.write(m)
            sys.stdout.write(buf.getvalue())
        else:
            write_sdf(mols, out)
    else:
        if out is sys.stdout:
            raise SystemExit("molconf predict: XYZ output needs -o FILE.xyz")
        write_xyz(mols, out)
    n_ok = sum(m is not None for m in mols)
    for f in report.failures:
        print(f"failed: {f.index} {names[f.index]!r}: {f.reason}", file=sys.stderr)
    for i, notes in sorted(report.notes.items()):
        for note in notes:
            print(f"note: {i} {names[i]!r}: {note}", file=sys.stderr)
    counts = Counter(report.models[i] for i, m in enumerate(mols) if m is not None)
    used = ", ".join(f"'{name}' ({n})" for name, n in counts.items()) if len(counts) > 1 else f"'{report.model}'"
    print(f"molconf predict: {n_ok} of {len(items)} molecules predicted with model {used} ({report.precision})"
          + ("" if args.output == "-" else f", written to {args.output}"), file=sys.stderr)
    return 0 if n_ok else 1
