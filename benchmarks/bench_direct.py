"""Our training step and inference against the model written directly, side by side.

"Ours": ``molconf.models.ConformerTransformer`` (fused QKV, one einsum for the relations, the
compiled rewiring op) on size-aware batches, inference as ``predict`` runs it
(``inference_mode``, bf16 autocast where the CPU has native bf16). "Direct":
``benchmarks/direct_baseline.py``, the same model (weights copied across, same sizes and
relation math) written the obvious way, float32, on the same batches and on the same
molecules batched at random as the published codes batch them. Each round runs every
variant once on its next batch and one large float32 matrix product, so machine load hits
all alike; rates are totals over the timed rounds.

Useful GFLOP/s counts 2 · (Linear parameters) · (real atoms) per forward pass and three
times that per training step; it is set against the matrix-product rate of the same rounds.

    nice python benchmarks/bench_direct.py --size paper --steps 30 --out benchmarks/results

(``--size cpu --steps 6`` for a short run; ``--device cuda`` on a GPU.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
from pathlib import Path

import torch

import _workload as W  # noqa: E402  (benchmarks/_workload.py, beside this script)
import direct_baseline  # noqa: E402
from _timing import cpu_name, time_interleaved  # noqa: E402
from molconf import constants as K

WARMUP = 2


def _cycle_calls(fn, batches, model, train: bool, log: list):
    """A zero-argument call running ``fn`` on the next batch; logs (molecules, useful FLOPs)."""
    it = itertools.cycle(batches)

    def call():
        b = next(it)
        fn(b)
        log.append((int(b[K.MASK].shape[0]), W.useful_flops(model, int(b[K.MASK].sum()), train)))

    return call


def _infer_fn(model, device, amp, inference_mode: bool):
    guard = torch.inference_mode if inference_mode else torch.no_grad

    def run(batch):
        model.eval()
        with guard(), W.autocast(device, amp):
            return model(batch)[K.POS_PRED]

    return run


def ours_inference_amp(device: torch.device) -> torch.dtype | None:
    """The precision ``predict`` runs at: bf16 on CPUs with native bf16 (and on GPUs), else fp32."""
    if device.type == "cuda":
        return torch.bfloat16
    try:
        from molconf.prediction import resolve_precision
    except ImportError:  # no RDKit (the GPU check's stand-in): predict could not run here at all
        return None
    return torch.bfloat16 if resolve_precision("auto") == "bfloat16" else None


def _low_precision_training(ours, batches, device, train_amp, amp) -> list[tuple]:
    """A float32 comparison on hardware with fast bf16 also times our training step in bf16 autocast
    (``molconf fit --trainer.precision bf16-mixed``): a copy of our model with its own optimiser."""
    if train_amp is not None or amp is None:
        return []
    import copy

    twin = copy.deepcopy(ours)
    return [(f"ours ({_label(amp)} autocast), size-aware batches", W.train_step_fn(twin, W.ours_loss, device, amp),
             twin, batches, amp)]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MATMUL_N = {"cpu": 1024, "cuda": 4096}  # large enough to run near the device's peak


def _label(amp: torch.dtype | None) -> str:
    return "bf16" if amp == torch.bfloat16 else "fp32"


def measure(relation: str, size: str, batches: list[dict], device: torch.device, steps: int,
            train_amp: torch.dtype | None = None) -> dict:
    """Time training and inference of ours and the direct model on ``batches``; one relation.

    ``train_amp``: autocast dtype of every training variant (None: float32). Each phase's
    rounds also run an n = 1024 matrix product in each dtype its variants compute in.
    """
    ours = W.build_model(relation, size).to(device)
    directs = [direct_baseline.from_ours(ours) for _ in range(2)]  # own copy (and optimiser) per variant
    random_batches = [W.to_device(b, device) for b in W.random_rebatch(batches)]
    batches = [W.to_device(b, device) for b in batches]
    inf_amp = ours_inference_amp(device)
    t, loss = _label(train_amp), direct_baseline.distance_loss

    def step(model, loss_fn):
        return W.train_step_fn(model, loss_fn, device, train_amp)

    phases = {  # name, call on a batch, model (for its FLOPs), batches, autocast dtype
        "train": [
            (f"ours ({t}), size-aware batches", step(ours, W.ours_loss), ours, batches, train_amp),
            (f"direct ({t}), same batches", step(directs[0], loss), directs[0], batches, train_amp),
            (f"direct ({t}), random batches", step(directs[1], loss), directs[1], random_batches, train_amp),
            *_low_precision_training(ours, batches, device, train_amp, inf_amp),
        ],
        "inference": [
            (f"ours ({_label(inf_amp)}, as predict runs it)" if device.type == "cpu" else f"ours ({_label(inf_amp)})",
             _infer_fn(ours, device, inf_amp, True), ours, batches, inf_amp),
            ("ours (fp32)", _infer_fn(ours, device, None, True), ours, batches, None),
            ("direct (fp32), same batches", _infer_fn(directs[0], device, None, False), directs[0], batches, None),
            ("direct (fp32), random batches", _infer_fn(directs[0], device, None, False), directs[0],
             random_batches, None),
        ],
    }
    result = {"relation": relation, "size": size, "linear_params": W.linear_params(ours), "phases": {}}
    for phase, variants in phases.items():
        logs = {name: [] for name, *_ in variants}  # [(molecules, useful FLOPs)] per call, warm-up included
        calls = {name: _cycle_calls(fn, data, model, phase == "train", logs[name])
                 for name, fn, model, data, _ in variants}
        matmuls = {d: W.matmul_call(device, DTYPES[d], n=MATMUL_N[device.type])
                   for d in sorted({_label(v[-1]) for v in variants})}
        calls.update({f"matmul {d}": call for d, (call, _) in matmuls.items()})
        times = time_interleaved(calls, min_repeats=steps, max_repeats=steps, budget_s=0, warmup=WARMUP,
                                 sync=W.sync_fn(device))
        rates = {d: [flops / s / 1e9 for s in times[f"matmul {d}"]] for d, (_, flops) in matmuls.items()}
        matmul = {d: {"median_gflops": statistics.median(r), "best_gflops": max(r)} for d, r in rates.items()}
        rows = []
        for name, *_, amp in variants:
            timed = logs[name][-steps:]  # the warm-up rounds' calls come first
            total = sum(times[name])
            gflops = sum(f for _, f in timed) / total / 1e9
            rows.append({
                "variant": name,
                "dtype": _label(amp),
                "median_s": statistics.median(times[name]),
                "mol_per_s": sum(m for m, _ in timed) / total,
                "useful_gflops": gflops,
                "share_of_matmul": gflops / matmul[_label(amp)]["median_gflops"],
            })
        for r in rows:
            r["time_vs_ours"] = r["median_s"] / rows[0]["median_s"]
        result["phases"][phase] = {"rows": rows, "matmul": matmul, "matmul_n": MATMUL_N[device.type]}
    return result


# --------------------------------------------------------------------------- report


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Ours vs the model written directly ({meta['device']})",
        "",
        f"Command: `{meta['command']}`. Full size: `{meta['full_command']}`.",
        "",
        f"{meta['hardware']}; torch {meta['torch']}, {meta['threads']} threads; {meta['steps']} timed rounds "
        f"after {WARMUP} warm-up rounds, every variant once per round on its next batch (alternating), "
        f"{meta['batches']} batches of {meta['batch_size']} molecules ({meta['data']}). "
        f"Load average before/after: {meta['load_before']:.2f} / {meta['load_after']:.2f}.",
        "",
    ]
    if meta.get("note"):
        lines += [meta["note"], ""]
    if meta["device"] == "cpu" and max(meta["load_before"], meta["load_after"]) > 0.5 * (os.cpu_count() or 1):
        lines += ["**Other jobs were using this CPU during the run** (see the load averages): every variant "
                  "was slowed alike round by round, so the ratios hold, but the absolute rates are low and "
                  "single slow rounds inflate the totals (molecules/s, GFLOP/s) more than the medians.", ""]
    for res in results:
        for phase, data in res["phases"].items():
            lines += [
                f"## {res['relation']}, size `{res['size']}` ({res['linear_params'] / 1e6:.2f} M Linear parameters): "
                f"{phase}",
                "",
                f"Matrix-product rate in the same rounds (n = {data['matmul_n']}): " + "; ".join(
                    f"{d} median {m['median_gflops']:.0f} GFLOP/s (best {m['best_gflops']:.0f})"
                    for d, m in data["matmul"].items()) + ".",
                "",
                "| variant | median s / " + ("step" if phase == "train" else "batch")
                + " | time vs ours | molecules / s | useful GFLOP/s | share of its dtype's matmul rate "
                "| share of the fp32 matmul rate |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            fp32 = data["matmul"].get("fp32", {}).get("median_gflops")
            for r in data["rows"]:
                lines.append(f"| {r['variant']} | {r['median_s']:.4f} | {r['time_vs_ours']:.2f}× | "
                             f"{r['mol_per_s']:.0f} | {r['useful_gflops']:.1f} | {100 * r['share_of_matmul']:.1f} % | "
                             + (f"{100 * r['useful_gflops'] / fp32:.1f} % |" if fp32 else "– |"))
            lines.append("")
    lines += [
        "Molecules/s and useful GFLOP/s are totals over the timed rounds; s/step is the median. "
        "Useful GFLOP/s: 2 · (weights and biases of the Linear layers) · (real atoms) per forward "
        "pass, ×3 per training step, over the variant's total time; padding and the O(N²) "
        "attention and relation terms count as overhead. A training step is AdamW with gradient "
        "clip 1.0 on the distance loss. \"Random batches\": the same molecules shuffled and cut "
        "into batches of the same sizes, each padded to its largest molecule, as the published "
        "codes' loaders do. The direct model is `benchmarks/direct_baseline.py`; "
        "`tests/test_direct_baseline.py` checks that it computes our function. The fp32 matrix-product "
        "rate is issue #27's yardstick for every row, bf16 ones included.",
        "",
    ]
    return "\n".join(lines)


def run(results_meta: tuple[list[dict], dict], out: Path | None, stem: str) -> str:
    results, meta = results_meta
    md = markdown(results, meta)
    print(md)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(md)
        (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    return md


def _shown(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it (commands run from there)."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    W.add_common_args(p, steps=6)
    W.add_model_args(p, size="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    batches = W.qm9_train_batches(args.steps + WARMUP, args.batch_size)
    load_before = os.getloadavg()[0]
    results = [measure(r, args.size, batches, device, args.steps,
                       torch.bfloat16 if device.type == "cuda" else None) for r in args.relation]
    meta = {
        "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
        "hardware": f"CPU {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"
        if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
        "steps": args.steps, "batches": len(batches), "batch_size": args.batch_size,
        "data": "QM9 training molecules, size-aware batches as training draws them",
        "load_before": load_before, "load_after": os.getloadavg()[0], "note": args.note,
        "command": f"nice python benchmarks/bench_direct.py --size {args.size} --steps {args.steps} "
                   f"--threads {args.threads} --relation {' '.join(args.relation)} --batch-size {args.batch_size}"
                   + (f" --device {args.device}" if args.device != "cpu" else "")
                   + (" --out " + _shown(args.out) if args.out else ""),
        "full_command": "nice python benchmarks/bench_direct.py --size paper --steps 30 --out benchmarks/results",
    }
    run((results, meta), args.out, f"direct_{device.type}")


if __name__ == "__main__":
    main()
