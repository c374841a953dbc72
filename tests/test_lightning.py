"""Training under Lightning: CLI, checkpoints, exact resume, NaN guard, metrics, DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import lightning as L

from molconf import constants as K
from molconf.lightning import ConformerDataModule, ConformerModule, run_lightning_cli
from molconf.metrics import aggregate, mol_with_coords, molecule_metrics
from molconf.models import ConformerTransformer

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def tiny_model():
    return ConformerTransformer("rebind", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                                n_decoder_layers=1, pe_dim=16)


def datamodule():
    return ConformerDataModule(batch_size=32, pe_dim=16, source_limit=300)


def trainer(root, **kw):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=5,
                           save_top_k=-1)
    cfg = dict(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
               enable_model_summary=False, use_distributed_sampler=False, gradient_clip_val=1.0,
               default_root_dir=root, callbacks=[ckpt], num_sanity_val_steps=0)
    cfg.update(kw)
    return L.Trainer(**cfg)


def test_cli_fit_writes_checkpoints_and_logs(tmp_path, qm9_small):
    run_lightning_cli(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(tmp_path)])
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(c.startswith("best-") for c in ckpts)
    metrics = (next((tmp_path / "csv").glob("version_*")) / "metrics.csv").read_text()
    assert "val/d_mae" in metrics and "train/loss" in metrics and "lr-AdamW" in metrics
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_cli_resume_after_finished_epoch(tmp_path, qm9_small):
    # `molconf fit ... --ckpt_path last.ckpt` from an end-of-epoch checkpoint runs the next
    # epoch in full (the restored batch count belongs to the finished epoch).
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs"]
    run_lightning_cli(["fit", "--config", SMOKE, *root, "1"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8
    run_lightning_cli(["fit", "--config", SMOKE, *root, "2", "--ckpt_path", str(last)])
    assert torch.load(last, weights_only=True)["global_step"] == 16


def test_last_checkpoint_is_the_end_of_the_schedule(tmp_path, qm9_small):
    # 8 steps with a checkpoint every 3: without the end-of-fit save last.ckpt would be step 6
    run_lightning_cli(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(tmp_path),
                       "--trainer.max_epochs", "1", "--checkpoint.every_n_train_steps", "3"])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


class _Crash(Exception):
    pass


class _CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise _Crash()


def _params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_resume_from_last_checkpoint_is_exact(tmp_path, qm9_small):
    # 240 training molecules / 32 = 8 batches per epoch; the crash lands mid-epoch 1.
    L.seed_everything(0)
    full = ConformerModule(tiny_model(), lr=1e-3)
    trainer(tmp_path / "a").fit(full, datamodule())

    L.seed_everything(0)
    crashed = ConformerModule(tiny_model(), lr=1e-3)
    t = trainer(tmp_path / "b")
    t.callbacks.append(_CrashAt(12))
    with pytest.raises(_Crash):
        t.fit(crashed, datamodule())
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10

    L.seed_everything(123)  # resuming must not depend on the fresh process's seed
    resumed = ConformerModule(tiny_model(), lr=1e-3)
    t2 = trainer(tmp_path / "b")
    t2.fit(resumed, datamodule(), ckpt_path=str(last))
    assert t2.global_step == 16
    assert torch.allclose(_params(full), _params(resumed), atol=1e-6)


@pytest.mark.parametrize("every_n_train_steps", [None, 8], ids=["validation-end", "last-batch"])
def test_resume_from_end_of_epoch_last_checkpoint_is_exact(tmp_path, qm9_small, every_n_train_steps):
    """2 epochs uninterrupted == 1 epoch, crash, resume from the last.ckpt of epoch 0's end.

    ``validation-end``: the CLI's default checkpointing (last.ckpt when validation ends);
    ``last-batch``: a step-triggered checkpoint on the epoch's last batch (8 batches per epoch).
    Either way the resumed epoch 1 must draw epoch 1's batch order, not epoch 0's again.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root, *extra, ckpt_path=None):
        ckpt = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True,
                               every_n_train_steps=every_n_train_steps)
        return trainer(root, callbacks=[ckpt, *extra])

    seen = {"full": [], "resumed": []}

    class Record(L.Callback):
        def __init__(self, key):
            self.key = key

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen[self.key].append((trainer.current_epoch, batch[K.MOL_INDEX].tolist()))

    L.seed_everything(0)
    full = ConformerModule(tiny_model(), lr=1e-3)
    run(tmp_path / "a", Record("full")).fit(full, datamodule())

    L.seed_everything(0)
    crashed = ConformerModule(tiny_model(), lr=1e-3)
    with pytest.raises(_Crash):
        run(tmp_path / "b", _CrashAt(9)).fit(crashed, datamodule())  # first batch of epoch 1
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8

    L.seed_everything(123)
    resumed = ConformerModule(tiny_model(), lr=1e-3)
    t2 = run(tmp_path / "b", Record("resumed"))
    t2.fit(resumed, datamodule(), ckpt_path=str(last))
    assert t2.global_step == 16
    # the resumed run trains epoch 1 only, in the order the uninterrupted run gave epoch 1
    epoch1 = [b for e, b in seen["full"] if e == 1]
    assert len(epoch1) == 8 and [b for _, b in seen["resumed"]] == epoch1
    assert epoch1 != [b for e, b in seen["full"] if e == 0]  # (the orders do differ between epochs)
    assert torch.allclose(_params(full), _params(resumed), atol=1e-6, rtol=0)


def test_nan_loss_stops_with_clear_message(tmp_path, qm9_small, monkeypatch):
    module = ConformerModule(tiny_model(), lr=1e-3)
    original = module.model.forward
    calls = {"n": 0}

    def poisoned(batch):
        out = original(batch)
        calls["n"] += 1
        if calls["n"] == 3:
            out[K.POS_PRED] = out[K.POS_PRED] * float("nan")
        return out

    monkeypatch.setattr(module.model, "forward", poisoned)
    t = trainer(tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite training loss.*global step 2"):
        t.fit(module, datamodule())
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_test_metrics_match_independent_computation(tmp_path, qm9_small):
    module = ConformerModule(tiny_model(), lr=1e-3)
    dm = datamodule()
    t = trainer(tmp_path, max_epochs=1)
    t.fit(module, dm)
    [logged] = t.test(module, dm, verbose=False)
    # recompute from predictions with the metrics module, molecule by molecule
    module.eval()
    rows = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            pred = module(batch)[K.POS_PRED].double().numpy()
            for b, mol_id in enumerate(batch[K.MOL_INDEX].tolist()):
                [row], _ = dm.store.positions_of([mol_id])
                ref = dm.store.mol(int(row))
                n = int(batch[K.NUM_ATOMS][b])
                rows.append(molecule_metrics(ref, mol_with_coords(ref, pred[b, :n])))
    expected = aggregate(rows)
    assert len(rows) == len(dm.rows["test"]) > 10
    for key in (K.D_MAE, K.D_RMSE, K.C_RMSD):
        assert logged[f"test/{key}"] == pytest.approx(expected[key], rel=1e-4), key


DDP_SCRIPT = """
import json, sys, torch, lightning as L
from molconf.lightning import ConformerDataModule, ConformerModule
from molconf.models import ConformerTransformer

class Record(L.Callback):
    seen = []
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.extend(batch["mol_index"].tolist())
    def on_train_end(self, trainer, module):
        flat = torch.cat([p.detach().flatten() for p in module.parameters()])
        json.dump({"rank": trainer.global_rank, "world": trainer.world_size, "seen": self.seen,
                   "params": flat[:50].tolist(), "checksum": float(flat.double().sum())},
                  open(sys.argv[1] + f"/rank{trainer.global_rank}.json", "w"))

L.seed_everything(0)
model = ConformerTransformer("rebind", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                             n_decoder_layers=1, pe_dim=16)
devices, num_nodes = (int(a) for a in sys.argv[2:4]) if len(sys.argv) > 2 else (2, 1)
t = L.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy="ddp", max_steps=4, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
              num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Record()])
t.fit(ConformerModule(model, lr=1e-3), ConformerDataModule(batch_size=16, pe_dim=16, source_limit=300))
"""


def test_ddp_two_cpu_processes_agree(tmp_path, qm9_small):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert np.allclose(r0["params"], r1["params"]) and r0["checksum"] == pytest.approx(r1["checksum"])
    assert len(r0["seen"]) == len(r1["seen"]) > 0 and not set(r0["seen"]) & set(r1["seen"])


def test_ddp_across_two_nodes_on_loopback(tmp_path, qm9_small):
    """docs/cluster.md's multi-node command: ``--trainer.num_nodes 2`` with one process per node,
    each started on its own with MASTER_ADDR / MASTER_PORT / NODE_RANK (here both on 127.0.0.1)."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for node in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "NODE_RANK": str(node), "WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), "1", "2"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert np.allclose(r0["params"], r1["params"]) and r0["checksum"] == pytest.approx(r1["checksum"])
    assert len(r0["seen"]) == len(r1["seen"]) > 0 and not set(r0["seen"]) & set(r1["seen"])


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_parses(config, tmp_path):
    path = REPO / "configs" / config
    # an override file names the config it changes on its first line ("# Override of base.yaml: …")
    first = path.read_text().splitlines()[0]
    base = [str(REPO / "configs" / first.split()[3].rstrip(":"))] if first.startswith("# Override of ") else []
    configs = [arg for c in base + [str(path)] for arg in ("--config", c)]
    proc = subprocess.run([sys.executable, "-m", "molconf.cli", "fit", *configs,
                           "--print_config"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path" in proc.stdout


def test_init_from_starts_from_saved_weights_and_refuses_another_network(tmp_path):
    from molconf.models import save_model

    torch.manual_seed(3)
    source = tiny_model()
    save_model(source, tmp_path / "w.pt", half=True)
    module = ConformerModule(tiny_model(), init_from=str(tmp_path / "w.pt"))
    for (name, a), b in zip(module.model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b.half().float()), name  # stored as float16, loaded back as float32
    wider = ConformerTransformer("rebind", d_model=64, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                                 n_decoder_layers=1, pe_dim=16)
    with pytest.raises(ValueError, match=r"w.pt: its network differs .*d_model"):
        ConformerModule(wider, init_from=str(tmp_path / "w.pt"))
    # more Laplacian eigenvectors (larger molecules): the same weights, the extra columns new inputs
    longer = ConformerModule(ConformerTransformer(**{**source.config, "pe_dim": 24}), init_from=str(tmp_path / "w.pt"))
    for (name, a), b in zip(longer.model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b.half().float()), name
    assert longer.model.pe_dim == 24


def _teacher_force_data(tmp_path, monkeypatch) -> None:
    """A force-data folder in ``tmp_path`` made by a known 'teacher' correction (8 molecules,
    6 samples each), with ``load_dataset`` patched to return its molecules."""
    import io as _io

    from rdkit import Chem
    from rdkit.Chem import AllChem

    import molconf.lightning as ml
    from molconf.ground_state.correction import Gfn2Correction, batch_pair_graphs, pair_graph

    torch.manual_seed(0)
    teacher = Gfn2Correction(hidden=16, layers=1).double()
    torch.nn.init.normal_(teacher.pair_mlp[-1].weight, std=0.2)
    smiles = ["CCO", "CCN", "CC(=O)O", "c1ccccc1", "CCCl", "OCCO", "CNC=O", "CCS"]
    mols, fields = [], {k: [] for k in ("row", "kind", "num_atoms", "pos", "f_gfn2", "f_mmff", "e_gfn2", "e_mmff")}
    rng = np.random.default_rng(0)
    for row, s in enumerate(smiles):
        m = Chem.AddHs(Chem.MolFromSmiles(s))
        AllChem.EmbedMolecule(m, randomSeed=row)
        mols.append(m)
        batch = batch_pair_graphs([pair_graph(m)])
        for kind in range(6):
            pos = m.GetConformer().GetPositions() + rng.normal(0, 0.03, (m.GetNumAtoms(), 3))
            e, f = teacher.energy_and_forces(torch.tensor(pos), {k: v.detach() for k, v in teacher.coefficients(batch).items()}, batch)
            for k, v in zip(fields, (row, kind, len(pos), pos, f.detach().numpy(), np.zeros_like(pos), e.item(), 0.0)):
                fields[k].append(v)
    arrays = {k: (np.concatenate(v) if k in ("pos", "f_gfn2", "f_mmff") else np.asarray(v)) for k, v in fields.items()}
    buf = _io.BytesIO()
    np.savez(buf, **arrays, failed_rows=np.zeros(0, np.int64), failed_reasons=np.zeros(0, str))
    (tmp_path / "shard_00000.npz").write_bytes(buf.getvalue())
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "fake", "split": "train"}))

    class Store:
        def mol(self, i):
            return Chem.Mol(mols[i])

    monkeypatch.setattr(ml, "load_dataset", lambda name: Store())


def test_gfn2_correction_learns_a_known_force_difference(tmp_path, monkeypatch):
    """ForceDataModule + Gfn2CorrectionModule on force data made by a known 'teacher' correction."""
    from molconf.lightning import ForceDataModule, Gfn2CorrectionModule
    from molconf.ground_state.correction import Gfn2Correction

    _teacher_force_data(tmp_path, monkeypatch)
    data = ForceDataModule(str(tmp_path), val_every=4, batch_size=8)  # rows 0 and 4 held out
    module = Gfn2CorrectionModule(Gfn2Correction(hidden=32, layers=2), lr=3e-3)
    trainer = L.Trainer(max_epochs=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, data)
    assert len(data.train_set) == 36 and len(data.val_set) == 12
    metrics = trainer.callback_metrics
    assert metrics["val/force_mae"] < 0.5 * metrics["val/force_mae_uncorrected"]


def test_gfn2_correction_refuses_graphs_listing_other_pairs_than_the_model_needs(tmp_path, monkeypatch):
    from molconf.lightning import ForceDataModule, Gfn2CorrectionModule
    from molconf.ground_state.correction import Gfn2Correction

    _teacher_force_data(tmp_path, monkeypatch)
    data = ForceDataModule(str(tmp_path), val_every=4, batch_size=8)  # pairs up to 1-4
    module = Gfn2CorrectionModule(Gfn2Correction(hidden=16, layers=1, max_hops=2))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"max_hops = 3, the model needs 2"):
        trainer.fit(module, data)
