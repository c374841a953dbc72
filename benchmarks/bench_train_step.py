"""A full ReBind training step with and without the compiled extension, side by side.

Model: the CPU-budget ReBind (configs/rebind_qm9_cpu.yaml sizes); data: real QM9 training
batches of 100 molecules, size-aware. The two variants alternate step by step
(``MOLCONF_REFERENCE_OPS`` toggled per step) so machine load hits both alike; medians.

    nice python benchmarks/bench_train_step.py [--steps 20] [--threads 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import _workload as W  # noqa: E402  (benchmarks/_workload.py, beside this script)
from molconf import ops
from molconf.constants import ENV_FORCE_REFERENCE_OPS
from molconf.models import conformer_loss


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    W.add_common_args(p, steps=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = W.qm9_train_batches(args.steps + 2, batch_size=100)
    model = W.build_model("rebind", "cpu", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    assert ops.backend() == "extension", "the extension did not build; nothing to compare"

    def step(batch) -> float:
        t = time.perf_counter()
        loss = conformer_loss(model(batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times = {"extension": [], "reference": []}
    for i, batch in enumerate(batches):
        for variant in ("extension", "reference"):
            os.environ[ENV_FORCE_REFERENCE_OPS] = "1" if variant == "reference" else "0"
            dt = step(batch)
            if i >= 2:  # warm-up
                times[variant].append(dt)
    os.environ.pop(ENV_FORCE_REFERENCE_OPS, None)
    ext, ref = statistics.median(times["extension"]), statistics.median(times["reference"])
    load = os.getloadavg()[0]
    lines = [
        "# ReBind training step (CPU budget size, QM9 batch of 100), extension vs reference",
        "",
        f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps each, alternating; "
        f"load average at the end {load:.2f} (2 cores).",
        "",
        "| variant | median s / step |",
        "|---|---|",
        f"| extension | {ext:.3f} |",
        f"| reference | {ref:.3f} |",
        "",
        f"Speed-up of the whole step: {ref / ext:.2f}× (the rewiring is a small part of a step: "
        "attention and the MLPs dominate at QM9 sizes).",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_step_cpu.md").write_text("\n".join(lines) + "\n")
        (args.out / "train_step_cpu.json").write_text(json.dumps(
            {"threads": args.threads, "steps": args.steps, "extension_s": times["extension"],
             "reference_s": times["reference"], "median_extension_s": ext, "median_reference_s": ref,
             "load_average": load}, indent=1) + "\n")


if __name__ == "__main__":
    main()
