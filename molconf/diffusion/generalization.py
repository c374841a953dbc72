"""Memorisation or generalisation? The study of DESIGN §7 (Kadkhodaie et al., ICLR 2024), with controls.

For each training-set size N, denoisers are trained on two *disjoint* sets of N QM9 training
molecules (A = the first N of a seeded permutation, B = N molecules from a part no A set uses; the
A sets are nested across N), each in ``replicas`` copies. **Every network has its own
initialisation and its own stream of training noise** (:func:`network_seed`), so two networks
agree only because of what they learned. Every network samples from the same noise per molecule
and sample. Controls, on the same molecules and noise:

* **same data, other seed**: RMSD(A₀, A₁) (and B₀, B₁), two networks trained on the same N
  molecules: the floor that "computing the same function" can reach at this training budget;
* **untrained**: RMSD(A₀, B₀) of the two networks as initialised, before any step: what shared
  noise alone gives.

Reported per N (medians over molecules; a molecule's value is the mean over its usable samples;
across replicas mean ± sd):

* held-out molecules (a seeded draw of test molecules with ≥ 4 heavy atoms): RMSD(A, B), the
  controls, and RMSD of A's and B's samples to the DFT conformer;
* A's training molecules: RMSD of A's samples to that molecule's training conformer (QM9 holds one
  conformer per molecule, so it is the nearest training conformer of A's own molecules) and of B's
  (which never saw it): memorisation shows as A ≪ B, and at N = 1 or 10 as A's samples within
  ~0.1 Å of the training conformer.

RMSDs are heavy-atom, symmetry-aware (``GetBestRMS``). The denoiser is E(3)-equivariant: it cannot
tell a conformer from its mirror image, so an RMSD **to a reference conformer** is the smaller of
the sample's and its mirror image's (stereo-aware), and the share of samples with the reference's
CIP labels is reported beside it; RMSD(A, B) between two networks' samples from the same noise is
taken as is (same noise, same function ⇒ same handedness).

Training steps grow with N (:meth:`StudyConfig.steps_for`: at least ``steps``, at least ``epochs``
passes over the N molecules, at most ``max_steps``), so large N is not under-trained by a fixed
budget; every network's loss curve is saved (``loss_curves.png``). The transition N* is the
smallest N whose held-out RMSD(A, B) is within ``TRANSITION_RATIO`` of the same-data control, or
none (said so).

Results go to ``<out>/N<N>.json`` per N (an existing file means "done": the study resumes),
``summary.json``, ``generalization.png`` and ``loss_curves.png``; networks to ``<out>/models``.
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

from molconf import constants as K
from molconf.data.dataset import collate_dense, graph_to_data
from molconf.diffusion.io import save_denoiser
from molconf.diffusion.loss import denoising_loss
from molconf.diffusion.model import EquivariantDenoiser
from molconf.diffusion.sampling import ddim_sample, ks_sample
from molconf.metrics import c_rmsd, mol_with_coords, stereo_consistent, stereo_labels

MIN_EVAL_HEAVY_ATOMS = 4  # molecules evaluated by RMSD need at least this many heavy atoms
MAX_SAMPLE_RADIUS = 50.0  # Å from the centroid; QM9 molecules span < 10 Å: beyond this a sample diverged
TRANSITION_RATIO = 1.25  # N*: held-out RMSD(A, B) ≤ this × RMSD(A₀, A₁)
ROLES = ("A", "B")


# =========================================================================== training
def network_seed(base: int, role: str, replica: int) -> int:
    """The seed of one network: its initialisation, batch order (``seed``) and noise (``seed + 1``).

    Distinct for every (base, role, replica), and never one network's noise seed equal to another's
    data seed.

    >>> sorted({network_seed(0, r, k) for r in ROLES for k in range(3)} | {network_seed(0, r, k) + 1 for r in ROLES for k in range(3)}).__len__()
    12
    """
    return 1_000 * base + 100 * replica + 10 * (ROLES.index(role) + 1)


def train_denoiser(model: EquivariantDenoiser, graphs: list, steps: int, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, sigma_min: float = 0.01, sigma_max: float = 3.0, weighting: str = "edm",
                   warmup_fraction: float = 0.05, clip: float = 1.0) -> list[float]:
    """Plain training loop for a fixed number of steps; returns the loss per step.

    ``graphs`` are PyG ``Data`` items (:func:`molconf.data.graph_to_data`). Every batch holds
    ``batch_size`` items drawn epoch-wise from seeded permutations, concatenated as needed: below
    ``batch_size`` molecules a batch repeats them, each copy with its own σ and ε, so a step costs
    the same and its gradient is as well averaged at every N (one molecule per step at N = 1 left
    the small-N networks under-trained). σ and ε come from their own generator seeded with
    ``seed + 1``.
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
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(len(graphs), generator=g_data).tolist()
        idx, order = order[:batch_size], order[batch_size:]
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


# =========================================================================== comparisons
def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _median(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.median(xs)) if xs else float("nan")


def rmsd_to_reference(ref: Chem.Mol, pos: np.ndarray) -> tuple[float, bool | None]:
    """Heavy-atom RMSD of a sample to ``ref``'s conformer, the smaller of the sample's and its mirror
    image's, and whether the sample keeps ``ref``'s CIP labels as the stereo metric counts it
    (:func:`molconf.metrics.stereo_consistent`; None: ``ref`` has no stereo element)."""
    sample = mol_with_coords(ref, pos)
    mirror = mol_with_coords(ref, pos * np.array([-1.0, 1.0, 1.0]))  # (n, 3): reflected through x = 0
    same = stereo_consistent(ref, sample) if stereo_labels(ref) else None
    return min(c_rmsd(ref, sample), c_rmsd(ref, mirror)), same


def pair_rmsd(ref: Chem.Mol, samples_x: np.ndarray, ok_x: np.ndarray, samples_y: np.ndarray, ok_y: np.ndarray) -> float:
    """Mean heavy-atom RMSD between two networks' samples drawn from the same noise, sample by sample."""
    n = ref.GetNumAtoms()
    out = [c_rmsd(mol_with_coords(ref, sx[:n]), mol_with_coords(ref, sy[:n]))
           for sx, sy, gx, gy in zip(samples_x, samples_y, ok_x, ok_y) if gx and gy]
    return _mean(out)


def reference_rmsds(ref: Chem.Mol, samples: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """(mean stereo-aware RMSD to ``ref``, share of samples with ``ref``'s stereo; NaN if none)."""
    n = ref.GetNumAtoms()
    rows = [rmsd_to_reference(ref, s[:n]) for s, g in zip(samples, ok) if g]
    stereo = [same for _, same in rows if same is not None]
    return _mean(r for r, _ in rows), (float(np.mean(stereo)) if stereo else float("nan"))


# =========================================================================== study
@dataclass
class StudyConfig:
    """Settings of :func:`run_generalization` (tiny values for tests, large for the real study)."""

    sizes: list[int] = field(default_factory=lambda: [1, 10, 100, 1000, 10000])
    steps: int = 20000  # at least this many optimisation steps for every N
    epochs: float = 0.0  # and at least this many passes over the N molecules
    max_steps: int | None = None  # and at most this many
    replicas: int = 2  # networks per (N, training set), each with its own seed
    batch_size: int = 32
    lr: float = 1e-3
    blind: bool = True  # the paper's setting (KS sampler); False: noise-conditioned + DDIM
    ns: int = 32
    nv: int = 8
    n_layers: int = 4
    cutoff: float = 5.0
    sigma_min: float = 0.01
    sigma_max: float = 3.0
    weighting: str = "edm"
    n_heldout: int = 100
    n_train_eval: int = 20
    n_samples: int = 4
    seed: int = 0  # the data draws and the base of every network seed
    source_limit: int | None = None
    cache_dir: str | None = None
    sampling: SamplerSettings = field(default_factory=SamplerSettings)

    def model_kwargs(self) -> dict:
        return dict(blind=self.blind, ns=self.ns, nv=self.nv, n_layers=self.n_layers, cutoff=self.cutoff)

    def steps_for(self, n: int) -> int:
        """Optimisation steps at training-set size ``n``.

        >>> StudyConfig(steps=100, epochs=10, batch_size=32).steps_for(1000)
        313
        >>> StudyConfig(steps=100, epochs=10, batch_size=32, max_steps=200).steps_for(1000)
        200
        """
        steps = max(self.steps, math.ceil(self.epochs * n / self.batch_size))
        return min(steps, self.max_steps) if self.max_steps else steps


def _study_rows(store, cfg: StudyConfig):
    from molconf.data.splits import load_split

    train, _ = store.positions_of(load_split("qm9", "train"))
    test, _ = store.positions_of(load_split("qm9", "test"))
    need = 2 * max(cfg.sizes)
    if len(train) < need:
        raise ValueError(f"the largest N={max(cfg.sizes)} needs {need} training molecules, the cache has "
                         f"{len(train)} (raise source_limit or lower --sizes)")
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


def _training_settings(cfg: StudyConfig, n: int, seed: int) -> dict:
    """What decides a trained network besides its molecules (saved with it, compared on reuse)."""
    return {"steps": cfg.steps_for(n), "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": seed,
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


def _initial(cfg: StudyConfig, seed: int) -> EquivariantDenoiser:
    torch.manual_seed(seed)  # the initialisation: the same seed rebuilds the same untrained network
    return EquivariantDenoiser(**cfg.model_kwargs())


def _networks(n: int, cfg: StudyConfig, store, rows: dict, out: Path, log) -> tuple[dict, dict]:
    """Every trained network of size ``n`` (``"A0"``, ``"B0"``, ``"A1"``, …) and the untrained
    ``"A0_init"``, ``"B0_init"``; their loss curves."""
    models, losses = {}, {}
    for replica in range(cfg.replicas):
        for role in ROLES:
            name, seed = f"{role}{replica}", network_seed(cfg.seed, role, replica)
            path = out / "models" / f"N{n}_{name}.pt"
            mol_ids = [int(store.mol_ids[i]) for i in rows[role]]
            training = _training_settings(cfg, n, seed)
            reused = _trained_before(path, mol_ids, training)
            if reused is not None:  # a run killed after training: evaluate the saved network
                models[name], losses[name] = reused
                log(f"N={n} model {name}: trained before ({path.name}), reused")
                continue
            graphs = [graph_to_data(store.graph(int(i)), 1, int(store.mol_ids[i])) for i in rows[role]]
            model = _initial(cfg, seed)
            losses[name] = train_denoiser(model, graphs, training["steps"], cfg.batch_size, cfg.lr, seed,
                                          cfg.sigma_min, cfg.sigma_max, cfg.weighting)
            models[name] = model.eval()
            save_denoiser(model, path, meta={"name": f"study_N{n}_{name}", "train_mol_ids": mol_ids,
                                             "training": training, "losses": losses[name]})
            log(f"N={n} model {name}: {training['steps']} steps, loss {np.mean(losses[name][:10]):.3g} -> "
                f"{np.mean(losses[name][-10:]):.3g}")
    for role in ROLES:
        models[f"{role}0_init"] = _initial(cfg, network_seed(cfg.seed, role, 0)).eval()
    return models, losses


def evaluate_molecule(ref: Chem.Mol, graph, models: dict, cfg: StudyConfig, noise_seed: int) -> dict:
    """One molecule: every network samples from the same noise; the pair RMSDs and the
    stereo-aware RMSDs to ``ref``'s conformer."""
    draws = {name: sample_graph(m, graph, cfg.n_samples, cfg.sampling, noise_seed) for name, m in models.items()}

    def pair(x: str, y: str) -> float:
        return pair_rmsd(ref, draws[x][0], draws[x][1], draws[y][0], draws[y][1])

    reps = range(cfg.replicas)
    row = {"ab": [pair(f"A{r}", f"B{r}") for r in reps], "untrained_ab": pair("A0_init", "B0_init"),
           "failed": {name: int((~ok).sum()) for name, (_, ok) in draws.items()}}
    if cfg.replicas > 1:
        row["aa"], row["bb"] = pair("A0", "A1"), pair("B0", "B1")
    for role in ROLES:
        stats = [reference_rmsds(ref, *draws[f"{role}{r}"]) for r in reps]
        row[f"{role.lower()}_ref"] = [s[0] for s in stats]
        row[f"{role.lower()}_stereo"] = [s[1] for s in stats]
    return row


def _across(per: list[dict], key: str) -> dict:
    """Median over molecules per replica, then mean and sd across replicas."""
    by_replica = [_median(r[key][k] for r in per) for k in range(len(per[0][key]))] if per else []
    v = np.array([x for x in by_replica if np.isfinite(x)])
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "per_replica": by_replica}


def summarise_molecules(per: list[dict]) -> dict:
    out = {k: _across(per, k) for k in ("ab", "a_ref", "b_ref", "a_stereo", "b_stereo")}
    out["untrained_ab"] = _median(r["untrained_ab"] for r in per)
    if per and "aa" in per[0]:
        out["aa"], out["bb"] = _median(r["aa"] for r in per), _median(r["bb"] for r in per)
    return out


def run_size(n: int, cfg: StudyConfig, store, pool_a, pool_b, heldout, out: Path, log=print) -> dict:
    """Train the networks of one N, sample and compare; returns the result dict."""
    t0 = time.time()
    models, losses = _networks(n, cfg, store, {"A": pool_a[:n], "B": pool_b[:n]}, out, log)

    def evaluate(eval_rows) -> list[dict]:
        per = []
        for i in (int(i) for i in eval_rows):
            graph = graph_to_data(store.graph(i), 1, int(store.mol_ids[i]))
            row = evaluate_molecule(store.mol(i), graph, models, cfg, cfg.seed * 1_000_003 + int(store.mol_ids[i]))
            row["mol_id"] = int(store.mol_ids[i])
            per.append(row)
        return per

    held = evaluate(heldout)
    train = evaluate([i for i in pool_a[: min(n, cfg.n_train_eval)] if _rmsd_meaningful(store, i)])
    return {"N": n, "steps": cfg.steps_for(n), "replicas": cfg.replicas, "blind": cfg.blind,
            "sampler": cfg.sampling.resolve(cfg.blind),
            "final_loss": {k: float(np.mean(v[-max(1, len(v) // 10):])) for k, v in losses.items()},
            "heldout": {**summarise_molecules(held), "per_molecule": held},
            "train": {**summarise_molecules(train), "per_molecule": train},
            "failed_samples": int(sum(sum(r["failed"].values()) for r in held + train)),
            "seconds": round(time.time() - t0, 1)}


def transition(summary: dict) -> int | None:
    """The smallest N whose held-out RMSD(A, B) is within TRANSITION_RATIO of the same-data control
    RMSD(A₀, A₁); None when no N is (or there is no control)."""
    for n, ab, aa in zip(summary["sizes"], summary["heldout_ab"], summary.get("heldout_aa", [])):
        if np.isfinite(ab) and np.isfinite(aa) and ab <= TRANSITION_RATIO * aa:
            return int(n)
    return None


def run_generalization(cfg: StudyConfig, out: str | Path, store=None, log=print) -> dict:
    """Run (or resume) the study; writes per-N JSON, ``summary.json`` and the plots."""
    if cfg.replicas < 1:
        raise ValueError("replicas must be >= 1 (2 or more give the same-data control)")
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
        h, t = res["heldout"], res["train"]
        log(f"N={n}: held-out RMSD(A,B) {h['ab']['mean']:.3f} Å (same data {h.get('aa', float('nan')):.3f}, "
            f"untrained {h['untrained_ab']:.3f}); A's training molecules: A {t['a_ref']['mean']:.3f} Å, "
            f"B {t['b_ref']['mean']:.3f} Å; {res['failed_samples']} failed samples ({res['seconds']} s)")
        results.append(res)
    summary = {"config": asdict(cfg), "sizes": [r["N"] for r in results], "steps": [r["steps"] for r in results]}
    for part in ("heldout", "train"):
        for key in ("ab", "a_ref", "b_ref", "a_stereo"):
            summary[f"{part}_{key}"] = [r[part][key]["mean"] for r in results]
            summary[f"{part}_{key}_sd"] = [r[part][key]["sd"] for r in results]
        summary[f"{part}_untrained_ab"] = [r[part]["untrained_ab"] for r in results]
        if cfg.replicas > 1:
            summary[f"{part}_aa"] = [r[part]["aa"] for r in results]
    summary["final_loss"] = [r["final_loss"] for r in results]
    summary["failed_samples"] = [r["failed_samples"] for r in results]
    summary["transition_N"] = transition(summary)
    summary["transition_rule"] = (f"smallest N with held-out RMSD(A, B) <= {TRANSITION_RATIO} x RMSD(A0, A1) "
                                  "(two networks on the same data); null: none")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:
        plot_generalization(summary, out / "generalization.png")
        plot_losses(out, summary["sizes"], out / "loss_curves.png")
    except ImportError:  # matplotlib is an optional extra
        log("matplotlib is not installed: no plot written")
    return summary


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.5, 4.2))


def _save(plt, fig, ax, path: Path) -> None:
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_generalization(summary: dict, path: Path) -> None:
    plt, fig, ax = _figure()
    n = summary["sizes"]
    ax.errorbar(n, summary["heldout_ab"], yerr=np.nan_to_num(summary["heldout_ab_sd"]), fmt="o-",
                label="held-out: RMSD(A, B), mean ± sd over replicas")
    if "heldout_aa" in summary:
        ax.plot(n, summary["heldout_aa"], "o--", label="control: RMSD(A₀, A₁), same data, other seed")
    ax.plot(n, summary["heldout_untrained_ab"], "k:", label="control: RMSD(A₀, B₀) untrained")
    ax.errorbar(n, summary["train_a_ref"], yerr=np.nan_to_num(summary["train_a_ref_sd"]), fmt="^-",
                label="A's training mols: RMSD(A, training conformer)")
    ax.plot(n, summary["train_b_ref"], "v--", label="same mols: RMSD(B, their conformer)")
    ax.plot(n, summary["heldout_a_ref"], "x:", label="held-out: RMSD(A, DFT conformer)")
    if summary.get("transition_N"):
        ax.axvline(summary["transition_N"], color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training-set size N")
    ax.set_ylabel("heavy-atom RMSD (Å)")
    _save(plt, fig, ax, path)


def plot_losses(out: Path, sizes: list[int], path: Path) -> None:
    """Every saved network's loss curve (moving average), one colour per N."""
    from molconf.diffusion.io import load_denoiser

    plt, fig, ax = _figure()
    for c, n in enumerate(sizes):
        for k, model_path in enumerate(sorted((out / "models").glob(f"N{n}_[AB][0-9]*.pt"))):
            losses = np.asarray(load_denoiser(model_path)[1].get("losses", []), float)
            if len(losses) == 0:
                continue
            w = max(1, len(losses) // 50)
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(smooth)) + w, smooth, color=f"C{c}", lw=0.8, alpha=0.8,
                    label=f"N = {n}" if k == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    _save(plt, fig, ax, path)
