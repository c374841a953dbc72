"""benchmarks/direct_baseline.py, the model written directly, computes our model's function.

With the weights copied across (``from_ours``) the outputs, the loss and every gradient must
equal ours within float32 rounding, on real molecules with the shipped weights and on a freshly
initialised model in training; ReBind's edges must be the compiled op's edges exactly.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from molconf import constants as K

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ATOL = 1e-4  # Å; float32 over 8-12 layers (observed ≤ 1e-5)


@pytest.fixture(scope="module")
def bench():
    """The benchmark helper modules (they import each other by bare name, as scripts do)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ("direct_baseline", "_workload", "gpu_inputs")}
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def real_batches(bench):
    """40 molecules of each shipped reference sample (QM9 and drug-like), two batches each."""
    return {name: bench["gpu_inputs"].reference_batches(name, n=40, batch_size=20) for name in ("qm9", "moses_xtb")}


@pytest.mark.parametrize(("dataset", "shipped"), [("qm9", "qm9_rebind"), ("moses_xtb", "moses_xtb_gtmgc")])
def test_same_outputs_as_the_shipped_models_on_real_molecules(bench, real_batches, dataset, shipped):
    from molconf.models import conformer_loss, load_model
    from molconf.models.io import WEIGHTS_DIR

    ours, _ = load_model(WEIGHTS_DIR / f"{shipped}.pt")
    direct = bench["direct_baseline"].from_ours(ours)
    assert not direct.training and type(direct) is not type(ours)
    for batch in real_batches[dataset]:
        with torch.no_grad():
            want, got = ours(batch), direct(batch)
        for key in (K.POS_ENC, K.POS_PRED):
            torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=0)
        assert want[K.POS_PRED].abs().max() > 1.0  # real coordinates, not a degenerate output
        torch.testing.assert_close(bench["direct_baseline"].distance_loss(got, batch),
                                   conformer_loss(want, batch)["loss"], atol=1e-5, rtol=1e-5)


def test_rebind_edges_are_the_compiled_ops_edges(bench, real_batches):
    """On the shipped QM9 model's encoder conformers (where ties and near-ties would show)."""
    from molconf import ops
    from molconf.models import load_model
    from molconf.models.io import WEIGHTS_DIR

    ours, _ = load_model(WEIGHTS_DIR / "qm9_rebind.pt")
    total = 0
    for batch in real_batches["qm9"] + real_batches["moses_xtb"]:
        with torch.no_grad():
            pos = ours(batch)[K.POS_ENC]
        attr, rep = bench["direct_baseline"].force_edges(pos, batch[K.ATOMIC_NUMBERS], batch[K.BOND_ADJ],
                                                         batch[K.MASK])
        rel = ours.relations(pos, batch[K.ATOMIC_NUMBERS], batch[K.BOND_ADJ], batch[K.MASK])  # (B, 3, N, N)
        assert torch.equal(attr, rel[:, 1]) and torch.equal(rep, rel[:, 2])
        total += int(attr.sum() + rep.sum())
    assert total > 500  # not vacuous
    assert ops.backend() in ("extension", "reference")


@pytest.mark.parametrize("relation", ["rebind", "gtmgc"])
def test_same_loss_gradients_and_training_step(bench, real_batches, relation):
    from molconf.models import ConformerTransformer

    W, D = bench["_workload"], bench["direct_baseline"]
    torch.manual_seed(0)
    ours = ConformerTransformer(relation, pe_sign_flip=False, **W.SIZES["tiny"])
    with torch.no_grad():  # relations weigh in fully, so their gradient path is not lost in rounding
        for block in ours.decoder:
            block.attn.beta.fill_(1.0)
    direct = D.from_ours(ours)
    assert W.linear_params(direct) == W.linear_params(ours)  # same size: the FLOP counts agree
    batch = real_batches["qm9"][0]
    losses = []
    for model, loss_fn in ((ours, W.ours_loss), (direct, D.distance_loss)):
        model.train()
        model.zero_grad()
        loss = loss_fn(model(batch), batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-6)
    grads = D.direct_state({name: p.grad for name, p in ours.named_parameters()})
    params = dict(direct.named_parameters())
    assert set(grads) == set(params)
    for name, g in grads.items():  # relative to the tensor's largest entry (some are ~0: rounding noise)
        err = (params[name].grad - g).abs().max().item()
        assert err <= 2e-5 * g.abs().max().item() + 1e-7, (name, err, g.abs().max().item())
    # one step of the benchmark's training step on each: still the same function
    device = torch.device("cpu")
    for model, loss_fn in ((ours, W.ours_loss), (direct, D.distance_loss)):
        W.train_step_fn(model, loss_fn, device)(batch)
    ours.eval(), direct.eval()
    with torch.no_grad():
        torch.testing.assert_close(direct(batch)[K.POS_PRED], ours(batch)[K.POS_PRED], atol=ATOL, rtol=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(dropout=0.1), "dropout"),
    (dict(relation_options={"h_sigma_convention": "reference"}), "h_sigma_convention"),
    (dict(relation_options={"k_rule": 2}), "k_rule"),
])
def test_options_it_does_not_implement_are_refused(bench, kwargs, match):
    from molconf.models import ConformerTransformer

    ours = ConformerTransformer("rebind", **bench["_workload"].SIZES["tiny"], **kwargs)
    with pytest.raises(ValueError, match=match):
        bench["direct_baseline"].from_ours(ours)
    gtmgc = ConformerTransformer("gtmgc", relation_options={"detach": True}, **bench["_workload"].SIZES["tiny"])
    with pytest.raises(ValueError, match="detach"):
        bench["direct_baseline"].from_ours(gtmgc)


def test_random_rebatch_keeps_the_molecules(bench, real_batches):
    W = bench["_workload"]
    batches = real_batches["moses_xtb"]
    again = W.collate(W.unbatch(batches[:1]))
    assert again.keys() == batches[0].keys()
    for key, value in batches[0].items():
        assert torch.equal(again[key], value), key
    shuffled = W.random_rebatch(batches, seed=1)
    assert [b[K.MASK].shape[0] for b in shuffled] == [b[K.MASK].shape[0] for b in batches]
    sizes = sorted(int(n) for b in batches for n in b[K.MASK].sum(1))
    assert sorted(int(n) for b in shuffled for n in b[K.MASK].sum(1)) == sizes
    # sorted batches pad less than random ones (the point of size-aware batching)
    padded = [sum(b[K.MASK].numel() for b in bs) for bs in (batches, shuffled)]
    assert padded[0] < padded[1]
