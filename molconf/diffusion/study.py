"""The generalisation study and the Jacobian analysis of DESIGN §7 (Kadkhodaie et al. 2024).

Generalisation (:func:`run_generalization`)
    For each training-set size N, two denoisers are trained on *disjoint* sets of N QM9
    molecules from the training split (A = the first N of a seeded permutation, B = N
    molecules from a part no A set ever uses; the A sets are nested across N). Both start
    from the same initialisation and see the same stream of training noise, and every N
    gets the same number of optimisation steps, so they differ only in their data. Then
    both sample, from SHARED noise (the same generator seed per molecule and sample):

    * held-out molecules (a seeded draw from the test split, each with ≥ 4 heavy atoms, as
      are the evaluated training molecules): RMSD between A's and B's samples (small = the two
      models compute the same function = generalisation), and each model's RMSD to the
      ground-truth conformer;
    * A's training molecules: RMSD between A's and B's samples, the RMSD of A's samples to
      the training conformer (QM9 has one conformer per molecule, and conformers of other
      molecules cannot be compared by RMSD, so the "nearest training conformer" of a
      training molecule is its own), and the same for B, which never saw it
      (memorisation shows as A ≪ B).

    All RMSDs are heavy-atom, symmetry-aware and aligned (``GetBestRMS``); a molecule's value is
    the mean over its usable samples, and a size's value the median over molecules. Results go to
    ``<out>/N<N>.json`` per N (an existing file means "done": the study resumes), then
    ``summary.json`` and ``generalization.png``; the trained networks to ``<out>/models``.

Jacobian (:func:`jacobian_analysis`)
    ``J = ∂f/∂y`` (3n × 3n) of the denoised estimate at ``y = x_ref + σ z`` (z a centred
    Gaussian draw), computed whole with ``torch.func.jacrev`` in float64, model in eval mode.
    Reported per σ: eigenvalues of the symmetrised ``J_s = (J + Jᵀ)/2`` (shrinkage factors),
    ``d_eff = tr J``, the asymmetry ``‖J − Jᵀ‖_F / ‖J‖_F``, the weight of the leading
    eigenvectors in the rigid-body (translation + rotation) subspace, and the overlap of
    the leading eigenvectors of ``J_s`` restricted to the internal subspace with the
    softest normal modes of a force-field Hessian.

    The Hessian is the MMFF94 (or UFF) energy's, at the reference geometry, by central
    finite differences of RDKit's analytic gradients (kcal mol⁻¹ Å⁻²), symmetrised, not
    mass-weighted (the denoiser works in plain Cartesian coordinates, so the comparison
    is in that metric); translations and rotations about the centroid are projected out
    (an orthonormal basis of the internal subspace is taken as the complement of the
    rigid-body vectors), and the normal modes are the eigenvectors of the Hessian in that
    subspace, softest first. At a geometry that is not a force-field minimum (e.g. a DFT
    structure) the Hessian can have negative eigenvalues; their count is reported.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Geometry import Point3D

from molconf import constants as K
from molconf.data.dataset import collate_dense, graph_to_data
from molconf.data.features import featurize
from molconf.diffusion.io import save_denoiser
from molconf.diffusion.loss import denoising_loss
from molconf.diffusion.model import EquivariantDenoiser
from molconf.diffusion.sampling import ddim_sample, ks_sample
from molconf.metrics import c_rmsd, mol_with_coords


MIN_EVAL_HEAVY_ATOMS = 4  # molecules evaluated by RMSD need at least this many heavy atoms
MAX_SAMPLE_RADIUS = 50.0  # Å from the centroid; QM9 molecules span < 10 Å: beyond this a sample diverged


# =========================================================================== training
def train_denoiser(model: EquivariantDenoiser, graphs: list, steps: int, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, sigma_min: float = 0.01, sigma_max: float = 3.0, weighting: str = "edm",
                   warmup_fraction: float = 0.05, clip: float = 1.0) -> list[float]:
    """Plain training loop (fixed number of steps, independent of the data-set size).

    ``graphs`` are PyG ``Data`` items (:func:`molconf.data.graph_to_data`). Batches are
    drawn epoch-wise from seeded permutations (the whole set when ``len(graphs) ≤
    batch_size``); σ and ε come from their own generator seeded with ``seed``, so two
    models trained with the same seed see the same noise. Returns the loss per step.
    """
    g_data = torch.Generator().manual_seed(seed)
    g_noise = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, int(warmup_fraction * steps))

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    order: list[int] = []
    losses = []
    bs = min(batch_size, len(graphs))
    for _ in range(steps):
        if len(order) < bs:
            order += torch.randperm(len(graphs), generator=g_data).tolist()
        idx, order = order[:bs], order[bs:]
        batch = collate_dense([graphs[i] for i in idx])
        out = denoising_loss(model, batch, sigma_min=sigma_min, sigma_max=sigma_max, weighting=weighting,
                             generator=g_noise)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"non-finite loss at step {len(losses)}")
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(float(out["loss"].detach()))
    return losses


# =========================================================================== sampling
@dataclass
class SamplerSettings:
    """How the study samples: DDIM (noise-conditioned) or KS (blind) and their knobs."""

    sampler: str = "auto"  # auto | ddim | ks
    steps: int = 50  # DDIM
    sigma_max: float = 3.0  # DDIM start
    sigma_min: float = 0.01
    ks_sigma_0: float = 1.0
    ks_h0: float = 0.01
    ks_beta: float = 0.01
    ks_max_steps: int = 3000

    def resolve(self, blind: bool) -> str:
        return ("ks" if blind else "ddim") if self.sampler == "auto" else self.sampler


@torch.no_grad()
def sample_graph(model, graph, n_samples: int, settings: SamplerSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples (n_samples, atoms, 3) of one molecule and which of them are usable (n_samples,) bool.

    Noise comes from ``Generator().manual_seed(seed)``. A sample is unusable if it is not
    finite, the KS ascent diverged, or an atom ended up more than ``MAX_SAMPLE_RADIUS`` from
    the sample's centroid (a model trained on a handful of molecules can blow up on a graph
    it never saw; one such sample would otherwise dominate every mean).
    """
    model.eval()
    batch = collate_dense([graph] * n_samples)
    gen = torch.Generator().manual_seed(seed)
    if settings.resolve(model.blind) == "ddim":
        pos = ddim_sample(model, batch, settings.steps, settings.sigma_max, settings.sigma_min, generator=gen)
        ok = torch.ones(n_samples, dtype=torch.bool)
    else:
        res = ks_sample(model, batch, settings.ks_sigma_0, settings.sigma_min, settings.ks_h0, settings.ks_beta,
                        settings.ks_max_steps, generator=gen)
        pos, ok = res.pos, ~res.diverged
    ok = ok & torch.isfinite(pos).flatten(1).all(1)
    real = batch[K.MASK].unsqueeze(-1)  # (S, N, 1)
    centroid = (pos * real).sum(1, keepdim=True) / real.sum(1, keepdim=True)  # (S, 1, 3)
    radius = torch.where(real, pos - centroid, torch.zeros_like(pos)).norm(dim=-1).amax(1)  # (S,)
    ok = ok & (radius < MAX_SAMPLE_RADIUS)
    return pos.double().numpy(), ok.numpy()


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _median(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.median(xs)) if xs else float("nan")


def compare_samples(ref: Chem.Mol, samples_a: np.ndarray, samples_b: np.ndarray, ok_a=None, ok_b=None) -> dict:
    """RMSDs of one molecule: A vs B sample by sample (shared noise), and each vs ``ref``'s conformer.

    Unusable samples (``ok_* False``) are left out of the means and counted in ``n_failed_*``.
    """
    n = ref.GetNumAtoms()
    ok_a = np.ones(len(samples_a), bool) if ok_a is None else np.asarray(ok_a)
    ok_b = np.ones(len(samples_b), bool) if ok_b is None else np.asarray(ok_b)
    ab, a_ref, b_ref = [], [], []
    for sa, sb, ga, gb in zip(samples_a, samples_b, ok_a, ok_b):
        ma = mol_with_coords(ref, sa[:n]) if ga else None
        mb = mol_with_coords(ref, sb[:n]) if gb else None
        if ma is not None and mb is not None:
            ab.append(c_rmsd(ma, mb))
        if ma is not None:
            a_ref.append(c_rmsd(ref, ma))
        if mb is not None:
            b_ref.append(c_rmsd(ref, mb))
    return {"rmsd_ab": _mean(ab), "rmsd_a_ref": _mean(a_ref), "rmsd_b_ref": _mean(b_ref),
            "n_failed_a": int((~ok_a).sum()), "n_failed_b": int((~ok_b).sum())}


# =========================================================================== study
@dataclass
class StudyConfig:
    """Settings of :func:`run_generalization` (tiny values for tests, large for the real study)."""

    sizes: list[int] = field(default_factory=lambda: [1, 10, 100, 1000, 10000])
    steps: int = 20000  # optimisation steps, the same for every N
    batch_size: int = 32
    lr: float = 1e-3
    blind: bool = True  # the paper's setting; False: noise-conditioned + DDIM
    ns: int = 32
    nv: int = 8
    n_layers: int = 4
    cutoff: float = 5.0
    sigma_min: float = 0.01
    sigma_max: float = 3.0
    weighting: str = "edm"
    n_heldout: int = 20
    n_train_eval: int = 20
    n_samples: int = 4
    seed: int = 0
    source_limit: int | None = None
    cache_dir: str | None = None
    sampling: SamplerSettings = field(default_factory=SamplerSettings)

    def model_kwargs(self) -> dict:
        return dict(blind=self.blind, ns=self.ns, nv=self.nv, n_layers=self.n_layers, cutoff=self.cutoff)


def _study_rows(store, cfg: StudyConfig):
    from molconf.data.splits import load_split

    train, _ = store.positions_of(load_split("qm9", "train"))
    test, _ = store.positions_of(load_split("qm9", "test"))
    need = 2 * max(cfg.sizes)
    if len(train) < need:
        raise ValueError(f"the largest N={max(cfg.sizes)} needs {need} training molecules, the cache has "
                         f"{len(train)} (raise source_limit or lower --sizes)")
    if len(test) < cfg.n_heldout:
        raise ValueError(f"{cfg.n_heldout} held-out molecules asked, the test split part has {len(test)}")
    perm = np.random.default_rng(cfg.seed).permutation(train)
    big = max(cfg.sizes)
    pool_a, pool_b = perm[:big], perm[big:2 * big]  # disjoint pools; A_N = pool_a[:N], B_N = pool_b[:N]
    # held-out: a seeded random draw of test molecules that an RMSD can say something about
    candidates = [int(i) for i in np.random.default_rng(cfg.seed + 1).permutation(test) if _rmsd_meaningful(store, i)]
    if len(candidates) < cfg.n_heldout:
        raise ValueError(f"{cfg.n_heldout} held-out molecules asked, the test split part has {len(candidates)} "
                         f"with ≥ {MIN_EVAL_HEAVY_ATOMS} heavy atoms")
    return pool_a, pool_b, np.sort(candidates[: cfg.n_heldout])


def _rmsd_meaningful(store, row: int) -> bool:
    """Enough heavy atoms for an aligned heavy-atom RMSD to differ from zero by more than chance
    (one or two atoms always align perfectly, three nearly so)."""
    return int((store.graph(int(row)).atomic_numbers > 1).sum()) >= MIN_EVAL_HEAVY_ATOMS


def _training_settings(cfg: StudyConfig) -> dict:
    """What decides a trained network besides its molecules (saved with it, compared on reuse)."""
    return {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
            "sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max, "weighting": cfg.weighting,
            "model": cfg.model_kwargs()}


def _trained_before(path: Path, mol_ids: list[int], training: dict):
    """(network, losses) saved by an earlier run with the same molecules and settings, else None."""
    if not path.is_file():
        return None
    from molconf.diffusion.io import load_denoiser

    try:
        model, meta = load_denoiser(path)
    except (ValueError, RuntimeError, OSError):
        return None  # unreadable: train again
    if meta.get("train_mol_ids") != mol_ids or meta.get("training") != json.loads(json.dumps(training)):
        return None
    return model.eval(), list(meta.get("losses", []))


def run_size(n: int, cfg: StudyConfig, store, pool_a, pool_b, heldout, out: Path, log=print) -> dict:
    """Train the pair of models for one N, sample and compare; returns the result dict."""
    t0 = time.time()
    rows = {"A": pool_a[:n], "B": pool_b[:n]}
    models, losses = {}, {}
    training = _training_settings(cfg)
    for name, r in rows.items():
        path = out / "models" / f"N{n}_{name}.pt"
        mol_ids = [int(store.mol_ids[i]) for i in r]
        reused = _trained_before(path, mol_ids, training)
        if reused is not None:  # a run killed after training: evaluate the saved network
            models[name], losses[name] = reused
            log(f"N={n} model {name}: trained before ({path.name}), reused")
            continue
        graphs = [graph_to_data(store.graph(int(i)), 1, int(store.mol_ids[i])) for i in r]
        torch.manual_seed(cfg.seed)  # same initialisation for A and B
        model = EquivariantDenoiser(**cfg.model_kwargs())
        losses[name] = train_denoiser(model, graphs, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.sigma_min,
                                      cfg.sigma_max, cfg.weighting)
        models[name] = model.eval()
        save_denoiser(model, path, meta={"name": f"study_N{n}_{name}", "train_mol_ids": mol_ids,
                                         "training": training, "losses": losses[name]})
        log(f"N={n} model {name}: loss {np.mean(losses[name][:10]):.3g} -> {np.mean(losses[name][-10:]):.3g}")

    def evaluate(eval_rows) -> list[dict]:
        per = []
        for i in eval_rows:
            i = int(i)
            graph = graph_to_data(store.graph(i), 1, int(store.mol_ids[i]))
            seed = cfg.seed * 1_000_003 + int(store.mol_ids[i])  # shared noise for A and B
            sa, ok_a = sample_graph(models["A"], graph, cfg.n_samples, cfg.sampling, seed)
            sb, ok_b = sample_graph(models["B"], graph, cfg.n_samples, cfg.sampling, seed)
            row = compare_samples(store.mol(i), sa, sb, ok_a, ok_b)
            row["mol_id"] = int(store.mol_ids[i])
            per.append(row)
        return per

    held = evaluate(heldout)
    train = evaluate([i for i in pool_a[: min(n, cfg.n_train_eval)] if _rmsd_meaningful(store, i)])
    result = {
        "N": n, "steps": cfg.steps, "blind": cfg.blind, "sampler": cfg.sampling.resolve(cfg.blind),
        "final_loss": {k: float(np.mean(v[-max(1, len(v) // 10):])) for k, v in losses.items()},
        # medians over molecules (each molecule: the mean over its usable samples)
        "heldout": {"rmsd_ab": _median(r["rmsd_ab"] for r in held),
                    "rmsd_a_gt": _median(r["rmsd_a_ref"] for r in held),
                    "rmsd_b_gt": _median(r["rmsd_b_ref"] for r in held), "per_molecule": held},
        "train": {"rmsd_ab": _median(r["rmsd_ab"] for r in train),
                  "rmsd_a_train": _median(r["rmsd_a_ref"] for r in train),
                  "rmsd_b_train": _median(r["rmsd_b_ref"] for r in train), "per_molecule": train},
        "failed_samples": sum(r["n_failed_a"] + r["n_failed_b"] for r in held + train),
        "seconds": round(time.time() - t0, 1),
    }
    return result


def run_generalization(cfg: StudyConfig, out: str | Path, store=None, log=print) -> dict:
    """Run (or resume) the study; writes per-N JSON, ``summary.json`` and ``generalization.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if store is None:
        from molconf.data.prepare import load_qm9

        store = load_qm9(cfg.cache_dir, limit=cfg.source_limit)
    pool_a, pool_b, heldout = _study_rows(store, cfg)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    results = []
    for n in sorted(set(cfg.sizes)):
        path = out / f"N{n}.json"
        if path.is_file():
            log(f"N={n}: done before ({path.name}), skipped")
            results.append(json.loads(path.read_text()))
            continue
        res = run_size(n, cfg, store, pool_a, pool_b, heldout, out, log)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        tmp.rename(path)  # atomic: a killed run never leaves a half-written result behind
        log(f"N={n}: held-out RMSD(A,B) {res['heldout']['rmsd_ab']:.3f} Å, train RMSD(A,train) "
            f"{res['train']['rmsd_a_train']:.3f} Å, {res['failed_samples']} failed samples ({res['seconds']} s)")
        results.append(res)
    summary = {"config": asdict(cfg), "sizes": [r["N"] for r in results],
               "heldout_rmsd_ab": [r["heldout"]["rmsd_ab"] for r in results],
               "heldout_rmsd_gt": [0.5 * (r["heldout"]["rmsd_a_gt"] + r["heldout"]["rmsd_b_gt"]) for r in results],
               "train_rmsd_ab": [r["train"]["rmsd_ab"] for r in results],
               "train_rmsd_a_train": [r["train"]["rmsd_a_train"] for r in results],
               "train_rmsd_b_train": [r["train"]["rmsd_b_train"] for r in results],
               "failed_samples": [r.get("failed_samples", 0) for r in results]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:
        plot_generalization(summary, out / "generalization.png")
    except ImportError:  # matplotlib is an optional extra
        log("matplotlib is not installed: no plot written")
    return summary


def plot_generalization(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = summary["sizes"]
    ax.plot(n, summary["heldout_rmsd_ab"], "o-", label="held-out: RMSD(A, B)")
    ax.plot(n, summary["train_rmsd_ab"], "s-", label="A's training mols: RMSD(A, B)")
    ax.plot(n, summary["train_rmsd_a_train"], "^-", label="A's training mols: RMSD(A, training conformer)")
    ax.plot(n, summary["train_rmsd_b_train"], "v--", label="same mols: RMSD(B, their conformer)")
    ax.plot(n, summary["heldout_rmsd_gt"], "x:", label="held-out: RMSD to ground truth")
    ax.set_xscale("log")
    ax.set_xlabel("training-set size N")
    ax.set_ylabel("heavy-atom RMSD (Å)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# =========================================================================== Jacobian
def rigid_basis(coords: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3n, r) of infinitesimal translations and rotations about the centroid.

    r = 6, or 5 for linear molecules (rank determined numerically), fewer for n < 3.
    """
    x = np.asarray(coords, float) - np.mean(coords, axis=0)
    n = len(x)
    vecs = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        vecs.append(t.ravel())
    for k in range(3):
        axis = np.zeros(3)
        axis[k] = 1.0
        vecs.append(np.cross(axis, x).ravel())
    u, s, _ = np.linalg.svd(np.stack(vecs, 1), full_matrices=False)
    return u[:, s > 1e-6 * s.max()]


def internal_basis(coords: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3n, 3n − r) of the complement of :func:`rigid_basis`."""
    r = rigid_basis(coords)
    u, _, _ = np.linalg.svd(np.eye(len(r)) - r @ r.T)
    return u[:, : len(r) - r.shape[1]]


def force_field_hessian(mol: Chem.Mol, coords: np.ndarray | None = None, ff: str = "mmff",
                        step: float = 1e-3) -> np.ndarray:
    """(3n, 3n) Cartesian Hessian of the MMFF94 / UFF energy by central differences of gradients."""
    m = Chem.Mol(mol)
    if ff == "mmff":
        props = AllChem.MMFFGetMoleculeProperties(m)
        if props is None:
            raise ValueError("no MMFF parameters for this molecule (try ff='uff')")
        field_ = AllChem.MMFFGetMoleculeForceField(m, props)
    elif ff == "uff":
        if not AllChem.UFFHasAllMoleculeParams(m):
            raise ValueError("no UFF parameters for this molecule")
        field_ = AllChem.UFFGetMoleculeForceField(m)
    else:
        raise ValueError(f"ff must be 'mmff' or 'uff', got {ff!r}")
    conf = m.GetConformer()
    x0 = (conf.GetPositions() if coords is None else np.asarray(coords, float)).ravel()

    def grad(x: np.ndarray) -> np.ndarray:
        # The force field reads the conformer's coordinates; passing positions to CalcGrad
        # instead gave gradients inconsistent with CalcEnergy on repeated calls (RDKit
        # 2026.09), so positions are set on the conformer and the field re-initialised.
        for i, p in enumerate(x.reshape(-1, 3).tolist()):
            conf.SetAtomPosition(i, Point3D(*p))
        field_.Initialize()
        return np.asarray(field_.CalcGrad())

    h = np.empty((x0.size, x0.size))
    for k in range(x0.size):
        xp, xm = x0.copy(), x0.copy()
        xp[k] += step
        xm[k] -= step
        h[:, k] = (grad(xp) - grad(xm)) / (2 * step)
    return 0.5 * (h + h.T)


def normal_modes(hessian: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (softest first) and modes (3n, 3n − r) of the Hessian in the internal subspace."""
    q = internal_basis(coords)
    w, v = np.linalg.eigh(q.T @ hessian @ q)
    return w, q @ v


def single_batch(mol: Chem.Mol) -> dict:
    return collate_dense([graph_to_data(featurize(mol), 1)])


def denoiser_jacobian(model: EquivariantDenoiser, batch: dict, y: torch.Tensor, sigma: float | None = None,
                      dtype=torch.float64) -> np.ndarray:
    """Full Jacobian ∂f/∂y (3n × 3n) of one molecule's denoised estimate at ``y`` (n, 3).

    The model is copied to ``dtype`` and evaluation mode; ``torch.func.jacrev`` computes
    all 3n vector-Jacobian products in one vectorised backward (falls back to
    ``torch.autograd.functional.jacobian`` if the functorch transform fails).
    """
    import copy

    net = copy.deepcopy(model).to(dtype).eval()
    n = y.shape[0]
    s = None if net.blind else torch.tensor([float(sigma)], dtype=dtype)
    if s is None and not net.blind:
        raise ValueError("a noise-conditioned model needs sigma")

    def f(v):
        return net(batch, v.view(1, n, 3), s).reshape(-1)

    v0 = torch.as_tensor(y, dtype=dtype).reshape(-1)
    with torch.no_grad():
        try:
            jac = torch.func.jacrev(f)(v0)
        except Exception:  # pragma: no cover - depends on functorch coverage of e3nn ops
            with torch.enable_grad():
                jac = torch.autograd.functional.jacobian(f, v0)
    return jac.detach().numpy()


def _jacobian_stats(jac: np.ndarray, q: np.ndarray, rigid: np.ndarray, modes: np.ndarray, k: int) -> dict:
    """Statistics of one Jacobian (see the module docstring)."""
    js = 0.5 * (jac + jac.T)
    evals, evecs = np.linalg.eigh(js)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    e_int, v_int = np.linalg.eigh(q.T @ js @ q)  # restricted to the internal subspace
    o = np.argsort(e_int)[::-1]
    e_int, u_int = e_int[o], q @ v_int[:, o]
    overlap = (u_int[:, :k].T @ modes) ** 2  # (k, 3n − r): squared cosines
    return {
        "d_eff": float(np.trace(jac)),
        "d_eff_internal": float(np.sum(e_int)),
        "asymmetry": float(np.linalg.norm(jac - jac.T) / max(np.linalg.norm(jac), 1e-300)),
        "eigenvalues": evals.tolist(),
        "eigenvalues_internal": e_int.tolist(),
        "leading_rigid_weight": np.sum((rigid.T @ evecs[:, :k]) ** 2, axis=0).tolist(),
        "subspace_overlap": float(np.sum(overlap[:, :k]) / k),  # top-k of J vs k softest modes; 1 = same subspace
        "leading_overlap": overlap.tolist(),
    }


def jacobian_analysis(model: EquivariantDenoiser, mol: Chem.Mol, sigmas, seed: int = 0, n_leading: int = 10,
                      ff: str = "mmff", n_draws: int = 1) -> dict:
    """Jacobian statistics of one molecule (explicit H, with its reference conformer) at each σ.

    With ``n_draws > 1`` the Jacobian is taken at several noise draws per σ: the scalar
    statistics are averaged (``*_std`` gives their spread); eigenvalues and overlaps
    are those of the first draw.
    """
    if mol.GetNumConformers() == 0:
        raise ValueError("the molecule needs a reference conformer")
    x = mol.GetConformer().GetPositions()
    x = x - x.mean(0)
    n = len(x)
    batch = single_batch(mol)
    rigid, q = rigid_basis(x), internal_basis(x)
    hess = force_field_hessian(mol, x, ff)
    freq2, modes = normal_modes(hess, x)  # softest first
    k = min(n_leading, modes.shape[1])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        draws = []
        for _ in range(max(1, n_draws)):
            z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
            y = torch.as_tensor(x) + float(sigma) * (z - z.mean(0))
            draws.append(_jacobian_stats(denoiser_jacobian(model, batch, y, sigma), q, rigid, modes, k))
        row = {"sigma": float(sigma), **draws[0], "overlap_random_baseline": k / modes.shape[1],
               "n_draws": len(draws)}
        for key in ("d_eff", "d_eff_internal", "asymmetry", "subspace_overlap"):
            values = [d[key] for d in draws]
            row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        rows.append(row)
    return {"n_atoms": n, "dim": 3 * n, "n_rigid": int(rigid.shape[1]), "force_field": ff, "n_leading": k,
            "hessian_eigenvalues": freq2.tolist(), "hessian_negative": int(np.sum(freq2 < -1e-6)),
            "smiles": Chem.MolToSmiles(Chem.RemoveHs(mol)), "per_sigma": rows}


def plot_jacobian(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["per_sigma"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    s = [r["sigma"] for r in rows]
    axes[0].errorbar(s, [r["d_eff"] for r in rows], yerr=[r.get("d_eff_std", 0.0) for r in rows], fmt="o-",
                     label="tr J")
    axes[0].axhline(result["dim"] - 3, color="grey", ls=":", label="3n − 3")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("σ (Å)")
    axes[0].set_ylabel("d_eff")
    axes[0].legend(fontsize=7)
    for r in rows:
        axes[1].plot(r["eigenvalues"], label=f"σ={r['sigma']:g}")
    axes[1].set_xlabel("index")
    axes[1].set_ylabel("eigenvalue of (J+Jᵀ)/2")
    axes[1].legend(fontsize=7)
    im = axes[2].imshow(np.asarray(rows[0]["leading_overlap"]), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[2].set_xlabel("normal mode (softest first)")
    axes[2].set_ylabel(f"J eigenvector (σ={rows[0]['sigma']:g})")
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_jacobian(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "jacobian.json").write_text(json.dumps(result) + "\n")
    try:
        plot_jacobian(result, out / "jacobian.png")
    except ImportError:  # matplotlib is an optional extra
        pass
    return out / "jacobian.json"


def reference_molecule(smiles: str | None = None, qm9_id: int | None = None, sdf: str | None = None,
                       source_limit: int | None = None, seed: int = 0) -> Chem.Mol:
    """A molecule with a reference conformer: a QM9 molecule (DFT geometry), the first
    record of an SDF, or a SMILES embedded with ETKDG and optimised with MMFF."""
    if sum(x is not None for x in (smiles, qm9_id, sdf)) != 1:
        raise ValueError("give exactly one of smiles, qm9_id, sdf")
    if qm9_id is not None:
        from molconf.data.prepare import load_qm9

        store = load_qm9(limit=source_limit)
        rows, missing = store.positions_of([qm9_id])
        if len(missing):
            raise ValueError(f"QM9 molecule {qm9_id} is not in the cache")
        return store.mol(int(rows[0]))
    if sdf is not None:
        mol = next((m for m in Chem.SDMolSupplier(str(sdf), removeHs=False) if m is not None), None)
        if mol is None or mol.GetNumConformers() == 0:
            raise ValueError(f"{sdf}: no readable molecule with coordinates")
        return Chem.AddHs(mol, addCoords=True)
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMolecule(mol)
    return mol


__all__ = [
    "SamplerSettings", "StudyConfig", "denoiser_jacobian", "force_field_hessian", "jacobian_analysis",
    "normal_modes", "reference_molecule", "rigid_basis", "run_generalization", "train_denoiser", "write_jacobian",
]
