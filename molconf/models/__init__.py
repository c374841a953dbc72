"""Conformer prediction models (plain ``nn.Module``s, no Lightning needed)."""

from molconf.models.io import load_model, save_model
from molconf.models.loss import conformer_loss, distance_mae
from molconf.models.relations import ForceRewiringRelations, RowMaxDistanceRelations
from molconf.models.transformer import ConformerTransformer, gtmgc, rebind

__all__ = [
    "ConformerTransformer",
    "ForceRewiringRelations",
    "RowMaxDistanceRelations",
    "conformer_loss",
    "distance_mae",
    "gtmgc",
    "load_model",
    "save_model",
    "rebind",
]
