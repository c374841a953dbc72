"""``molconf generate`` and ``molconf diffusion generalization|jacobian``.

``molconf generate SMILES [SMILES ...] -n 10 --model PATH -o out.sdf``
    Sample conformers with a trained denoiser (``--model`` is required: no default
    diffusion model ships yet).
``molconf diffusion generalization --sizes 1 10 100 --steps 2000 --out DIR``
    The two-disjoint-training-sets study (resumable per N).
``molconf diffusion jacobian --model PATH --smiles CCO --sigmas 0.05 0.2 1 --out DIR``
    Jacobian eigen-analysis of a denoiser at one molecule.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from molconf.errors import MoleculeError


# --------------------------------------------------------------------------- generate
def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="molconf generate", description="Sample conformers with a trained denoiser.")
    p.add_argument("smiles", nargs="+", help="one or more SMILES")
    p.add_argument("-n", "--num", type=int, default=10, help="conformers per molecule (default 10)")
    p.add_argument("--model", help="denoiser checkpoint or weights file (required: no default model ships yet)")
    p.add_argument("-o", "--output", help="write all conformers to this .sdf (one record per conformer)")
    p.add_argument("--sampler", choices=["auto", "ddim", "ks"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="DDIM steps (default: the weights' metadata, else 50)")
    p.add_argument("--start", choices=["auto", "noise", "etkdg"], default="auto",
                   help="start from noise or from ETKDG conformers (partial diffusion); auto: the weights' metadata")
    p.add_argument("--sigma-max", type=float,
                   help="starting noise level in Å (default: the weights' metadata, else the sampler's)")
    p.add_argument("--lj-guidance", action="store_true", help="Lennard-Jones clash guidance")
    p.add_argument("--no-fix-stereo", action="store_true", help="keep samples whose stereo disagrees with the input")
    p.add_argument("--threads", type=int, help="torch threads (molecule-sized graphs: 1 is often fastest)")
    return p


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def generate_main(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    _set_threads(args.threads)
    if not args.model:
        print("molconf generate: --model PATH is required: no default diffusion model ships with molconf yet "
              "(train one with `molconf fit --config configs/diffusion_qm9.yaml` and pass its checkpoint)",
              file=sys.stderr)
        return 2
    from rdkit import Chem

    from molconf.diffusion.api import generate

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # failures are printed below, one per line
            mols, report = generate(args.smiles, n=args.num, model=args.model, sampler=args.sampler, seed=args.seed,
                                    steps=args.steps, start=args.start, sigma_max=args.sigma_max,
                                    lj_guidance=args.lj_guidance, fix_stereo=not args.no_fix_stereo,
                                    return_report=True)
    except (FileNotFoundError, ValueError) as err:
        print(f"molconf generate: {err}", file=sys.stderr)
        return 2
    for f in report.failures:
        print(f"failed: {f}", file=sys.stderr)
    for i, notes in sorted(report.notes.items()):
        for note in notes:
            print(f"note: input #{i}: {note}", file=sys.stderr)
    written = 0
    if args.output:
        with Chem.SDWriter(str(args.output)) as w:
            for i, mol in enumerate(mols):
                if mol is None:
                    continue
                mol.SetProp("_Name", args.smiles[i])
                for conf in mol.GetConformers():
                    w.write(mol, confId=conf.GetId())
                    written += 1
        print(f"{written} conformers of {sum(m is not None for m in mols)} molecules written to {args.output} "
              f"(sampler {report.sampler}, start {report.start})")
    else:
        for s, mol in zip(args.smiles, mols):
            if mol is not None:
                print(f"{s}: {mol.GetNumConformers()} conformers (use -o out.sdf to save them)")
    return 1 if report.failures else 0


# --------------------------------------------------------------------------- diffusion
def diffusion_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="molconf diffusion", description="Generalisation and Jacobian studies.")
    sub = p.add_subparsers(dest="what", required=True)

    g = sub.add_parser("generalization", help="denoisers on disjoint training sets of size N, with controls "
                                              "(molconf.diffusion.generalization)")
    g.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000, 10000], help="training-set sizes N")
    g.add_argument("--steps", type=int, default=20000, help="at least this many optimisation steps for every N")
    g.add_argument("--epochs", type=float, default=0.0,
                   help="and at least this many passes over the N molecules (steps grow with N)")
    g.add_argument("--max-steps", type=int, help="and at most this many steps")
    g.add_argument("--replicas", type=int, default=2,
                   help="networks per training set, each with its own seed (>= 2: the same-data control)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--conditioned", action="store_true",
                   help="noise-conditioned models + DDIM (default: blind models + KS sampler, as the paper)")
    g.add_argument("--ns", type=int, default=32)
    g.add_argument("--nv", type=int, default=8)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--cutoff", type=float, default=5.0)
    g.add_argument("--n-heldout", type=int, default=100)
    g.add_argument("--n-train-eval", type=int, default=20)
    g.add_argument("--n-samples", type=int, default=4, help="samples per molecule and model")
    g.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    g.add_argument("--ks-h0", type=float, default=0.01)
    g.add_argument("--ks-beta", type=float, default=0.01)
    g.add_argument("--ks-sigma0", type=float, default=1.0)
    g.add_argument("--ks-max-steps", type=int, default=3000)
    g.add_argument("--sigma-min", type=float, default=0.01)
    g.add_argument("--sigma-max", type=float, default=3.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--source-limit", type=int, help="use only the first N QM9 molecules (quick runs)")
    g.add_argument("--cache-dir")
    g.add_argument("--out", required=True, help="output folder (resumable: finished N are skipped)")
    g.add_argument("--threads", type=int, help="torch threads (molecule-sized graphs: 1 is often fastest)")

    j = sub.add_parser("jacobian", help="Jacobian eigen-analysis of a denoiser at one molecule")
    j.add_argument("--model", required=True, help="denoiser checkpoint or weights file")
    src = j.add_mutually_exclusive_group(required=True)
    src.add_argument("--smiles", help="embedded with ETKDG + MMFF as the reference geometry")
    src.add_argument("--qm9-id", type=int, help="QM9 molecule id (DFT geometry)")
    src.add_argument("--sdf", help="first molecule of this SDF (with coordinates)")
    j.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    j.add_argument("--n-leading", type=int, default=10)
    j.add_argument("--n-draws", type=int, default=1, help="noise draws per σ (statistics averaged)")
    j.add_argument("--ff", choices=["mmff", "uff"], default="mmff")
    j.add_argument("--hessian-at", choices=["minimum", "reference"], default="minimum",
                   help="normal modes at the force field's minimum nearest each sample (default) or at the reference")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--source-limit", type=int)
    j.add_argument("--out", required=True)
    j.add_argument("--threads", type=int, help="torch threads")
    return p


def diffusion_main(argv: list[str]) -> int:
    args = diffusion_parser().parse_args(argv)
    _set_threads(args.threads)
    if args.what == "generalization":
        from molconf.diffusion.generalization import SamplerSettings, StudyConfig, run_generalization

        cfg = StudyConfig(
            sizes=args.sizes, steps=args.steps, epochs=args.epochs, max_steps=args.max_steps, replicas=args.replicas,
            batch_size=args.batch_size, lr=args.lr, blind=not args.conditioned,
            ns=args.ns, nv=args.nv, n_layers=args.layers, cutoff=args.cutoff, sigma_min=args.sigma_min,
            sigma_max=args.sigma_max, n_heldout=args.n_heldout, n_train_eval=args.n_train_eval,
            n_samples=args.n_samples, seed=args.seed, source_limit=args.source_limit, cache_dir=args.cache_dir,
            sampling=SamplerSettings(steps=args.sample_steps, sigma_max=args.sigma_max, sigma_min=args.sigma_min,
                                     ks_sigma_0=args.ks_sigma0, ks_h0=args.ks_h0, ks_beta=args.ks_beta,
                                     ks_max_steps=args.ks_max_steps))
        try:
            run_generalization(cfg, args.out)
        except ValueError as err:
            print(f"molconf diffusion generalization: {err}", file=sys.stderr)
            return 2
        print(f"results in {args.out} (summary.json, generalization.png, loss_curves.png)")
        return 0
    from molconf.diffusion.api import resolve_denoiser
    from molconf.diffusion.study import jacobian_analysis, reference_molecule, write_jacobian

    try:
        network = resolve_denoiser(args.model).network
        mol = reference_molecule(args.smiles, args.qm9_id, args.sdf, args.source_limit, args.seed)
        result = write_jacobian(jacobian_analysis(network, mol, args.sigmas, args.seed, args.n_leading, args.ff,
                                                  args.n_draws, args.hessian_at),
                                args.out)
    except (FileNotFoundError, ValueError, MoleculeError) as err:
        print(f"molconf diffusion jacobian: {err}", file=sys.stderr)
        return 2
    print(f"Jacobian analysis written to {result} (and {Path(result).with_suffix('.png').name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry of ``molconf generate ...`` / ``molconf diffusion ...`` (argv starts with the command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("generate", "diffusion"):
        print("usage: molconf generate ... | molconf diffusion {generalization,jacobian} ...", file=sys.stderr)
        return 2
    return generate_main(argv[1:]) if argv[0] == "generate" else diffusion_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
