"""Benchmark molconf's compiled CPU ops against the pure-PyTorch reference.

For (B, N) = (256, 18), (256, 44), (64, 128), (16, 180) and two threads (or on a CUDA
device, ``--device cuda``: the CUDA kernels against the reference on that device), it times
``rewire_by_force`` (forward) and ``lj_energy_forces`` (forward + backward through both
outputs) for the fused extension op and for ``molconf.ops.reference``, and measures the
peak memory of one call of each.

Timing: both variants run interleaved (ext, ref, ext, ref, ...) after a warm-up, so load
from other processes hits both alike; the table gives medians (and the spread).

Memory: PyTorch's CPU allocations are invisible to tracemalloc and torch has no CPU peak
counter, so each (op, variant, shape) runs once more in a fresh subprocess that builds its
inputs, warms up, returns freed heap to the OS (malloc_trim), resets the kernel's peak-RSS
mark (/proc/self/clear_refs) and reads VmHWM after one call. "Peak MB" is that high-water
mark minus the resident size before the call: the extra memory the call needed, outputs
included. Linux-only; elsewhere the column is empty. On CUDA: the allocator's peak
(``torch.cuda.max_memory_allocated``) during one call minus what was allocated before it.

Usage::

    nice python benchmarks/bench_ops.py [--out benchmarks/results] [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

import _memory  # noqa: E402  (benchmarks/_memory.py, beside this script)
from _timing import cpu_name, time_interleaved  # noqa: E402  (benchmarks/_timing.py)
import molconf.ops as ops
from molconf.ops import reference

SHAPES = ((256, 18), (256, 44), (64, 128), (16, 180))
TARGETS = {(256, 18): 3.0, (256, 44): 5.0, (64, 128): 5.0}  # required speed-ups (both ops)
BUSY_LOAD = 1.0  # 1-minute load average above which other jobs are taken to be running
THREADS = 2
# Element mix of drug-like molecules with explicit H (share of atoms).
ELEMENT_MIX = {1: 0.48, 6: 0.36, 7: 0.06, 8: 0.07, 9: 0.01, 16: 0.01, 17: 0.01}


# --------------------------------------------------------------------------- inputs


def molecule_batch(b: int, n: int, seed: int = 0, dtype=torch.float32) -> dict:
    """Molecule-like padded batch.

    Each molecule takes the lattice sites (spacing 1.5 Å, about a bond length) nearest to
    its centre, jittered by ±0.25 Å: a compact blob at organic-molecule density. Sizes vary
    from N/2 to N (padding); pairs closer than 1.45 Å are bonded (degrees ~1-5), and K_i is
    the degree-compensating K of DESIGN §4.
    """
    g = torch.Generator().manual_seed(seed)
    side = int(round(n ** (1 / 3))) + 3
    axis = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[grid.norm(dim=-1).argsort()][:n] * 1.5  # (n, 3) compact cluster
    counts = torch.randint(max(1, n // 2), n + 1, (b,), generator=g)
    counts[0] = n
    mask = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)  # (B, N)
    pos = grid.unsqueeze(0) + 0.5 * (torch.rand(b, n, 3, generator=g, dtype=torch.float64) - 0.5)
    pos = torch.where(mask.unsqueeze(-1), pos, torch.zeros_like(pos))
    zs = torch.tensor(list(ELEMENT_MIX))
    probs = torch.tensor(list(ELEMENT_MIX.values()))
    z = zs[torch.multinomial(probs, b * n, replacement=True, generator=g)].view(b, n)
    z = torch.where(mask, z, torch.zeros_like(z))
    sigma, eps = ops.lj_parameters(z)
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)
    bond = (torch.cdist(pos, pos) < 1.45) & pair & ~torch.eye(n, dtype=torch.bool)
    k = ops.degree_compensating_k(bond, mask)
    return {
        "pos": pos.to(dtype),
        "mask": mask,
        "bond_adj": bond,
        "sigma": sigma.to(dtype),
        "epsilon": eps.to(dtype),
        "k": k,
        "exclude": ops.bond_exclusions(bond, mask),
    }


# --------------------------------------------------------------------------- the calls


def make_call(op: str, variant: str, batch: dict):
    """A zero-argument function running one call of ``op`` with ``variant``."""
    if op == "rewire_by_force":
        args = tuple(batch[k] for k in ("pos", "mask", "bond_adj", "sigma", "epsilon", "k"))
        if variant == "extension":
            return lambda: torch.ops.molconf.rewire_by_force(*args, False)
        return lambda: reference.rewire_by_force(*args)

    pos = batch["pos"].clone().requires_grad_()
    rest = (batch["mask"], batch["sigma"], batch["epsilon"], batch["exclude"])
    w = torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=pos.dtype).to(pos.device)
    fn = torch.ops.molconf.lj_energy_forces if variant == "extension" else reference.lj_energy_forces

    def fwd_bwd():
        pos.grad = None
        energy, forces = fn(pos, *rest)
        (energy.sum() + (forces * w).sum()).backward()  # gradients through both outputs

    return fwd_bwd


# --------------------------------------------------------------------------- memory


def peak_memory_child(op: str, variant: str, b: int, n: int, threads: int) -> None:
    """Subprocess body: print the peak extra resident memory (bytes) of one call."""
    torch.set_num_threads(threads)
    ops.backend()  # load the extension
    _memory.print_peak(make_call(op, variant, molecule_batch(b, n)))


def peak_memory(op: str, variant: str, b: int, n: int, threads: int) -> float | None:
    return _memory.peak_mb_in_child([__file__, "--memory-child", op, variant, str(b), str(n), str(threads)])


def cuda_peak_memory(call) -> float:
    """MB the CUDA allocator's peak rose above what was allocated before one call."""
    call()  # warm-up: lazy initialisation is not the call's memory
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- report


def measure(quick: bool, threads: int, device: torch.device = torch.device("cpu"),
            shapes=SHAPES, memory: bool = True, budget_s: float | None = None) -> tuple[list[dict], dict]:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    rows = []
    cuda = device.type == "cuda"
    for b, n in shapes:
        batch = _to(molecule_batch(b, n), device)
        mean_k = batch["k"][batch["mask"]].float().mean().item()
        for op in ("rewire_by_force", "lj_energy_forces"):
            ext, ref = make_call(op, "extension", batch), make_call(op, "reference", batch)
            t = time_interleaved({"ext": ext, "ref": ref}, min_repeats=15, max_repeats=300,
                                 budget_s=budget_s if budget_s is not None else 1.0 if quick else 3.0, warmup=3,
                                 sync=torch.cuda.synchronize if cuda else None)
            te, tr = [s * 1e3 for s in t["ext"]], [s * 1e3 for s in t["ref"]]  # ms
            row = {
                "threads": threads,
                "op": op if op == "rewire_by_force" else "lj_energy_forces (fwd+bwd)",
                "B": b,
                "N": n,
                "atoms_real": int(batch["mask"].sum()),
                "mean_K": round(mean_k, 2),
                "repeats": len(te),
                "ext_ms": statistics.median(te),
                "ref_ms": statistics.median(tr),
                "ext_ms_iqr": _iqr(te),
                "ref_ms_iqr": _iqr(tr),
            }
            row["speedup"] = row["ref_ms"] / row["ext_ms"]
            row["target"] = None if cuda else TARGETS.get((b, n))  # the targets are for the CPU kernels
            if not memory:
                row["ext_peak_mb"] = row["ref_peak_mb"] = None
            elif cuda:
                row["ext_peak_mb"], row["ref_peak_mb"] = cuda_peak_memory(ext), cuda_peak_memory(ref)
            else:
                row["ext_peak_mb"] = peak_memory(op, "extension", b, n, threads)
                row["ref_peak_mb"] = peak_memory(op, "reference", b, n, threads)
            rows.append(row)
            print(_fmt_row(row), flush=True)
    meta = {
        "threads": threads,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    return rows, meta


def collect(quick: bool, thread_counts=(THREADS,), device: torch.device = torch.device("cpu"),
            shapes=SHAPES, memory: bool = True, budget_s: float | None = None) -> tuple[list[dict], dict]:
    """Rows of every (threads, shape, op) and the run's metadata (``memory=False``: no peak
    memory; ``budget_s``: seconds of timing per cell instead of the ``quick`` default)."""
    if ops.backend(device) != "extension":
        raise RuntimeError(f"the compiled extension has no {device.type} kernels here: nothing to benchmark "
                           f"({ops._extension.state()})")
    cuda = device.type == "cuda"
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "dtype": "float32",
        "memory_method": "torch.cuda.max_memory_allocated during one call minus memory_allocated before it"
        if cuda else _memory.METHOD,
        "runs": [],
    }
    rows = []
    for threads in thread_counts:
        r, m = measure(quick, threads, device, shapes, memory, budget_s)
        rows += r
        meta["runs"].append(m)
    return rows, meta


def run(out_dir: Path | None, quick: bool, thread_counts=(THREADS,), device: torch.device = torch.device("cpu"),
        shapes=SHAPES) -> list[dict]:
    try:
        rows, meta = collect(quick, thread_counts, device, shapes)
    except RuntimeError as err:
        sys.exit(str(err))
    md = _markdown(rows, meta)
    print()
    print(md)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"ops_{device.type}"
        (out_dir / f"{stem}.md").write_text(md)
        (out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {out_dir / stem}.md and .json")
    return rows


def _iqr(xs):
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


def _mb(x):
    return "n/a" if x is None else f"{x:.1f}"


def _fmt_row(r):
    return (
        f"{r['op']:<28} B={r['B']:<4} N={r['N']:<4} ext {r['ext_ms']:8.3f} ms  "
        f"ref {r['ref_ms']:8.3f} ms  x{r['speedup']:5.1f}  "
        f"peak MB ext {_mb(r['ext_peak_mb'])} / ref {_mb(r['ref_peak_mb'])}"
    )


def _markdown(rows, meta) -> str:
    if meta.get("device", "cpu") == "cuda":
        lines = [
            "# molconf ops: CUDA kernels vs PyTorch reference on the GPU",
            "",
            f"{meta['dtype']}, torch {meta['torch']} (CUDA {meta['cuda']}), {meta['gpu']}; both variants on "
            "the GPU, synchronised around every call: timings are medians of interleaved ext/ref runs "
            "(launch overhead included), IQR in brackets.",
            "",
        ]
    else:
        lines = [
            "# molconf ops: fused CPU extension vs PyTorch reference",
            "",
            f"{meta['dtype']}, torch {meta['torch']}, CPU {meta['cpu']} ({meta['cpu_capability']}), "
            "2 cores shared with other jobs: timings are medians of interleaved ext/ref runs, "
            "IQR in brackets.",
            "",
        ]
    for run in meta["runs"]:
        t = run["threads"]
        busy = run["loadavg_before"][0] > BUSY_LOAD or run["loadavg_after"][0] > BUSY_LOAD + t
        lines += [
            f"## torch.set_num_threads({t})",
            "",
            f"Load average before/after: {run['loadavg_before'][0]:.2f} / "
            f"{run['loadavg_after'][0]:.2f}.",
            "",
        ]
        if busy and t > 1 and meta.get("device", "cpu") == "cpu":
            lines += [
                "**Caution: other jobs were using the CPU during this run.** With "
                f"{t} threads every parallel region waits for its slowest worker, and a "
                "worker that loses its core to another process resumes only at the next "
                "scheduler tick (~4 ms). That inflates both columns (the reference, made of "
                "many small parallel ops, far more than the fused op), so these speed-ups "
                "are not representative; the single-thread table is the reliable one.",
                "",
            ]
        lines += [
            "| op | B | N | mean K | ext ms | ref ms | speed-up | target | ext peak MB | ref peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in rows if r["threads"] == t):
            target = "" if r["target"] is None else (
                f"≥{r['target']:.0f}× {'met' if r['speedup'] >= r['target'] else 'MISSED'}"
            )
            lines.append(
                f"| {r['op']} | {r['B']} | {r['N']} | {r['mean_K']} | "
                f"{r['ext_ms']:.3f} [{r['ext_ms_iqr'][0]:.2f}–{r['ext_ms_iqr'][1]:.2f}] | "
                f"{r['ref_ms']:.3f} [{r['ref_ms_iqr'][0]:.2f}–{r['ref_ms_iqr'][1]:.2f}] | "
                f"{r['speedup']:.1f}× | {target} | {_mb(r['ext_peak_mb'])} | "
                f"{_mb(r['ref_peak_mb'])} |"
            )
        lines.append("")
    lines += [
        "Inputs: compact molecule-like clusters (lattice spacing 1.5 Å, ±0.25 Å jitter), "
        "sizes N/2..N with padding, H/C/N/O-rich element mix, bonds below 1.45 Å, "
        "degree-compensating K. rewire_by_force is forward only (it is not differentiable); "
        "lj_energy_forces excludes bonded and 1-3 pairs and is timed forward + backward "
        "through both outputs. ext = torch.ops.molconf.* (no Python validation), ref = "
        "molconf.ops.reference.",
        "",
        f"Peak MB: {meta['memory_method']}. It is the extra resident memory one call needs, "
        "outputs included (for the extension: the outputs plus O(rows x N) scratch; for the "
        "reference: its (B, N, N) and (B, N, N, 3) intermediates and autograd buffers).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write ops_<device>.{md,json} here")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the CUDA kernels on the GPU")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="BxN",
                        help="batch shapes, e.g. 256x18 64x128 (default: the four of the tables)")
    parser.add_argument("--quick", action="store_true", help="shorter timing budget")
    parser.add_argument("--threads", type=int, nargs="+", default=[THREADS],
                        help="torch thread counts to run (default: 2)")
    parser.add_argument("--render", type=Path, default=None,
                        help="only re-render ops_cpu.md next to this ops_cpu.json")
    parser.add_argument("--memory-child", nargs=5, metavar=("OP", "VARIANT", "B", "N", "T"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        op, variant, b, n, t = args.memory_child
        peak_memory_child(op, variant, int(b), int(n), int(t))
        return
    if args.render:
        data = json.loads(args.render.read_text())
        md = _markdown(data["rows"], data["meta"])
        args.render.with_suffix(".md").write_text(md)
        print(md)
        return
    shapes = SHAPES if args.shapes is None else parse_shapes(args.shapes)
    run(args.out, args.quick, args.threads, torch.device(args.device), shapes)


def parse_shapes(texts) -> tuple[tuple[int, int], ...]:
    """``["256x18", "64x128"]`` -> ((256, 18), (64, 128))."""
    return tuple(tuple(int(v) for v in t.lower().split("x")) for t in texts)


if __name__ == "__main__":
    main()
