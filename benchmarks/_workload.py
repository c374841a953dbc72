"""What the model benchmarks share: model sizes, real batches, one training step, FLOP counts.

Used by ``bench_train_step.py``, ``bench_direct.py`` and ``gpu_check.py`` so that they build
models, batches and steps the same way and take the same command-line options.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from molconf import constants as K

SIZES = {
    "tiny": dict(d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1, n_decoder_layers=1),  # tests, dry runs
    "cpu": dict(d_model=256, n_heads=8, ffn_dim=512, n_encoder_layers=4, n_decoder_layers=4),  # configs/*_cpu.yaml
    # GTMGC's paper size, which issue #27 asks for both relations (ReBind's paper uses 8+8, d 512)
    "paper": dict(d_model=256, n_heads=8, ffn_dim=1024, n_encoder_layers=6, n_decoder_layers=6),
}
RELATIONS = ("rebind", "gtmgc")
LR, BETAS, CLIP = 5e-5, (0.9, 0.99), 1.0  # DESIGN §5 (AdamW, gradient clip 1.0)


# --------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser, steps: int = 20, threads: int = 2) -> None:
    """``--steps``, ``--threads`` and ``--out`` (results folder)."""
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    parser.add_argument("--out", type=Path, help="write the result files here")


def add_model_args(parser: argparse.ArgumentParser, size: str = "cpu") -> None:
    """``--relation`` (one or both) and ``--size`` (a key of :data:`SIZES`)."""
    parser.add_argument("--relation", nargs="+", choices=RELATIONS, default=list(RELATIONS))
    parser.add_argument("--size", choices=sorted(SIZES), default=size)
    parser.add_argument("--batch-size", type=int, default=100, help="molecules per batch")


def build_model(relation: str, size: str, pe_dim: int = 32, seed: int = 0):
    """A freshly initialised ConformerTransformer of one of the :data:`SIZES`."""
    from molconf.models import ConformerTransformer

    torch.manual_seed(seed)
    return ConformerTransformer(relation, pe_dim=pe_dim, **SIZES[size])


# --------------------------------------------------------------------------- batches


def qm9_train_batches(count: int, batch_size: int = 100, pe_dim: int = 32) -> list[dict]:
    """The first ``count`` size-aware QM9 training batches, as training draws them (needs the cache)."""
    from molconf.lightning import ConformerDataModule

    dm = ConformerDataModule(batch_size=batch_size, pe_dim=pe_dim)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    return [next(loader) for _ in range(count)]


def unbatch(batches: list[dict]) -> list[dict]:
    """Every molecule of dense padded batches, unpadded (per-molecule tensors)."""
    mols = []
    for b in batches:
        for i, n in enumerate(b[K.MASK].sum(1).tolist()):
            mol = {}
            for key, value in b.items():
                if key == K.BOND_ADJ:
                    mol[key] = value[i, :n, :n]
                elif value.dim() >= 2 and value.shape[1] == b[K.MASK].shape[1]:
                    mol[key] = value[i, :n]
                else:
                    mol[key] = value[i]
            mols.append(mol)
    return mols


def collate(mols: list[dict]) -> dict:
    """Dense padded batch of unpadded molecules (zeros / False as padding)."""
    n = max(int(m[K.MASK].shape[0]) for m in mols)
    out = {}
    for key in mols[0]:
        first = mols[0][key]
        if key == K.BOND_ADJ:
            t = first.new_zeros((len(mols), n, n))
            for i, m in enumerate(mols):
                k = m[key].shape[0]
                t[i, :k, :k] = m[key]
        elif first.dim() >= 1 and first.shape[0] == mols[0][K.MASK].shape[0]:
            t = first.new_zeros((len(mols), n, *first.shape[1:]))
            for i, m in enumerate(mols):
                t[i, : m[key].shape[0]] = m[key]
        else:
            t = torch.stack([m[key] for m in mols])
        out[key] = t
    return out


def random_rebatch(batches: list[dict], seed: int = 0) -> list[dict]:
    """The same molecules in random batches of the same sizes: batching as the published codes
    do (a shuffled loader padding each batch to its largest molecule), not by size."""
    mols = unbatch(batches)
    random.Random(seed).shuffle(mols)
    out, start = [], 0
    for b in batches:
        count = b[K.MASK].shape[0]
        out.append(collate(mols[start : start + count]))
        start += count
    return out


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- steps


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 (or other) autocast on ``device``'s type; a no-op context for ``dtype=None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step_fn(model: nn.Module, loss_fn: Callable[[dict, dict], torch.Tensor], device: torch.device,
                  amp: torch.dtype | None = None) -> Callable[[dict], float]:
    """One training step of ``model`` (AdamW, gradient clip 1.0); the step returns the loss.

    The loss value is read back only on demand (``float(...)`` by the caller), so that a
    device step is not synchronised here.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS)

    def step(batch: dict):
        model.train()  # each time: the same model may also be timed in eval mode between steps
        with autocast(device, amp):
            loss = loss_fn(model(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss.detach()

    return step


def ours_loss(out: dict, batch: dict) -> torch.Tensor:
    from molconf.models import conformer_loss

    return conformer_loss(out, batch)["loss"]


# --------------------------------------------------------------------------- FLOPs


def linear_params(model: nn.Module) -> int:
    """Weights and biases of the model's Linear layers: what multiplies each atom's vector.

    Embedding tables (look-ups), LayerNorms and the per-head relation scalars are left out.
    """
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())


def useful_flops(model: nn.Module, real_atoms: int, train: bool) -> float:
    """2 · parameters · real atoms for a forward pass, three times that for a training step
    (padding and the O(N²) attention terms are not counted: they are the overhead)."""
    return 2.0 * linear_params(model) * real_atoms * (3 if train else 1)


def matmul_call(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, repeat: int = 4):
    """A call doing ``repeat`` n×n products (for the matmul rate) and its FLOP count."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def call():
        for _ in range(repeat):
            torch.matmul(a, b, out=out)

    return call, 2.0 * n**3 * repeat


def sync_fn(device: torch.device):
    """``torch.cuda.synchronize`` for CUDA devices, else None (for ``time_interleaved``)."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def wall(call: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, device work included."""
    sync = sync_fn(device)
    if sync:
        sync()
    t = time.perf_counter()
    call()
    if sync:
        sync()
    return time.perf_counter() - t
