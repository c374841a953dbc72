"""The ``molconf`` command.

``molconf fit|validate|test --config configs/<name>.yaml`` run the Lightning CLI, and so does
``molconf predict`` when given ``--config``; without it, ``molconf predict`` predicts
conformers for SMILES or files (:mod:`molconf.predict_cli`). Other subcommands have their own parsers:
``molconf baselines`` (RDKit ETKDG / MMFF on a split), ``molconf prepare`` (build a
data-set cache), ``molconf build-xtb`` (GFN2-xTB ground states from SMILES) and
``molconf gfn2-forces`` (training data of the learned GFN2-xTB correction of MMFF94) and
``molconf conformer-energies`` (GFN2-xTB energies of conformer pools, :mod:`molconf.ground_state.energies`)
and ``molconf conformer-ensembles`` (GFN2-xTB conformer ensembles, :mod:`molconf.ground_state.ensembles`).
"""

from __future__ import annotations

import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = """usage: molconf <command> [options]

commands:
  predict                           conformers for SMILES / .smi / .csv / .sdf (molconf predict --help)
  fit | validate | test | predict   Lightning CLI with --config configs/<name>.yaml
  baselines                         RDKit ETKDG and ETKDG+MMFF on a split, with metrics
  prepare                           build a data-set cache (python -m molconf.data.prepare)
  build-xtb                         GFN2-xTB ground states from SMILES / MOSES (molconf build-xtb --help)
  gfn2-forces                       GFN2-xTB and MMFF94 forces around a data set's minima (trains the GFN2 correction)
  conformer-energies                GFN2-xTB energies of ETKDG+MMFF94 conformer pools (rankers' data)
  conformer-ensembles               GFN2-xTB conformer ensembles within 3 kcal/mol (the ensemble benchmark's reference)
  generate | diffusion              sample conformers with a denoiser; generalisation / Jacobian studies
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "predict" and not any(a in ("-c", "--config") or a.startswith("--config=") for a in rest):
        from molconf.predict_cli import main as predict_main

        sys.exit(predict_main(rest))
    if command in LIGHTNING_COMMANDS:
        from molconf.lightning import run_lightning_cli

        run_lightning_cli([command, *rest])
    elif command == "baselines":
        from molconf.baselines import main as baselines_main

        baselines_main(rest)
    elif command == "prepare":
        from molconf.data.prepare import main as prepare_main

        prepare_main(rest)
    elif command == "build-xtb":
        from molconf.ground_state.build import main as build_xtb_main

        sys.exit(build_xtb_main(rest))
    elif command == "gfn2-forces":
        from molconf.ground_state.forces import main as gfn2_forces_main

        gfn2_forces_main(rest)
    elif command == "conformer-energies":
        from molconf.ground_state.energies import main as energies_main

        energies_main(rest)
    elif command == "conformer-ensembles":
        from molconf.ground_state.ensembles import main as ensembles_main

        ensembles_main(rest)
    elif command in ("generate", "diffusion"):
        from molconf.diffusion.cli import main as diffusion_main

        sys.exit(diffusion_main([command, *rest]))
    else:
        print(f"molconf: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
