"""The GPU check of issue #27: the stages ``benchmarks/gpu_check.sh`` runs, one markdown file each.

Stages, in order (each writes ``<out>/gpu_<stage>.md`` as soon as it ends, so a run cut short
keeps what it finished; ``gpu_summary.md`` lists them and ``gpu_check.json`` holds the numbers):

- ``build``: the compiled extension with its CUDA kernels (nvcc, through ``molconf.ops``).
- ``op_tests``: ``tests/ops/test_ops_on_device.py`` on the device (edge sets identical to the
  CPU kernel and the PyTorch reference on QM9 and drug-sized batches, ties included; gradcheck
  and opcheck of the LJ op).
- ``ops``: the ops against the PyTorch reference on the (B, N) grid of ``ops_cpu.md``.
- ``train``: ReBind and GTMGC at paper size (6+6 layers, d 256, FFN 1024), bf16 autocast,
  a few hundred AdamW steps on QM9 and on drug-like batches: molecules/s and peak memory.
- ``predict``: the shipped models on pre-featurised test molecules on the device, against
  their CPU float32 predictions made where the batches were featurised.
- ``direct``: our training step and inference against the model written directly
  (``bench_direct.py``), on the device.

The GPU machine has no RDKit: molecules come pre-featurised (``gpu_inputs.py``) and a
stand-in ``rdkit`` module lets molconf's networks import (``_rdkit_stub.py``);
``MOLCONF_GPU_CHECK_NO_RDKIT=1`` forces the stand-in here too (the dry run's test does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import _rdkit_stub  # noqa: E402  (benchmarks/, beside this script)

STUBBED = _rdkit_stub.install(force=os.environ.get("MOLCONF_GPU_CHECK_NO_RDKIT") == "1")

import torch  # noqa: E402

import _workload as W  # noqa: E402
import bench_direct  # noqa: E402
import bench_ops  # noqa: E402
import gpu_inputs  # noqa: E402
from _timing import cpu_name  # noqa: E402
from molconf import constants as K  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("build", "op_tests", "ops", "train", "predict", "direct")
FULL = dict(size="paper", train_steps={"qm9": 300, "moses_xtb": 200}, warmup=10, predict_repeats=20,
            direct_steps=30, ops_shapes=bench_ops.SHAPES, ops_budget_s=None, op_test_timeout=240)
DRY = dict(size="tiny", train_steps={"qm9": 3, "moses_xtb": 2}, warmup=1, predict_repeats=1,
           direct_steps=2, ops_shapes=((8, 12), (4, 30)), ops_budget_s=0.0, op_test_timeout=240)


# --------------------------------------------------------------------------- stages


def stage_build(ctx) -> tuple[str, dict]:
    from molconf import ops
    from molconf.ops import _extension

    t = time.perf_counter()
    st = _extension.load()
    seconds = time.perf_counter() - t
    backend = ops.backend(ctx.device)
    cuda_home = None
    if torch.version.cuda:
        from torch.utils.cpp_extension import CUDA_HOME as cuda_home
    rows = [("device", ctx.device_name), ("torch", f"{torch.__version__} (CUDA {torch.version.cuda})"),
            ("CUDA_HOME (nvcc)", cuda_home), ("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST")),
            ("built and loaded", st.ok), ("with CUDA kernels", st.with_cuda), ("library", st.library),
            ("build or load seconds", f"{seconds:.1f}"), (f"ops.backend('{ctx.device.type}')", backend)]
    if st.reason or st.cuda_reason:
        rows.append(("why not", (st.reason or st.cuda_reason).replace("\n", " ")[-800:]))
    md = ["# GPU check: building the ops extension", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    data = {k: str(v) for k, v in rows}
    if backend != "extension":
        raise StageFailed("\n".join(md), data, f"no compiled {ctx.device.type} kernels")
    return "\n".join(md), data


def stage_op_tests(ctx) -> tuple[str, dict]:
    env = dict(os.environ, MOLCONF_TEST_DEVICE=str(ctx.device), MOLCONF_GPU_INPUTS=str(ctx.inputs_path),
               MOLCONF_REQUIRE_EXTENSION="1", OMP_NUM_THREADS=str(ctx.threads),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/ops/test_ops_on_device.py"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=ctx.cfg["op_test_timeout"])
    seconds = time.perf_counter() - t
    out = (proc.stdout + proc.stderr).strip()
    summary = out.splitlines()[-1] if out else "(no output)"
    md = ["# GPU check: op tests on the device", "",
          f"`MOLCONF_TEST_DEVICE={ctx.device} python -m pytest tests/ops/test_ops_on_device.py` "
          f"({seconds:.0f} s, exit code {proc.returncode}): **{summary}**", "", "```", *out.splitlines()[-60:], "```"]
    data = {"returncode": proc.returncode, "summary": summary, "seconds": seconds}
    if proc.returncode != 0:
        raise StageFailed("\n".join(md), data, summary)
    return "\n".join(md), data


def stage_ops(ctx) -> tuple[str, dict]:
    rows, meta = bench_ops.collect(quick=True, thread_counts=(ctx.threads,), device=ctx.device,
                                   shapes=ctx.cfg["ops_shapes"], memory=ctx.cuda, budget_s=ctx.cfg["ops_budget_s"])
    return bench_ops._markdown(rows, meta), {"meta": meta, "rows": rows}


def stage_train(ctx) -> tuple[str, dict]:
    amp = torch.bfloat16
    rows = []
    for relation in W.RELATIONS:
        for name, entry in ctx.inputs.items():
            model = W.build_model(relation, ctx.cfg["size"]).to(ctx.device)
            step = W.train_step_fn(model, W.ours_loss, ctx.device, amp)
            batches = entry["batches"]
            for i in range(ctx.cfg["warmup"]):
                step(batches[i % len(batches)])
            steps = ctx.cfg["train_steps"][name]
            if ctx.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            losses, molecules = [], 0
            t = time.perf_counter()
            for i in range(steps):
                b = batches[i % len(batches)]
                losses.append(step(b))
                molecules += int(b[K.MASK].shape[0])
            if ctx.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            losses = [float(x) for x in losses]
            cycle = len(batches)  # losses of the first and of the last pass over the batches
            rows.append({
                "relation": relation, "data": name, "steps": steps, "s_per_step": seconds / steps,
                "mol_per_s": molecules / seconds, "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None,
                "first_loss": statistics.mean(losses[:cycle]), "last_loss": statistics.mean(losses[-cycle:]),
                "finite": all(map(_finite, losses)),
                "linear_params": W.linear_params(model), "batch_atoms_padded": [tuple(b[K.MASK].shape) for b in batches],
            })
            del model, step
    size = W.SIZES[ctx.cfg["size"]]
    md = ["# GPU check: training at paper size, bf16 autocast", "",
          f"{ctx.device_name}; size `{ctx.cfg['size']}` ({size}); AdamW lr {W.LR}, betas {W.BETAS}, gradient clip "
          f"{W.CLIP}; batches of 100 molecules cycled (the pre-featurised test samples: throughput, not learning); "
          f"{ctx.cfg['warmup']} warm-up steps, then the timed steps, synchronised at both ends only. Peak memory: "
          "`torch.cuda.max_memory_allocated` over the timed steps.", "",
          "| model | data (padded batch shapes) | steps | s / step | molecules / s | peak MB | loss, first → last pass |",
          "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        md.append(f"| {r['relation']} | {r['data']} {r['batch_atoms_padded']} | {r['steps']} | {r['s_per_step']:.4f} | "
                  f"{r['mol_per_s']:.0f} | {peak} | {r['first_loss']:.3f} → {r['last_loss']:.3f} |")
    data = {"rows": rows}
    if not all(r["finite"] for r in rows):
        raise StageFailed("\n".join(md), data, "non-finite training loss")
    return "\n".join(md), data


def stage_predict(ctx) -> tuple[str, dict]:
    from molconf.metrics import DistanceMetricAccumulator
    from molconf.models import load_model
    from molconf.models.io import WEIGHTS_DIR

    rows = []
    for name, entry in ctx.inputs.items():
        model, _ = load_model(WEIGHTS_DIR / f"{entry['model']}.pt")
        model = model.to(ctx.device)  # load_model's map_location moves the file's tensors, not the module
        for precision, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            acc_dev, acc_cpu, worst, off, molecules = DistanceMetricAccumulator(), DistanceMetricAccumulator(), 0.0, 0, 0
            finite = True

            def run_all():
                with torch.inference_mode(), W.autocast(ctx.device, amp):
                    return [model(b)[K.POS_PRED] for b in entry["batches"]]

            outs = run_all()  # warm-up, and the outputs compared
            for b, pos in zip(entry["batches"], outs):
                diff = (pos.float() - b[gpu_inputs.PRED_CPU]).abs().amax(-1) * b[K.MASK]  # (B, N), Å
                worst = max(worst, float(diff.max()))
                finite = finite and bool(torch.isfinite(pos[b[K.MASK]]).all())
                off += int((diff.amax(-1) > 1e-3).sum())
                acc_dev.update(pos.float(), b[K.POS], b[K.MASK])
                acc_cpu.update(b[gpu_inputs.PRED_CPU], b[K.POS], b[K.MASK])
                molecules += int(b[K.MASK].shape[0])
            seconds = statistics.median(W.wall(run_all, ctx.device) for _ in range(ctx.cfg["predict_repeats"]))
            rows.append({"data": name, "model": entry["model"], "precision": precision, "molecules": molecules,
                         "mol_per_s": molecules / seconds, "max_abs_diff_vs_cpu": worst, "molecules_off": off, "finite": finite,
                         "d_mae_device": acc_dev.compute()[K.D_MAE], "d_mae_cpu": acc_cpu.compute()[K.D_MAE]})
    why = ("RDKit is not installed on this machine" if STUBBED else
           "RDKit is here, but `molconf.predict` has no device option: it runs its network on the CPU")
    md = ["# GPU check: the prediction network on the device", "",
          f"{ctx.device_name}. The shipped models on the pre-featurised test samples "
          "(`benchmarks/gpu_inputs.py`: 200 QM9 and 200 moses_xtb molecules, reference geometries), in "
          "`inference_mode`, against their CPU float32 predictions stored with the batches. `molconf.predict` "
          f"itself (SMILES in, checked and repaired conformers out) is not run: {why}; this is the step of "
          "`predict` that a GPU would take over (featurisation, stereo and bond checks stay on the CPU).", "",
          "| data | model | precision | molecules / s (median of "
          f"{ctx.cfg['predict_repeats']}) | max \\|Δ\\| vs CPU fp32 (Å) | molecules off by > 0.001 Å "
          "| D-MAE device (Å) | D-MAE CPU fp32 (Å) |",
          "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['data']} | {r['model']} | {r['precision']} | {r['mol_per_s']:.0f} | "
                  f"{r['max_abs_diff_vs_cpu']:.2e} | {r['molecules_off']} of {r['molecules']} | "
                  f"{r['d_mae_device']:.4f} | {r['d_mae_cpu']:.4f} |")
    md += ["", "D-MAE: pooled over all real atom pairs of the batches (diagonal included), as "
           "`molconf.metrics.DistanceMetricAccumulator` computes it. A molecule can move by more than rounding "
           "when a different summation order flips one of ReBind's discrete rewiring choices (a near-tie in "
           "|F|), or in bf16; the check fails if any output is non-finite or, in fp32, if the D-MAE moves by "
           "more than 0.001 Å."]
    data = {"rows": rows, "predict_skipped_because": why}
    if not all(r["finite"] for r in rows):
        raise StageFailed("\n".join(md), data, "non-finite predictions on the device")
    if any(abs(r["d_mae_device"] - r["d_mae_cpu"]) > 1e-3 for r in rows if r["precision"] == "fp32"):
        raise StageFailed("\n".join(md), data, "fp32 D-MAE on the device differs from the CPU's by > 0.001 Å")
    return "\n".join(md), data


def stage_direct(ctx) -> tuple[str, dict]:
    batches = [{k: v.cpu() for k, v in b.items() if k != gpu_inputs.PRED_CPU} for b in ctx.inputs["qm9"]["batches"]]
    amp = torch.bfloat16 if ctx.cuda else None
    results = [bench_direct.measure(r, ctx.cfg["size"], batches, ctx.device, ctx.cfg["direct_steps"], amp)
               for r in W.RELATIONS]
    meta = {
        "device": ctx.device_name, "hardware": ctx.device_name, "torch": torch.__version__,
        "python": platform.python_version(), "threads": ctx.threads, "steps": ctx.cfg["direct_steps"],
        "batches": len(batches), "batch_size": 100, "data": "the 200 pre-featurised QM9 test-sample molecules",
        "load_before": os.getloadavg()[0], "load_after": os.getloadavg()[0], "note": "",
        "command": "bash benchmarks/gpu_check.sh (stage direct)",
        "full_command": "bash benchmarks/gpu_check.sh",
    }
    return bench_direct.markdown(results, meta), {"results": results}


# --------------------------------------------------------------------------- driver


class StageFailed(Exception):
    """A stage that ran but whose result is a failure (its report is still written)."""

    def __init__(self, md: str, data: dict, why: str):
        super().__init__(why)
        self.md, self.data, self.why = md, data, why


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


class Context:
    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.cfg = DRY if args.dry_run else FULL
        self.threads = args.threads
        self.inputs_path = args.inputs.resolve()
        self.inputs = gpu_inputs.load(args.inputs, self.device)
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else f"CPU {cpu_name()}"


def run(args) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rdkit_stub": STUBBED, "stages": {}}
    summary = []
    ctx = None
    try:
        ctx = Context(args)
        for name in args.stages:
            t = time.perf_counter()
            status, why = "ok", ""
            try:
                md, data = STAGE_FUNCS[name](ctx)
            except StageFailed as err:
                md, data, status, why = err.md, err.data, "FAILED", err.why
            except Exception as err:  # noqa: BLE001 - one stage's crash must not stop the others
                md = f"# GPU check: {name}\n\nCrashed:\n\n```\n{traceback.format_exc()[-3000:]}\n```"
                data, status, why = {}, "FAILED", f"{type(err).__name__}: {err}"
            seconds = time.perf_counter() - t
            (out / f"gpu_{name}.md").write_text(md + "\n")
            report["stages"][name] = {"status": status, "why": why, "seconds": seconds, "data": data}
            summary.append((name, status, seconds, why))
            print(f"[gpu_check] {name}: {status} in {seconds:.1f} s {why}", flush=True)
            _write_json(out, report)
    finally:  # also on a timeout's SIGINT: what ran is summarised
        _write_summary(out, summary, args, ctx)
        _write_json(out, report)
    return 0 if summary and all(s == "ok" for _, s, _, _ in summary) and len(summary) == len(args.stages) else 1


STAGE_FUNCS = {"build": stage_build, "op_tests": stage_op_tests, "ops": stage_ops, "train": stage_train,
               "predict": stage_predict, "direct": stage_direct}


def _write_json(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")


def _write_summary(out: Path, summary, args, ctx) -> None:
    device = ctx.device_name if ctx else str(args.device)
    lines = ["# GPU check (issue #27): summary", "",
             f"{device}; torch {torch.__version__} (CUDA {torch.version.cuda}); python {platform.python_version()}; "
             f"{'dry run (tiny sizes)' if args.dry_run else 'full run'}; RDKit "
             f"{'absent (stand-in module)' if STUBBED else 'present'}; command: "
             f"`bash benchmarks/gpu_check.sh {' '.join(sys.argv[1:])}`.", "",
             "| stage | status | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {n} | {s} | {t:.1f} | {w.replace('|', '/')[:300]} |" for n, s, t, w in summary]
    missing = [s for s in args.stages if s not in {n for n, *_ in summary}]
    if missing:
        lines += ["", f"Not run (interrupted or time ran out): {', '.join(missing)}."]
    (out / "gpu_summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes and few steps: the plumbing only")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "gpu_check"))
    p.add_argument("--inputs", type=Path, default=gpu_inputs.DEFAULT_PATH)
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: use --device cpu --dry-run for the plumbing", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
